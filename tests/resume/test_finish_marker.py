"""
A real `alignkit sft` process killed (SIGKILL) at the last moment before it marks its run finished, i.e. as the
atomic rename of `alignkit_run.json` is about to happen: the folder is not marked finished, yet everything else the
output promises (the model card made from the record included) is already there; the run is reported unfinished and
a resume finishes it with the same figures.

The process is held at that exact point by `paused_run.py` (the same `alignkit.cli.main`, with `os.replace` patched
by the test helper to wait when its target is the marker), rather than by racing a kill against a few milliseconds.
"""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from test_output_lock import alignkit, config, start_paused, wait_until_paused  # noqa: F401  (config: a fixture)

from alignkit import outputs
from alignkit.errors import OutputDirError


def test_a_run_killed_just_before_its_marker_is_unfinished_with_its_card_written(config, tmp_path):  # noqa: F811
    out, signals, log = tmp_path / "out", tmp_path / "signals", tmp_path / "killed.txt"
    killed = start_paused("marker", signals, ["--config", str(config)], log)
    try:
        wait_until_paused(killed, signals, log)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL

    assert not (out / outputs.RUN_FILE_NAME).exists() and outputs.read_run(out) is None
    results = json.loads((out / "all_results.json").read_text())
    card = (out / "README.md").read_text()
    assert "## Lineage" in card and f"| train_loss | {results['train_loss']:.4g} |" in card  # alignkit's card
    assert (out / outputs.CONFIG_FILE_NAME).is_file() and (out / "adapter_model.safetensors").is_file()
    with pytest.raises(OutputDirError, match="already holds an unfinished run"):
        outputs.prepare_output_dir(str(out), lock=False)

    # Its last checkpoint is its last step: the resume trains no step more (the HF Trainer alone would take one past
    # max_steps) and reports the run's own figures.
    weights = load_file(out / "adapter_model.safetensors")
    resumed, _ = alignkit("sft", "--config", str(config), "--resume_from_checkpoint", "true", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    again = load_file(out / "adapter_model.safetensors")
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    record = json.loads((out / outputs.RUN_FILE_NAME).read_text())
    after = json.loads((out / "all_results.json").read_text())
    assert record["metrics"] == after
    for key in ("train_loss", "epoch"):
        assert after[key] == results[key], key
    assert after.keys() == results.keys()
    assert (out / "README.md").read_text() == card
