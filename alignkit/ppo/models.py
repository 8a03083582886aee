"""The four models of PPO — policy, reference, value, reward — loaded with as few copies of the base as the mode allows.

Full mode (`use_peft=False`): four separate models. The policy and the reference are the SFT model; the value
model (trained) and the reward model (frozen) are sequence-classification models loaded from the reward stage.

LoRA mode (`use_peft=True`): one PEFT model over the SFT base holds named adapters, and each role is that model
with one adapter switched on:
- "default": the policy (a new LoRA, or a trainable copy of the SFT adapter when the SFT stage wrote one);
- the reference: adapters off (or "ref", a frozen copy of the SFT adapter) — never a second copy of the base;
- "reward" (frozen) and "value" (trained, initialised from the reward adapter), when the reward stage wrote a
  SEQ_CLS LoRA adapter on that same base. Their scalar heads are small `nn.Linear`s outside the base.
A reward model on another base (or a full one) is loaded once more, and the value model becomes a LoRA adapter on
that copy: two bases in all.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled

from alignkit.errors import ModelError
from alignkit.models import adapter_base, adapter_config, check_reward_folder, check_weight_files, load_error
from alignkit.outputs import read_run, refuse_unfinished

POLICY, REF, REWARD, VALUE = "default", "ref", "reward", "value"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_PREFIX = "base_model.model."  # where PEFT saves a SEQ_CLS adapter's `modules_to_save` head


# --- adapters ------------------------------------------------------------------------------------------------------


@contextmanager
def active_adapter(model: nn.Module, name: str | None):
    """
    Run the block with `model`'s adapter `name` active (None: every adapter off, i.e. the base). A plain model runs
    as is. PEFT's `set_adapter`/`disable_adapter` also mark the chosen adapter trainable and freeze the others; the
    flags are put back at once, so the frozen reward adapter never trains and the policy and value adapters both
    keep their gradients when they share one base.
    """
    if not isinstance(model, PeftModel):
        yield
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]

    def restore():
        for p, flag in flags:
            p.requires_grad_(flag)

    previous = model.active_adapter
    try:
        if name is None:
            with model.disable_adapter():
                restore()
                yield
        else:
            model.set_adapter(name)
            restore()
            yield
    finally:
        model.set_adapter(previous)
        restore()


def adapter_parameters(model: PeftModel, name: str) -> list[nn.Parameter]:
    """The weights of adapter `name` (its LoRA A/B matrices), found through PEFT's layers rather than by name."""
    params = []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for layer_name in module.adapter_layer_names:
                layers = getattr(module, layer_name)
                if name in layers:
                    part = layers[name]
                    params.extend([part] if isinstance(part, nn.Parameter) else part.parameters())
    return params


def read_reward_stats(reward_path: str | Path | None) -> dict | None:
    """`{"mean": .., "std": ..}` that the reward stage recorded in its alignkit_run.json, if any."""
    return (read_run(reward_path) or {}).get("reward_stats") if reward_path else None


