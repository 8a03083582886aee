"""
Generation with vLLM for the stages whose cost is generation (critique_revise, ai_feedback's sampled answers), when it
is installed (`pip install "alignkit[vllm]"`) and there is a CUDA GPU; never required.

vLLM is given the very token ids the transformers path generates from (the chat template rendered by alignkit, no
special token added) and its answers are decoded by the same tokenizer, so the two paths differ only in the sampler.
It loads the model by name, as a user would: a full model as it is, a PEFT adapter as a LoRA over its base.
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Sequence

import torch

from alignkit.errors import ConfigError
from alignkit.evaluation.generation import Conversation, render

INSTALL_HINT = 'pip install "alignkit[vllm]"'


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    return torch.cuda.is_available()


def check_use_vllm(use_vllm: bool | None) -> None:
    """A config's `use_vllm: true` where vLLM cannot run fails when the config is read, before any model loads."""
    if use_vllm and not vllm_installed():
        raise ConfigError(f"`use_vllm: true` but vLLM is not installed: {INSTALL_HINT}, or leave use_vllm unset.")
    if use_vllm and not cuda_available():
        raise ConfigError("`use_vllm: true` needs a CUDA GPU and none is visible; leave use_vllm unset on this machine.")


def wants_vllm(use_vllm: bool | None) -> bool:
    """`use_vllm` as set, or when unset (auto): whether vLLM is installed and a CUDA GPU is there."""
    return use_vllm if use_vllm is not None else vllm_installed() and cuda_available()


class VLLMGenerator:
    """
    `generator(conversations) -> answers`, as `generation.generate` with the same sampling: greedy, or at `temperature`
    from the whole distribution (no top-k/top-p) when `do_sample`. Close it (or use `with`) to free the GPU memory its
    engine holds before training.
    """

    def __init__(self, model: str, tokenizer, *, max_new_tokens: int, do_sample: bool, temperature: float = 1.0,
                 seed: int = 0, gpu_memory_utilization: float = 0.5, dtype: str | None = None,
                 revision: str | None = None, trust_remote_code: bool = False, num_processes: int = 1) -> None:
        from vllm import LLM, SamplingParams

        from alignkit import models

        self.tokenizer = tokenizer
        adapter = models.adapter_config(model)
        base = models.adapter_base(model) if adapter else model
        engine = dict(
            model=base, revision=None if adapter else revision, dtype=dtype if dtype not in (None, "auto") else "auto",
            seed=seed, gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code,
            skip_tokenizer_init=True,  # prompts go in as token ids and answers are decoded here
        )
        if adapter:
            engine.update(enable_lora=True, max_lora_rank=int(adapter.get("r", 16)))
        if num_processes > 1:  # one engine per process of `accelerate launch`, on its own GPU (as TRL's colocate mode)
            engine.update(distributed_executor_backend="external_launcher")
        self.llm = LLM(**engine)
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("policy", 1, str(model))
        stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        # vLLM's defaults for top-k and top-p take the whole distribution; temperature 0 is greedy.
        self.sampling = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                       stop_token_ids=stop, detokenize=False)

    def __call__(self, conversations: Sequence[Conversation]) -> list[str]:
        prompts = [{"prompt_token_ids": self.tokenizer(render(self.tokenizer, c), add_special_tokens=False)["input_ids"]}
                   for c in conversations]
        results = self.llm.generate(prompts, self.sampling, lora_request=self.lora, use_tqdm=False)
        return [self.tokenizer.decode(list(r.outputs[0].token_ids), skip_special_tokens=True).strip() for r in results]

    def close(self) -> None:
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> VLLMGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
