"""The command line as a user meets it: bad input fails fast, in a line or two, and writes nothing."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, run_alignkit, write_jsonl

GOOD_ROW = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}


def run_cli(*args, timeout=120):
    return run_alignkit(*args, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=timeout)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("typo", "unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
        ("columns", "has columns ['answer_text', 'query']; a sft data set needs"),
        ("jsonl", "line 2: malformed JSON"),
    ],
)
def test_bad_input_fails_with_a_short_message_and_writes_nothing(case, expected, tiny_base, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [GOOD_ROW] * 4)
    if case == "columns":
        data = write_jsonl(tmp_path / "data.jsonl", [{"query": "Hi?", "answer_text": "Hello."}] * 4)
    if case == "jsonl":
        data.write_text(data.read_text().replace("\n", "\n{broken\n", 1))
    out = tmp_path / "out"
    config = tmp_path / "sft.yaml"
    config.write_text(f"model_name_or_path: {tiny_base}\ndataset_name: {data}\noutput_dir: {out}\n"
                      + ("learning_rat: 1e-4\n" if case == "typo" else ""))
    proc, imported = run_cli("sft", "--config", str(config))
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert imported == [], "user errors are caught before the ML stack's import"
    assert "Traceback" not in proc.stderr
    error = proc.stderr[proc.stderr.index("alignkit: error:") :]
    assert len(error.strip().splitlines()) <= 2
    assert not out.exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("learning_rat: 1e-4\n")
    proc, _ = run_cli("sft", "--config", str(config), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


@pytest.mark.launch
def test_accelerate_launch_runs_the_sft_recipe_as_the_readme_says(tiny_base, sft_messages_file, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "recipes/sft.py",
           "--config", "recipes/demo/sft.yaml", "--model_name_or_path", str(tiny_base),
           "--dataset_name", str(sft_messages_file), "--output_dir", str(out), "--max_steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and (out / "alignkit_run.json").is_file()
