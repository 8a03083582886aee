"""How much memory a stage needs per process, estimated from the model's config before any weight is loaded.

    estimate("sft", model_args, training_args).summary()
    # Qwen2.5-7B, QLoRA on all linear layers, bf16, batch 4 x 2048 tokens, activation checkpointing:
    # memory estimate: ~17.7 GiB per process (weights 7.5, adapters 0.08, gradients 0.08, optimiser 0.2,
    # activations 10.0); NVIDIA GeForce RTX 4090 has 23.6 GiB

The parameter inventory is exact: the model (and its LoRA adapter) is built on the meta device, so every
architecture transformers knows is counted without allocating a byte. Activations use a per-layer formula for
decoder transformers (Llama, Qwen, Mistral, ...) plus the LM head: TRL's SFT and DPO trainers fuse it with the
log-softmax (a buffer of fixed width instead of the logits), while PPO keeps fp32 logits for its response tokens
(`batch x response length x vocab`, often the peak). Sequences are taken at `max_length` (the worst case a batch
can reach). Backward turns activations into gradients layer by layer, so the
total holds the larger of the two, not both. Sharding by ZeRO/FSDP is not modelled: the figure is what one process
holds under DDP or on a single device.

Checked against measured peaks by `benchmarks/memory_estimate.py` (CPU: live tensor bytes from the profiler).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from pathlib import Path

import torch

from alignkit import stages
from alignkit.models import adapter_base, adapter_config

GIB = 2**30
# Bytes of optimiser state per trainable parameter of `param_bytes` bytes; torch's AdamW keeps two states in the
# parameter's dtype, bitsandbytes' 32-bit ones two fp32 states, the 8-bit ones two bytes.
OPTIMISER_STATES = {"8bit": lambda b: 2, "adafactor": lambda b: 0, "sgd": lambda b: 0, "lion": lambda b: b,
                    "bnb": lambda b: 8, "paged": lambda b: 8, "adam": lambda b: 2 * b}
# Full logits (alignkit's PPO): the logits, their fp32 log-softmax (kept for backward), its gradient and the
# logits' gradient, per token and vocabulary entry.
LOGITS_BYTES = 16
# TRL's SFT/DPO trainers fuse the LM head with the log-softmax: no full logits, but a buffer of
# `min(tokens, TOKEN_CHUNK_SIZE) x vocab chunk` (the chunk's full width, whatever the vocabulary) and, without
# Triton (CPU), about eight fp32 temporaries of one tile in the backward pass.
CPU_TILE_TEMPORARIES = 8
HALF = (torch.bfloat16, torch.float16)


@dataclasses.dataclass
class MemoryEstimate:
    """Bytes one process needs: its parts, the total and what the device offers (None when unknown)."""

    weights: int
    adapters: int
    gradients: int
    optimizer: int
    activations: int
    device_bytes: int | None = None
    device_name: str = "this device"
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        # Backward frees each layer's activations as it writes that layer's gradients: the peak holds the larger.
        return self.weights + self.adapters + self.optimizer + max(self.gradients, self.activations)

    def summary(self) -> str:
        unit, scale = ("GiB", GIB) if self.total >= GIB / 2 else ("MiB", 2**20)
        part = lambda b: f"{b / scale:.1f}" if b / scale >= 0.1 or b == 0 else f"{b / scale:.2f}"  # noqa: E731
        line = (f"memory estimate: ~{part(self.total)} {unit} per process (weights {part(self.weights)}, adapters "
                f"{part(self.adapters)}, gradients {part(self.gradients)}, optimiser {part(self.optimizer)}, "
                f"activations {part(self.activations)})")
        if self.device_bytes:
            line += f"; {self.device_name} has {self.device_bytes / GIB:.1f} GiB"
            if self.total > 0.9 * self.device_bytes:
                line += ("\n  likely out of memory: lower per_device_train_batch_size or max_length, turn on "
                         "activation_checkpointing, use LoRA (use_peft) or a 4-bit base (load_in_4bit)")
        return line


def device_memory() -> tuple[int | None, str]:
    """Total memory of this process's accelerator (or of the machine, on CPU) and what to call it."""
    if torch.cuda.is_available():
        from accelerate import PartialState

        index = PartialState().local_process_index % torch.cuda.device_count()
        return torch.cuda.get_device_properties(index).total_memory, torch.cuda.get_device_name(index)
    import psutil

    return psutil.virtual_memory().total, "this machine (CPU)"


