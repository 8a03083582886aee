"""Measure a trained stage: load its output for inference and generate answers to prompts."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit.errors import ModelError


def load_for_inference(path: str | Path):
    """(model, tokenizer) from a stage's output folder, whether it holds a full model or a PEFT adapter."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"No stage output at {path}.")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    return model.eval(), tokenizer


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy answers to conversational prompts, rendered with the tokenizer's chat template as in training."""
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the right edge
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    answers = []
    try:
        for start in range(0, len(texts), batch_size):
            # The chat template already holds every special token the model was trained with.
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            answers += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
    return [a.strip() for a in answers]
