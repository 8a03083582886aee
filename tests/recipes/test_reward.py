"""The reward recipe: it learns a separable preference, keeps its score head, and hands off cleanly."""

import json
import math

import pytest
import torch
from conftest import FAST, run_stage, write_jsonl
from trl import ModelConfig

from alignkit import models
from alignkit.errors import DataError


@pytest.fixture(scope="module")
def polite_vs_rude(tmp_path_factory, world):
    """Pairs whose chosen answer is polite and rejected one rude: separable from the first words."""
    rows = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples() if ex["flaw"] == "rude"]
    path = tmp_path_factory.mktemp("prefs")
    write_jsonl(path / "train.jsonl", rows[:96])
    write_jsonl(path / "test.jsonl", rows[96:128])
    return path


def reward_args(base, data, out, *extra):
    return ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out), *FAST,
            "--max_length", "64", *extra]


@pytest.fixture(scope="module")
def lora_rm(tiny_base, polite_vs_rude, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "run"
    trainer = run_stage("reward", *reward_args(tiny_base, polite_vs_rude, out, "--use_peft", "true",
                                               "--lora_target_modules", "all-linear", "--max_steps", "24",
                                               "--learning_rate", "5e-3"))
    return trainer, out


def test_a_lora_reward_model_ranks_held_out_pairs_of_a_separable_set(lora_rm):
    _, out = lora_rm
    stats = json.loads((out / "alignkit_run.json").read_text())["reward_stats"]
    assert stats["pairs"] == 32 and stats["accuracy"] >= 0.95 and stats["margin"] > 0
    assert math.isfinite(stats["mean"]) and stats["std"] > 0  # recorded for normalising rewards in RL


def test_the_lora_reward_model_reloads_by_path_with_its_score_head(lora_rm, tiny_base):
    trainer, out = lora_rm
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and "score" in (saved["modules_to_save"] or [])
    reloaded = models.load_model(ModelConfig(model_name_or_path=str(out)), reward=True).eval()
    batch = {"input_ids": torch.tensor([[5, 6, 7, 2], [8, 9, 10, 2]])}
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)  # merged LoRA: float rounding only
        head = reloaded.score.weight
        assert not torch.allclose(head, models.load_model(ModelConfig(model_name_or_path=str(tiny_base)), reward=True).score.weight)


def test_the_output_records_its_lineage(lora_rm, tiny_base, polite_vs_rude):
    _, out = lora_rm
    lineage = json.loads((out / "alignkit_run.json").read_text())["lineage"]
    assert lineage == {"base_model": str(tiny_base), "parent": None, "parent_stage": None, "dataset": str(polite_vs_rude)}


def test_pairs_that_are_all_longer_than_max_length_are_an_error_not_a_silent_empty_run(tiny_base, polite_vs_rude, tmp_path):
    with pytest.raises(DataError, match="All 96 training pairs are longer than max_length=8"):
        run_stage("reward", *reward_args(tiny_base, polite_vs_rude, tmp_path / "run", "--max_length", "8", "--max_steps", "1"))
    assert not (tmp_path / "run" / "alignkit_run.json").exists()


def test_a_reward_model_can_start_from_an_sft_adapter_and_stays_one_adapter_on_the_base(
    tiny_base, sft_messages_file, polite_vs_rude, tmp_path
):
    sft = tmp_path / "sft"
    run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
              "--output_dir", str(sft), *FAST, "--use_peft", "true", "--max_steps", "2")
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    start = models.load_model(ModelConfig(model_name_or_path=str(sft), use_peft=True), reward=True)
    sft_weights = load_file(sft / "adapter_model.safetensors")
    start_weights = get_peft_model_state_dict(start)
    assert all(torch.equal(start_weights[k], v) for k, v in sft_weights.items())  # the SFT adapter, not a new one
    assert "base_model.model.score.weight" in start_weights  # plus a trainable score head
    out = tmp_path / "rm"
    run_stage("reward", *reward_args(sft, polite_vs_rude, out, "--use_peft", "true", "--max_steps", "2"))
    assert models.adapter_base(out) == str(tiny_base)
    record = json.loads((out / "alignkit_run.json").read_text())
    assert record["lineage"]["parent_stage"] == "sft" and record["lineage"]["base_model"] == str(tiny_base)
    assert models.load_model(ModelConfig(model_name_or_path=str(out)), reward=True).score.weight.shape[0] == 1


def test_long_prompts_are_cut_from_the_left_so_pairs_are_kept_not_dropped(tiny_base, tmp_path):
    from alignkit.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))
    history = " ".join(["The fox is red."] * 40)
    rows = [{"prompt": history + f" Question {i}: what color is the fox?", "chosen": " Red.", "rejected": " Blue, you fool."}
            for i in range(8)]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    from datasets import load_dataset

    from alignkit import data

    cut = data.truncate_prompts(load_dataset("json", data_files=str(path))["train"], tokenizer, 48)
    for row in cut:
        assert row["prompt"].endswith("what color is the fox?")  # the latest words survive
        assert len(tokenizer(row["prompt"] + row["rejected"])["input_ids"]) + 1 <= 48
    kept = run_stage("reward", *reward_args(tiny_base, path, tmp_path / "a", "--max_length", "48", "--max_steps", "1",
                                            "--eval_split_size", "0"))
    assert len(kept.train_dataset) == 8
    with pytest.raises(DataError, match="All 8 training pairs are longer than max_length=48"):
        run_stage("reward", *reward_args(tiny_base, path, tmp_path / "b", "--max_length", "48", "--max_steps", "1",
                                         "--eval_split_size", "0", "--prompt_truncation", "none"))