def _resolve_dtype(name, config) -> torch.dtype:
    if name in (None, "auto"):
        dtype = getattr(config, "dtype", None) or torch.float32
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return getattr(torch, name)


def _base_and_adapter(path: str) -> tuple[str, dict | None]:
    """The base model's path and the adapter config when `path` is an earlier stage's adapter output."""
    base = adapter_base(path) if Path(path).is_dir() else None
    return (base, adapter_config(path)) if base else (path, None)


@contextlib.contextmanager
def _zero3_paused():
    """
    Under a ZeRO-3 launch transformers partitions and initialises every model it builds, which fails on the meta
    device ("Cannot copy out of meta tensor"); the estimate needs only shapes. transformers has no public switch.
    """
    from transformers.integrations import deepspeed

    ref = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = ref


def _meta_model(config, reward: bool, peft_config):
    """The model (with its LoRA adapter) on the meta device: every parameter's shape, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    with _zero3_paused(), init_empty_weights(include_buffers=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's deprecation warnings about checkpointing flags: nothing to act on
        if reward:
            config = copy.copy(config)
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
    return model


def _weight_bytes(name: str, pname: str, module, quant_bits: int | None, model_args, dtype: torch.dtype) -> float:
    """Bytes per parameter as loaded: bitsandbytes quantises linear weights other than the output head."""
    if not quant_bits:
        return dtype.itemsize
    if pname == "weight" and isinstance(module, torch.nn.Linear) and not name.endswith(("lm_head", "score")):
        if quant_bits == 8:
            return 1 + 4 / module.in_features  # int8 and an fp32 scale per row
        # NF4: half a byte, plus an fp32 absmax per 64 values (double quantisation: a byte, and fp32 per 256 blocks)
        return 0.5 + (1 / 64 + 4 / (64 * 256) if model_args.use_bnb_nested_quant else 4 / 64)
    return 4  # prepare_model_for_kbit_training casts what is not quantised to fp32


def _optimiser_bytes_per_param(optim: str, param_bytes: int) -> int:
    optim = str(getattr(optim, "value", optim)).lower()
    return next((f(param_bytes) for key, f in OPTIMISER_STATES.items() if key in optim), 2 * param_bytes)


def _layer_activation_bytes(config, act_bytes: int, lora_inputs: int, lora_dropout: float, eager_len: int) -> float:
    """Bytes one decoder layer keeps for backward, per token (see the module docstring)."""
    h = config.hidden_size
    i = getattr(config, "intermediate_size", None) or 4 * h
    heads = config.num_attention_heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * (getattr(config, "head_dim", None) or h // heads)
    # Two norm outputs and two residual sums; q, k (after rotary), v, the attention output and o_proj's input;
    # gate, up, act(gate), act*up. (SDPA attends grouped k/v heads without repeating them.)
    elements = 2 * h + 2 * h + h + 2 * kv + 2 * h + 4 * i
    total = elements * act_bytes
    if act_bytes < 4:  # RMSNorm computes in fp32: a float copy of its input and the normalised fp32 tensor
        total += 2 * (4 * h + 4 * h)
    if lora_dropout > 0:  # each LoRA module keeps its dropped-out input and the dropout mask (one byte)
        total += lora_inputs / config.num_hidden_layers * (act_bytes + 1)
    if eager_len:  # eager attention keeps the fp32 softmax and its cast: heads x length per token
        total += heads * eager_len * (4 + act_bytes)
    return total


def _fused_head_bytes(config, tokens: int, act_bytes: int) -> float:
    """Peak of TRL's fused LM head + log-softmax (trl.trainer.utils.add_fused_lm_head) on `tokens` tokens."""
    try:
        from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE as VOCAB_CHUNK
    except ImportError:  # another TRL: its sizes as of 1.16
        TOKEN_CHUNK_SIZE, VOCAB_CHUNK = 4096, 32768
    rows = min(tokens, TOKEN_CHUNK_SIZE)
    total = rows * VOCAB_CHUNK * act_bytes + tokens * config.hidden_size * 4  # buffer; fp32 gradient of the hidden states
    if not torch.cuda.is_available():
        total += CPU_TILE_TEMPORARIES * rows * min(config.vocab_size, VOCAB_CHUNK) * 4
    return total


