"""Best-of-n (rejection sampling, as in Llama 2's RLHF): sample n answers per prompt, keep the reward model's favourite.

    rows, stats = sample_best(model, tokenizer, scorer, prompts, args)   # this process's share, gathered

The policy answers each prompt `num_generations` times (batched `generate`, sampling at `temperature`, `top_p`,
`top_k`); the reward model (`alignkit.rewards.RewardScorer`, in its training format) scores every answer; each
prompt keeps its best-scoring answer that ended with EOS (an answer cut off at `max_completion_length` would teach
the policy to stop mid-sentence), and only when that score is at least `score_threshold`. The kept rows are
prompt/completion pairs, which SFT trains on the completions only. Under several processes each samples and scores
its own share of the prompts, and every process receives all kept rows once, in prompt order.

Also here: `BestOfNConfig`, the `best_of_n` stage's config (TRL's `SFTConfig` plus the sampling fields), and
`WriteKept`, which writes the kept data sets into the output folder for inspection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trl
from transformers import TrainerCallback

from alignkit import rewards
from alignkit.errors import ConfigError, DataError
from alignkit.evaluation.generation import on_shares

KEPT_DIR = "best_of_n"  # in the output folder: iteration-<k>.jsonl (the kept rows) and stats.json


@dataclass
class BestOfNConfig(trl.SFTConfig):
    """
    TRL's `SFTConfig` (the SFT on the kept answers) plus how the answers are sampled and chosen. Sampling names are
    TRL's GRPO ones. `max_steps` / `num_train_epochs` apply to each iteration's SFT.
    """

    reward_model_path: str | None = field(
        default=None, metadata={"help": "The reward stage's output folder; its scores choose the answer kept per prompt."}
    )
    num_generations: int = field(default=4, metadata={"help": "Answers sampled per prompt (n, at least 2)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the most likely tokens up to this mass."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens only (0: all)."})
    max_completion_length: int = field(default=64, metadata={"help": "Longest answer sampled, in tokens."})
    generation_batch_size: int = field(
        default=16, metadata={"help": "Prompts per `generate` call on each process (each gives num_generations answers)."}
    )
    score_threshold: float | None = field(
        default=None,
        metadata={"help": "Keep a prompt's best answer only if its score is at least this (normalised when "
                          "normalize_reward); None keeps every prompt's best."},
    )
    iterations: int = field(
        default=1, metadata={"help": "Rounds of sample -> keep the best -> SFT; each samples from the policy trained so far."}
    )
    normalize_reward: bool = field(
        default=True,
        metadata={"help": "Score as (score - mean) / std with the statistics the reward stage recorded (when it did)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 (best of n needs n answers to choose from), got {self.num_generations}.")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}.")
        if self.max_completion_length < 1 or self.generation_batch_size < 1:
            raise ValueError("max_completion_length and generation_batch_size must be at least 1.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive (best of n samples), got {self.temperature}.")


def load_scorer(args: BestOfNConfig, device) -> rewards.RewardScorer:
    if not args.reward_model_path:
        raise ConfigError("reward_model_path is not set: give the reward stage's output folder.")
    scorer = rewards.RewardScorer(args.reward_model_path, device=device)
    scorer.normalize = bool(args.normalize_reward and scorer.stats and scorer.stats.get("std"))
    return scorer


def unique_prompts(dataset) -> list[Any]:
    """The data set's prompts in order, each once (a preference set often holds several pairs per prompt)."""
    seen, prompts = set(), []
    for prompt in dataset["prompt"]:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts


def _conversational(prompt) -> bool:
    return isinstance(prompt, list)


@torch.no_grad()
def sample(model, tokenizer, prompts: list, args: BestOfNConfig) -> tuple[list[list[str]], list[list[bool]]]:
    """`num_generations` answers to each prompt, and whether each ended with EOS (rather than at the length limit)."""
    n, eos = args.num_generations, tokenizer.eos_token_id
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()  # no dropout, and the KV cache stays on under activation checkpointing
    tokenizer.padding_side = "left"  # generation continues at the right edge
    answers, finished = [], []
    try:
        for start in range(0, len(prompts), args.generation_batch_size):
            chunk = prompts[start : start + args.generation_batch_size]
            chat = _conversational(chunk[0])
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if chat else p for p in chunk]
            # A rendered chat template holds its special tokens already; plain text gets the tokenizer's, as in training.
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
            output = model.generate(
                **batch, do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                max_new_tokens=args.max_completion_length, num_return_sequences=n,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
            )
            rows = output[:, batch["input_ids"].shape[1] :].tolist()
            for i in range(len(chunk)):
                group = rows[i * n : (i + 1) * n]
                ends = [row.index(eos) if eos in row else len(row) for row in group]
                texts = [tokenizer.decode(row[:end], skip_special_tokens=True) for row, end in zip(group, ends)]
                # A chat answer is a turn's content; plain-text answers keep their leading space, which tokenisation needs.
                answers.append([t.strip() for t in texts] if chat else texts)
                finished.append([end < len(row) for row, end in zip(group, ends)])
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
    return answers, finished


