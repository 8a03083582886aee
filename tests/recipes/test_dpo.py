"""The DPO recipe: it starts at ln 2, holds one copy of the base with LoRA, and continues SFT adapters."""

import json
import math

import pytest
from conftest import FAST, run_stage, stored_bytes

from alignkit import models
from alignkit.errors import ModelError


def dpo_args(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out), *FAST,
            "--max_length", "64", "--eval_split_size", "0", *extra]


def test_lora_dpo_starts_at_ln2_and_keeps_one_copy_of_the_base(tiny_base, preference_file, tmp_path):
    trainer = run_stage("dpo", *dpo_args(tiny_base, preference_file, tmp_path / "run", "--use_peft", "true",
                                         "--lora_target_modules", "all-linear", "--max_steps", "3"))
    first = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert first == pytest.approx(math.log(2), abs=1e-4)  # zero-initialised adapter: policy == reference
    assert trainer.ref_model is None  # the reference is the policy with its adapter disabled
    base = sum(t.numel() * t.element_size() for t in models.load_model(
        __import__("trl").ModelConfig(model_name_or_path=str(tiny_base))).state_dict().values())
    adapter = sum(p.numel() * p.element_size() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert stored_bytes(trainer.model) <= base + adapter  # no second copy anywhere in the model


def test_dpo_from_an_sft_adapter_continues_it_on_the_original_base(tiny_base, sft_messages_file, preference_file, tmp_path):
    sft = tmp_path / "sft"
    run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
              "--output_dir", str(sft), *FAST, "--use_peft", "true", "--max_steps", "2", "--learning_rate", "1e-2")
    trainer = run_stage("dpo", *dpo_args(sft, preference_file, tmp_path / "dpo", "--use_peft", "true", "--max_steps", "2"))
    first = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert first == pytest.approx(math.log(2), abs=1e-4)  # the reference is the SFT adapter itself
    assert models.adapter_base(tmp_path / "dpo") == str(tiny_base)
    lineage = json.loads((tmp_path / "dpo" / "alignkit_run.json").read_text())["lineage"]
    assert lineage["base_model"] == str(tiny_base) and lineage["parent_stage"] == "sft"


def test_an_adapter_whose_base_has_moved_fails_with_a_message_that_says_how_to_fix_it(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/base"}))
    with pytest.raises(ModelError, match="no longer there; point base_model_name_or_path"):
        models.adapter_base(tmp_path)