def _activation_bytes(config, tokens: int, seq_len: int, act_bytes: int, *, lm_head: str | None, checkpointing: bool,
                      lora_inputs: int, lora_dropout: float, eager: bool, logit_tokens: int | None = None) -> float:
    layers = config.num_hidden_layers
    per_layer = _layer_activation_bytes(config, act_bytes, lora_inputs, lora_dropout, seq_len if eager else 0)
    h = config.hidden_size
    # With checkpointing each layer keeps only its input; one layer at a time is recomputed in backward.
    body = (layers * h * act_bytes + per_layer) if checkpointing else layers * per_layer
    total = tokens * (body + 3 * h * act_bytes)  # + embeddings and the final norm
    if lm_head == "fused":
        total += _fused_head_bytes(config, tokens, act_bytes)
    elif lm_head == "full":
        total += (logit_tokens or tokens) * config.vocab_size * LOGITS_BYTES
    return total


def _scoring_bytes(config, seq_len: int, act_bytes: int, lora: bool, pairs: int) -> float:
    """
    Peak of a forward pass without gradients over the reward recipe's scoring batch (`pairs` =
    per_device_eval_batch_size, alignkit.metrics.reward_stats): one MLP's temporaries.
    """
    sequences = 2 * pairs  # chosen and rejected
    i = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    # act(gate), up and their product; a LoRA layer's base and adapter outputs and their sum add two more.
    return sequences * seq_len * ((5 if lora else 3) * i + config.hidden_size) * act_bytes


