"""
One run per output folder, between real `alignkit sft` processes: a second run (or a resume) started on the folder of
a live run is refused in one line naming that run's process, and the live run finishes with its result intact; a run
killed with SIGKILL leaves no lock behind, so the next run takes the folder (and resumes it).

The first run is held at a known step by `paused_run.py` (the same `alignkit.cli.main`, paused by a test-only patch),
so the test does not depend on how fast training is on a shared machine.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO

from alignkit import outputs

PAUSED_RUN = REPO / "tests" / "resume" / "paused_run.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def config(tiny_base, sft_messages_file, tmp_path):
    """An SFT stage config: 6 steps, a checkpoint every 2."""
    settings = {
        "model_name_or_path": str(tiny_base), "dataset_name": str(sft_messages_file), "output_dir": str(tmp_path / "out"),
        "report_to": "none", "disable_tqdm": True, "seed": 0, "save_strategy": "steps", "save_steps": 2,
        "logging_steps": 1, "per_device_train_batch_size": 8, "use_peft": True, "learning_rate": 5e-3,
        "max_steps": 6, "eval_split_size": 0, "max_length": 64, "activation_checkpointing": False,
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def start_paused(point, signal_dir, args, log):
    signal_dir.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(PAUSED_RUN), point, str(signal_dir), "sft", *args], cwd=REPO, env=ENV,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_until_paused(proc, signal_dir, log, timeout=240):
    deadline = time.time() + timeout
    while not (signal_dir / "paused").exists():
        assert proc.poll() is None, f"the run ended before its pause:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "the run never reached its pause"
        time.sleep(0.05)


def alignkit(*args, timeout=240):
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "alignkit", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    return done, time.monotonic() - start


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("alignkit: error:")]


def test_a_second_run_on_a_live_runs_folder_is_refused_and_the_live_run_finishes_intact(config, tmp_path):
    out, signals, log = tmp_path / "out", tmp_path / "signals", tmp_path / "first.txt"
    first = start_paused("step:3", signals, ["--config", str(config)], log)
    try:
        wait_until_paused(first, signals, log)  # training, with checkpoint-2 written
        assert outputs.output_dir_holder(out)["pid"] == first.pid

        # A second run and a resume, both started while the first is alive: neither loads a model or touches the folder.
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        second, seconds = alignkit("sft", "--config", str(config))
        resume, _ = alignkit("sft", "--config", str(config), "--resume_from_checkpoint", "true")
        for refused in (second, resume):
            assert refused.returncode == 2, refused.stderr[-3000:]
            assert "Traceback" not in refused.stderr and "memory estimate" not in refused.stdout
            lines = error_lines(refused.stderr)
            assert len(lines) == 1, refused.stderr[-3000:]
            assert f"output_dir {out} is in use by a running alignkit run, process {first.pid}" in lines[0]
            assert "paused_run.py step:3" in lines[0]  # its command line
            assert "--resume_from_checkpoint true" in lines[0] and "choose another output_dir" in lines[0]
        assert seconds < 120  # the stack's import and the data check; no model is loaded
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

        # `alignkit check` says so too, as a one-line problem, without taking the lock.
        check, _ = alignkit("check", str(config), "--stage", "sft")
        assert check.returncode == 1
        problems = [line for line in (check.stdout + check.stderr).splitlines() if "is in use by a running" in line]
        assert len(problems) == 1 and f"process {first.pid}" in problems[0], check.stdout + check.stderr
        assert outputs.output_dir_holder(out)["pid"] == first.pid

        assert first.poll() is None
        (signals / "go").touch()
        assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    record = json.loads((out / outputs.RUN_FILE_NAME).read_text())
    assert record["stage"] == "sft" and record["metrics"]["train_loss"] > 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert not outputs.lock_path(out).exists()  # let go, and the lock file with it


def test_a_run_killed_with_sigkill_holds_nothing_and_a_new_run_resumes_the_folder(config, tmp_path):
    out, signals, log = tmp_path / "out", tmp_path / "signals", tmp_path / "killed.txt"
    killed = start_paused("step:3", signals, ["--config", str(config)], log)
    try:
        wait_until_paused(killed, signals, log)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    # kill -9 ran nothing of ours: the lock file is still there, naming the dead process, but the kernel let go.
    assert json.loads(outputs.lock_path(out).read_text())["pid"] == killed.pid
    assert outputs.output_dir_holder(out) is None
    assert [p.name for p in outputs.complete_checkpoints(out)] == ["checkpoint-2"]

    resumed, _ = alignkit("sft", "--config", str(config), "--resume_from_checkpoint", "true", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / outputs.RUN_FILE_NAME).read_text())["stage"] == "sft"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert not outputs.lock_path(out).exists()
