"""What protects a user's work in output_dir: complete checkpoints only, the earlier run kept, NaN stops training."""

import json
import math

import pytest
import torch
import trl
from conftest import FAST, run_stage
from safetensors.torch import load_file

from alignkit import outputs
from alignkit.errors import OutputDirError
from alignkit.training import TrainingStoppedError


def checkpoint(root, step, state="complete"):
    """A checkpoint folder as the Trainer leaves it: complete, or killed before/while writing trainer_state.json."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    text = json.dumps({"global_step": step, "log_history": []})
    if state == "complete":
        (path / "trainer_state.json").write_text(text)
    elif state == "cut":
        (path / "trainer_state.json").write_text(text[: len(text) // 2])
    return path


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_true_picks_the_latest_complete_checkpoint_and_removes_half_written_ones(tmp_path):
    checkpoint(tmp_path, 2)
    latest = checkpoint(tmp_path, 10)  # numbered, not sorted as text: 10 comes after 2 and 9
    checkpoint(tmp_path, 9)
    cut, missing = checkpoint(tmp_path, 12, "cut"), checkpoint(tmp_path, 14, "missing")
    assert outputs.complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-2", tmp_path / "checkpoint-9", latest]
    assert outputs.resume_checkpoint("true", tmp_path) == str(latest)
    assert not cut.exists() and not missing.exists()
    assert outputs.resume_checkpoint(str(tmp_path / "checkpoint-2"), tmp_path) == str(tmp_path / "checkpoint-2")
    assert outputs.resume_checkpoint(None, tmp_path) is None


def test_resuming_a_folder_with_only_half_written_checkpoints_is_refused(tmp_path):
    checkpoint(tmp_path, 2, "cut")
    with pytest.raises(OutputDirError, match="no complete checkpoint"):
        outputs.prepare_output_dir(str(tmp_path), resume="true")
    with pytest.raises(OutputDirError, match="holds no checkpoint"):
        outputs.prepare_output_dir(str(tmp_path / "new"), resume="true")


def test_an_earlier_run_survives_a_killed_overwrite_and_is_put_back_when_the_next_attempt_fails(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, 4)
    (out / "alignkit_run.json").write_text('{"stage": "sft"}')
    before = snapshot(out)
    outputs.set_aside(out)  # an overwriting run starts ...
    checkpoint(out, 2, "cut")  # ... and is killed (SIGKILL: nothing of ours runs) while saving
    with pytest.raises(OutputDirError, match=r"unfinished run \(the run it replaced is kept in .*run.previous\)"):
        outputs.prepare_output_dir(str(out))
    outputs.set_aside(out)  # the next overwriting run drops the killed attempt, keeps the finished run aside
    assert snapshot(outputs.previous_dir(out)) == before and not out.exists()
    checkpoint(out, 2)
    error = TrainingStoppedError("Training stopped at step 3.")
    outputs.restore_previous(out, error)  # ... and fails after saving a checkpoint
    assert snapshot(out) == before and not outputs.previous_dir(out).exists()
    assert (outputs.failed_dir(out) / "checkpoint-2" / "trainer_state.json").is_file()
    assert "left as it was; this run's checkpoints were moved to" in str(error)


def test_a_finished_overwrite_drops_the_earlier_run(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, 4)
    outputs.set_aside(out)
    checkpoint(out, 8)
    outputs.drop_previous(out)
    assert not outputs.previous_dir(out).exists() and (out / "checkpoint-8").is_dir()


def test_json_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "alignkit_run.json"
    outputs.write_json_atomic(path, {"stage": "sft"})
    with pytest.raises(TypeError):
        outputs.write_json_atomic(path, {"stage": object()})
    assert json.loads(path.read_text()) == {"stage": "sft"}
    assert [p.name for p in tmp_path.iterdir()] == ["alignkit_run.json"]


# --- NaN / inf on real runs ------------------------------------------------------------------------------------------

TRAINERS = {"sft": trl.SFTTrainer, "reward": trl.RewardTrainer, "dpo": trl.DPOTrainer}


def poison_loss(monkeypatch, stage, from_step):
    """Make the training loss NaN from optimiser step `from_step` (1-based) on, as a diverging run would."""
    cls = TRAINERS[stage]
    original = cls.compute_loss

    def compute_loss(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.model.training and self.state.global_step + 1 >= from_step:
            return (out[0] * math.nan, *out[1:]) if isinstance(out, tuple) else out * math.nan
        return out

    monkeypatch.setattr(cls, "compute_loss", compute_loss)


@pytest.fixture(scope="module")
def data(sft_messages_file, preference_file):
    return {"sft": sft_messages_file, "reward": preference_file, "dpo": preference_file}


def stage_args(stage, base, data, out, *extra):
    return ["--model_name_or_path", str(base), "--dataset_name", str(data[stage]), "--output_dir", str(out), *FAST,
            "--save_strategy", "steps", "--save_steps", "2", "--eval_split_size", "0", "--use_peft", "true",
            "--learning_rate", "5e-3", "--max_length", "64", *extra]


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_a_nan_loss_stops_training_at_its_step_and_keeps_the_last_good_checkpoint(
    stage, monkeypatch, tiny_base, data, tmp_path
):
    poison_loss(monkeypatch, stage, from_step=5)
    out = tmp_path / "run"
    expected = rf"at step 5: the loss is nan; the last good checkpoint is {out}/checkpoint-4"
    with pytest.raises(TrainingStoppedError, match=expected):
        run_stage(stage, *stage_args(stage, tiny_base, data, out, "--max_steps", "8"))
    assert [p.name for p in outputs.complete_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "alignkit_run.json").exists()
    weights = load_file(out / "checkpoint-4" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_nan_between_logs_is_caught_before_the_next_checkpoint_is_written(monkeypatch, tiny_base, data, tmp_path):
    poison_loss(monkeypatch, "sft", from_step=3)
    out = tmp_path / "run"
    # Logged every 10 steps only: the NaN of step 3 surfaces at step 4, which saves, and stops it saving.
    expected = r"at step 4: the loss is nan; the last good checkpoint is .*checkpoint-2;"
    with pytest.raises(TrainingStoppedError, match=expected):
        run_stage("sft", *stage_args("sft", tiny_base, data, out, "--max_steps", "8", "--logging_steps", "10"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_failed_overwrite_leaves_the_earlier_run_byte_identical(monkeypatch, tiny_base, data, tmp_path):
    out = tmp_path / "run"
    run_stage("sft", *stage_args("sft", tiny_base, data, out, "--max_steps", "2"))
    before = snapshot(out)
    assert (out / "alignkit_run.json").is_file() and (out / "adapter_model.safetensors").is_file()
    with monkeypatch.context() as patch:
        poison_loss(patch, "sft", from_step=3)
        with pytest.raises(TrainingStoppedError, match="The earlier run in .* was left as it was"):
            run_stage("sft", *stage_args("sft", tiny_base, data, out, "--max_steps", "6",
                                         "--overwrite_output_dir", "true"))
    assert snapshot(out) == before
    assert not outputs.previous_dir(out).exists()
    # The failed run's good part is kept beside it.
    assert (outputs.failed_dir(out) / "checkpoint-2" / "adapter_model.safetensors").is_file()
    # A run that finishes replaces the earlier one and leaves nothing beside it.
    run_stage("sft", *stage_args("sft", tiny_base, data, out, "--max_steps", "4",
                                 "--overwrite_output_dir", "true"))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert not outputs.previous_dir(out).exists()


def test_a_diverging_run_stops_with_a_one_line_cli_error_before_saving_its_nan_step(tiny_base, data, tmp_path, capsys):
    import re

    from alignkit.cli import run_recipe

    out = tmp_path / "run"
    # Full fine-tuning with a learning rate of 1e8: the weights blow up for real.
    args = stage_args("sft", tiny_base, data, out, "--max_steps", "8", "--save_steps", "1", "--learning_rate", "1e8",
                      "--use_peft", "false")
    with pytest.raises(SystemExit) as exit:
        run_recipe("sft", args)
    err = capsys.readouterr().err
    error = err[err.index("alignkit: error:") :].strip()
    assert exit.value.code == 2 and len(error.splitlines()) == 1 and "Traceback" not in err
    found = re.search(r"Training stopped at step (\d+): the (loss|grad_norm) is (nan|inf).*checkpoint is (\S+);", error)
    assert found, error
    step, last_good = int(found[1]), found[4]
    assert last_good == str(out / f"checkpoint-{step - 1}") == str(outputs.complete_checkpoints(out)[-1])
    assert not list(out.glob(f"checkpoint-{step}*")) and not (out / "alignkit_run.json").exists()
