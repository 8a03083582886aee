"""Generation for evaluation: prompts in (a JSONL file, rows, conversations), the model's answers out."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit.errors import DataError

Conversation = list[dict[str, str]]


def render(tokenizer, prompt: Conversation, answer: str | None = None) -> str:
    if answer is None:
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": answer}], tokenize=False)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_tokens(
    model,
    tokenizer,
    prompts: Sequence[Conversation],
    max_new_tokens: int = 32,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> list[list[int]]:
    """
    The token ids of the model's answer to each conversational prompt (rendered with the tokenizer's chat
    template and the generation prompt, as in training), up to and including the first EOS; padding dropped.
    Greedy by default; `do_sample` samples from the whole distribution at `temperature` (no top-k/top-p), from
    torch's global generator (seed it for reproducible samples).
    """
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the right edge
    texts = [render(tokenizer, p) for p in prompts]
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    eos = tokenizer.eos_token_id
    answers: list[list[int]] = []
    try:
        for start in range(0, len(texts), batch_size):
            # The chat template already holds every special token the model was trained with.
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(device_of(model))
            output = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **sampling
            )
            for row in output[:, batch["input_ids"].shape[1] :].tolist():
                # Finished rows are filled with padding after their EOS; a sampled pad token before it is real.
                answers.append(row[: row.index(eos) + 1] if eos in row else row)
    finally:
        tokenizer.padding_side = padding_side
    return answers


def generate(
    model, tokenizer, prompts: Sequence[Conversation], max_new_tokens: int = 32, batch_size: int = 64, **sampling
) -> list[str]:
    """Answers (decoded, without special tokens, stripped) to conversational prompts; greedy unless `do_sample`."""
    ids = generate_tokens(model, tokenizer, prompts, max_new_tokens, batch_size, **sampling)
    return [tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids]


def prompt_conversation(row: Any) -> Conversation:
    """
    The conversation to answer for one prompt item: a conversation list as it is, a plain string as one user
    turn, a row's `prompt` column (either), or a row's `messages` up to (not including) its last assistant turn.
    """
    if isinstance(row, str):
        return [{"role": "user", "content": row}]
    if isinstance(row, list) and row and all(isinstance(m, dict) and "role" in m and "content" in m for m in row):
        return row
    if isinstance(row, dict) and "prompt" in row:
        return prompt_conversation(row["prompt"])
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        messages = row["messages"]
        answers = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"]
        last = answers[-1] if answers else len(messages)
        if last > 0:
            return prompt_conversation(messages[:last])
    raise DataError(
        "A prompt must be a string, a conversation (a list of {role, content}), or a row with a `prompt` of either "
        f"or with `messages`; got {str(row)[:80]}."
    )


def load_prompts(path: str | Path) -> list[dict]:
    """The rows of a JSONL prompts file; each must hold a `prompt` (conversation or string) or `messages`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Prompts file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{number} is not valid JSON ({e.msg}); the prompts file holds one JSON object a line."
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number} is not a JSON object with a `prompt` or `messages` key.")
        try:
            prompt_conversation(row)
        except DataError as e:
            raise DataError(f"{path}:{number}: {e}") from None
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no prompts.")
    return rows


def on_shares(work: Callable[[list], list], items: Sequence) -> list:
    """
    `work` on this process's contiguous share of `items` under `accelerate launch` (the whole of them in one process);
    every process gets all the results, in the order of `items`, so generation is split rather than repeated.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    with state.split_between_processes(list(items)) as share:
        results = work(list(share))
    return gather_object(results) if state.num_processes > 1 else results  # rank order = item order