def estimate(stage: str, model_args, training_args, model_config=None) -> MemoryEstimate:
    """
    Memory one process needs to train `stage` (a name in `alignkit.stages`, sized by its `MemoryModel`) with these configs:
    weights (by dtype, 4/8-bit quantisation), LoRA adapters, gradients, optimiser states and activations for
    `per_device_train_batch_size x max_length` (with or without activation checkpointing). For PPO it counts every
    model PPO holds: with LoRA one base (policy, reference, value and reward are adapters on it, or a second base
    for a reward model on another one); in full mode four copies. `model_config` defaults to the model's
    `AutoConfig`; no weights are loaded.
    """
    from transformers import AutoConfig
    from trl import get_peft_config

    base_path, adapter = _base_and_adapter(model_args.model_name_or_path)
    config = model_config or AutoConfig.from_pretrained(base_path, trust_remote_code=getattr(training_args, "trust_remote_code", False))
    config = getattr(config, "text_config", None) or config
    notes: list[str] = []
    spec = stages.get(stage)
    reward = spec.is_reward_model
    peft_config = None
    if model_args.use_peft:
        if adapter is not None:  # continuing an earlier stage's adapter
            from peft import LoraConfig

            peft_config = LoraConfig(**{k: v for k, v in adapter.items() if k in LoraConfig.__dataclass_fields__})
            peft_config.inference_mode = False
        else:
            peft_config = get_peft_config(model_args)
        if reward:
            peft_config.task_type = "SEQ_CLS"
    model = _meta_model(config, reward, peft_config)
    dtype = _resolve_dtype(model_args.dtype, config)
    quant_bits = 4 if model_args.load_in_4bit else 8 if model_args.load_in_8bit else None
    half_compute = dtype in HALF or bool(getattr(training_args, "bf16", False) or getattr(training_args, "fp16", False))
    act_bytes = 2 if half_compute else 4

    # Weights: the frozen base (quantised linear layers when asked) and the trainable parameters.
    frozen = trainable = lora_inputs = 0
    seen = set()
    for name, module in model.named_modules():
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and module.lora_A:
            lora_inputs += module.in_features
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied embeddings are stored once
                continue
            seen.add(id(p))
            trainable += p.numel() if p.requires_grad else 0
            if not (p.requires_grad and peft_config is not None):  # adapters are counted apart
                frozen += p.numel() * _weight_bytes(name, pname, module, quant_bits, model_args, dtype)
    if peft_config is None:  # full training: the weights themselves train, in their dtype
        trainable_bytes = dtype.itemsize
    else:
        # Adapters are fp32 (PEFT keeps them so on half-precision bases); TRL casts them to bf16 on a 4-bit base.
        trainable_bytes = 2 if quant_bits and getattr(training_args, "bf16", False) else 4
    weights = frozen
    adapters = trainable * trainable_bytes if peft_config is not None else 0
    gradients = trainable * trainable_bytes
    optimizer = trainable * _optimiser_bytes_per_param(training_args.optim, trainable_bytes)
    if spec.memory.reference_adapter_copy and adapter is not None and peft_config is not None:
        adapters += trainable * trainable_bytes  # TRL adds a frozen copy of the adapter as the reference
        notes.append("DPO keeps a frozen copy of the adapter as its reference")

    # Activations for one micro-batch at full length.
    checkpointing = bool(getattr(training_args, "activation_checkpointing", None)
                         if getattr(training_args, "activation_checkpointing", None) is not None
                         else training_args.gradient_checkpointing)
    eager = (model_args.attn_implementation or getattr(config, "_attn_implementation", None)) == "eager"
    batch = training_args.per_device_train_batch_size
    # TRL's DPO and reward trainers (and alignkit's PPO) set every dropout to p=0, which keeps no copy or mask.
    no_dropout = spec.memory.online_rl or getattr(training_args, "disable_dropout", False)
    lora_dropout = model_args.lora_dropout if peft_config is not None and not no_dropout else 0.0
    act = dict(act_bytes=act_bytes, checkpointing=checkpointing, lora_inputs=lora_inputs, lora_dropout=lora_dropout,
               eager=eager)
    if spec.memory.online_rl:
        seq = (getattr(training_args, "max_prompt_length", None) or 512) + training_args.max_new_tokens
        # Policy and value each run a forward pass with gradients on the micro-batch; the policy's logits are
        # kept for the response tokens only.
        activations = _activation_bytes(config, batch * seq, seq, lm_head=spec.memory.lm_head,
                                        logit_tokens=batch * training_args.max_new_tokens, **act)
        activations += _activation_bytes(config, batch * seq, seq, lm_head=None, **act)
        weights, adapters, gradients, optimizer = _ppo_models(
            stage_weights=weights, adapters=adapters, gradients=gradients, optimizer=optimizer,
            use_peft=peft_config is not None, training_args=training_args, notes=notes)
        if peft_config is not None:
            weights += _other_reward_base(training_args, base_path, dtype, notes)
        # Generation: the key/value cache of the whole rollout batch, if it is larger than training.
        rollouts = training_args.generation_batch_size or (
            batch * training_args.gradient_accumulation_steps * training_args.num_mini_batches)
        kv = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        cache = rollouts * seq * config.num_hidden_layers * 2 * kv * act_bytes
        activations = max(activations, cache + rollouts * config.vocab_size * 4)
    elif spec.memory.critic_free_rl:
        weights, adapters, activations = _critic_free_rl(
            config, model_args, training_args, weights, adapters, trainable * trainable_bytes, adapter, peft_config,
            act, notes)
    else:
        seq = training_args.max_length or 1024
        # Chosen and rejected go through the model together; a reward model's score head is negligible.
        activations = _activation_bytes(config, spec.memory.sequences * batch * seq, seq, lm_head=spec.memory.lm_head, **act)
        if reward:  # after training, the recipe scores pairs without gradients (alignkit.metrics.reward_stats)
            scoring = _scoring_bytes(config, seq, act_bytes, peft_config is not None, training_args.per_device_eval_batch_size)
            activations = max(activations, scoring)
        if spec.memory.best_of_n:  # the reward model stays loaded; between rounds the policy samples n answers a prompt
            weights += _reward_model_bytes(training_args, notes)
            rollouts = training_args.generation_batch_size * training_args.num_generations
            activations = max(activations, _generation_bytes(config, rollouts, seq + training_args.max_completion_length, act_bytes))
    if quant_bits:  # one linear layer's weight is dequantised at a time in forward and backward
        largest = max((m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)), default=0)
        activations += largest * act_bytes
    device_bytes, device_name = device_memory()
    return MemoryEstimate(int(weights), int(adapters), int(gradients), int(optimizer), int(activations),
                          device_bytes, device_name, notes)


