"""The pretraining recipe: from scratch and continued, on raw text."""

import json

import torch
from conftest import FAST, run_stage


def pretrain_args(base, data, out, *extra):
    return ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out), *FAST, *extra]


def test_pretraining_from_scratch_lowers_held_out_perplexity(tiny_base, pretrain_dir, tmp_path):
    trainer = run_stage("pretrain", *pretrain_args(tiny_base, pretrain_dir, tmp_path / "run", "--from_scratch", "true",
                                                    "--max_steps", "40", "--learning_rate", "3e-3",
                                                    "--eval_on_start", "true", "--max_length", "64"))
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2  # before training (eval_on_start) and at the end
    assert evals[-1] < evals[0] - 2.0  # perplexity falls by a factor of e^2 or more
    metrics = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert metrics["eval_loss"] == evals[-1]


def test_from_scratch_ignores_the_saved_weights_and_is_reproducible(tiny_base, pretrain_dir, tmp_path):
    from safetensors.torch import load_file

    from alignkit import models
    from alignkit.config import STAGE_ARGS, parse_args

    _, _, model_args = parse_args(STAGE_ARGS["pretrain"], ["--model_name_or_path", str(tiny_base)])
    first = models.load_model(model_args, from_scratch=True, seed=1)
    second = models.load_model(model_args, from_scratch=True, seed=1)
    saved = load_file(tiny_base / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first.state_dict()[name], second.state_dict()[name])
    assert not torch.equal(first.state_dict()[name], saved[name])


def test_continued_pretraining_packs_text_and_trains_only_the_adapter(tiny_base, pretrain_dir, tmp_path):
    trainer = run_stage("pretrain", *pretrain_args(tiny_base, pretrain_dir, tmp_path / "run", "--use_peft", "true",
                                                    "--max_steps", "3", "--max_length", "64"))
    assert trainer.args.packing and trainer.args.packing_strategy == "bfd_split"
    lengths = [len(x["input_ids"]) for x in trainer.train_dataset]
    assert len(lengths) < 400 / 1.5 and max(lengths) <= 64  # 400 short documents share 64-token blocks
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
