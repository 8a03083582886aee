"""PPO for RLHF (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022), on Accelerate.

Each update: sample responses to a batch of prompts (`make_rollout`), score them with the reward model, turn
scores and the per-token KL to the reference into per-token rewards, estimate advantages with GAE, then make
`num_ppo_epochs` passes of clipped policy and value losses over the batch (`optimise`). The maths lives in
`alignkit.ppo.core`; this file is the loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trl
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase, get_scheduler
from transformers.trainer_utils import TrainOutput
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model, entropy_from_logits, selective_log_softmax

from alignkit import tracking
from alignkit.errors import AlignkitError, DataError, ModelError
from alignkit.models import embedding_rows, load_output_tokenizer
from alignkit.outputs import complete_checkpoints, no_checkpoint, read_saved_config
from alignkit.ppo import core
from alignkit.ppo.config import PPOConfig
from alignkit.ppo.models import PolicyAndValue, PPOModels, SequenceClassifierView, load_trained, save_trained
from alignkit.rewards import RewardScorer

STATE_FILE = "ppo_state.pt"
DEEPSPEED_DIR = "deepspeed"  # in a checkpoint: what DeepSpeed wrote (weights and optimiser, a slice per process)
LOG_FILE = "trainer_state.json"
REWARD_MAX_LENGTH = trl.RewardConfig.__dataclass_fields__["max_length"].default  # a reward folder that saved no config

RewardFn = Callable[[list[str], list[str]], "torch.Tensor | list[float]"]


class PPOStoppedError(AlignkitError):
    """The health monitor stopped training (KL past `kl_limit`, or a non-finite score, loss or gradient)."""


@dataclass
class Rollout:
    """
    One update's experience on this process. Prompts are left-padded, responses right-padded (pad after the stop
    token); `response_mask` is 1 on response tokens, the stop token included. No vocabulary-sized tensor is kept.
    """

    input_ids: torch.Tensor  # (B, P + T) prompt + response
    attention_mask: torch.Tensor  # (B, P + T)
    position_ids: torch.Tensor  # (B, P + T)
    responses: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T)
    lengths: torch.Tensor  # (B,) response lengths
    stopped: torch.Tensor  # (B,) True where the response ended with its stop token
    logprobs: torch.Tensor  # (B, T) under the policy that sampled
    ref_logprobs: torch.Tensor  # (B, T) under the reference
    values: torch.Tensor  # (B, T) value of the state before each token
    raw_scores: torch.Tensor  # (B,) reward model (or reward_fn) output
    scores: torch.Tensor  # (B,) normalised, clipped and penalised: the reward at the last token
    kl: torch.Tensor  # (B, T) per-token KL estimate (0 on padding)
    rewards: torch.Tensor  # (B, T) -kl_coef * kl + score at the last token
    advantages: torch.Tensor  # (B, T) whitened GAE advantages
    returns: torch.Tensor  # (B, T) value targets
    audit_scores: torch.Tensor | None = None  # (B,) the audit reward model's raw scores, when one is configured


class PolicySampler(LogitsProcessor):
    """
    Samples every next token from the policy at `temperature` inside `generate` (which then runs greedy and takes the
    one token left finite) and records its log-probability: the rollout's policy log-probs without a second forward
    pass over the samples. Written by hand because generate's own sampling (softmax, then a random exponential per
    vocabulary entry) costs ~2% of a PPO update on CPU; inverse-CDF sampling from the log-softmax this needs anyway
    draws one number per row. Only one step's log-softmax (batch x vocab) is held at a time.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # As the training forward computes them: float32 logits divided by the temperature.
        logprobs = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        # float64: a float32 running sum over a large vocabulary would misplace the rare tokens' intervals.
        cdf = logprobs.double().exp_().cumsum_(-1)
        draw = torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, draw, right=True)  # `right`: never a token of probability 0
        tokens = torch.where(tokens < cdf.shape[1], tokens, logprobs.argmax(-1, keepdim=True))  # a draw rounded up
        self.steps.append(logprobs.gather(1, tokens).squeeze(1))
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)

    def logprobs(self) -> torch.Tensor:
        """(batch, steps) log-probs of the sampled tokens."""
        return torch.stack(self.steps, 1)


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding shifts where each sequence starts; positions must count real tokens only, as in generation.
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def _used_columns(attention_mask: torch.Tensor, response_width: int) -> tuple[slice, int]:
    """
    The columns of a (micro-)batch worth computing, and how many of its response columns they keep: columns that are
    padding in every row (left of the longest prompt, right of the longest response) change no real token's result.
    """
    used = attention_mask.any(0)
    start = int(used.int().argmax())
    end = len(used) - int(used.flip(0).int().argmax())
    return slice(start, end), response_width - (len(used) - end)


