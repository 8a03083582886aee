"""Measurements of a policy's answers: reward-model scores, win rate, per-token KL to a reference."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit import rewards
from alignkit.errors import ModelError
from alignkit.evaluation.generation import Conversation, device_of, render


def right_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


def reward_scores(model, tokenizer, prompts: Sequence[Conversation], answers: Sequence[str], batch_size: int = 32) -> list[float]:
    """
    The reward model's score of each answer, on the text it was trained on (`alignkit.rewards`, the one scoring
    path): the reward model's chat template applied to prompt + answer (with alignkit's template that text ends in
    EOS). Sequences are right-padded with the model's own `pad_token_id` (set from the tokenizer when missing), so
    the model reads its score at the same token alone or in any batch (with pad == EOS that is the last token before
    the trailing EOS, as in training). A text that occurs twice is scored once, so equal answers get exactly equal
    scores.
    """
    return rewards.RewardScorer.from_model(model, tokenizer, batch_size=batch_size).score(prompts, answers)


def answer_ids(tokenizer, prompt: Conversation, answer: str | Sequence[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids); a text answer is rendered with the chat template, so it ends in the turn's EOS."""
    prompt_ids = tokenizer(render(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    if not isinstance(answer, str):
        return prompt_ids, list(answer)
    full = tokenizer(render(tokenizer, prompt, answer), add_special_tokens=False)["input_ids"]
    if full[: len(prompt_ids)] != prompt_ids:
        raise ValueError("The chat template's rendering of prompt + answer does not start with the prompt's tokens.")
    return prompt_ids, full[len(prompt_ids) :]


@torch.no_grad()
def per_token_kl(
    policy, reference, tokenizer, prompts: Sequence[Conversation], answers: Sequence[str | Sequence[int]], batch_size: int = 32
) -> float:
    """
    Mean per-token KL(policy || reference), in nats, over the answers' tokens: at each answer token position,
    sum over the whole vocabulary of p_policy * (log p_policy - log p_ref) given the same prefix, averaged over
    every answer token of every answer (EOS included, padding excluded). Answers are token ids (exact: as
    generated, e.g. by `generate_tokens`) or texts (rendered after the prompt with the chat template, so they
    end in its end-of-turn tokens). Both models read the same ids, so they must share `tokenizer`'s vocabulary.
    One batch of logits is held at a time.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
    pairs = [answer_ids(tokenizer, p, a) for p, a in zip(prompts, answers)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = [(p, a) for p, a in pairs[start : start + batch_size] if a]
        if not chunk:
            continue
        # Right padding: every real token keeps its unpadded position, and nothing real attends to padding.
        input_ids, mask = right_pad([p + a for p, a in chunk], pad_id, device_of(policy))
        # Logits at position t predict token t + 1: select the positions that predict an answer token.
        predicts_answer = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, (p, a) in enumerate(chunk):
            predicts_answer[i, len(p) - 1 : len(p) + len(a) - 1] = True
        logp = policy(input_ids=input_ids, attention_mask=mask).logits[predicts_answer].float().log_softmax(-1)
        ref_ids = input_ids.to(device_of(reference))
        ref_logits = reference(input_ids=ref_ids, attention_mask=mask.to(ref_ids.device)).logits
        if ref_logits.shape[-1] != logp.shape[-1]:
            raise ModelError(
                f"The policy scores {logp.shape[-1]} tokens but the reference {ref_logits.shape[-1]}; KL needs one vocabulary."
            )
        ref_logp = ref_logits[predicts_answer.to(ref_ids.device)].float().log_softmax(-1).to(logp.device)
        del ref_logits
        total += (logp.exp() * (logp - ref_logp)).sum().item()
        count += logp.shape[0]
    return total / count if count else 0.0


def win_rate(scores: Sequence[float], other: Sequence[float]) -> float:
    """How often `scores[i]` beats `other[i]`: 1 for higher, 0.5 for equal, 0 for lower, averaged over pairs."""
    if len(scores) != len(other):
        raise ValueError(f"win_rate compares pairs: got {len(scores)} and {len(other)} scores.")
    if not scores:
        raise ValueError("win_rate needs at least one pair of scores.")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, other)) / len(scores)


def check_same_vocab(policy_tokenizer, reference_tokenizer, policy_name: str, reference_name: str) -> None:
    if policy_tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise ModelError(
            f"The policy ({policy_name}) and the reference ({reference_name}) use different vocabularies; "
            "KL needs a reference with the policy's tokenizer (usually the stage the policy was trained from)."
        )


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