def _same_model(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer body (hidden states, no output layer) of a causal-LM or sequence-classification model."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base, base.base_model_prefix)


def _with_adapter(model: nn.Module, name: str, config: PeftConfig) -> PeftModel:
    """`model` with a new adapter `name` (wrapping a plain model in a PeftModel first)."""
    if isinstance(model, PeftModel):
        # PEFT only combines adapters of one task type on a model; the task type matters only for heads we keep apart.
        config.task_type = model.peft_config[next(iter(model.peft_config))].task_type
        model.add_adapter(name, config)
        return model
    return get_peft_model(model, config, adapter_name=name)


def _lora_config(config: PeftConfig, trainable: bool) -> PeftConfig:
    """A copy of `config` for a backbone-only adapter: no heads of its own (ours live outside the base)."""
    config = copy.deepcopy(config)
    config.modules_to_save = None
    config.task_type = None
    config.inference_mode = not trainable
    return config


def attach_scalar_adapter(model: nn.Module, path: str | Path, name: str, trainable: bool) -> tuple[PeftModel, nn.Linear]:
    """
    Load the SEQ_CLS LoRA adapter saved in `path` (the reward stage's output, or a value model saved by PPO) onto
    `model`'s backbone as adapter `name`, and its `score` head as a separate `nn.Linear`. Returns (model, head).
    """
    saved = adapter_config(path)
    config = _lora_config(PeftConfig.from_pretrained(str(path)), trainable)
    host = _with_adapter(model, name, config)
    weights = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    head_names = [f"{HEAD_PREFIX}{m}." for m in (saved.get("modules_to_save") or [])]
    head = {k.split(".")[-1]: v for k, v in weights.items() if k.startswith(tuple(head_names))}
    if "weight" not in head or head["weight"].shape[0] != 1:
        raise ModelError(
            f"{path} holds no scalar `score` head; save the reward model's LoRA adapter with task_type SEQ_CLS "
            "(which keeps the head in modules_to_save) and num_labels=1."
        )
    lora = {k: v for k, v in weights.items() if not k.startswith(tuple(head_names))}
    result = set_peft_model_state_dict(host, lora, adapter_name=name)
    if result.unexpected_keys:
        raise ModelError(f"{path} does not fit the model it is loaded on (e.g. {result.unexpected_keys[0]}).")
    linear = nn.Linear(head["weight"].shape[1], 1, bias="bias" in head, dtype=torch.float32)
    linear.load_state_dict({k: v.float() for k, v in head.items()})
    linear.requires_grad_(trainable)
    for p in adapter_parameters(host, name):
        p.requires_grad_(trainable)
    return host, linear


# --- roles ---------------------------------------------------------------------------------------------------------


class LanguageModel(nn.Module):
    """A causal LM run with adapter `adapter` active (see `active_adapter`); gives next-token logits."""

    def __init__(self, model: nn.Module, adapter: str | None = None):
        super().__init__()
        self.model = model
        self.adapter = adapter

    def forward(self, input_ids, attention_mask, position_ids, predict_last: int = 0) -> torch.Tensor:
        """Logits that predict the last `predict_last` tokens of `input_ids` (0: the logits at every position)."""
        logits_to_keep = 0
        if predict_last:
            # Only the positions before those tokens, as an index tensor: transformers then gathers their hidden states
            # into a contiguous tensor for the output layer (a strided slice makes a frozen output layer, as in the
            # reference or a LoRA policy, take a batched matmul path that is ~2x slower on CPU).
            width = input_ids.shape[1]
            logits_to_keep = torch.arange(width - predict_last - 1, width - 1, device=input_ids.device)
        with active_adapter(self.model, self.adapter):
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=logits_to_keep,
                use_cache=False,
            ).logits

    def generate(self, **kwargs) -> torch.Tensor:
        with active_adapter(self.model, self.adapter):
            return self.model.generate(**kwargs)


