"""
The DeepSpeed presets under `accelerate launch` on CPU, where DeepSpeed's CPU accelerator runs ZeRO over gloo.

Accelerate counts one process for DeepSpeed on a machine without GPUs, so these launches run one; ZeRO-3 still
keeps every weight as a slice outside the forward pass that gathers it — what loading, saving, generating and
resuming must handle. The PPO launches use a ZeRO-3 config that slices even the smallest weights (DeepSpeed
otherwise keeps weights under `stage3_param_persistence_threshold` whole, which would hide a save that forgot to
gather). Several processes per preset are checked on a GPU by benchmarks/gpu_check.py.
"""

import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [
    pytest.mark.launch,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (the dev extra)"),
]

DEEPSPEED_CPU = {"ACCELERATE_USE_CPU": "false", "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
PPO = [
    "--eval_split_size", "0", "--use_peft", "true", "--num_updates", "3", "--per_device_train_batch_size", "4",
    "--num_mini_batches", "2", "--num_ppo_epochs", "2", "--max_new_tokens", "8", "--learning_rate", "1e-3",
    "--seed", "0", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
    "--save_strategy", "steps", "--save_steps", "2",
    # Clipping on (DeepSpeed clips inside its step and reports one norm) but never reached, so the runs under
    # DeepSpeed and without it train alike and can be compared weight for weight.
    "--max_grad_norm", "1000",
]  # fmt: skip


@pytest.fixture(scope="module")
def stages(tiny_base, sft_messages_file, world, tmp_path_factory):
    """SFT and reward LoRA adapters, trained in-process; and a ZeRO-3 config that slices every weight."""
    from launch.conftest import sft_and_reward_adapters

    root = tmp_path_factory.mktemp("deepspeed")
    prefs_file = sft_and_reward_adapters(root, tiny_base, sft_messages_file, world)
    zero3 = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        **{k: "auto" for k in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                               "gradient_clipping")},  # fmt: skip
    }
    (root / "zero3.json").write_text(json.dumps(zero3))
    (root / "zero3.yaml").write_text(
        f"distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: {root / 'zero3.json'}\n"
        "  zero3_init_flag: true\nnum_machines: 1\nuse_cpu: false\n"
    )
    return root, prefs_file


def launch(config_file, recipe: str, args: list, check: bool = True):
    from conftest import REPO

    from launch.conftest import accelerate_launch

    return accelerate_launch(str(REPO / "recipes" / f"{recipe}.py"), [*map(str, args), "--use_cpu", "false"],
                             nproc=1, env=DEEPSPEED_CPU, config_file=config_file, check=check)  # fmt: skip


def updates(output_dir) -> list[dict]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [h for h in history if "score" in h]


def assert_same_weights(a, b, atol: float) -> None:
    for name in ("adapter_model.safetensors", "value/adapter_model.safetensors"):
        ours, theirs = load_file(a / name), load_file(b / name)
        assert ours.keys() == theirs.keys()
        for key, tensor in ours.items():
            assert tensor.shape == theirs[key].shape and tensor.numel() > 0, key  # a slice saved ungathered is empty
            torch.testing.assert_close(tensor, theirs[key], atol=atol, rtol=0, msg=f"{name}: {key}")


