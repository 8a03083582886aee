"""The SFT recipe's main() on a tiny model: what moves, what is saved, what reloads, what is refused."""

import json
import math

import pytest
import torch
import yaml
from conftest import FAST, run_stage, write_jsonl
from safetensors.torch import load_file

from alignkit.config import CONFIG_FILE_NAME, STAGE_ARGS, parse_args
from alignkit.errors import OutputDirError


def sft_args(base, data, out, *extra):
    return ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out), *FAST, *extra]


@pytest.fixture(scope="module")
def lora_run(tiny_base, sft_messages_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_lora") / "run"
    args = sft_args(tiny_base, sft_messages_file, out, "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
                    "--lora_target_modules", "all-linear", "--max_steps", "8", "--learning_rate", "5e-3")
    return run_stage("sft", *args), out


def test_lora_sft_moves_the_adapter_and_leaves_the_base_bit_identical(lora_run, tiny_base):
    trainer, _ = lora_run
    base_weights = load_file(tiny_base / "model.safetensors")
    params = dict(trainer.model.named_parameters())
    lora_b = [p for n, p in params.items() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero and must have moved"
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in params.items() if "lora_" not in n}
    compared = 0
    for name, weight in base_weights.items():
        if name in frozen:
            assert torch.equal(frozen[name].detach(), weight), f"base weight {name} changed"
            compared += 1
    assert compared >= len(base_weights) - 1  # every base tensor (a tied lm_head is stored once)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)


def test_saved_adapter_reloads_by_path_to_identical_logits(lora_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    trainer, out = lora_run
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["### User:\nWhat color is the fox?\n### Assistant:\n"], return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(trainer.model(**batch).logits, reloaded(**batch).logits)


def test_a_run_writes_weights_tokenizer_template_config_and_metrics(lora_run):
    from transformers import AutoTokenizer

    _, out = lora_run
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert [p.name for p in out.glob("*.bin")] == ["training_args.bin"], "weights are written as safetensors only"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "### Assistant:" in tokenizer.chat_template  # alignkit's default template travels with the run
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert math.isfinite(metrics["train_loss"])
    config = yaml.safe_load((out / CONFIG_FILE_NAME).read_text())
    assert config["lora_r"] == 8 and config["max_steps"] == 8
    # The resolved config re-parses strictly, so the run can be repeated from it.
    _, training_args, model_args = parse_args(STAGE_ARGS["sft"], ["--config", str(out / CONFIG_FILE_NAME)])
    assert training_args.max_steps == 8 and model_args.lora_r == 8
    assert json.loads((out / "alignkit_run.json").read_text())["stage"] == "sft"


def test_an_output_dir_holding_a_run_is_refused_and_left_untouched(lora_run, tiny_base, sft_messages_file):
    _, out = lora_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(OutputDirError, match="already holds a finished run.*overwrite_output_dir"):
        run_stage("sft", *sft_args(tiny_base, sft_messages_file, out, "--max_steps", "1"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_conversations_train_on_assistant_tokens_only(tiny_base, sft_messages_file, tmp_path):
    trainer = run_stage("sft", *sft_args(tiny_base, sft_messages_file, tmp_path / "run", "--max_steps", "1"))
    tokenizer = trainer.processing_class
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    # The answer starts right after the generation prompt and ends with the EOS token, which must be learned.
    text = tokenizer.decode(ids)
    prompt_len = len(tokenizer(text[: text.index("### Assistant:\n") + len("### Assistant:\n")], add_special_tokens=False)["input_ids"])
    assert all(label == -100 for label in labels[:prompt_len])
    assert labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id


def test_prompt_completion_trains_on_completion_tokens_only(tiny_base, tmp_path):
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "The fox is", "completion": " red."}] * 16)
    trainer = run_stage("sft", *sft_args(tiny_base, data, tmp_path / "run", "--max_steps", "1"))
    tokenizer = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    n_prompt = len(tokenizer("The fox is", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and len(labels) > n_prompt


def test_full_sft_learns_the_answers(tiny_base, sft_messages_file, tmp_path):
    trainer = run_stage("sft", *sft_args(tiny_base, sft_messages_file, tmp_path / "run", "--max_steps", "40",
                                          "--learning_rate", "3e-3", "--eval_split_size", "0"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_qlora_4bit_sft_trains_on_cpu(tiny_base, sft_messages_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    trainer = run_stage("sft", *sft_args(tiny_base, sft_messages_file, tmp_path / "run", "--load_in_4bit", "true",
                                          "--use_peft", "true", "--lora_target_modules", "all-linear",
                                          "--max_steps", "4", "--learning_rate", "5e-3", "--eval_split_size", "0"))
    modules = list(trainer.model.modules())
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in modules), "the base must be quantised to 4 bit"
    assert all(p.abs().sum() > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_sft_on_a_two_source_mixture_trains_on_both(tiny_base, world, tmp_path):
    """`datasets` (TRL's mixture) from YAML: a file and a folder, both checked, concatenated, trained on and recorded."""
    examples = [(ex["messages"][:1], ex["messages"][1:]) for ex in world.sft_examples()[:40]]
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": p, "completion": c} for p, c in examples[:24]])
    qa = write_jsonl(tmp_path / "qa" / "train.jsonl", [{"prompt": p, "completion": c, "note": "x"} for p, c in examples[24:]])
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "datasets": [{"path": str(chat)}, {"path": str(qa.parent), "split": "train", "columns": ["prompt", "completion"]}],
        "test_split_size": 4,
    }))
    out = tmp_path / "out"
    trainer = run_stage("sft", "--config", str(config), "--model_name_or_path", str(tiny_base), "--output_dir", str(out),
                        *FAST, "--max_steps", "5", "--learning_rate", "5e-3")
    assert len(trainer.train_dataset) == 24 + 16 - 4 and len(trainer.eval_dataset) == 4
    seen = [trainer.processing_class.decode(row["input_ids"]) for row in trainer.train_dataset]
    for part in (examples[:24], examples[24:]):  # rows of both data sets are among the training rows
        assert any(p[0]["content"] in text for p, _ in part for text in seen)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert json.loads((out / "alignkit_run.json").read_text())["lineage"]["dataset"] == [str(chat), str(qa.parent)]
    assert "on `chat.jsonl + qa`" in (out / "README.md").read_text()
    saved = yaml.safe_load((out / CONFIG_FILE_NAME).read_text())  # the resolved config holds the mixture, and reloads
    assert saved["datasets"][1]["columns"] == ["prompt", "completion"] and saved["test_split_size"] == 4
    assert parse_args(STAGE_ARGS["sft"], ["--config", str(out / CONFIG_FILE_NAME)])[0].datasets[1].path == str(qa.parent)


def test_report_to_tensorboard_works_unchanged_and_the_run_records_where_it_logged(tiny_base, sft_messages_file, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    run_stage("sft", *sft_args(tiny_base, sft_messages_file, out, "--max_steps", "3", "--report_to", "tensorboard"))
    (run,) = json.loads((out / "alignkit_run.json").read_text())["tracking"]
    assert run["tracker"] == "tensorboard" and run["logging_dir"].startswith("runs/")
    events = EventAccumulator(str(out / run["logging_dir"]))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3] and events.Scalars("eval/loss")
