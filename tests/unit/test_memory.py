"""The memory estimate: exact parameter counts from the config alone, the parts that scale, and the line users read."""

import shutil
import sys

import pytest
from conftest import REPO, stored_bytes

from alignkit import memory
from alignkit.config import STAGE_ARGS, parse_args


def configs(stage, base, *extra):
    _, training_args, model_args = parse_args(STAGE_ARGS[stage], [
        "--model_name_or_path", str(base), "--dataset_name", "unused", "--output_dir", "unused", "--max_length", "64",
        "--per_device_train_batch_size", "2", *extra])
    return model_args, training_args


def test_full_training_counts_the_loaded_weights_exactly_with_gradients_and_two_adamw_states(tiny_base):
    from transformers import AutoModelForCausalLM

    model_args, training_args = configs("sft", tiny_base)
    est = memory.estimate("sft", model_args, training_args)
    weights = stored_bytes(AutoModelForCausalLM.from_pretrained(tiny_base))
    assert est.weights == weights and est.adapters == 0
    assert est.gradients == weights and est.optimizer == 2 * weights  # fp32: AdamW's two states per parameter


def test_lora_counts_exactly_the_adapter_that_peft_builds(tiny_base):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import get_peft_config

    model_args, training_args = configs("sft", tiny_base, "--use_peft", "true", "--lora_r", "8",
                                        "--lora_target_modules", "all-linear")
    est = memory.estimate("sft", model_args, training_args)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), get_peft_config(model_args))
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = stored_bytes(model) - trainable
    assert est.adapters == trainable and est.weights == frozen
    assert est.gradients == trainable and est.optimizer == 2 * trainable


def test_a_4bit_base_is_counted_near_what_bitsandbytes_loads(tiny_base):
    from alignkit import models

    model_args, training_args = configs("sft", tiny_base, "--load_in_4bit", "true", "--use_peft", "true")
    est = memory.estimate("sft", model_args, training_args)
    model = models.load_model(model_args)
    loaded = stored_bytes(model) + sum(  # packed weights plus their per-block scales
        m.weight.quant_state.absmax.numel() * m.weight.quant_state.absmax.element_size()
        for m in model.modules() if getattr(getattr(m, "weight", None), "quant_state", None) is not None)
    assert est.weights == pytest.approx(loaded, rel=0.05)
    assert est.weights < memory.estimate("sft", *configs("sft", tiny_base, "--use_peft", "true")).weights


def test_activations_grow_with_batch_and_shrink_with_checkpointing(tiny_base):
    def activations(*extra):
        return memory.estimate("sft", *configs("sft", tiny_base, "--max_length", "8192", *extra)).activations

    small, large = activations(), activations("--per_device_train_batch_size", "4")
    assert small < large < 2 * small  # the layers' activations double; the fused LM head's buffer is capped
    assert activations("--activation_checkpointing", "true") < activations("--activation_checkpointing", "false")


def test_ppo_holds_one_base_with_lora_and_four_models_in_full_mode(tiny_base, tmp_path):
    args = ["--model_name_or_path", str(tiny_base), "--dataset_name", "unused", "--output_dir", "unused",
            "--reward_model_path", str(tiny_base)]
    _, lora_training, lora_model = parse_args(STAGE_ARGS["ppo"], [*args, "--use_peft", "true"])
    _, full_training, full_model = parse_args(STAGE_ARGS["ppo"], args)
    lora = memory.estimate("ppo", lora_model, lora_training)
    full = memory.estimate("ppo", full_model, full_training)
    single = memory.estimate("sft", *configs("sft", tiny_base))
    assert lora.weights == single.weights and full.weights == 4 * single.weights
    assert full.optimizer == 2 * single.optimizer  # policy and value train; reference and reward are frozen
    # A reward model on another base is loaded beside the policy's.
    shutil.copy(tiny_base / "config.json", tmp_path / "config.json")
    _, other_training, other_model = parse_args(STAGE_ARGS["ppo"], [
        *args[:-1], str(tmp_path), "--use_peft", "true"])
    assert memory.estimate("ppo", other_model, other_training).weights > 1.9 * single.weights


def test_a_published_config_is_estimated_without_any_weights(tiny_base):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check import CONFIGS
    from transformers import Qwen2Config

    config = Qwen2Config(**CONFIGS["0.5b"])  # Qwen2.5-0.5B: 494M parameters, bf16
    model_args, training_args = configs("sft", tiny_base, "--dtype", "bfloat16")
    est = memory.estimate("sft", model_args, training_args, model_config=config)
    assert est.weights == pytest.approx(494e6 * 2, rel=0.01)


def test_the_summary_names_the_parts_and_warns_when_the_device_is_too_small():
    est = memory.MemoryEstimate(weights=8 * 2**30, adapters=2**28, gradients=2**28, optimizer=2**29,
                                activations=4 * 2**30, device_bytes=24 * 2**30, device_name="GPU")
    line = est.summary()
    assert line.startswith("memory estimate: ~12.8 GiB per process (weights 8.0, adapters 0.2")
    assert "GPU has 24.0 GiB" in line and "out of memory" not in line
    est.device_bytes = 12 * 2**30
    assert "likely out of memory" in est.summary()


def test_the_estimate_is_within_25_percent_of_a_measured_full_fine_tune(tmp_path):
    """Weight-dominated: ~25M parameters trained in full (the benchmark's `30m pretrain_full`), measured peak."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import memory_estimate

    rows = memory_estimate.main(["--sizes", "30m", "--stages", "pretrain_full", "--steps", "1", "--batch", "2",
                                 "--max_length", "128", "--out", str(tmp_path / "rows.json")])
    assert 0.75 <= rows[0]["ratio"] <= 1.25, rows


def test_the_estimate_works_inside_a_zero3_launch(tiny_base, monkeypatch):
    # Under ZeRO-3 transformers partitions every model it builds (deepspeed.zero.Init), which a meta-device model
    # cannot be: the GPU check's ZeRO-3 launch failed in the estimate with "Cannot copy out of meta tensor".
    from transformers.integrations import deepspeed

    class Zero3Config:  # what an HfDeepSpeedConfig for stage 3 answers
        def is_zero3(self):
            return True

    zero3 = Zero3Config()
    monkeypatch.setattr(deepspeed, "_hf_deepspeed_config_weak_ref", lambda: zero3)
    assert deepspeed.is_deepspeed_zero3_enabled()
    model_args, training_args = configs("sft", tiny_base)
    assert memory.estimate("sft", model_args, training_args).weights > 0
    assert deepspeed.is_deepspeed_zero3_enabled()  # the launch's setting is restored
