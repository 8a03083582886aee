"""Rewards for online RL (GRPO, RLOO): the one path that scores (prompt, answer) pairs with a reward stage's output.

    scorer = RewardScorer("outputs/demo/reward")
    scorer.score(["Q: Which color is the fox?\\nA:"], [" The fox is red."])     # -> [1.83]
    scorer(prompts=[[{"role": "user", "content": "Which color is the fox?"}]],
           completions=[[{"role": "assistant", "content": "The fox is red."}]])  # TRL's reward-function interface

A reward model only means what it was trained on, so each pair is tokenised exactly as TRL's `RewardTrainer`
tokenised its training pairs: conversations through the chat template (prompt turns + the answer turn, which
alignkit's template closes with EOS), plain text as prompt + answer + EOS (with the tokenizer's own special
tokens); a pair longer than the stage's `max_length` has its prompt cut from the left as the reward recipe cut
it (`alignkit.data.truncate_prompts`). TRL's GRPO/RLOO would instead score decoded text without special tokens,
which the model never saw (STACK-NOTES: 0.764 with EOS, 1.089 without, on one pair). Scores can be normalised with
the reward stage's recorded `reward_stats` (mean and std of its scores on its held-out pairs).

Also here: the configs of the `grpo` and `rloo` stages (TRL's, plus `reward_model_path`, `reward_funcs`, ...) and
`reward_functions`, which turns such a config into the list of reward functions TRL's trainers take.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trl
from transformers.utils import logging as hf_logging

from alignkit import data, models, outputs
from alignkit.errors import ConfigError, ModelError

logger = hf_logging.get_logger(__name__)

Prompt = str | list[dict[str, Any]]  # plain text, or the turns before the answer
Answer = str | list[dict[str, Any]]  # plain text, or the answer's turn(s) (TRL's conversational completions)


def _conversational(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, dict) and "role" in t for t in value)


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence one transformers-style logger below ERROR (its per-call warnings, which the scorer sums up once)."""
    target = hf_logging.get_logger(logger_name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


class RewardScorer:
    """
    Scores (prompt, answer) pairs with the reward model in a reward stage's output folder (a full one-output
    sequence classifier, or a SEQ_CLS LoRA adapter on its base), in exactly the reward stage's training format.

    `normalize`: return `(score - mean) / std` with the reward stage's recorded `reward_stats`.
    `missing_eos_penalty`: subtracted from the score of a completion that TRL reports (through `completion_ids`)
    as cut off at the length limit without an EOS token; the score itself is always read from the finished text
    the reward model was trained on.
    """

    __name__ = "reward_model"  # TRL logs this function's rewards as `rewards/reward_model/mean`

    def __init__(self, path: str | Path, normalize: bool = False, batch_size: int = 32,
                 missing_eos_penalty: float | None = None, device: str | torch.device | None = None):
        model, tokenizer = models.load_reward_model(path)
        saved = outputs.read_saved_config(path)
        self._attach(model, tokenizer, batch_size, missing_eos_penalty,
                     max_length=saved.get("max_length", trl.RewardConfig.__dataclass_fields__["max_length"].default),
                     prompt_truncation=saved.get("prompt_truncation", "left"),
                     stats=(outputs.read_run(path) or {}).get("reward_stats"))
        self.path = str(path)
        if normalize and not (self.stats and self.stats.get("std")):
            raise ModelError(
                f"{path} records no score statistics (reward_stats in alignkit_run.json) to normalise with; "
                "retrain it with alignkit's reward stage or turn normalisation off."
            )
        self.normalize = normalize
        if device is not None:
            self.to(device)

    @classmethod
    def from_model(cls, model, tokenizer, batch_size: int = 32, max_length: int | None = None) -> RewardScorer:
        """
        A scorer for a reward model already loaded, in its training format; its stage's `max_length` and score
        statistics (in its folder) are not known, so prompts are cut only to a `max_length` given here.
        """
        scorer = cls.__new__(cls)
        scorer._attach(model, tokenizer, batch_size, None, max_length=max_length, prompt_truncation="left", stats=None)
        scorer.path, scorer.normalize = None, False
        return scorer

    def _attach(self, model, tokenizer, batch_size, missing_eos_penalty, max_length, prompt_truncation, stats):
        self.model, self.tokenizer = model, tokenizer
        self.model.requires_grad_(False)
        config = model.config.get_text_config()
        if config.pad_token_id is None:  # the score is read at the last non-pad token, as in training
            config.pad_token_id = tokenizer.pad_token_id
        self.pad_token_id = config.pad_token_id
        self.max_length: int | None = max_length
        self.prompt_truncation: str = prompt_truncation
        self.stats: dict | None = stats
        self.batch_size = batch_size
        self.missing_eos_penalty = missing_eos_penalty
        self.prompts_cut = 0  # prompts cut from the left so far, to fit max_length

    def to(self, device: str | torch.device) -> RewardScorer:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------ tokenising

    def encode(self, prompt: Prompt, answer: Answer) -> list[int]:
        """The token ids of one pair as the reward stage's trainer built them (before any cut to max_length)."""
        if _conversational(prompt):
            turns = answer if _conversational(answer) else [{"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(list(prompt) + list(turns), tokenize=True, return_dict=True)["input_ids"]
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise ValueError("A plain-text prompt needs a plain-text answer; give conversations as lists of turns.")
        eos = self.tokenizer.eos_token
        # RewardTrainer appends EOS to the answer (unless it has one), then tokenises prompt + answer as one text.
        return self.tokenizer(text=prompt + (answer if answer.endswith(eos) else answer + eos))["input_ids"]

    def _fit(self, pairs: list[tuple[Prompt, Answer]], ids: list[list[int]]) -> list[list[int]]:
        """Cut the prompts of pairs longer than max_length from the left, as the reward recipe did in training."""
        too_long = [i for i, row in enumerate(ids) if len(row) > self.max_length]
        if not too_long:
            return ids
        if self.prompt_truncation == "left":
            from datasets import Dataset

            rows = Dataset.from_list([{"prompt": pairs[i][0], "chosen": pairs[i][1], "rejected": pairs[i][1]} for i in too_long])
            with _quiet(data.__name__):  # one warning per scorer below, not one per batch of rollouts
                cut = data.truncate_prompts(rows, self.tokenizer, self.max_length)
            for i, row in zip(too_long, cut):
                ids[i] = self.encode(row["prompt"], row["chosen"])
            if not self.prompts_cut:
                logger.warning(
                    f"Prompts too long for the reward model's max_length={self.max_length} are cut from the left, "
                    "as in its training."
                )
            self.prompts_cut += len(too_long)
        # Still too long (an answer longer than max_length alone; training dropped such pairs): keep the end, where
        # the score is read.
        return [row[-self.max_length :] for row in ids]

    def token_ids(self, prompts: Sequence[Prompt], answers: Sequence[Answer]) -> list[list[int]]:
        """What the reward model reads for each pair: its training format, prompts cut from the left to fit."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
        pairs = list(zip(prompts, answers))
        ids = [self.encode(p, a) for p, a in pairs]
        return self._fit(pairs, ids) if self.max_length else ids

    # --------------------------------------------------------------------------------------------- scoring

    def score(self, prompts: Sequence[Prompt], answers: Sequence[Answer]) -> list[float]:
        """The reward model's score of each answer to its prompt (normalised when `normalize`)."""
        return self.score_ids(self.token_ids(prompts, answers))

    @torch.no_grad()
    def score_ids(self, token_ids: Sequence[Sequence[int]]) -> list[float]:
        """The scores of sequences already tokenised in the reward model's format (normalised when `normalize`)."""
        ids = [tuple(row) for row in token_ids]
        # A sequence that occurs twice is scored once, so equal answers get exactly equal scores; similar lengths
        # go together (less padding).
        unique = sorted(set(ids), key=len)
        found: dict[tuple[int, ...], float] = {}
        was_training = self.model.training
        self.model.eval()
        device = self.device
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start : start + self.batch_size]
            width = max(len(row) for row in chunk)
            # Right padding with the model's pad id, as RewardTrainer's collator: the score is read at the same token.
            input_ids = torch.tensor([list(row) + [self.pad_token_id] * (width - len(row)) for row in chunk], device=device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in chunk], device=device)
            found.update(zip(chunk, self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()))
        self.model.train(was_training)
        scores = [found[row] for row in ids]
        if self.normalize:
            scores = [(s - self.stats["mean"]) / self.stats["std"] for s in scores]
        return scores

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[Answer], completion_ids=None, **kwargs) -> list[float]:
        """TRL's reward-function interface (GRPOTrainer, RLOOTrainer): one reward per completion."""
        scores = self.score(prompts, completions)
        if self.missing_eos_penalty and completion_ids is not None:
            eos = self.tokenizer.eos_token_id
            scores = [s - self.missing_eos_penalty * (not ids or ids[-1] != eos) for s, ids in zip(scores, completion_ids)]
        return scores


