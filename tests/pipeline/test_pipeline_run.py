"""A whole pipeline on the tiny model: every stage runs, the report holds the stages' own numbers, reruns skip."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import FAST, REPO, write_jsonl

from alignkit import report
from alignkit.demo.judge import gold_judge
from alignkit.errors import ConfigError
from alignkit.evaluation import evaluate_policy, load_prompts
from alignkit.outputs import complete_checkpoints
from alignkit.runner import run_pipeline

# Every stage a few steps; fast settings as the recipe tests use them (strings, typed by the recipes' parser).
QUICK = dict(zip((k[2:] for k in FAST[::2]), FAST[1::2]))


@pytest.fixture(scope="module")
def data(tmp_path_factory, world, pretrain_dir, sft_messages_file):
    root = tmp_path_factory.mktemp("pipeline_data")
    prefs = write_jsonl(root / "prefs.jsonl", [{k: ex[k] for k in ("prompt", "chosen", "rejected")}
                                               for ex in world.preference_examples()[:48]])
    heldout = write_jsonl(root / "heldout.jsonl", [
        {"prompt": [{"role": "user", "content": q.text}], "entity": q.entity, "attribute": q.attribute}
        for q in world.heldout_questions()[:12]
    ])
    return {"pretrain": pretrain_dir, "sft": sft_messages_file, "preference": prefs, "heldout": heldout}


def tiny_pipeline(tiny_base, data) -> dict:
    return {
        "base_model": str(tiny_base),
        "output_dir": "unused",
        "evaluation": {"prompts": str(data["heldout"]), "judge": "alignkit.demo.judge:gold_judge", "max_new_tokens": 8},
        "stages": {
            "pretrain": {"recipe": "pretrain", "model": "base", "args": {
                **QUICK, "dataset_name": str(data["pretrain"]), "max_steps": 4, "max_length": 64, "eval_on_start": True,
                "learning_rate": 3e-3}},
            "sft": {"recipe": "sft", "model": "pretrain", "args": {
                **QUICK, "dataset_name": str(data["sft"]), "max_steps": 4, "learning_rate": 3e-3}},
            "reward": {"recipe": "reward", "model": "sft", "args": {
                **QUICK, "dataset_name": str(data["preference"]), "use_peft": True, "max_steps": 4, "max_length": 64}},
            "dpo": {"recipe": "dpo", "model": "sft", "args": {
                **QUICK, "dataset_name": str(data["preference"]), "use_peft": True, "max_steps": 2, "max_length": 64}},
            "ppo": {"recipe": "ppo", "model": "sft", "reward_model": "reward", "args": {
                "dataset_name": str(data["preference"]), "use_peft": True, "num_updates": 2, "per_device_train_batch_size": 8,
                "max_new_tokens": 8, "report_to": "none", "save_strategy": "no", "seed": 0, "logging_steps": 1}},
        },
    }


@pytest.fixture(scope="module")
def run(tiny_base, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_run")
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline(tiny_base, data), sort_keys=False))
    out = root / "out"
    return run_pipeline(path, output_dir=out), path, out


def record(out, stage):
    return json.loads((out / stage / "alignkit_run.json").read_text())


def history(out, stage):
    return json.loads((out / stage / "trainer_state.json").read_text())["log_history"]


def test_every_stage_runs_from_the_outputs_of_the_stages_it_names(run):
    result, _, out = run
    assert [s["status"] for s in result["stages"].values()] == ["trained"] * 5
    assert record(out, "sft")["model_name_or_path"] == str(out / "pretrain")
    assert record(out, "dpo")["lineage"]["parent_stage"] == "sft"
    ppo = yaml.safe_load((out / "ppo" / "alignkit_config.yaml").read_text())
    assert ppo["model_name_or_path"] == str(out / "sft") and ppo["reward_model_path"] == str(out / "reward")


def test_the_reports_numbers_are_the_stages_own_metrics(run, data):
    result, _, out = run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["stages"] == result["stages"]
    stages = on_disk["stages"]
    pretrain = stages["pretrain"]
    assert pretrain["perplexity_after"] == record(out, "pretrain")["metrics"]["perplexity"]
    assert pretrain["perplexity_before"] == math.exp(next(h["eval_loss"] for h in history(out, "pretrain")))
    assert pretrain["perplexity_after"] < pretrain["perplexity_before"]
    assert stages["reward"]["eval_accuracy"] == record(out, "reward")["reward_stats"]["accuracy"]
    assert stages["ppo"]["reward"] == [h["score"] for h in history(out, "ppo")]
    assert stages["ppo"]["kl"] == [h["kl"] for h in history(out, "ppo")]
    assert len(stages["ppo"]["reward"]) == 2
    # The policies' evaluation is alignkit eval's, against the stage each one started from.
    again = evaluate_policy(out / "dpo", out / "sft", load_prompts(data["heldout"]), out / "reward",
                            max_new_tokens=8, judge=gold_judge())
    dpo = stages["dpo"]
    assert dpo["gold_correctness"] == again["policy"]["gold_correctness"]
    assert dpo["rm_score"] == again["policy"]["reward_mean"] and dpo["kl_to_sft"] == again["kl_per_token"]
    assert dpo["rm_win_rate_vs_sft"] == again["win_rate"] == dpo["rm_win_rate_vs_previous"]
    # SFT ran before the reward model existed: its score is the one DPO's evaluation gave it.
    assert stages["sft"]["rm_score"] == again["reference"]["reward_mean"] and stages["sft"]["rm_score_from"] == "dpo"
    assert stages["reward"].get("rm_score") is None and "gold_correctness" not in stages["reward"]


def test_the_report_has_a_markdown_table_example_answers_and_a_figure_per_stage(run):
    result, _, out = run
    markdown = (out / "report.md").read_text()
    for name in ("pretrain", "sft", "reward", "dpo", "ppo"):
        figure = out / "figures" / f"{name}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name} training curves](figures/{name}.png)" in markdown
        assert f"\n| {name} | " in markdown
    assert "| stage | from | perplexity | RM acc | correct | polite | concise | well-formed | RM score | RM win | KL |" in markdown
    question = result["stages"]["dpo"]["examples"][0]["question"]
    assert markdown.count(f"**{question}**") == 1  # one block per question, every policy's answer in it
    table = report.format_table(result)
    assert table.splitlines()[0].split() == ["stage", "from", "perplexity", "RM", "acc", "correct", "polite",
                                              "concise", "well-formed", "RM", "score", "RM", "win", "KL"]


def test_a_second_run_skips_every_stage_reuses_the_evaluation_and_prints_the_same_table(run, monkeypatch, capsys):
    result, path, out = run
    written = {n: (out / n / "alignkit_run.json").stat().st_mtime_ns for n in result["stages"]}

    def no_evaluation(*args, **kwargs):
        raise AssertionError(f"a skipped stage was evaluated again: {args[0]}")

    monkeypatch.setattr(report, "evaluate", no_evaluation)
    capsys.readouterr()
    again = run_pipeline(path, output_dir=out)
    printed = capsys.readouterr().out
    assert [s["status"] for s in again["stages"].values()] == ["skipped"] * 5
    assert {n: (out / n / "alignkit_run.json").stat().st_mtime_ns for n in again["stages"]} == written
    strip = lambda stages: {n: {k: v for k, v in s.items() if k != "status"} for n, s in stages.items()}  # noqa: E731
    assert strip(again["stages"]) == strip(result["stages"])
    table = report.format_table(result).rsplit("\n", 1)[0]  # all but the wall time
    assert table in printed


def test_a_stage_marked_evaluate_false_is_left_out_of_the_evaluation_and_the_others_keep_theirs(run, monkeypatch):
    # A model that only judges (the CAI demo's feedback model) has no answers to the held-out questions worth reading.
    result, path, out = run
    spec = yaml.safe_load(path.read_text())
    spec["stages"]["dpo"]["evaluate"] = False
    judging_only = path.with_name("pipeline_judging_only.yaml")
    judging_only.write_text(yaml.safe_dump(spec, sort_keys=False))
    evaluated = []
    monkeypatch.setattr(report, "evaluate", lambda policy, *args, **kwargs: evaluated.append(policy))
    again = run_pipeline(judging_only, output_dir=out)
    assert [s["status"] for s in again["stages"].values()] == ["skipped"] * 5 and evaluated == []
    dpo = again["stages"]["dpo"]
    assert "gold_correctness" not in dpo and "examples" not in dpo and dpo.get("rm_score") is None
    assert again["stages"]["sft"]["gold_correctness"] == result["stages"]["sft"]["gold_correctness"]
    answers = (out / "report.md").read_text().split("## Example answers")[1].split("\n## ")[0]
    assert "\n| sft | " in answers and "\n| dpo | " not in answers
    with pytest.raises(ConfigError, match="evaluate must be true or false"):
        spec["stages"]["dpo"]["evaluate"] = "no"
        judging_only.write_text(yaml.safe_dump(spec, sort_keys=False))
        run_pipeline(judging_only, output_dir=out)

def test_from_reruns_that_stage_and_every_later_one(run):
    result, path, out = run
    written = {n: (out / n / "alignkit_run.json").stat().st_mtime_ns for n in result["stages"]}
    again = run_pipeline(path, from_stage="dpo", output_dir=out)
    assert {n: s["status"] for n, s in again["stages"].items()} == {
        "pretrain": "skipped", "sft": "skipped", "reward": "skipped", "dpo": "trained", "ppo": "trained"}
    now = {n: (out / n / "alignkit_run.json").stat().st_mtime_ns for n in result["stages"]}
    assert [n for n in now if now[n] != written[n]] == ["dpo", "ppo"]


def test_a_stage_killed_mid_way_resumes_from_its_last_checkpoint(tiny_base, data, tmp_path, capsys):
    pipeline = {"base_model": str(tiny_base), "output_dir": str(tmp_path / "out"), "stages": {"sft": {
        "recipe": "sft", "model": "base", "args": {
            **QUICK, "dataset_name": str(data["sft"]), "max_steps": 60, "save_strategy": "steps", "save_steps": 5,
            "eval_split_size": 0, "learning_rate": 1e-3}}}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    out = tmp_path / "out" / "sft"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "first_run.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "alignkit", "run", str(path)], cwd=REPO, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not list(out.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.time() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "alignkit_run.json").exists(), "the stage finished before it was killed"
    checkpoint = complete_checkpoints(out)[-1]  # a state file cut short by the kill makes its checkpoint incomplete
    step = int(checkpoint.name[11:])
    saved = (checkpoint / "trainer_state.json").read_text()

    capsys.readouterr()
    result = run_pipeline(path)
    assert f"sft: resuming from checkpoint-{step}" in capsys.readouterr().out
    assert result["stages"]["sft"]["status"] == "resumed"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 60 and (out / "alignkit_run.json").is_file()
    # Resumed, not restarted: the checkpoint it continued from is untouched (a restart would have deleted it),
    # and the run's log up to that step is the checkpoint's.
    assert (checkpoint / "trainer_state.json").read_text() == saved
    before = json.loads(saved)["log_history"]
    assert state["log_history"][: len(before)] == before
    assert all(h["step"] > step for h in state["log_history"][len(before):])


@pytest.mark.launch
def test_a_stage_with_two_processes_runs_under_accelerate_launch_with_cooperating_ranks(tiny_base, data, tmp_path):
    pipeline = {"base_model": str(tiny_base), "output_dir": str(tmp_path / "out"), "stages": {"sft": {
        "recipe": "sft", "model": "base", "num_processes": 2, "args": {
            **QUICK, "dataset_name": str(data["sft"]), "num_train_epochs": 1, "eval_split_size": 0}}}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    result = run_pipeline(path)
    rows = len(data["sft"].read_text().splitlines())
    # Two ranks share the data: each step consumes two batches of 8, so half the steps of one process.
    assert json.loads((tmp_path / "out" / "sft" / "trainer_state.json").read_text())["global_step"] == math.ceil(rows / 16)
    assert result["stages"]["sft"]["status"] == "trained"