def keep_freed_cpu_memory() -> bool:
    """
    glibc's malloc: serve every allocation from the heap instead of a fresh mapping per large block, and give freed
    memory back to the system only beyond 1 GiB (see `PPOConfig.keep_freed_cpu_memory`). False where there is no
    glibc (macOS, Windows, musl); the allocator is then left as it is.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))


def _quantized(module: torch.nn.Module) -> bool:
    return any(getattr(m, "quantization_config", None) is not None for m in module.modules() if hasattr(m, "config"))


class PPOTrainer:
    """
    Trains `models.policy` (and `models.value`) with PPO against `models.reward` — or a rule-based
    `reward_fn(prompts, responses) -> scores` over decoded text — keeping it near `models.ref` with a KL penalty.

    Args:
        args: the `PPOConfig`.
        models: from `load_ppo_models`.
        processing_class: the tokenizer the models were trained with (its chat template renders the prompts).
        train_dataset: rows with a `prompt`: a list of chat messages (rendered with the chat template and the
            generation prompt) or plain text (used as is).
        reward_fn: instead of a reward model; gets the rendered prompts and the decoded responses.
    """

    def __init__(
        self,
        args: PPOConfig,
        models: PPOModels,
        processing_class: PreTrainedTokenizerBase,
        train_dataset,
        reward_fn: RewardFn | None = None,
    ):
        if (models.reward is None) == (reward_fn is None):
            raise ValueError("Give PPOTrainer exactly one source of scores: a reward model in `models` or `reward_fn`.")
        self.args, self.models, self.tokenizer, self.reward_fn = args, models, processing_class, reward_fn
        self.eval_dataset = None  # the shape `alignkit.outputs.train_and_save` expects of a trainer
        mixed_precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        # `report_to`'s trackers through Accelerate (main process only), TensorBoard under output_dir/runs/ as the Trainer.
        trackers, tracker_kwargs = tracking.accelerate_trackers(args)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=mixed_precision,
            cpu=args.use_cpu,
            log_with=trackers or None,
            project_dir=args.output_dir,
        )
        if trackers:
            config = {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers(args.project, config=config, init_kwargs=tracker_kwargs)
        if args.keep_freed_cpu_memory and self.accelerator.device.type == "cpu":
            keep_freed_cpu_memory()
        # Different sampling noise on each process; the same on every rerun.
        set_seed(args.seed, device_specific=True)

        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_token_id = self.tokenizer.pad_token_id
        self.stop_token_id = args.stop_token_id
        if self.stop_token_id is None and args.stop_token == "eos":
            self.stop_token_id = self.tokenizer.eos_token_id
        self.prompts, self.prompt_texts, self.prompt_rows = self._encode_prompts(train_dataset)
        for role in ("policy", "ref", "value", "reward"):
            module = getattr(models, role)
            rows = embedding_rows(module.model) if module is not None else len(self.tokenizer)
            if rows < len(self.tokenizer):  # would fail deep inside a forward pass; and a wrong vocabulary scores nonsense
                raise ModelError(
                    f"The {role} model has {rows} token embeddings but the tokenizer {len(self.tokenizer)} tokens; "
                    "every PPO model must use the SFT model's tokenizer."
                )

        # Sizes: see PPOConfig's docstring.
        self.micro_batch_size = args.per_device_train_batch_size
        self.local_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
        self.batch_size = self.local_batch_size * self.accelerator.num_processes
        self.num_updates = args.num_updates or max(
            1, math.ceil(args.num_train_epochs * len(self.prompts) / self.batch_size)
        )
        self.steps_per_update = args.num_ppo_epochs * args.num_mini_batches

        # The reward model scores what its stage trained on, tokenised by the one path that does (RewardScorer): the
        # conversation through the reward folder's chat template, ending in EOS, prompts cut from the left to its
        # max_length. Its forward pass is the reward role's, on the shared base.
        self.reward_scorer = None
        if models.reward is not None:
            path = models.reward_path
            self.reward_scorer = RewardScorer.from_model(
                SequenceClassifierView(models.reward),
                load_output_tokenizer(Path(path)) if path else self.tokenizer,
                batch_size=args.generation_batch_size or self.local_batch_size,  # as many as generate's batches
                max_length=read_saved_config(path).get("max_length", REWARD_MAX_LENGTH) if path else None,
            )

        # Dropout makes the logprobs of one forward disagree with the next; PPO's ratio needs them equal.
        for module in models.modules():
            disable_dropout_in_model(module)
        self.policy_params = models.policy_parameters()
        self.value_params = models.value_parameters()
        trained = self.policy_params + self.value_params
        optimizer = torch.optim.AdamW(
            [
                {"params": self.policy_params, "lr": args.learning_rate},
                {"params": self.value_params, "lr": args.value_learning_rate},
            ],
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
            # One fused kernel instead of a loop over tensors: ~4x faster steps on CPU for a 40M-parameter model.
            fused=all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in trained),
        )
        total_steps = self.num_updates * self.steps_per_update
        # Not passed through accelerator.prepare: Accelerate would step it once per process per optimiser step.
        self.scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.get_warmup_steps(total_steps),
            num_training_steps=total_steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
        )
        model = PolicyAndValue(models.policy, models.value)
        if args.activation_checkpointing:
            model.gradient_checkpointing_enable(args.activation_checkpointing_kwargs or {"use_reentrant": False})
        quantized = _quantized(model)
        deepspeed = self.accelerator.state.deepspeed_plugin
        self.deepspeed = deepspeed is not None
        if self.deepspeed and deepspeed.is_auto("train_micro_batch_size_per_gpu"):
            # DeepSpeed reads the micro-batch from a prepared dataloader; PPO prepares none (Accelerate would raise).
            deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = self.micro_batch_size
        if self.deepspeed and deepspeed.is_auto("gradient_clipping"):
            # DeepSpeed clips inside its own step (Accelerate would fill in 1.0 whatever max_grad_norm says).
            deepspeed.deepspeed_config["gradient_clipping"] = args.max_grad_norm or 0.0
        # A 4-bit model is already on its device and cannot move; DeepSpeed places models itself (and refuses the list).
        placement = {"device_placement": [False, True]} if quantized else {}
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer, **placement)
        # Train mode throughout, rollouts included: with dropout off both modes compute the same, and on CPU
        # bitsandbytes repacks 4-bit weights for inference at the first eval-mode forward, after which backward
        # through them is wrong.
        self.model.train()
        # Frozen models and heads outside the trained module (the reference in full mode, the reward model's head).
        frozen = [models.ref.model] + ([models.reward.model, models.reward.head] if models.reward else [])
        for module in frozen:
            if not any(module is m for m in model.modules()) and not _quantized(module):
                module.to(self.accelerator.device)
        self.optimizer_steps = 0  # real optimiser steps, for checks

        # transformers fills every field left None from the model's own generation config: one that stops at its EOS,
        # or applies a repetition penalty, behind PPO's back. So each is set here, the sampling ones to transformers'
        # neutral defaults (a model's own temperature or top-k would only draw a warning next to greedy decoding).
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=False,  # greedy over the one token PolicySampler drew from the policy itself (no top-k/p)
            temperature=1.0,
            top_k=50,
            top_p=1.0,
            eos_token_id=self.stop_token_id if self.stop_token_id is not None else [],  # [], not None: see above
            repetition_penalty=1.0,
            pad_token_id=self.pad_token_id,
        )
        self.kl_ctl = core.KLController(args.kl_coef, args.adaptive_kl, args.target_kl, args.kl_horizon)
        self.update = 0  # updates done
        self.log_history: list[dict] = []
        # Training seconds up to the end of the last update, counted across resumes (checkpoints carry it), so that
        # `train_runtime` is the whole run's, as `log_history` is.
        self._train_seconds = 0.0
        self._last_checkpoint: Path | None = None
        self._pending_checkpoint: tuple[int, dict] | None = None
        self.audit_scorer = self._load_audit_scorer()

    # --- data ------------------------------------------------------------------------------------------------------

    def _encode_prompts(self, dataset) -> tuple[list[list[int]], list[str], list]:
        if len(dataset) == 0:
            raise DataError("The PPO training data holds no prompts.")
        columns = getattr(dataset, "column_names", None) or list(dataset[0])
        if "prompt" not in columns:
            raise DataError(f"PPO data needs a 'prompt' column (chat messages or text); found {columns}.")
        ids, texts = [], []
        rows = list(dataset["prompt"]) if hasattr(dataset, "column_names") else [r["prompt"] for r in dataset]
        for prompt in rows:
            if isinstance(prompt, str):
                text, special = prompt, True
            else:
                if not self.tokenizer.chat_template:
                    raise DataError(
                        "Conversational prompts need a chat template; load the tokenizer with "
                        "alignkit.models.load_tokenizer (or set chat_template_path)."
                    )
                # The reward model was trained on chat-formatted text: render prompts the same way.
                text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
                special = False  # the template already holds any special tokens it wants
            tokens = self.tokenizer(text, add_special_tokens=special)["input_ids"]
            if self.args.max_prompt_length:
                tokens = tokens[-self.args.max_prompt_length :]  # keep the end, which the response continues
            ids.append(tokens)
            texts.append(self.tokenizer.decode(tokens))
        return ids, texts, rows

    def _prompt_indices(self, update: int) -> list[int]:
        """
        This process's prompts for update `update` (0-based): a slice of an endless stream of seeded permutations of
        the data, so the position in the data is a function of the update count and resuming needs nothing more.
        """
        n = len(self.prompts)
        start = update * self.batch_size + self.accelerator.process_index * self.local_batch_size
        indices, cache = [], {}
        for k in range(start, start + self.local_batch_size):
            epoch = k // n
            if epoch not in cache:
                seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
                generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
                cache[epoch] = torch.randperm(n, generator=generator).tolist()
            indices.append(cache[epoch][k % n])
        return indices

    # --- experience ------------------------------------------------------------------------------------------------

    def _reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, "sum") if self.accelerator.num_processes > 1 else tensor

    def _chunks(self, n: int, size: int | None = None):
        size = size or self.micro_batch_size
        for start in range(0, n, size):
            yield slice(start, start + size)

    def _generation_chunks(self, n: int):
        """Slices of `generation_batch_size` sequences (all `n` at once when unset)."""
        return self._chunks(n, self.args.generation_batch_size or n)

    def _logprobs(self, model, input_ids, attention_mask, position_ids, responses) -> torch.Tensor:
        """Log-probabilities of `responses` (the last tokens of `input_ids`), one chunk at a time."""
        out = []
        for s in self._chunks(len(input_ids)):
            cols, width = _used_columns(attention_mask[s], responses.shape[1])
            logits = model(input_ids[s, cols], attention_mask[s, cols], position_ids[s, cols], predict_last=width)
            logprobs = selective_log_softmax(logits.float(), responses[s, :width], temperature=self.args.temperature)
            out.append(F.pad(logprobs, (0, responses.shape[1] - width)))
            del logits  # (chunk, T, vocab): never kept beyond its chunk
        return torch.cat(out)

    def _scalars(self, model, input_ids, attention_mask, position_ids) -> torch.Tensor:
        # As many sequences per forward as generation took: without gradients and with one number per token out,
        # this holds less than generation's KV cache did, and larger batches run faster.
        chunks = self._generation_chunks(len(input_ids))
        return torch.cat([model(input_ids[s], attention_mask[s], position_ids[s]) for s in chunks])

    def score_responses(self, indices: list[int], responses: torch.Tensor, lengths: torch.Tensor,
                        scorer: RewardScorer | None = None) -> torch.Tensor:
        """
        The reward model's (or `reward_fn`'s, or `scorer`'s: the audit reward model) score of each response to the
        prompt at `indices`, before normalisation: `responses` are right-padded token ids, the first `lengths[i]` of
        row i the response (its stop token included when it stopped). The reward model reads the response as text in
        its own training format, the same score `RewardScorer(reward_model_path).score(prompt, answer)` gives: an
        answer that never stopped is scored as if finished (`missing_eos_penalty` is what marks it).
        """
        rows = list(zip(responses.tolist(), lengths.tolist()))
        if scorer is None and self.reward_fn is not None:
            texts = [self.tokenizer.decode(r[:n], skip_special_tokens=True) for r, n in rows]
            scores = self.reward_fn([self.prompt_texts[i] for i in indices], texts)
            return torch.as_tensor(scores, dtype=torch.float32, device=responses.device).reshape(-1)
        answers = []
        for i, (response, n) in zip(indices, rows):
            if self.stop_token_id is not None and n and response[n - 1] == self.stop_token_id:
                n -= 1  # the reward model's format adds its own end (EOS)
            # The answer as the text after the prompt's: decoding the response alone would drop a leading space with
            # some tokenizers (SentencePiece).
            prompt = self.tokenizer.decode(self.prompts[i], skip_special_tokens=True)
            full = self.tokenizer.decode(self.prompts[i] + response[:n], skip_special_tokens=True)
            alone = full[len(prompt) :] if full.startswith(prompt) else None
            answers.append(alone if alone is not None else self.tokenizer.decode(response[:n], skip_special_tokens=True))
        scores = (scorer or self.reward_scorer).score([self.prompt_rows[i] for i in indices], answers)
        return torch.tensor(scores, dtype=torch.float32, device=responses.device)

    def _shape_scores(self, scores: torch.Tensor, stopped: torch.Tensor) -> torch.Tensor:
        """Normalise with the reward stage's statistics, clip, then penalise responses that never stopped."""
        args = self.args
        if args.reward_mean is not None:
            scores = (scores - args.reward_mean) / args.reward_std
        if args.reward_clip is not None:
            scores = scores.clamp(-args.reward_clip, args.reward_clip)
        if self.stop_token_id is not None:
            scores = core.missing_eos_penalty(scores, stopped, args.missing_eos_penalty)
        return scores

    @torch.no_grad()
    def make_rollout(self, indices: list[int]) -> Rollout:
        """Sample responses to the prompts at `indices`, score them and compute advantages and returns."""
        args, device = self.args, self.accelerator.device
        queries = [torch.tensor(self.prompts[i], dtype=torch.long) for i in indices]
        width = max(len(q) for q in queries)
        query_ids = torch.stack([F.pad(q, (width - len(q), 0), value=self.pad_token_id) for q in queries]).to(device)
        query_mask = torch.stack([F.pad(torch.ones_like(q), (width - len(q), 0)) for q in queries]).to(device)

        # 1. Sample, recording the policy's log-probs of the sampled tokens as generation goes (see PolicySampler;
        # dropout is off, so they equal a training forward's). Generation's logits are never kept.
        chunks, logprob_chunks = [], []
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped, self.accelerator.autocast():
            for s in self._generation_chunks(len(indices)):
                sampler = PolicySampler(args.temperature)
                out = unwrapped.policy.generate(
                    input_ids=query_ids[s],
                    attention_mask=query_mask[s],
                    generation_config=self.generation_config,
                    logits_processor=LogitsProcessorList([sampler]),
                )[:, width:]
                missing = args.max_new_tokens - out.shape[1]  # every row stopped early
                logprob_chunks.append(F.pad(sampler.logprobs(), (0, missing)))
                chunks.append(F.pad(out, (0, missing), value=self.pad_token_id))
        responses, lengths, stopped = core.truncate_after_stop(torch.cat(chunks), self.stop_token_id, self.pad_token_id)
        responses = responses[:, : int(lengths.max())]
        logprobs = torch.cat(logprob_chunks)[:, : responses.shape[1]]
        response_mask = core.length_mask(lengths, responses.shape[1])
        input_ids = torch.cat([query_ids, responses], 1)
        attention_mask = torch.cat([query_mask, response_mask], 1)
        position_ids = _position_ids(attention_mask)

        # 2. Score the samples under every model, a chunk at a time.
        unwrapped = self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast():
            ref_logprobs = self._logprobs(self.models.ref, input_ids, attention_mask, position_ids, responses)
            values = self._scalars(unwrapped.value, input_ids, attention_mask, position_ids)
            values = values[:, width - 1 : -1]
            raw_scores = self.score_responses(indices, responses, lengths)
            # The audit reward model reads the same answers, each in its own stage's training format.
            audit_scores = self.score_responses(indices, responses, lengths, self.audit_scorer) if self.audit_scorer else None
        mask = response_mask.float()
        logprobs, ref_logprobs, values = logprobs * mask, ref_logprobs * mask, values * mask

        # 3. Rewards and advantages; batch statistics span every process.
        scores = self._shape_scores(raw_scores, stopped)
        kl = core.kl_penalty(logprobs, ref_logprobs, args.kl_estimator) * mask
        rewards = core.per_token_rewards(scores, kl, mask, self.kl_ctl.value)
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, all_reduce=self._reduce)
        advantages, returns = core.gae(rewards, values, mask, args.gamma, args.lam)
        advantages = core.masked_whiten(advantages, mask, all_reduce=self._reduce)
        return Rollout(
            input_ids, attention_mask, position_ids, responses, response_mask, lengths, stopped,
            logprobs, ref_logprobs, values, raw_scores, scores, kl, rewards, advantages, returns, audit_scores,
        )  # fmt: skip

    def rollout_stats(self, r: Rollout) -> dict[str, float]:
        """Means over the whole rollout batch (every process) of what the rollout measured."""
        gather = self.accelerator.gather
        mask = r.response_mask.float()
        kl_per_sequence = r.kl.sum(1)
        per_sequence = torch.stack(
            [
                r.raw_scores,
                kl_per_sequence,
                r.scores - self.kl_ctl.value * kl_per_sequence,
                r.lengths.float(),
                r.stopped.float(),
            ],
            1,
        )
        score, kl, reward, length, eos = gather(per_sequence).mean(0).tolist()
        explained = core.explained_variance(r.values, r.returns, mask, self._reduce).item()
        return {
            "score": score,
            "kl": kl,
            "reward": reward,
            "response_length": length,
            "eos_rate": eos,
            "explained_variance": explained,
        }

    # --- optimisation ----------------------------------------------------------------------------------------------

    def optimise(self, r: Rollout, update: int) -> dict[str, float]:
        """`num_ppo_epochs` passes over the rollout in minibatches of `gradient_accumulation_steps` micro-batches."""
        args = self.args
        clipping = bool(args.max_grad_norm and args.max_grad_norm > 0)
        stats = defaultdict(list)
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(len(r.responses), device=r.responses.device)
            for start in range(0, len(order), self.micro_batch_size):
                i = order[start : start + self.micro_batch_size]
                cols, width = _used_columns(r.attention_mask[i], r.responses.shape[1])
                t = slice(0, width)  # the response columns kept; the losses are means over real tokens only
                # Accelerate counts micro-batches: every `gradient_accumulation_steps`-th one syncs and steps.
                with self.accelerator.accumulate(self.model):
                    logits, values = self.model(r.input_ids[i, cols], r.attention_mask[i, cols], r.position_ids[i, cols], width)
                    logits = logits.float() / args.temperature
                    logprobs = selective_log_softmax(logits, r.responses[i, t])
                    mask = r.response_mask[i, t]
                    pg_loss, clipfrac, approx_kl = core.policy_loss(
                        logprobs, r.logprobs[i, t], r.advantages[i, t], mask, args.cliprange
                    )
                    vf_loss, vf_clipfrac = core.value_loss(
                        values, r.values[i, t], r.returns[i, t], mask, args.cliprange_value
                    )
                    loss = pg_loss + args.vf_coef * vf_loss
                    if not clipping or self.deepspeed:
                        self._check_finite_losses(update, pg_loss, vf_loss)
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and clipping:
                        for name, norm in self._clip_gradients(update).items():
                            stats[name].append(norm)
                    self.optimizer.step()
                    if self.accelerator.sync_gradients:
                        self.scheduler.step()
                        self.optimizer_steps += 1
                    self.optimizer.zero_grad()
                with torch.no_grad():
                    entropy = core.masked_mean(entropy_from_logits(logits), mask)
                for name, value in (
                    ("policy_loss", pg_loss), ("value_loss", vf_loss), ("clipfrac", clipfrac),
                    ("value_clipfrac", vf_clipfrac), ("approx_kl", approx_kl), ("entropy", entropy),
                ):  # fmt: skip
                    stats[name].append(value.detach())
                del logits
        # Every micro-batch counts once (as it did in the loss), on every process.
        names = sorted(stats)
        device = r.responses.device
        means = torch.stack([torch.stack([torch.as_tensor(v, device=device).float() for v in stats[n]]).mean() for n in names])
        return dict(zip(names, self.accelerator.reduce(means, "mean").tolist()))

    def _check_finite_losses(self, update: int, pg_loss: torch.Tensor, vf_loss: torch.Tensor) -> None:
        """
        Without clipping (or under DeepSpeed, which steps inside the backward pass), the health check reads the losses
        before their backward pass: a non-finite loss is what makes gradients NaN, and reading two numbers costs
        nothing where measuring every gradient costs a pass over all of them (~1% of a full-parameter update).
        Counted over every process, so all of them stop together.
        """
        bad = self._reduce(torch.stack([pg_loss, vf_loss]).detach().isfinite().logical_not().float())
        for role, loss, flag in zip(("policy", "value"), (pg_loss, vf_loss), bad.tolist()):
            if flag:
                value = loss.item()
                self._stop(update, f"the {role} loss is {value if not math.isfinite(value) else 'NaN or inf on another process'}")

    def _clip_gradients(self, update: int) -> dict[str, torch.Tensor]:
        """
        Clip the policy's and the value model's gradients to `max_grad_norm` each and return their norms; stop on a
        non-finite norm. Under DeepSpeed, which holds the gradients itself and has already clipped the norm of both
        together in its step, that one norm is returned as `grad_norm`.
        """
        if self.deepspeed:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
            norms = [("policy and value", "grad_norm", norm)] if norm is not None else []
        else:
            self.accelerator.unscale_gradients()  # fp16 only: measure the true gradients
            clip = torch.nn.utils.clip_grad_norm_
            norms = [
                ("policy", "grad_norm", clip(self.policy_params, self.args.max_grad_norm)),
                ("value", "value_grad_norm", clip(self.value_params, self.args.max_grad_norm)),
            ]
        # Gradients are already averaged over processes here, so every process sees the same norm and stops together.
        for role, _, norm in norms:
            if not torch.isfinite(torch.as_tensor(norm)):
                self._stop(update, f"the {role} gradient norm is {float(norm)} (a loss turned NaN or inf)")
        return {name: norm for _, name, norm in norms}

    # --- the loop --------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Run `num_updates` PPO updates (resuming from a checkpoint if asked: True = the latest in output_dir)."""
        args, start_time = self.args, time.time()
        resume = args.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
        if isinstance(resume, str) and resume.lower() in ("true", "last", "yes"):
            resume = True
        if resume:
            self._resume(resume)
        seconds_before = self._train_seconds
        progress = tqdm(
            total=self.num_updates,
            initial=self.update,
            desc="PPO",
            disable=not self.accelerator.is_main_process or bool(args.disable_tqdm),
        )
        while self.update < self.num_updates:
            update = self.update + 1
            rollout = self.make_rollout(self._prompt_indices(self.update))
            stats = self.rollout_stats(rollout)
            stats.update(self._audit(rollout, update, stats))
            self._check_rollout(update, stats)
            self._save_pending_checkpoint()  # its policy just produced a healthy rollout
            stats.update(self.optimise(rollout, update))
            self._check_losses(update, stats)
            self.kl_ctl.update(stats["kl"], self.batch_size)
            self.update = update
            self._train_seconds = seconds_before + time.time() - start_time
            stats.update(
                update=update,
                episode=update * self.batch_size,
                kl_coef=self.kl_ctl.value,
                lr=self.scheduler.get_last_lr()[0],
            )
            self._log(stats, progress)
            if args.save_strategy.value == "steps" and update % int(args.save_steps) == 0:
                self._pending_checkpoint = (update, _rng_state())
            del rollout
        progress.close()
        self._save_pending_checkpoint()  # the last one has no next rollout to vouch for it
        for tracker in self.accelerator.trackers:  # not end_training(): it ends the process group save_model needs
            tracker.finish()
        metrics = {"train_runtime": seconds_before + time.time() - start_time, "updates": self.update}
        if self.log_history:
            metrics.update({k: v for k, v in self.log_history[-1].items() if k not in ("update", "episode")})
        mean_loss = float(np.mean([h["policy_loss"] for h in self.log_history])) if self.log_history else 0.0
        return TrainOutput(global_step=self.update, training_loss=mean_loss, metrics=metrics)

    def _log(self, stats: dict, progress) -> None:
        stats = {k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()}
        self.log_history.append(stats)
        progress.update(1)
        if self.update % max(1, int(self.args.logging_steps)) == 0 or self.update == self.num_updates:
            progress.set_postfix(score=stats["score"], kl=stats["kl"])
            if self.accelerator.is_main_process and not self.args.disable_tqdm:
                progress.write(json.dumps(stats))
            self.accelerator.log(stats, step=self.update)

    # --- the audit reward model ------------------------------------------------------------------------------------

    def _load_audit_scorer(self):
        """A second reward model, never optimised against (`audit_reward_model_path`), or None."""
        if not self.args.audit_reward_model_path:
            return None
        from alignkit.rewards import RewardScorer

        scorer = RewardScorer(self.args.audit_reward_model_path, batch_size=self.micro_batch_size)
        return scorer.to(self.accelerator.device)

    def _audit(self, r: Rollout, update: int, stats: dict) -> dict[str, float]:
        """
        `audit_score`: the audit reward model's mean raw score of this update's responses, the same answers the
        optimised reward model read; with `stop_on_overoptimisation`, stop when `score` has risen while it
        fell (`alignkit.rewards.overoptimisation`, checked from update 8 on so its windows smooth out sampling noise).
        """
        if self.audit_scorer is None:
            return {}
        from alignkit.rewards import describe_overoptimisation, overoptimisation

        audit = self.accelerator.gather(r.audit_scores).mean().item()
        if self.args.stop_on_overoptimisation and update >= 8:
            history = [*self.log_history, {**stats, "audit_score": audit}]
            audit_std = (self.audit_scorer.stats or {}).get("std") or 1.0
            found = overoptimisation([h["score"] for h in history], [h["audit_score"] for h in history],
                                     scales=(self.args.reward_std or 1.0, audit_std))
            if found:
                self._stop(update, describe_overoptimisation(found))
        return {"audit_score": audit}

    # --- health ----------------------------------------------------------------------------------------------------

    def _stop(self, update: int, reason: str):
        where = (
            f"the last good checkpoint is {self._last_checkpoint}"
            if self._last_checkpoint
            else "no checkpoint was saved before it"
        )
        raise PPOStoppedError(f"PPO stopped at update {update}: {reason}; {where}.")

    def _check_rollout(self, update: int, stats: dict) -> None:
        for name in ("score", "kl", "reward"):
            if not math.isfinite(stats[name]):
                self._stop(update, f"the mean {name} is {stats[name]}")
        if self.args.kl_limit is not None and stats["kl"] > self.args.kl_limit:
            self._stop(update, f"mean KL {stats['kl']:.4g} exceeds kl_limit {self.args.kl_limit:g}")

    def _check_losses(self, update: int, stats: dict) -> None:
        for name in ("policy_loss", "value_loss"):
            if not math.isfinite(stats[name]):
                self._stop(update, f"the {name} is {stats[name]}")

    # --- saving ----------------------------------------------------------------------------------------------------

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def save_model(self, output_dir: str | None = None) -> None:
        """The policy (LoRA adapter or full model, safetensors) and tokenizer; the value model in `value/`."""
        output_dir = Path(output_dir or self.args.output_dir)
        self.accelerator.wait_for_everyone()
        with self._gathered(self.policy_params + self.value_params):
            if self.accelerator.is_main_process:
                output_dir.mkdir(parents=True, exist_ok=True)
                save_trained(self.models, output_dir)
                self.tokenizer.save_pretrained(output_dir)
                self.tokenizer.save_pretrained(output_dir / "value")
        self.accelerator.wait_for_everyone()

    @staticmethod
    def _gathered(params: list[torch.nn.Parameter]):
        """
        Under ZeRO-3, whose processes each hold a slice of every large weight, the whole of `params` on every process
        while inside (collective: every process must enter). Elsewhere, nothing to do.
        """
        if not any(hasattr(p, "ds_id") for p in params):
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params)

    def save_metrics(self, split: str, metrics: dict) -> None:
        if self.accelerator.is_main_process:
            path = Path(self.args.output_dir) / f"{split}_results.json"
            path.write_text(json.dumps(metrics, indent=2), encoding="utf-8")

    def save_state(self) -> None:
        if self.accelerator.is_main_process:
            state = {"update": self.update, "num_updates": self.num_updates, "log_history": self.log_history}
            (Path(self.args.output_dir) / LOG_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")

    def _save_pending_checkpoint(self) -> None:
        if self._pending_checkpoint is not None:
            self._save_checkpoint(*self._pending_checkpoint)
            self._pending_checkpoint = None

    def _save_checkpoint(self, update: int, rng: dict) -> None:
        """
        Write `checkpoint-<update>` atomically: everything goes to a temporary folder that is renamed when complete,
        so a crash never leaves a half-written checkpoint that `resume_from_checkpoint: true` would pick.
        """
        output_dir = Path(self.args.output_dir)
        final, tmp = output_dir / f"checkpoint-{update}", output_dir / f"tmp-checkpoint-{update}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.save_model(tmp)
        if self.deepspeed:  # each process holds its own slice of the optimiser state: DeepSpeed writes them all
            self.accelerator.save_state(str(tmp / DEEPSPEED_DIR))
        if self.accelerator.is_main_process:
            state = {
                "update": update,
                "optimizer": None if self.deepspeed else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "kl_ctl": self.kl_ctl.state_dict(),
            }
            torch.save(state, tmp / STATE_FILE)
            log = {"update": update, "log_history": self.log_history, "train_seconds": self._train_seconds}
            (tmp / LOG_FILE).write_text(json.dumps(log), encoding="utf-8")
        self.accelerator.wait_for_everyone()
        torch.save(rng, tmp / f"rng_state_{self.accelerator.process_index}.pt")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate_checkpoints(keep=final)
        self.accelerator.wait_for_everyone()
        self._last_checkpoint = final

    def _rotate_checkpoints(self, keep: Path) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        old = [p for p in complete_checkpoints(self.args.output_dir) if p != keep]
        for path in old[: max(0, len(old) - (limit - 1))]:
            shutil.rmtree(path)

    def _resume(self, checkpoint: str | bool) -> None:
        if checkpoint is True:
            found = complete_checkpoints(self.args.output_dir)
            if not found:
                raise AlignkitError(no_checkpoint(self.args.output_dir))
            path = found[-1]
        else:
            path = Path(checkpoint)
            if not (path / STATE_FILE).is_file():
                raise AlignkitError(f"resume_from_checkpoint: {path} is not a PPO checkpoint (no {STATE_FILE}).")
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if self.deepspeed != (state["optimizer"] is None):
            raise AlignkitError(
                f"{path} was written {'without' if self.deepspeed else 'under'} DeepSpeed; resume it the same way."
            )
        if self.deepspeed:
            self.accelerator.load_state(str(path / DEEPSPEED_DIR))
        else:
            load_trained(self.models, path)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.update = state["update"]
        log = json.loads((path / LOG_FILE).read_text(encoding="utf-8"))
        self.log_history, self._train_seconds = log["log_history"], float(log.get("train_seconds", 0.0))
        rng_file = path / f"rng_state_{self.accelerator.process_index}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=True))
        self._last_checkpoint = path


def _rng_state() -> dict:
    """Every random state a run draws from, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