# ------------------------------------------------------------------------------------------- configs


def load_function(spec: str) -> Callable:
    """The reward function named `module:function` (importable from the working directory or PYTHONPATH)."""
    module, colon, name = str(spec).partition(":")
    if not colon or not module or not name:
        raise ConfigError(f"reward_funcs: '{spec}' is not `module:function`; write e.g. `my_rewards:brevity`.")
    if os.getcwd() not in sys.path and "" not in sys.path:  # `alignkit grpo` starts with the script's folder there
        sys.path.append(os.getcwd())
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward_funcs: {spec} cannot be imported ({e}); fix the `module:function` name.") from None
    if not callable(function):
        raise ConfigError(f"reward_funcs: {spec} is not a function.")
    return function


@dataclass
class OnlineRewardArguments:
    """What alignkit adds to TRL's GRPO and RLOO configs (it comes first in their bases): where rewards come from,
    dropout off by default, and the checks of both."""

    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "The reward stage's output folder. Its scores are the first reward (in its training format)."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "More rewards: Python functions as `module:function`, called as TRL calls reward functions "
                          "(prompts, completions, **columns) -> list[float]. `reward_weights` lists the reward model's "
                          "weight first, then these functions'."},
    )
    normalize_reward: bool = field(
        default=True,
        metadata={"help": "Scale the reward model's scores to (score - mean) / std with the statistics its reward stage "
                          "recorded (when it recorded them)."},
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Subtracted from the reward model's score of a completion cut off at max_completion_length "
                          "without EOS."},
    )
    chat_template_path: str | None = field(
        default=None, metadata={"help": "A .jinja chat template for the policy's tokenizer (default: its own, else alignkit's)."}
    )
    audit_reward_model_path: str | None = field(
        default=None,
        metadata={"help": "A second reward stage's output, never optimised against: its score of the same completions is "
                          "logged as `rewards/audit_reward_model/mean` (weight 0) to show over-optimisation."},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Turn every dropout off (alignkit's default), so the policy's log-probabilities and the KL to "
                          "the reference are those of the model that samples."},
    )

    def __post_init__(self):
        given = self._both_batch_sizes()
        super().__post_init__()
        self._check_batch_sizes(given)
        self._check_rewards()

    def _both_batch_sizes(self) -> int | None:
        """
        A saved config (alignkit_config.yaml) holds both generation_batch_size and steps_per_generation, the one
        TRL derived from the other, which TRL refuses to parse; keep steps_per_generation and drop the other for TRL
        to derive again (`_check_batch_sizes` then checks it came out the same). Returns the dropped value.
        """
        given = self.generation_batch_size
        if given is not None and self.steps_per_generation is not None:
            self.generation_batch_size = None
            return given
        return None

    def _check_batch_sizes(self, given: int | None):
        if given is not None and given != self.generation_batch_size:
            raise ValueError(
                f"generation_batch_size={given} and steps_per_generation={self.steps_per_generation} disagree "
                f"(with {self.world_size} process(es) and per_device_train_batch_size={self.per_device_train_batch_size}, "
                f"that is {self.generation_batch_size} completions per generation); set only one of them."
            )

    def _check_rewards(self):
        if self.reward_weights is not None and len(self.reward_weights) != 1 + len(self.reward_funcs or []):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} weights for {1 + len(self.reward_funcs or [])} rewards "
                "(the reward model first, then each of reward_funcs)."
            )