class ScalarModel(nn.Module):
    """A transformer backbone (with adapter `adapter` active) and a linear head: one number per token."""

    def __init__(self, model: nn.Module, head: nn.Module, adapter: str | None = None):
        super().__init__()
        self.model = model
        self.head = head
        self.adapter = adapter

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        with active_adapter(self.model, self.adapter):
            hidden = _backbone(self.model)(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()


class SequenceClassifierView:
    """
    A `ScalarModel` (the reward role, often an adapter on the policy's base) seen as the one-output sequence
    classifier `alignkit.rewards.RewardScorer` drives: called with right-padded `input_ids` and `attention_mask`, it
    returns `.logits` of shape (batch, 1), read at the last non-pad token as transformers' classifiers read it. So
    PPO tokenises through the scorer, exactly as the reward stage trained, without a second copy of the base.
    Not an `nn.Module`: the scorer's `requires_grad_`, `eval` and `train` must not reach the shared base, whose
    policy and value adapters train and which stays in train mode (see `PPOTrainer`).
    """

    training = False

    def __init__(self, model: ScalarModel):
        self.scalar = model
        self.config = copy.deepcopy(model.model.config)  # the scorer may set its pad_token_id: not on the shared base

    def requires_grad_(self, requires_grad: bool = True):
        return self  # the reward role is frozen already

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def parameters(self):
        return self.scalar.head.parameters()

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        per_token = self.scalar(input_ids, attention_mask, position_ids)
        # transformers' rule: the rightmost token that is not the pad token (so with pad == EOS, the one before it).
        non_pad = input_ids != self.config.get_text_config().pad_token_id
        last = (torch.arange(input_ids.shape[1], device=input_ids.device) * non_pad).argmax(-1)
        return SimpleNamespace(logits=per_token[torch.arange(len(per_token), device=per_token.device), last, None])


@dataclass
class PPOModels:
    """
    What `PPOTrainer` trains and scores with. `policy` and `value` train; `ref` and `reward` are frozen; `reward`
    is None when the trainer gets a `reward_fn` instead. In LoRA mode several roles share one PeftModel.
    `reward_stats` is the reward stage's `{"mean", "std"}` of training scores, for `PPOConfig.reward_mean/std`;
    `reward_path` its output folder, whose tokenizer and `max_length` say how it read its training pairs.
    """

    policy: LanguageModel
    ref: LanguageModel
    value: ScalarModel
    reward: ScalarModel | None = None
    reward_stats: dict | None = None
    reward_path: str | None = None

    @property
    def use_peft(self) -> bool:
        return isinstance(self.policy.model, PeftModel)

    def policy_parameters(self) -> list[nn.Parameter]:
        if isinstance(self.policy.model, PeftModel):
            return [p for p in adapter_parameters(self.policy.model, self.policy.adapter) if p.requires_grad]
        return [p for p in self.policy.model.parameters() if p.requires_grad]

    def value_parameters(self) -> list[nn.Parameter]:
        if isinstance(self.value.model, PeftModel):
            body = adapter_parameters(self.value.model, self.value.adapter)
        else:
            body = list(self.value.model.parameters())
        head = [p for p in self.value.head.parameters() if all(p is not q for q in body)]
        return [p for p in body + head if p.requires_grad]

    def modules(self) -> list[nn.Module]:
        """Every model and head held (shared ones once)."""
        held = []
        for role in (self.policy, self.ref, self.value, self.reward):
            for module in (role.model, getattr(role, "head", None)) if role is not None else ():
                if module is not None and all(module is not m for m in held):
                    held.append(module)
        return held


# --- loading -------------------------------------------------------------------------------------------------------


def _load(auto_class, name: str, **kwargs) -> PreTrainedModel:
    check_weight_files(name)
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:  # the message every loader gives (a missing folder, remote code, ...)
        raise load_error("Model", name, e) from None


def _freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()


def _causal_lm(path: str, merge: bool, **kwargs) -> PreTrainedModel:
    """The SFT model: a full causal-LM folder, or an adapter folder merged into its base when `merge`."""
    adapter = adapter_config(path)
    if adapter is None:
        return _load(AutoModelForCausalLM, path, **kwargs)
    base = _load(AutoModelForCausalLM, adapter_base(path), **kwargs)
    model = PeftModel.from_pretrained(base, path)
    return model.merge_and_unload() if merge else model


def _seq_cls(path: str, **kwargs) -> PreTrainedModel:
    """A one-label classifier: a full folder, or a SEQ_CLS adapter (with its score head) merged into its base."""
    adapter = adapter_config(path)
    if adapter is None:
        return _load(AutoModelForSequenceClassification, path, num_labels=1, **kwargs)
    base = _load(AutoModelForSequenceClassification, adapter_base(path), num_labels=1, **kwargs)
    return PeftModel.from_pretrained(base, path).merge_and_unload()


def _zero_head(hidden_size: int) -> nn.Linear:
    head = nn.Linear(hidden_size, 1, bias=False)
    nn.init.zeros_(head.weight)  # a fresh critic predicts 0 for every state
    return head


def load_ppo_models(
    policy_path: str,
    reward_path: str | None = None,
    *,
    use_peft: bool,
    peft_config: PeftConfig | None = None,
    quantization_config=None,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    value_path: str | None = None,
) -> PPOModels:
    """
    Load the policy, reference, value and reward models for PPO (see the module docstring for what is shared).

    Args:
        policy_path: the SFT stage's output: a full causal-LM folder or a PEFT adapter folder.
        reward_path: the reward stage's output: a full one-label sequence-classification folder or a SEQ_CLS LoRA
            adapter folder. None when the trainer gets a `reward_fn` (the value model then starts from the policy's
            base with a zero head).
        use_peft: LoRA mode (shared base, adapters train) or full mode (separate models, every weight trains).
        peft_config: the policy's LoRA settings (also used for a new value adapter). Ignored for the policy when
            `policy_path` is an adapter: that adapter keeps training with its own settings.
        quantization_config: a `BitsAndBytesConfig` to load the base(s) in 4/8 bit (LoRA mode only).
        value_path: where the value model starts; defaults to `reward_path`.
    """
    for key, folder in (("model_name_or_path", policy_path), ("reward_model_path", reward_path), ("value_model_path", value_path)):
        if folder is not None:
            refuse_unfinished(folder, key)
    if reward_path is not None and Path(reward_path).is_dir():  # a causal LM here would score with a random head
        try:
            check_reward_folder(reward_path)
        except ModelError as e:
            raise ModelError(f"reward_model_path: {e}") from None
    value_path = value_path or reward_path
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code)
    if not use_peft:
        if quantization_config is not None:
            raise ModelError(
                "Full-parameter PPO trains every weight, so it cannot load the models in 4 or 8 bit; "
                "set use_peft: true (QLoRA) or drop load_in_4bit/load_in_8bit."
            )
        if is_deepspeed_zero3_enabled():  # four separate sharded models; the frozen two would each need an engine
            raise ModelError(
                "Full-parameter PPO does not run under DeepSpeed ZeRO-3; set use_peft: true (one sharded base serves "
                "all four models) or launch with recipes/accelerate/deepspeed_zero2.yaml."
            )
        return _load_full(policy_path, reward_path, value_path, **kwargs)
    return _load_lora(policy_path, reward_path, value_path, peft_config, quantization_config, **kwargs)


