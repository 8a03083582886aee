"""Measurements of a policy's answers: reward-model scores, win rate, per-token KL to a reference."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit import rewards
from alignkit.errors import ModelError
from alignkit.evaluation.generation import Conversation, device_of, render
from alignkit.metrics.scores import kl_summary
from alignkit.metrics.scores import win_rate as win_rate  # the one computation, also behind the `win_rate` metric


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
def per_token_kl_values(
    policy, reference, tokenizer, prompts: Sequence[Conversation], answers: Sequence[str | Sequence[int]], batch_size: int = 32
) -> list[list[float]]:
    """
    KL(policy || reference), in nats, at each token of each answer: at an answer token's position, the sum over the
    whole vocabulary of p_policy * (log p_policy - log p_ref) given the same prefix (EOS included, padding excluded);
    one list per answer (empty for an empty answer). Answers are token ids (exact: as generated, e.g. by
    `generate_tokens`) or texts (rendered after the prompt with the chat template, so they end in its end-of-turn
    tokens). Both models read the same ids, so they must share `tokenizer`'s vocabulary. One batch of logits is held
    at a time.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
    pairs = [answer_ids(tokenizer, p, a) for p, a in zip(prompts, answers)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    values: list[list[float]] = [[] for _ in pairs]
    for start in range(0, len(pairs), batch_size):
        chunk = [(i, p, a) for i, (p, a) in enumerate(pairs[start : start + batch_size], start=start) if a]
        if not chunk:
            continue
        # Right padding: every real token keeps its unpadded position, and nothing real attends to padding.
        input_ids, mask = right_pad([p + a for _, p, a in chunk], pad_id, device_of(policy))
        # Logits at position t predict token t + 1: select the positions that predict an answer token.
        predicts_answer = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, (_, p, a) in enumerate(chunk):
            predicts_answer[row, len(p) - 1 : len(p) + len(a) - 1] = True
        logp = policy(input_ids=input_ids, attention_mask=mask).logits[predicts_answer].float().log_softmax(-1)
        ref_ids = input_ids.to(device_of(reference))
        ref_logits = reference(input_ids=ref_ids, attention_mask=mask.to(ref_ids.device)).logits
        if ref_logits.shape[-1] != logp.shape[-1]:
            raise ModelError(
                f"The policy scores {logp.shape[-1]} tokens but the reference {ref_logits.shape[-1]}; KL needs one vocabulary."
            )
        ref_logp = ref_logits[predicts_answer.to(ref_ids.device)].float().log_softmax(-1).to(logp.device)
        del ref_logits
        # The selected positions come row by row, each row's answer tokens in order.
        kl = (logp.exp() * (logp - ref_logp)).sum(-1).tolist()
        offset = 0
        for i, _, a in chunk:
            values[i] = kl[offset : offset + len(a)]
            offset += len(a)
    return values


def per_token_kl(
    policy, reference, tokenizer, prompts: Sequence[Conversation], answers: Sequence[str | Sequence[int]], batch_size: int = 32
) -> float:
    """
    Mean per-token KL(policy || reference), in nats, over every answer token of every answer: `per_token_kl_values`
    summarised by `alignkit.metrics.scores.kl_summary` (the computation behind the `kl_per_token` metric).
    """
    return kl_summary(per_token_kl_values(policy, reference, tokenizer, prompts, answers, batch_size))["kl_per_token"]


def check_same_vocab(policy_tokenizer, reference_tokenizer, policy_name: str, reference_name: str) -> None:
    if policy_tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise ModelError(
            f"The policy ({policy_name}) and the reference ({reference_name}) use different vocabularies; "
            "KL needs a reference with the policy's tokenizer (usually the stage the policy was trained from)."
        )


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