def select(prompts: list, answers: list[list[str]], scores: list[list[float]], finished: list[list[bool]],
           threshold: float | None) -> list[dict]:
    """Per prompt, its best-scoring finished answer (if at least `threshold`), with every candidate and score."""
    kept = []
    for prompt, group, group_scores, done in zip(prompts, answers, scores, finished):
        eligible = [i for i in range(len(group)) if done[i]]
        if not eligible:
            continue
        best = max(eligible, key=lambda i: group_scores[i])
        if threshold is not None and group_scores[best] < threshold:
            continue
        completion = [{"role": "assistant", "content": group[best]}] if _conversational(prompt) else group[best]
        kept.append({"prompt": prompt, "completion": completion, "score": group_scores[best], "best": best,
                     "candidates": group, "candidate_scores": group_scores, "finished": done})
    return kept


def sample_best(model, tokenizer, scorer: rewards.RewardScorer, prompts: list, args: BestOfNConfig,
                iteration: int = 1) -> tuple[list[dict], dict]:
    """
    This process samples and scores its share of `prompts` (`on_shares`); returns the kept rows of all of them (in
    prompt order) and the round's statistics over all prompts.
    """
    from accelerate import PartialState
    from transformers import set_seed

    state = PartialState()
    # Each process and round draws other samples; the same seed and process count draw the same ones again.
    set_seed(args.seed + 1000 * iteration + state.process_index)
    n = args.num_generations

    def sample_and_score(share: list) -> list[tuple]:
        answers, finished = sample(model, tokenizer, share, args)
        flat = scorer.score([p for p in share for _ in range(n)], [a for group in answers for a in group])
        return list(zip(answers, [flat[i * n : (i + 1) * n] for i in range(len(share))], finished))

    groups = on_shares(sample_and_score, prompts)  # every process's, in prompt order
    answers, scores, finished = [g[0] for g in groups], [g[1] for g in groups], [g[2] for g in groups]
    kept = select(prompts, answers, scores, finished, args.score_threshold)
    total, done, score_sum = len(prompts), sum(map(sum, finished)), sum(map(sum, scores))
    kept_sum = sum(r["score"] for r in kept)
    stats = {
        "iteration": iteration,
        "prompts": int(total),
        "kept": len(kept),
        "finished_rate": done / (total * n) if total else 0.0,
        "mean_score": score_sum / (total * n) if total else None,  # the policy's mean score at this round's start
        "mean_kept_score": kept_sum / len(kept) if kept else None,
    }
    if state.is_main_process:
        mean = "n/a" if stats["mean_score"] is None else f"{stats['mean_score']:.3f}"
        kept_mean = "n/a" if stats["mean_kept_score"] is None else f"{stats['mean_kept_score']:.3f}"
        print(f"best_of_n iteration {iteration}: kept {len(kept)} of {total} prompts; mean score {mean}, kept {kept_mean}; "
              f"{stats['finished_rate']:.0%} of answers ended with EOS", flush=True)
    if not kept:
        why = f"{done} of the {total * n} answers ended with EOS within max_completion_length={args.max_completion_length}"
        if args.score_threshold is not None:
            why += f" and no prompt's best of them scored at least score_threshold={args.score_threshold}"
        fix = "raise max_completion_length" + (" or lower score_threshold" if args.score_threshold is not None else "")
        raise DataError(f"best_of_n iteration {iteration} kept no answer: {why}; {fix}.")
    return kept, stats


def training_rows(kept: list[dict]):
    """The kept rows as the SFT data set (prompt/completion: the loss is on the completions only)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in kept])


def kept_path(output_dir: str | Path, iteration: int) -> Path:
    return Path(output_dir, KEPT_DIR, f"iteration-{iteration}.jsonl")


def read_kept(output_dir: str | Path, iteration: int) -> tuple[list[dict], list[dict]]:
    """An earlier run's kept rows of `iteration` and its statistics (to resume that iteration's SFT)."""
    path = kept_path(output_dir, iteration)
    if not path.is_file():
        raise DataError(f"resume_from_checkpoint: {path} is missing, so iteration {iteration}'s SFT cannot continue; "
                        "start afresh with `--overwrite_output_dir true`.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    stats = json.loads(path.with_name("stats.json").read_text(encoding="utf-8"))
    return rows, stats


class WriteKept(TrainerCallback):
    """
    Writes each iteration's kept rows (`best_of_n/iteration-<k>.jsonl`) and the rounds' statistics (`stats.json`)
    into the output folder when the last iteration's training starts (main process): only then has an earlier run
    that `overwrite_output_dir` replaces been set aside, so the files land in this run's folder. A resumed run keeps
    the files it finds.
    """

    def __init__(self, kept: dict[int, list[dict]], stats: list[dict]):
        self.kept, self.stats = kept, stats

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        for iteration, rows in self.kept.items():
            path = kept_path(args.output_dir, iteration)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        stats_file = Path(args.output_dir, KEPT_DIR, "stats.json")
        if not stats_file.exists():
            stats_file.write_text(json.dumps(self.stats, indent=1), encoding="utf-8")