def _load_full(policy_path, reward_path, value_path, **kwargs) -> PPOModels:
    policy = _causal_lm(policy_path, merge=True, **kwargs).requires_grad_(True)  # a merged adapter's base is frozen
    ref = _freeze(_causal_lm(policy_path, merge=True, **kwargs))
    reward = None
    if reward_path:
        reward_model = _freeze(_seq_cls(reward_path, **kwargs))
        reward = ScalarModel(reward_model, reward_model.score)
    if value_path:
        value_model = _seq_cls(value_path, **kwargs)
    else:
        value_model = _seq_cls(policy_path, **kwargs)
        nn.init.zeros_(value_model.score.weight)
    value_model.requires_grad_(True)
    return PPOModels(
        policy=LanguageModel(policy),
        ref=LanguageModel(ref),
        value=ScalarModel(value_model, value_model.score),
        reward=reward,
        reward_stats=read_reward_stats(reward_path),
        reward_path=str(reward_path) if reward_path else None,
    )


def _load_base(auto_class, path: str, quantization_config, **kwargs) -> PreTrainedModel:
    extra = {"num_labels": 1} if auto_class is AutoModelForSequenceClassification else {}
    if quantization_config is not None:
        extra["quantization_config"] = quantization_config
        if torch.cuda.is_available():  # each process puts its copy on its own GPU
            from accelerate import PartialState

            extra["device_map"] = {"": PartialState().local_process_index}
    model = _load(auto_class, path, **kwargs, **extra)
    if quantization_config is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def _load_lora(policy_path, reward_path, value_path, peft_config, quantization_config, **kwargs) -> PPOModels:
    # Policy and reference: one base; the policy is adapter "default", the reference is the base (or "ref").
    sft_adapter = adapter_config(policy_path)
    policy_base = adapter_base(policy_path) if sft_adapter else policy_path
    base = _load_base(AutoModelForCausalLM, policy_base, quantization_config, **kwargs)
    if sft_adapter:
        host = PeftModel.from_pretrained(base, policy_path, adapter_name=POLICY, is_trainable=True)
        host.load_adapter(policy_path, adapter_name=REF, is_trainable=False)
        ref_adapter = REF
    else:
        if peft_config is None:
            raise ModelError("LoRA-mode PPO needs LoRA settings (use_peft: true with lora_r, lora_alpha, ...).")
        config = copy.deepcopy(peft_config)
        config.task_type = "CAUSAL_LM"
        host = get_peft_model(base, config, adapter_name=POLICY)
        ref_adapter = None
    host.set_adapter(POLICY)
    new_value_config = _lora_config(peft_config or host.peft_config[POLICY], trainable=True)

    # Reward and value: adapters on the same base when the reward adapter was trained on it; otherwise a second
    # base (the reward model) carries the value adapter.
    reward = None
    critic, critic_base = host, policy_base
    if reward_path:
        reward_adapter = adapter_config(reward_path)
        if reward_adapter and _same_model(adapter_base(reward_path), policy_base):
            host, head = attach_scalar_adapter(host, reward_path, REWARD, trainable=False)
            reward = ScalarModel(host, head, REWARD)
        elif reward_adapter:
            critic_base = adapter_base(reward_path)
            seq_cls = _load_base(AutoModelForSequenceClassification, critic_base, quantization_config, **kwargs)
            critic, head = attach_scalar_adapter(seq_cls, reward_path, REWARD, trainable=False)
            reward = ScalarModel(critic, head, REWARD)
        else:
            critic_base = reward_path
            seq_cls = _load_base(AutoModelForSequenceClassification, reward_path, quantization_config, **kwargs)
            critic = get_peft_model(seq_cls, copy.deepcopy(new_value_config), adapter_name=VALUE)
            reward = ScalarModel(critic, _freeze(seq_cls.score), None)  # adapters off: the reward model as trained

    # The value model starts as the reward model (or value_path): the same LoRA weights and head, trainable.
    if reward is not None and reward.adapter is None:  # a full reward model got a fresh value adapter: B = 0, so V = R
        if not _same_model(value_path, reward_path):
            raise ModelError(
                f"value_model_path {value_path}: with a full reward model, LoRA-mode PPO starts the value model from "
                "the reward model itself; leave value_model_path unset."
            )
        value_head = copy.deepcopy(reward.head).requires_grad_(True)
    elif value_path:
        value_adapter = adapter_config(value_path)
        if value_adapter is None or not _same_model(adapter_base(value_path), critic_base):
            raise ModelError(
                f"value_model_path {value_path}: in LoRA mode the value model must be a SEQ_CLS LoRA adapter on the "
                f"reward model's base ({critic_base}); leave it unset to start from the reward model."
            )
        critic, value_head = attach_scalar_adapter(critic, value_path, VALUE, trainable=True)
    else:
        critic = _with_adapter(critic, VALUE, copy.deepcopy(new_value_config))
        value_head = _zero_head(_backbone(critic).config.hidden_size)

    # set_adapter re-marks which adapters train: only the policy and the value adapters (and the value head) do.
    host.set_adapter(POLICY)
    if critic is not host:
        critic.set_adapter(VALUE)
    for model in {id(host): host, id(critic): critic}.values():
        for name in model.peft_config:
            for p in adapter_parameters(model, name):
                p.requires_grad_(name in (POLICY, VALUE))
    value_head.requires_grad_(True)

    return PPOModels(
        policy=LanguageModel(host, POLICY),
        ref=LanguageModel(host, ref_adapter),
        value=ScalarModel(critic, value_head, VALUE),
        reward=reward,
        reward_stats=read_reward_stats(reward_path),
        reward_path=str(reward_path) if reward_path else None,
    )


