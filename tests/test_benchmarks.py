"""The GPU check's CPU-runnable path: the same code, a tiny model, a couple of steps."""

import json
import subprocess
import sys

from conftest import REPO


def test_gpu_check_runs_every_mode_on_a_tiny_model(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--sizes", "tiny", "--steps", "2", "--ppo_updates", "1",
           "--max_length", "64", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["qlora_4bit", "lora_bf16", "ppo_lora"]
    assert all("error" not in r for r in rows), rows
    assert all(r["tokens_per_s"] > 0 for r in rows[:2]) and rows[2]["seconds_per_update"] > 0
