"""Broken inputs, built once: models (a moved adapter base, remote code, another tokenizer) and data files."""

import json
import shutil
from pathlib import Path

import pytest
import torch

CHAT = {"messages": [{"role": "user", "content": "What does the owl eat?"}, {"role": "assistant", "content": "Mice."}]}
PAIR = {"prompt": "What does the owl eat?", "chosen": " Mice.", "rejected": " Rocks."}


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def good_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good_data")
    return {
        "sft": write_jsonl(root / "sft.jsonl", [CHAT] * 8),
        "preference": write_jsonl(root / "pref.jsonl", [PAIR] * 8),
    }


def _adapter(base: Path, out: Path, task_type: str = "CAUSAL_LM") -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type=task_type)).save_pretrained(out)
    return out


def _reward_model(base: Path, out: Path) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(base).pad_token_id or 0
    model.save_pretrained(out)
    if out != base:
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bad_models(tmp_path_factory, tiny_base, world) -> dict[str, Path]:
    """Model folders that a run must refuse, each for one reason."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignkit.demo.base import make_base

    root = tmp_path_factory.mktemp("bad_models")
    models = {"base": tiny_base}

    # An adapter whose base folder was deleted after training (adapter_config.json still points at it).
    moved = shutil.copytree(tiny_base, root / "moved_base")
    models["orphan_adapter"] = _adapter(moved, root / "orphan_adapter")
    shutil.rmtree(moved)

    # An adapter folder whose run died before it wrote the weights.
    models["adapter_without_weights"] = root / "adapter_without_weights"
    models["adapter_without_weights"].mkdir()
    adapter = json.loads((models["orphan_adapter"] / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = str(tiny_base)  # a base that is there: only the weights are missing
    (models["adapter_without_weights"] / "adapter_config.json").write_text(json.dumps(adapter))

    # A model whose architecture exists only as code in its folder (config.json's auto_map), as custom Hub models do.
    remote = shutil.copytree(tiny_base, root / "remote_code")
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="custom_llama", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "configuration_custom.py").write_text(
        "from transformers import LlamaConfig\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
    )
    models["remote_code"] = remote

    # A reward model (a one-label classifier) on the base, as the reward stage writes one.
    models["reward"] = _reward_model(tiny_base, root / "reward")

    # A reward model with another tokenizer (same architecture, smaller vocabulary).
    other = make_base(world, root / "other_tokenizer", vocab_size=512)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(other)).save_pretrained(other)
    models["other_tokenizer"] = _reward_model(Path(other), Path(other))

    # Weights cut short by a copy that stopped, and weights whose header is garbage.
    cut = shutil.copytree(tiny_base, root / "truncated_weights")
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    models["truncated_weights"] = cut
    damaged = shutil.copytree(tiny_base, root / "damaged_weights")
    (damaged / "model.safetensors").write_bytes(b"\xff" * 64)
    models["damaged_weights"] = damaged

    # A stage output whose run was killed: its saved config and a checkpoint, weights, but no alignkit_run.json.
    unfinished = shutil.copytree(tiny_base, root / "unfinished_sft")
    (unfinished / "alignkit_config.yaml").write_text("learning_rate: 0.001\n")
    (unfinished / "checkpoint-1").mkdir()
    (unfinished / "checkpoint-1" / "trainer_state.json").write_text("{}")
    models["unfinished_sft"] = unfinished

    models["empty_folder"] = root / "empty_folder"
    models["empty_folder"].mkdir()
    return models


@pytest.fixture(scope="session")
def earlier_run(tmp_path_factory) -> Path:
    """An output_dir holding a finished run, as a stage leaves it."""
    run = tmp_path_factory.mktemp("earlier_run")
    (run / "alignkit_run.json").write_text(json.dumps({"stage": "sft", "metrics": {"train_loss": 1.0}}))
    (run / "alignkit_config.yaml").write_text("learning_rate: 0.001\n")
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    return run