@dataclass
class GRPOConfig(OnlineRewardArguments, trl.GRPOConfig):
    """
    TRL's `GRPOConfig` plus `reward_model_path`, `reward_funcs`, `normalize_reward`, `missing_eos_penalty` and
    `chat_template_path`. Unlike TRL, `disable_dropout` defaults to true and `beta` to 0.04 (TRL: 0.0, no reference
    model): against a learned reward model the KL to the starting model is what keeps the policy from drifting to
    what the reward model overrates; with LoRA the reference is the policy with its adapter disabled, so it costs no
    memory.
    """

    beta: float = field(
        default=0.04,
        metadata={"help": "KL coefficient (alignkit's default 0.04; TRL's 0.0 loads no reference model and logs no KL)."},
    )


@dataclass
class RLOOConfig(OnlineRewardArguments, trl.RLOOConfig):
    """TRL's `RLOOConfig` plus `reward_model_path`, `reward_funcs`, `normalize_reward`, `missing_eos_penalty` and
    `chat_template_path`; dropout is off by default, as for GRPO."""


def reward_functions(args: OnlineRewardArguments) -> list[Callable]:
    """
    The reward functions of a GRPO/RLOO config, in `reward_weights` order: the reward model's scorer first, then
    each of `reward_funcs`, then the audit reward model's scorer (when configured; see `audit_weight`). The functions
    are imported before the reward model loads, so a typo fails at once.
    """
    extra = [load_function(spec) for spec in args.reward_funcs or []]
    if not args.reward_model_path:
        raise ConfigError("reward_model_path is not set: give the reward stage's output folder.")
    scorer = RewardScorer(args.reward_model_path, missing_eos_penalty=args.missing_eos_penalty)
    if args.normalize_reward and scorer.stats and scorer.stats.get("std"):
        scorer.normalize = True
    elif args.normalize_reward:
        logger.warning(f"{args.reward_model_path} records no reward_stats: its scores are used unnormalised.")
    audit = audit_scorer(args)  # last, at weight 0 (`audit_weight`)
    return [scorer, *extra, *([audit] if audit else [])]


