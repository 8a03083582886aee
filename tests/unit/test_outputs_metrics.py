"""A resumed run reports the whole run's figures (`alignkit.training.RunTotals`): `train_loss` is the mean over every
step, not over the steps after the resume, whichever checkpoint it resumed from, including its last one (where the HF
Trainer alone would take a step past max_steps). In-process; tests/resume/test_kill_resume.py kills real processes."""

import json

import pytest
from conftest import FAST, run_stage


def sft_args(base, data, out, *extra):
    return ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out), *FAST,
            "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "4", "--eval_split_size", "0",
            "--use_peft", "true", "--learning_rate", "5e-3", "--max_length", "64", *extra]


def results(out):
    return json.loads((out / "all_results.json").read_text())


def state(out):
    return json.loads((out / "trainer_state.json").read_text())


@pytest.mark.parametrize("restore_callback_states", ["false", "true"])
def test_a_resumed_run_reports_the_whole_runs_train_loss(restore_callback_states, tiny_base, sft_messages_file, tmp_path):
    out = tmp_path / "run"
    args = sft_args(tiny_base, sft_messages_file, out, "--restore_callback_states_from_checkpoint", restore_callback_states)
    run_stage("sft", *args)
    whole = results(out)
    steps = [h["loss"] for h in state(out)["log_history"] if "loss" in h]
    assert len(steps) == 4 and whole["train_loss"] == pytest.approx(sum(steps) / 4, rel=1e-12)

    run_stage("sft", *args, "--resume_from_checkpoint", str(out / "checkpoint-2"))  # steps 3 and 4 again
    assert results(out)["train_loss"] == whole["train_loss"]  # not the mean of steps 3 and 4
    assert results(out)["epoch"] == whole["epoch"]
    assert state(out)["log_history"][-1]["train_loss"] == whole["train_loss"]
    assert json.loads((out / "alignkit_run.json").read_text())["metrics"]["train_loss"] == whole["train_loss"]

    run_stage("sft", *args, "--resume_from_checkpoint", "true")  # from checkpoint-4, the last step: nothing to train
    assert results(out)["train_loss"] == whole["train_loss"] and results(out).keys() == whole.keys()
    assert state(out)["global_step"] == 4 and not (out / "checkpoint-5").exists()


def test_a_checkpoint_written_before_the_totals_were_kept_resumes_from_its_logged_losses(
    tiny_base, sft_messages_file, tmp_path
):
    out = tmp_path / "run"
    args = sft_args(tiny_base, sft_messages_file, out)
    run_stage("sft", *args)
    whole = results(out)
    checkpoint_state = out / "checkpoint-2" / "trainer_state.json"
    older = json.loads(checkpoint_state.read_text())
    del older["stateful_callbacks"]["RunTotals"]
    checkpoint_state.write_text(json.dumps(older))

    run_stage("sft", *args, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert results(out)["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-9)
    assert "RunTotals" in json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["stateful_callbacks"]
