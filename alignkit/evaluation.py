"""Measure a trained stage: load its output, generate answers, and compare a policy with a reference.

    alignkit eval --policy DIR --reference DIR [--reward_model DIR] --prompts FILE.jsonl
                  [--max_new_tokens 64] [--batch_size 32] [--do_sample --temperature 1.0 --num_samples 1]
                  [--seed 0] [--output_file DIR/eval.json] [--world_seed 0]

`evaluate_policy` answers every prompt with both models and reports, for the policy against the reference:
the reward model's mean score of each side's answers and the policy's win rate by that score, the mean
per-token KL(policy || reference) on the policy's own answers, and optionally a judge's rates (the demo's
gold judge when the prompt rows carry `entity`/`attribute`). Its building blocks — `generate_tokens`,
`reward_scores`, `per_token_kl`, `win_rate` — take loaded models so other code (the demo, PPO) can reuse them.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

from alignkit.errors import ConfigError, DataError, ModelError
from alignkit.models import adapter_base, adapter_config, load_tokenizer

Conversation = list[dict[str, str]]
# A judge rates one answer to one prompt row: {"metric name": True/False or a number}; rates are averaged.
Judge = Callable[[Any, str], Mapping[str, float]]


# ---------------------------------------------------------------------------------------------------- loading


def _load_tokenizer(path: Path):
    """The tokenizer saved with a stage output (or, for an adapter saved without one, its base's), prepared the
    way alignkit's training prepared it: a pad token and a chat template."""
    from trl import ModelConfig

    source = path
    if not (path / "tokenizer_config.json").is_file() and adapter_base(path) is not None:
        source = Path(adapter_base(path))
    return load_tokenizer(ModelConfig(model_name_or_path=str(source)))


def _check_folder(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"No {what} at {path}: expected a stage's output folder (a full model or a PEFT adapter).")
    return path


def _architectures(path: Path) -> list[str]:
    try:
        return list(AutoConfig.from_pretrained(path).architectures or [])
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not read the model config in {path}: {str(e).strip().splitlines()[0]}") from None


def load_for_inference(path: str | Path):
    """(model, tokenizer) from a stage's output folder, whether it holds a full causal LM or a PEFT adapter."""
    path = _check_folder(path, "stage output")
    adapter = adapter_config(path)
    try:
        if adapter is not None:
            if adapter.get("task_type") == "SEQ_CLS":
                raise ModelError(f"{path} holds a reward model adapter (SEQ_CLS), not a language model.")
            from peft import AutoPeftModelForCausalLM

            adapter_base(path)  # a clear message when the base has moved
            model = AutoPeftModelForCausalLM.from_pretrained(path)
        else:
            if any(a.endswith("ForSequenceClassification") for a in _architectures(path)):
                raise ModelError(f"{path} holds a reward model (sequence classifier), not a language model.")
            model = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not load the model in {path}: {str(e).strip().splitlines()[0]}") from None
    return model.eval(), _load_tokenizer(path)


def _check_reward_folder(path: str | Path) -> tuple[Path, dict | None]:
    """(folder, adapter config or None) for a reward model, checked without loading weights."""
    path = _check_folder(path, "reward model")
    adapter = adapter_config(path)
    if adapter is None:
        if not any(a.endswith("ForSequenceClassification") for a in _architectures(path)):
            raise ModelError(f"{path} holds no reward model (no sequence-classification head); pass the reward stage's output.")
    elif adapter.get("task_type") != "SEQ_CLS":
        raise ModelError(
            f"{path} holds a {adapter.get('task_type') or 'causal LM'} adapter; a reward model adapter has "
            "task_type SEQ_CLS (train it with the reward stage)."
        )
    elif not adapter.get("modules_to_save"):
        raise ModelError(f"The adapter in {path} saved no score head (modules_to_save is empty).")
    return path, adapter


def load_reward_model(path: str | Path):
    """
    (model, tokenizer) for a reward stage's output: a full one-output `AutoModelForSequenceClassification`
    folder, or a PEFT adapter with task_type SEQ_CLS (its score head saved in `modules_to_save`) applied to the
    base named in its adapter_config.json. `config.pad_token_id` is set, since the score is read at the last
    non-pad token.
    """
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    path, adapter = _check_reward_folder(path)
    try:
        if adapter is not None:
            from peft import PeftModel

            with suppress_seqcls_warning():  # the base's new score head is replaced by the adapter's
                model = AutoModelForSequenceClassification.from_pretrained(adapter_base(path), num_labels=1)
            model = PeftModel.from_pretrained(model, path)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not load the reward model in {path}: {str(e).strip().splitlines()[0]}") from None
    if model.config.num_labels != 1:
        raise ModelError(f"{path} has {model.config.num_labels} outputs; a reward model has one.")
    tokenizer = _load_tokenizer(path)
    config = model.config.get_text_config()
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


# ------------------------------------------------------------------------------------------------- generation


def _render(tokenizer, prompt: Conversation, answer: str | None = None) -> str:
    if answer is None:
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": answer}], tokenize=False)


def _device(model) -> torch.device:
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
    texts = [_render(tokenizer, p) for p in prompts]
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    eos = tokenizer.eos_token_id
    answers: list[list[int]] = []
    try:
        for start in range(0, len(texts), batch_size):
            # The chat template already holds every special token the model was trained with.
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(_device(model))
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


# ----------------------------------------------------------------------------------------------- measurements


def _right_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


@torch.no_grad()
def reward_scores(model, tokenizer, prompts: Sequence[Conversation], answers: Sequence[str], batch_size: int = 32) -> list[float]:
    """
    The reward model's score of each answer, on the text it was trained on: the reward model's chat template
    applied to prompt + answer (with alignkit's template that text ends in EOS), tokenised without added special
    tokens. Sequences are right-padded with the model's own `pad_token_id`, so the model reads its score at the
    same token alone or in any batch (with pad == EOS that is the last token before the trailing EOS, as in
    training). A text that occurs twice is scored once, so equal answers get exactly equal scores.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
    config = model.config.get_text_config()
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    texts = [_render(tokenizer, p, a) for p, a in zip(prompts, answers)]
    unique = sorted(set(texts), key=len)  # similar lengths together: less padding
    ids = tokenizer(unique, add_special_tokens=False)["input_ids"]
    scores: dict[str, float] = {}
    for start in range(0, len(unique), batch_size):
        input_ids, mask = _right_pad(ids[start : start + batch_size], config.pad_token_id, _device(model))
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        scores.update(zip(unique[start : start + batch_size], logits[:, 0].float().tolist()))
    return [scores[t] for t in texts]


def _answer_ids(tokenizer, prompt: Conversation, answer: str | Sequence[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids); a text answer is rendered with the chat template, so it ends in the turn's EOS."""
    prompt_ids = tokenizer(_render(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    if not isinstance(answer, str):
        return prompt_ids, list(answer)
    full = tokenizer(_render(tokenizer, prompt, answer), add_special_tokens=False)["input_ids"]
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
    pairs = [_answer_ids(tokenizer, p, a) for p, a in zip(prompts, answers)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = [(p, a) for p, a in pairs[start : start + batch_size] if a]
        if not chunk:
            continue
        # Right padding: every real token keeps its unpadded position, and nothing real attends to padding.
        input_ids, mask = _right_pad([p + a for p, a in chunk], pad_id, _device(policy))
        # Logits at position t predict token t + 1: select the positions that predict an answer token.
        predicts_answer = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, (p, a) in enumerate(chunk):
            predicts_answer[i, len(p) - 1 : len(p) + len(a) - 1] = True
        logp = policy(input_ids=input_ids, attention_mask=mask).logits[predicts_answer].float().log_softmax(-1)
        ref_ids = input_ids.to(_device(reference))
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


def _check_same_vocab(policy_tokenizer, reference_tokenizer, policy_name: str, reference_name: str) -> None:
    if policy_tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise ModelError(
            f"The policy ({policy_name}) and the reference ({reference_name}) use different vocabularies; "
            "KL needs a reference with the policy's tokenizer (usually the stage the policy was trained from)."
        )


# ------------------------------------------------------------------------------------------------ the whole run


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


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _judge_rates(judge: Judge, rows: Sequence[Any], answers: Sequence[str]) -> dict[str, float]:
    verdicts = [judge(row, answer) for row, answer in zip(rows, answers)]
    keys = list(dict.fromkeys(k for v in verdicts for k in v))
    return {k: sum(float(v.get(k, 0.0)) for v in verdicts) / len(verdicts) for k in keys}


def evaluate_policy(
    policy: str | Path,
    reference: str | Path,
    prompts: Sequence[Any],
    reward_model: str | Path | None = None,
    *,
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

    Reward fields and `win_rate` are None without a reward model. `judge(row, answer)` returns
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
    _check_folder(policy, "policy")
    _check_folder(reference, "reference")
    if reward_model is not None:
        _check_reward_folder(reward_model)

    policy_model, policy_tokenizer = load_for_inference(policy)
    reference_model, reference_tokenizer = load_for_inference(reference)
    _check_same_vocab(policy_tokenizer, reference_tokenizer, str(policy), str(reference))
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

    result: dict[str, Any] = {}
    for name, path in (("policy", policy), ("reference", reference)):
        side = {
            "path": str(path),
            "reward_mean": _mean(scores[name]) if scores[name] is not None else None,
            "answer_tokens_mean": _mean([len(a) for a in answer_ids[name]]),
        }
        if judge is not None:
            side.update(_judge_rates(judge, rows, answers[name]))
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


# ------------------------------------------------------------------------------------------------------ the CLI


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


def gold_judge(world_seed: int = 0) -> Judge:
    """The demo world's gold judge as a `Judge` for rows with `entity` and `attribute` (the demo's held-out prompts)."""
    from alignkit.demo.judge import GoldJudge
    from alignkit.demo.world import make_world

    gold = GoldJudge(make_world(world_seed))

    def judge(row: dict, answer: str) -> dict[str, bool]:
        verdict = gold.judge(row["entity"], row["attribute"], answer)
        return {"gold_correctness": verdict.correct, "gold_politeness": verdict.polite, "gold_concision": verdict.concise}

    return judge


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


def main(argv: list[str] | None = None) -> dict:
    """`alignkit eval`: parse the flags, evaluate, write the JSON report, print the table."""
    parser = argparse.ArgumentParser(prog="alignkit eval", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the policy's stage output folder (full model or adapter)")
    parser.add_argument("--reference", required=True, help="the reference's stage output folder, e.g. the SFT stage")
    parser.add_argument("--reward_model", help="a reward stage's output folder; without it no rewards or win rate")
    parser.add_argument("--prompts", required=True, help="a JSONL file with a `prompt` (or `messages`) column")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--do_sample", action="store_true", help="sample answers instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--num_samples", type=int, default=1, help="answers per prompt and model (with --do_sample)")
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed")
    parser.add_argument("--output_file", help="where to write the JSON report (default: <policy>/eval.json)")
    parser.add_argument("--world_seed", type=int, default=0, help="the demo world's seed, for its gold judge")
    opts = parser.parse_args(argv)

    rows = load_prompts(opts.prompts)
    judge = gold_judge(opts.world_seed) if all("entity" in r and "attribute" in r for r in rows) else None
    result = evaluate_policy(
        opts.policy, opts.reference, rows, opts.reward_model,
        max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size, judge=judge, do_sample=opts.do_sample,
        temperature=opts.temperature, num_samples=opts.num_samples, seed=opts.seed,
    )
    result["prompts_file"] = str(opts.prompts)
    output_file = Path(opts.output_file) if opts.output_file else Path(opts.policy) / "eval.json"
    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(format_report(result))
    print(f"report: {output_file}")
    return result