def audit_scorer(args: OnlineRewardArguments) -> RewardScorer | None:
    """
    The audit reward model's scorer (`audit_reward_model_path`), normalised like the optimised one so the two curves
    share a scale, named so that TRL logs it as `rewards/audit_reward_model/mean`; None when none is configured.
    """
    if not args.audit_reward_model_path:
        return None
    audit = RewardScorer(args.audit_reward_model_path)
    audit.normalize = bool(args.normalize_reward and audit.stats and audit.stats.get("std"))
    audit.__name__ = "audit_reward_model"
    return audit


@contextlib.contextmanager
def audit_weight(args: OnlineRewardArguments):
    """
    While TRL's trainer is built: `reward_weights` with a weight of 0 for the audit scorer `reward_functions` put
    last, so TRL scores and logs it but never optimises it. A zero-weight reward function rather than a callback:
    TRL hands it the very completions the policy is trained on and logs it like any reward (averaged across
    processes, in training and evaluation). The config keeps the user's weights (its saved copy parses again).
    """
    given = args.reward_weights
    if args.audit_reward_model_path:
        args.reward_weights = [*(given or [1.0] * (1 + len(args.reward_funcs or []))), 0.0]
    try:
        yield
    finally:
        args.reward_weights = given


# The score an over-optimisation check must see move, in the reward models' units (normalised scores: std units).
OVEROPTIMISATION_TOLERANCE = 0.1