class PolicyAndValue(nn.Module):
    """
    The two trained roles behind one forward, so one backward reaches every trained weight (what DDP needs when
    both are adapters on one base). Gives the policy's logits for the last `response_length` tokens and the value
    of the state before each of them.
    """

    def __init__(self, policy: LanguageModel, value: ScalarModel):
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(self, input_ids, attention_mask, position_ids, response_length: int):
        logits = self.policy(input_ids, attention_mask, position_ids, predict_last=response_length)
        values = self.value(input_ids, attention_mask, position_ids)[:, -response_length - 1 : -1]
        return logits, values

    # What `trl.models.unwrap_model_for_generation` asks of the model it unwraps (and what the trainer uses).
    def _transformers(self) -> list[nn.Module]:
        models = [self.policy.model, self.value.model]
        return [m for i, m in enumerate(models) if all(m is not n for n in models[:i])]

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "is_activation_checkpointing", False) for m in self._transformers())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for m in self._transformers():
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        for m in self._transformers():
            m.gradient_checkpointing_disable()


# --- saving and reloading what PPO trained -------------------------------------------------------------------------


def save_trained(models: PPOModels, output_dir: str | Path) -> None:
    """
    Write the policy to `output_dir` (its LoRA adapter, or the full model; safetensors) and the value model to
    `output_dir/value` (a SEQ_CLS LoRA adapter with its `score` head — the reward stage's format, so it loads as a
    value_model_path — or the full classifier).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    policy = models.policy.model
    if isinstance(policy, PeftModel):
        policy.save_pretrained(output_dir, selected_adapters=[models.policy.adapter])
    else:
        policy.save_pretrained(output_dir)

    value_dir = output_dir / "value"
    critic = models.value.model
    if isinstance(critic, PeftModel):
        value_dir.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(critic.peft_config[models.value.adapter])
        config.task_type, config.modules_to_save = "SEQ_CLS", ["score"]
        config.base_model_name_or_path = critic.get_base_model().name_or_path
        config.inference_mode = True
        config.save_pretrained(str(value_dir))
        weights = get_peft_model_state_dict(critic, adapter_name=models.value.adapter)
        weights.update({f"{HEAD_PREFIX}score.{k}": v for k, v in models.value.head.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(value_dir / ADAPTER_WEIGHTS))
    else:
        critic.save_pretrained(value_dir)


def _load_folder(model: nn.Module, folder: Path) -> None:
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in state]
    if missing:
        raise ModelError(f"{folder} lacks trained weights such as {missing[0]}; it was not written by this PPO setup.")
    model.load_state_dict(state, strict=False)


def load_trained(models: PPOModels, folder: str | Path) -> None:
    """Put the weights that `save_trained` wrote to `folder` back into `models` (resuming a run)."""
    folder = Path(folder)
    policy = models.policy.model
    if isinstance(policy, PeftModel):
        result = set_peft_model_state_dict(
            policy, load_file(str(folder / ADAPTER_WEIGHTS)), adapter_name=models.policy.adapter
        )
        if result.unexpected_keys:
            raise ModelError(f"{folder} holds a policy adapter that does not fit this model.")
    else:
        _load_folder(policy, folder)

    critic, value_dir = models.value.model, folder / "value"
    if isinstance(critic, PeftModel):
        weights = load_file(str(value_dir / ADAPTER_WEIGHTS))
        head = {k[len(HEAD_PREFIX) + len("score.") :]: v for k, v in weights.items() if k.startswith(f"{HEAD_PREFIX}score.")}
        lora = {k: v for k, v in weights.items() if not k.startswith(f"{HEAD_PREFIX}score.")}
        set_peft_model_state_dict(critic, lora, adapter_name=models.value.adapter)
        models.value.head.load_state_dict(head)
    else:
        _load_folder(critic, value_dir)
