"""A pipeline killed (SIGKILL) right after a retrained stage finished, before the stages that read it ran again:
the next plain `alignkit run` trains those stages again instead of reporting their stale runs as finished."""

import json
import os
import signal
import subprocess
import sys
import time

import yaml
from conftest import FAST, REPO

from alignkit.outputs import previous_dir
from alignkit.pipeline import load_pipeline
from alignkit.runner import run_pipeline

QUICK = dict(zip((k[2:] for k in FAST[::2]), FAST[1::2]))


def test_a_run_killed_after_a_retrained_stage_finished_retrains_its_dependants_next_time(
    tiny_base, sft_messages_file, preference_file, tmp_path, capsys
):
    out = tmp_path / "out"
    pipeline = {"base_model": str(tiny_base), "output_dir": str(out), "stages": {
        "sft": {"recipe": "sft", "model": "base", "args": {
            **QUICK, "dataset_name": str(sft_messages_file), "max_steps": 3, "eval_split_size": 0, "learning_rate": 3e-3}},
        "dpo": {"recipe": "dpo", "model": "sft", "args": {
            **QUICK, "dataset_name": str(preference_file), "use_peft": True, "max_steps": 2, "max_length": 64,
            "eval_split_size": 0}},
    }}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run_pipeline(path)
    sft_record, dpo_record = out / "sft" / "alignkit_run.json", out / "dpo" / "alignkit_run.json"
    first_dpo = dpo_record.read_bytes()
    first_sft = sft_record.stat().st_mtime_ns

    # SFT trained again with another learning rate; the process is killed as soon as its new run is recorded.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "killed_run.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "alignkit", "run", str(path), "--from", "sft", "--set", "sft.learning_rate=1e-3"],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 180
        while True:
            try:
                if sft_record.stat().st_mtime_ns != first_sft:
                    break
            except FileNotFoundError:
                pass  # set aside in sft.previous while the new run trains
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "SFT was not trained again within 3 minutes"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # DPO's run is still the one trained from the first SFT run (in dpo/, or set aside in dpo.previous).
    old_dpo = dpo_record if dpo_record.is_file() else previous_dir(out / "dpo") / "alignkit_run.json"
    assert old_dpo.read_bytes() == first_dpo, "DPO finished again before the kill"
    assert json.loads(sft_record.read_text())["metrics"]  # the new SFT run is finished

    plan = load_pipeline(path).plan()
    assert plan["sft"] == "skip" and plan["dpo"] in ("rerun", "start")

    capsys.readouterr()
    result = run_pipeline(path)
    printed = capsys.readouterr().out
    assert {name: row["status"] for name, row in result["stages"].items()} == {"sft": "skipped", "dpo": "trained"}
    assert "[alignkit run] sft: already finished" in printed
    assert dpo_record.read_bytes() != first_dpo
    assert dpo_record.stat().st_mtime_ns > sft_record.stat().st_mtime_ns  # trained from the SFT run now there
    assert json.loads(dpo_record.read_text())["lineage"]["parent"] == str(out / "sft")
    assert not previous_dir(out / "sft").exists() and not previous_dir(out / "dpo").exists()

    # Now consistent: a third run skips both.
    assert set(load_pipeline(path).plan().values()) == {"skip"}