def overoptimisation(optimised: Sequence[float], audit: Sequence[float], tolerance: float = OVEROPTIMISATION_TOLERANCE,
                     scales: tuple[float, float] = (1.0, 1.0)) -> dict[str, float] | None:
    """
    Over-optimisation of a reward model (Gao et al., 2022): the score of the reward model being optimised rises
    while a second one's (the audit reward model, trained apart and never optimised against) falls.

    `optimised` and `audit` are their mean scores in order (per update, or [before, after] a stage). Each is
    smoothed over windows of `k = max(1, n // 4)` points; the rule fires when the optimised score's last window
    exceeds its first by more than `tolerance` while the audit score's last window is more than `tolerance` below
    its best window, plus twice a window's sampling noise (the best of many noisy windows sits above the trend:
    on the demo's GRPO, an audit score that rose from -0.8 to about 0 and then wandered by 0.2 an update fired
    without it). `tolerance` is in units of `scales` (each reward model's score std on its held-out pairs, for raw
    scores; 1 for normalised ones); the noise is estimated from the update-to-update differences. Returns the four
    numbers (`optimised_start`, `optimised_end`, `audit_best`, `audit_end`) when it fires, else None.
    """
    n = min(len(optimised), len(audit))
    if n < 2:
        return None
    k = max(1, n // 4)

    def windows(values):
        values = list(values)[:n]
        return [sum(values[i : i + k]) / k for i in range(n - k + 1)]

    opt, aud = windows(optimised), windows(audit)
    steps = [b - a for a, b in zip(list(audit)[: n - 1], list(audit)[1:n])]
    # Differences of independent noise have twice its variance; a trend adds little to them.
    noise = statistics.pstdev(steps) / math.sqrt(2) if len(steps) > 1 else 0.0
    if opt[-1] - opt[0] > tolerance * scales[0] and max(aud) - aud[-1] > tolerance * scales[1] + 2 * noise / math.sqrt(k):
        return {"optimised_start": opt[0], "optimised_end": opt[-1], "audit_best": max(aud), "audit_end": aud[-1]}
    return None


def describe_overoptimisation(found: Mapping[str, float]) -> str:
    """The one warning line for `overoptimisation`'s finding."""
    return (f"over-optimisation: the optimised reward model's score rose {found['optimised_start']:.2f} -> "
            f"{found['optimised_end']:.2f} while the audit reward model's fell {found['audit_best']:.2f} -> "
            f"{found['audit_end']:.2f}")


def check_eval_batch(dataset, args) -> None:
    """
    TRL checks that evaluation batches hold whole groups of generations only when evaluating during training; the
    stage also evaluates its test split once at the end, so check it before any weight loads.
    """
    if "test" not in dataset:
        return
    generations = args.num_generations_eval or args.num_generations
    if (args.per_device_eval_batch_size * args.world_size) % generations:
        raise ConfigError(
            f"per_device_eval_batch_size={args.per_device_eval_batch_size} (x {args.world_size} processes) is not a "
            f"multiple of num_generations={generations}, which the evaluation of the test split needs; change one "
            "(or set eval_split_size: 0 to hold out no test split)."
        )


def check_reference(model_args, args) -> None:
    """
    Without LoRA, TRL's GRPO/RLOO load the reference model anew from the path in the policy's config, which for an
    SFT adapter merged at load is the adapter's base, not the SFT model: refuse that before any weight loads.
    """
    if args.beta and not model_args.use_peft and models.adapter_base(model_args.model_name_or_path):
        raise ConfigError(
            f"{model_args.model_name_or_path} is an adapter: without use_peft its reference model (beta > 0) would be "
            "its base, not the model itself. Set `use_peft: true` (training continues the adapter, and a frozen copy of "
            "it is the reference) or merge it first (`alignkit merge`) and start from the merged folder."
        )
