"""A policy against its reference on the same prompts: both answer, then every measurement and the judge."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import set_seed

from alignkit.errors import ConfigError, DataError
from alignkit.evaluation.generation import generate_tokens, prompt_conversation
from alignkit.evaluation.judges import Judge, judge_rates
from alignkit.evaluation.measures import check_same_vocab, mean, per_token_kl, reward_scores, win_rate
from alignkit.models import check_folder, check_reward_folder, load_for_inference, load_reward_model


def evaluate_policy(
    policy: str | Path,
    reference: str | Path,
    prompts: Sequence[Any],
    reward_model: str | Path | None = None,
    *,
    audit_reward_model: str | Path | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    judge: Judge | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
    num_examples: int = 3,
) -> dict:
    """
    Compare a policy with its reference on `prompts` (conversations, strings, or rows — see
    `prompt_conversation`); `policy`, `reference` and `reward_model` are stage output folders.

    Both models answer every prompt (`num_samples` times when sampling; each sample is compared with the
    reference's sample of the same index). Returns a JSON-ready dict:

    - `policy`, `reference`: `{"path", "reward_mean", "answer_tokens_mean", <judge rates>}`;
    - `win_rate`: the policy's win rate over the reference by reward score (ties count half);
    - `kl_per_token`: mean KL(policy || reference) per token of the policy's own answers (ids as generated);
    - `reward_model`, `num_prompts`, `num_samples`, `generation` (the settings), and `examples`: the first
      `num_examples` prompts with both answers (and scores).

    With `audit_reward_model` (a second reward model, never optimised against) each side also has its mean score,
    `audit_reward_mean`. Reward fields and `win_rate` are None without a reward model. `judge(row, answer)` returns
    `{name: bool or number}` for one answer; its means go into both sides under the same names.
    """
    if max_new_tokens < 1 or batch_size < 1 or num_samples < 1:
        raise ConfigError("max_new_tokens, batch_size and num_samples must be at least 1.")
    if num_samples > 1 and not do_sample:
        raise ConfigError("num_samples > 1 repeats identical greedy answers; add do_sample to sample them.")
    if do_sample and temperature <= 0:
        raise ConfigError("temperature must be > 0 when sampling.")
    if not prompts:
        raise DataError("No prompts to evaluate on.")
    conversations = [prompt_conversation(row) for row in prompts]
    rows = [row for row in prompts for _ in range(num_samples)]
    conversations = [c for c in conversations for _ in range(num_samples)]
    # Fail before loading any weights.
    check_folder(policy, "policy")
    check_folder(reference, "reference")
    for folder in (reward_model, audit_reward_model):
        if folder is not None:
            check_reward_folder(folder)

    policy_model, policy_tokenizer = load_for_inference(policy)
    reference_model, reference_tokenizer = load_for_inference(reference)
    check_same_vocab(policy_tokenizer, reference_tokenizer, str(policy), str(reference))
    sampling = dict(do_sample=do_sample, temperature=temperature)
    answer_ids = {}
    sides = (("policy", policy_model, policy_tokenizer), ("reference", reference_model, reference_tokenizer))
    for name, model, tokenizer in sides:
        set_seed(seed)  # the same samples for the same model, whichever side it is on
        answer_ids[name] = generate_tokens(model, tokenizer, conversations, max_new_tokens, batch_size, **sampling)
    answers = {
        "policy": [policy_tokenizer.decode(a, skip_special_tokens=True).strip() for a in answer_ids["policy"]],
        "reference": [reference_tokenizer.decode(a, skip_special_tokens=True).strip() for a in answer_ids["reference"]],
    }
    kl = per_token_kl(policy_model, reference_model, policy_tokenizer, conversations, answer_ids["policy"], batch_size)
    del policy_model, reference_model

    scores: dict[str, list[float] | None] = {"policy": None, "reference": None}
    if reward_model is not None:
        rm, rm_tokenizer = load_reward_model(reward_model)
        # One call for both sides: an answer both models gave gets one score, so it ties exactly.
        both = reward_scores(rm, rm_tokenizer, conversations * 2, answers["policy"] + answers["reference"], batch_size)
        scores = {"policy": both[: len(conversations)], "reference": both[len(conversations) :]}
        del rm
    audit: dict[str, float | None] = {"policy": None, "reference": None}
    if audit_reward_model is not None:
        rm, rm_tokenizer = load_reward_model(audit_reward_model)
        both = reward_scores(rm, rm_tokenizer, conversations * 2, answers["policy"] + answers["reference"], batch_size)
        audit = {"policy": mean(both[: len(conversations)]), "reference": mean(both[len(conversations) :])}
        del rm

    result: dict[str, Any] = {}
    for name, path in (("policy", policy), ("reference", reference)):
        side = {
            "path": str(path),
            "reward_mean": mean(scores[name]) if scores[name] is not None else None,
            "answer_tokens_mean": mean([len(a) for a in answer_ids[name]]),
            **({"audit_reward_mean": audit[name]} if audit_reward_model is not None else {}),
        }
        if judge is not None:
            side.update(judge_rates(judge, rows, answers[name]))
        result[name] = side
    result["win_rate"] = win_rate(scores["policy"], scores["reference"]) if scores["policy"] is not None else None
    result["kl_per_token"] = kl
    result["reward_model"] = str(reward_model) if reward_model is not None else None
    result["num_prompts"] = len(prompts)
    result["num_samples"] = num_samples
    result["generation"] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "seed": seed}
    result["examples"] = [
        {
            "prompt": conversations[i],
            "policy": answers["policy"][i],
            "reference": answers["reference"][i],
            **({"policy_reward": scores["policy"][i], "reference_reward": scores["reference"][i]} if scores["policy"] else {}),
        }
        for i in range(0, min(num_examples * num_samples, len(conversations)), num_samples)
    ]
    return result


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)


def format_report(result: dict) -> str:
    """A short plain-text table of `evaluate_policy`'s result."""
    p, r = result["policy"], result["reference"]
    keys = [k for k in p if k != "path"]
    width = max(len(k) for k in keys + ["win rate (policy vs reference)"]) + 2
    lines = [f"{'':<{width}}{'policy':>12}{'reference':>12}"]
    lines += [f"{k:<{width}}{_fmt(p.get(k)):>12}{_fmt(r.get(k)):>12}" for k in keys]
    lines.append(f"{'win rate (policy vs reference)':<{width}}{_fmt(result['win_rate']):>12}")
    lines.append(f"{'KL per token (nats)':<{width}}{_fmt(result['kl_per_token']):>12}")
    for ex in result["examples"]:
        lines.append(f"Q: {ex['prompt'][-1]['content']}")
        lines.append(f"   policy:    {ex['policy']}")
        lines.append(f"   reference: {ex['reference']}")
    return "\n".join(lines)