def _other_reward_base(training_args, policy_base: str, dtype: torch.dtype, notes: list[str]) -> int:
    """Bytes of the reward model's own base when it is not the policy's (PPO loads it once more)."""
    from transformers import AutoConfig

    path = getattr(training_args, "reward_model_path", None)
    if not path:
        return 0
    reward_base, _ = _base_and_adapter(path)
    if reward_base == policy_base or (Path(reward_base).exists() and Path(reward_base).resolve() == Path(policy_base).resolve()):
        return 0
    notes.append(f"the reward model's base {reward_base} is loaded beside the policy's")
    model = _meta_model(AutoConfig.from_pretrained(reward_base), reward=True, peft_config=None)
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


def _critic_free_rl(config, model_args, training_args, weights, adapters, adapter_bytes, adapter, peft_config, act,
                    notes) -> tuple[float, float, float]:
    """
    GRPO/RLOO (TRL): the policy trains on micro-batches of sampled completions; the reference is the policy with its
    adapter disabled (LoRA), a frozen copy of the adapter (continuing an SFT adapter) or of the model (full mode),
    and only when `beta` > 0; the reward model is loaded on its own, frozen. Returns (weights, adapters, activations).
    """
    # TRL does not cut prompts: 512 prompt tokens are assumed, as for PPO without max_prompt_length.
    completion = training_args.max_completion_length or 512
    seq = 512 + completion
    batch = training_args.per_device_train_batch_size
    activations = _activation_bytes(config, batch * seq, seq, lm_head="fused", **act)
    if training_args.beta:
        if peft_config is None:
            notes.append("full mode: the reference is a frozen copy of the model")
            weights *= 2
        elif adapter is not None:
            notes.append("continuing an adapter: TRL keeps a frozen copy of it as the reference")
            adapters += adapter_bytes
    weights += _reward_model_bytes(training_args, notes)
    # Generation: each process samples per_device_train_batch_size x steps_per_generation completions at once.
    rollouts = batch * (training_args.steps_per_generation or training_args.gradient_accumulation_steps)
    kv = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * (
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    cache = rollouts * seq * config.num_hidden_layers * 2 * kv * act["act_bytes"]
    return weights, adapters, max(activations, cache + rollouts * config.vocab_size * 4)


def _generation_bytes(config, rollouts: int, seq: int, act_bytes: int) -> float:
    """`generate` over `rollouts` sequences of up to `seq` tokens: the key/value cache and one step's fp32 logits."""
    kv = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * (
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    return rollouts * seq * config.num_hidden_layers * 2 * kv * act_bytes + rollouts * config.vocab_size * 4


def _reward_model_bytes(training_args, notes: list[str]) -> int:
    """Bytes of the frozen reward model GRPO/RLOO load beside the policy: its base (as stored) and its adapter."""
    from transformers import AutoConfig

    path = getattr(training_args, "reward_model_path", None)
    if not path:
        return 0
    base, adapter = _base_and_adapter(path)
    config = AutoConfig.from_pretrained(base)
    config = getattr(config, "text_config", None) or config
    peft_config = None
    if adapter is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(**{k: v for k, v in adapter.items() if k in LoraConfig.__dataclass_fields__})
    model = _meta_model(config, reward=True, peft_config=peft_config)
    notes.append("the reward model is loaded beside the policy")
    return sum(p.numel() for p in model.parameters()) * _resolve_dtype(None, config).itemsize


def _ppo_models(stage_weights, adapters, gradients, optimizer, use_peft, training_args, notes):
    """Scale one model's parts to PPO's four: policy and value train, reference and reward are frozen."""
    if use_peft:
        # One base; the value adapter (and its head) trains like the policy's, the reward adapter is frozen.
        notes.append("PPO with LoRA: policy, reference, value and reward share one base")
        return stage_weights, 3 * adapters, 2 * gradients, 2 * optimizer
    notes.append("PPO in full mode: four copies of the model")
    return 4 * stage_weights, adapters, 2 * gradients, 2 * optimizer


def report(stage: str, model_args, training_args) -> str:
    """`estimate(...).summary()`, or why there is none: an estimate must never stop a run from training."""
    try:
        return estimate(stage, model_args, training_args).summary()
    except Exception as e:  # an architecture the meta-device build or the formula does not handle
        return f"memory estimate: unavailable ({type(e).__name__}: {str(e)[:200]})"
