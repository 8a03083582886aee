"""Load tokenizers and causal LMs from a Hub id or a local folder, through one code path."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers import set_seed
from trl import ModelConfig, get_quantization_config

from alignkit.errors import ModelError

DEFAULT_CHAT_TEMPLATE = Path(__file__).parent / "templates" / "chat_template.jinja"


def _load_error(kind: str, name: str, error: Exception) -> ModelError:
    message = str(error)
    if "trust_remote_code" in message:
        return ModelError(
            f"{name} runs its own code to load; set `trust_remote_code: true` only if you trust that repository."
        )
    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        return ModelError(f"{kind} folder not found: {name}")
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return ModelError(
        f"Could not load the {kind.lower()} from '{name}': {first} "
        "(a local folder needs its config.json/tokenizer files; a Hub id needs a connection or a cached copy)."
    )


def load_tokenizer(model_args: ModelConfig, trust_remote_code: bool = False, chat_template_path: str | None = None):
    """
    The tokenizer for `model_args.model_name_or_path`, ready for training: a pad token (the EOS token when the
    base defines none) and a chat template (`chat_template_path`, else the base's own, else alignkit's default).
    """
    name = model_args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise _load_error("Tokenizer", name, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template_path:
        tokenizer.chat_template = Path(chat_template_path).read_text(encoding="utf-8")
    elif not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE.read_text(encoding="utf-8")
    return tokenizer


def _dtype(name: str | None):
    if name in (None, "auto"):
        return "auto"
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelError(f"Unknown dtype '{name}'; use auto, float32, bfloat16 or float16.") from None


def load_model(
    model_args: ModelConfig,
    trust_remote_code: bool = False,
    from_scratch: bool = False,
    gradient_checkpointing: bool = False,
    seed: int = 42,
) -> PreTrainedModel:
    """
    A causal LM from a Hub id or local folder, quantised to 4/8 bit when asked (and prepared for k-bit
    training), or freshly initialised from its config when `from_scratch`.
    """
    name = model_args.model_name_or_path
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None and from_scratch:
        raise ModelError("from_scratch trains every weight, so it cannot load the base in 4 or 8 bit; drop load_in_4bit/8bit.")
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=_dtype(model_args.dtype),
    )
    try:
        if from_scratch:
            config = AutoConfig.from_pretrained(name, revision=model_args.model_revision, trust_remote_code=trust_remote_code)
            set_seed(seed)  # the same seed gives the same initial weights, so runs are reproducible
            kwargs.pop("revision")
            if kwargs["dtype"] == "auto":
                kwargs["dtype"] = torch.float32
            return AutoModelForCausalLM.from_config(config, **kwargs)
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
            if torch.cuda.is_available():  # each process puts its copy on its own GPU
                kwargs["device_map"] = {"": PartialState().local_process_index}
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error("Model", name, e) from None
    if quantization_config is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """A tokenizer with ids the model has no embedding for fails deep inside a forward pass; fail here instead."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelError(
            f"{name}: the tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings; "
            "use the tokenizer saved with this model."
        )
