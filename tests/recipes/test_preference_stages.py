"""The KTO, ORPO and CPO/SimPO recipes (TRL's trainers, the last two experimental in TRL) learn the preferences of a
tiny data set: the loss goes down and the chosen answers' reward margin over the rejected ones goes up."""

import json

import pytest
from conftest import FAST, run_stage

from alignkit import models


def first_and_last(trainer, key: str) -> tuple[float, float]:
    logged = [h[key] for h in trainer.state.log_history if key in h]
    assert len(logged) >= 10, f"{key} was logged {len(logged)} times"
    head, tail = logged[:3], logged[-3:]  # a few steps each side: single steps are noisy
    return sum(head) / len(head), sum(tail) / len(tail)


@pytest.mark.parametrize("stage, extra", [
    ("kto", ["--max_steps", "48"]),  # one row at a time, twice the rows of the pairs: twice the steps
    ("orpo", []),
    ("cpo", []),  # CPO's sigmoid loss
    ("cpo", ["--loss_type", "simpo", "--cpo_alpha", "0", "--beta", "2.0"]),  # pure SimPO
], ids=["kto", "orpo", "cpo", "simpo"])
def test_the_loss_falls_and_the_reward_margin_rises(stage, extra, tiny_base, preference_file, tmp_path):
    out = tmp_path / stage
    trainer = run_stage(stage, "--model_name_or_path", str(tiny_base), "--dataset_name", str(preference_file),
                        "--output_dir", str(out), "--eval_split_size", "0", *FAST, "--use_peft", "true",
                        "--lora_target_modules", "all-linear", "--max_steps", "24", "--learning_rate", "5e-3",
                        "--max_length", "64", *extra)
    loss_start, loss_end = first_and_last(trainer, "loss")
    margin_start, margin_end = first_and_last(trainer, "rewards/margins")
    assert loss_end < loss_start - 0.05, (loss_start, loss_end)
    assert margin_end > max(margin_start, 0) + 0.02, (margin_start, margin_end)  # ORPO's rewards are beta x log-probs: small
    record = json.loads((out / "alignkit_run.json").read_text())
    assert record["stage"] == stage and models.adapter_base(out) == str(tiny_base)
    if stage == "kto":  # each pair became a desirable and an undesirable row, mixed
        pairs, labels = len(preference_file.read_text().splitlines()), list(trainer.train_dataset["label"])
        assert len(labels) == 2 * pairs and sum(labels) == pairs and labels[:8] != sorted(labels[:8], reverse=True)
