"""Configuration of alignkit's PPO trainer (TRL removed its own PPO after 1.12.0)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PPOConfig(TrainingArguments):
    r"""
    Configuration for [`alignkit.ppo.PPOTrainer`]: `TrainingArguments` plus PPO's own settings.

    **Batches.** One *update* samples responses to a rollout batch of
    `per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches` prompts per process, then makes
    `num_ppo_epochs` passes over it. Each pass splits the rollout batch into `num_mini_batches` minibatches of
    `per_device_train_batch_size * gradient_accumulation_steps` sequences, and each minibatch into
    `gradient_accumulation_steps` micro-batches of `per_device_train_batch_size` (the forward-pass size, as in
    every Hugging Face trainer). An update therefore makes exactly `num_ppo_epochs * num_mini_batches` optimiser
    steps, whatever `gradient_accumulation_steps` is. With the default `num_mini_batches=1` the rollout batch is
    `per_device_train_batch_size * gradient_accumulation_steps` prompts and each PPO epoch is one optimiser step.

    Parameters:
        > Length of the run

        num_updates (`int` or `None`, *optional*, defaults to `None`):
            Number of PPO updates (rollout + optimisation). `None`: enough updates to see every prompt
            `num_train_epochs` times. Checkpoints, `save_steps` and `logging_steps` count updates.
        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Passes over each rollout batch.
        num_mini_batches (`int`, *optional*, defaults to `1`):
            Minibatches (optimiser steps) per pass.

        > Rollouts

        max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
            Longer prompts lose tokens from the left (the start of the conversation), never the end.
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Maximum response length in tokens.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature; log-probabilities are computed at the same temperature.
        generation_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Prompts per `generate` call (and per value and reward forward of the samples, which need less memory).
            `None`: the whole rollout batch in one call, which is fastest; lower it when the KV cache of a long
            generation does not fit.
        stop_token (`str` or `None`, *optional*, defaults to `"eos"`):
            `"eos"`: responses end at the tokenizer's EOS token (kept, and scored by the reward model as in its
            training data); `None`: at `stop_token_id`, or only at `max_new_tokens` when that is unset too.
        stop_token_id (`int` or `None`, *optional*, defaults to `None`):
            An explicit stop token id (overrides `stop_token`).
        missing_eos_penalty (`float` or `None`, *optional*, defaults to `None`):
            Subtracted from the score of a response that reached `max_new_tokens` without its stop token.

        > Rewards

        reward_mean (`float` or `None`, *optional*, defaults to `None`):
            With `reward_std`, scores become `(score - reward_mean) / reward_std` (the reward stage's statistics).
        reward_std (`float` or `None`, *optional*, defaults to `None`):
            See `reward_mean`.
        reward_clip (`float` or `None`, *optional*, defaults to `None`):
            Clip (normalised) scores to `[-reward_clip, reward_clip]`. Applied before `missing_eos_penalty`.
        whiten_rewards (`bool`, *optional*, defaults to `False`):
            Scale per-token rewards to unit variance over the rollout batch before computing advantages.
        kl_coef (`float`, *optional*, defaults to `0.05`):
            Weight of the per-token KL penalty against the reference (initial value when `adaptive_kl`).
        kl_estimator (`str`, *optional*, defaults to `"k1"`):
            Per-token KL estimator: `"k1"` (log p - log q) or `"k3"` ((q/p - 1) - log(q/p), never negative).
        adaptive_kl (`bool`, *optional*, defaults to `False`):
            Adapt `kl_coef` towards `target_kl` (Ziegler et al. 2019).
        target_kl (`float`, *optional*, defaults to `6.0`):
            Target mean per-sequence KL for `adaptive_kl`.
        kl_horizon (`int`, *optional*, defaults to `10000`):
            Episodes over which `adaptive_kl` corrects `kl_coef` (larger: slower).

        > Losses

        cliprange (`float`, *optional*, defaults to `0.2`):
            Policy-ratio clip range.
        cliprange_value (`float`, *optional*, defaults to `0.2`):
            Value clip range (around the values at rollout time).
        vf_coef (`float`, *optional*, defaults to `0.1`):
            Weight of the value loss.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor.
        lam (`float`, *optional*, defaults to `0.95`):
            GAE lambda.
        value_learning_rate (`float` or `None`, *optional*, defaults to `None`):
            Learning rate of the value model; `None`: `learning_rate`.

        > Models and safety (the policy and reference are `ModelConfig.model_name_or_path`, the SFT stage's output)

        reward_model_path (`str` or `None`, *optional*, defaults to `None`):
            The reward stage's output.
        value_model_path (`str` or `None`, *optional*, defaults to `None`):
            Where the value model starts; `None`: `reward_model_path`.
        chat_template_path (`str` or `None`, *optional*, defaults to `None`):
            A Jinja chat template file for the tokenizer (as in TRL's `SFTConfig`).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow models that run their own code to load.
        kl_limit (`float` or `None`, *optional*, defaults to `None`):
            Health monitor: stop with an error, keeping the last good checkpoint, when the mean per-sequence KL to
            the reference exceeds this. (A non-finite score or loss always stops the run; with `max_grad_norm`,
            a non-finite gradient norm too.)
        audit_reward_model_path (`str` or `None`, *optional*, defaults to `None`):
            A second reward stage's output, never optimised against: its score of each update's responses is logged
            as `audit_score` beside `score`, to show over-optimisation (`alignkit.rewards.overoptimisation`).
        stop_on_overoptimisation (`bool`, *optional*, defaults to `False`):
            Health monitor: stop with an error, keeping the last good checkpoint, when `score` rises while
            `audit_score` falls (needs `audit_reward_model_path`).

        > CPU

        keep_freed_cpu_memory (`bool`, *optional*, defaults to `True`):
            On CPU under Linux (glibc), keep the memory the process frees for its next allocations instead of
            handing it back to the system. glibc otherwise maps every block of 32 MiB or more (embedding and
            output-layer gradients, logits) fresh from the kernel, which zero-fills each page: ~14 ms per 32 MiB,
            ~6% of a full-parameter update of a 42M-parameter model. The process's memory then stays at its peak
            between steps instead of shrinking. Process-wide and lasting; `False` leaves the allocator as it is.

    Defaults that differ from `TrainingArguments`: `learning_rate=3e-6`, `logging_steps=1`, `save_steps=100`.
    """

    learning_rate: float = field(default=3e-6, metadata={"help": "Learning rate of the policy (AdamW)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every this many updates."})
    save_steps: float = field(default=100, metadata={"help": "Save a checkpoint every this many updates."})

    num_updates: int | None = field(
        default=None,
        metadata={"help": "Number of PPO updates; None: enough to see every prompt `num_train_epochs` times."},
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches (optimiser steps) per pass."})

    max_prompt_length: int | None = field(
        default=512, metadata={"help": "Longer prompts are truncated from the left."}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Maximum response length in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Prompts per generate call (and value/reward forward of the samples); None: the whole "
                  "rollout batch at once (lower it if the KV cache does not fit)."},
    )
    stop_token: str | None = field(
        default="eos", metadata={"help": "'eos': responses end at the EOS token; None: see stop_token_id."}
    )
    stop_token_id: int | None = field(default=None, metadata={"help": "An explicit stop token id."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of a response that never stopped."}
    )

    reward_mean: float | None = field(default=None, metadata={"help": "Score normalisation: subtract this."})
    reward_std: float | None = field(default=None, metadata={"help": "Score normalisation: divide by this."})
    reward_clip: float | None = field(default=None, metadata={"help": "Clip normalised scores to +-reward_clip."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten per-token rewards over the batch."})
    kl_coef: float = field(default=0.05, metadata={"help": "Weight of the per-token KL penalty."})
    kl_estimator: str = field(default="k1", metadata={"help": "KL estimator: 'k1' or 'k3'."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards target_kl."})
    target_kl: float = field(default=6.0, metadata={"help": "Target per-sequence KL for adaptive_kl."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive KL controller."})

    cliprange: float = field(default=0.2, metadata={"help": "Policy-ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the value model; None: learning_rate."}
    )

    reward_model_path: str | None = field(default=None, metadata={"help": "The reward stage's output."})
    value_model_path: str | None = field(
        default=None, metadata={"help": "Where the value model starts; None: reward_model_path."}
    )
    chat_template_path: str | None = field(default=None, metadata={"help": "A Jinja chat template file."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow models that run their own code."})
    kl_limit: float | None = field(
        default=None, metadata={"help": "Stop with an error when the mean per-sequence KL exceeds this."}
    )
    audit_reward_model_path: str | None = field(
        default=None,
        metadata={"help": "A second reward stage's output, never optimised against: its score is logged as audit_score."},
    )
    stop_on_overoptimisation: bool = field(
        default=False, metadata={"help": "Stop with an error when score rises while audit_score falls."}
    )

    keep_freed_cpu_memory: bool = field(
        default=True, metadata={"help": "On CPU (glibc), reuse freed memory instead of returning it to the system."}
    )

    def __post_init__(self):
        super().__post_init__()
        positive_ints = ("num_ppo_epochs", "num_mini_batches", "max_new_tokens")
        for name in positive_ints + tuple(n for n in ("num_updates", "generation_batch_size") if getattr(self, n) is not None):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1 (or null for no limit), got {self.max_prompt_length}.")
        for name in ("temperature", "cliprange", "cliprange_value", "target_kl", "kl_horizon"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        for name in ("kl_coef", "vf_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got '{self.kl_estimator}'.")
        if self.stop_token not in ("eos", None):
            raise ValueError(
                f"stop_token must be 'eos' or null, got '{self.stop_token}'; give another token as stop_token_id."
            )
        if (self.reward_mean is None) != (self.reward_std is None):
            raise ValueError("Set reward_mean and reward_std together (the reward stage's score mean and std), or neither.")
        if self.reward_std is not None and self.reward_std <= 0:
            raise ValueError(f"reward_std must be > 0, got {self.reward_std}.")
        for name in ("reward_clip", "kl_limit", "missing_eos_penalty"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or null to turn it off), got {value}.")
        if self.stop_on_overoptimisation and not self.audit_reward_model_path:
            raise ValueError("stop_on_overoptimisation needs audit_reward_model_path (a second reward stage's output).")
        if self.value_learning_rate is None:
            self.value_learning_rate = self.learning_rate
        elif self.value_learning_rate < 0:
            raise ValueError(f"value_learning_rate must be >= 0, got {self.value_learning_rate}.")
        if self.save_strategy.value not in ("steps", "no"):
            raise ValueError(
                f"save_strategy '{self.save_strategy.value}' does not apply to PPO; use 'steps' (every save_steps "
                "updates) or 'no'."
            )
        if self.save_strategy.value == "steps" and self.save_steps != int(self.save_steps):
            raise ValueError(f"save_steps counts PPO updates and must be a whole number, got {self.save_steps}.")