def test_sft_under_the_zero3_preset_saves_the_adapter_a_plain_run_saves(stages, sft_messages_file, tiny_base):
    from conftest import FAST, REPO, run_stage

    root, _ = stages
    args = ["--model_name_or_path", tiny_base, "--dataset_name", sft_messages_file, *FAST, "--use_peft", "true",
            "--lora_target_modules", "all-linear", "--learning_rate", "3e-3", "--max_steps", "3"]  # fmt: skip
    launch(REPO / "recipes/accelerate/deepspeed_zero3.yaml", "sft", [*args, "--output_dir", root / "sft-zero3"])
    run_stage("sft", *map(str, args), "--output_dir", str(root / "sft-plain"))
    ours, theirs = (load_file(root / d / "adapter_model.safetensors") for d in ("sft-zero3", "sft-plain"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=0, msg=key)


def test_lora_ppo_under_zero3_trains_saves_and_resumes_as_without_it(stages):
    from conftest import run_stage

    root, prefs = stages
    models = ["--model_name_or_path", root / "sft", "--reward_model_path", root / "reward", "--dataset_name", prefs]
    launch(root / "zero3.yaml", "ppo", [*models, *PPO, "--output_dir", root / "ppo-zero3"])
    run_stage("ppo", *map(str, [*models, *PPO, "--output_dir", root / "ppo-plain"]))
    sliced, plain = updates(root / "ppo-zero3"), updates(root / "ppo-plain")
    for name in ("score", "kl", "policy_loss", "value_loss"):
        assert [u[name] for u in sliced] == pytest.approx([u[name] for u in plain], rel=1e-3, abs=1e-5), name
    # One norm for policy and value together: DeepSpeed measured it in its own step.
    assert all(math.isfinite(u["grad_norm"]) and u["grad_norm"] > 0 and "value_grad_norm" not in u for u in sliced)
    assert_same_weights(root / "ppo-zero3", root / "ppo-plain", atol=1e-4)

    # Resuming from the update-2 checkpoint (weights and optimiser as DeepSpeed wrote them) replays update 3.
    resume = ["--resume_from_checkpoint", root / "ppo-zero3" / "checkpoint-2"]
    launch(root / "zero3.yaml", "ppo", [*models, *PPO, *resume, "--output_dir", root / "ppo-resumed"])
    assert updates(root / "ppo-resumed") == sliced
    assert_same_weights(root / "ppo-resumed", root / "ppo-zero3", atol=0)


def test_full_parameter_ppo_under_zero3_is_refused_with_what_to_use_instead(stages):
    root, prefs = stages
    args = ["--model_name_or_path", root / "sft", "--reward_model_path", root / "reward", "--dataset_name", prefs,
            *PPO, "--use_peft", "false", "--output_dir", root / "ppo-full"]  # fmt: skip
    result = launch(root / "zero3.yaml", "ppo", args, check=False)
    assert result.returncode != 0
    # One line from the recipe, before any model is loaded (the launcher then reports the exit with its own traceback).
    said = [line for line in result.stderr.splitlines() if line.startswith("alignkit: error:")]
    assert len(said) == 1 and "Full-parameter PPO does not run under DeepSpeed ZeRO-3; set use_peft: true" in said[0]
    assert "deepspeed_zero2.yaml" in said[0] and "[rank0]: Traceback" not in result.stderr
    assert not (root / "ppo-full").exists()


def test_full_parameter_ppo_under_the_zero2_preset_trains_as_without_it(stages):
    from conftest import REPO, run_stage

    root, prefs = stages
    args = ["--model_name_or_path", root / "sft", "--reward_model_path", root / "reward", "--dataset_name", prefs,
            *PPO, "--use_peft", "false", "--learning_rate", "1e-5", "--num_updates", "2", "--save_strategy", "no"]
    launch(REPO / "recipes/accelerate/deepspeed_zero2.yaml", "ppo", [*args, "--output_dir", root / "full-zero2"])
    run_stage("ppo", *map(str, [*args, "--output_dir", root / "full-plain"]))
    sharded, plain = updates(root / "full-zero2"), updates(root / "full-plain")
    for name in ("score", "kl", "policy_loss", "value_loss"):
        assert [u[name] for u in sharded] == pytest.approx([u[name] for u in plain], rel=1e-3, abs=1e-5), name
    for name in ("model.safetensors", "value/model.safetensors"):
        ours, theirs = load_file(root / "full-zero2" / name), load_file(root / "full-plain" / name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=0, msg=f"{name}: {key}")
