"""All model loading: tokenizers, causal LMs and reward models from a Hub id, a local folder or an earlier stage's
output (a full model or a PEFT adapter on its base), through one code path; the one reader of adapter configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)
from trl import ModelConfig, get_peft_config, get_quantization_config
from trl.trainer.reward_trainer import suppress_seqcls_warning

from alignkit.errors import ModelError
from alignkit.outputs import refuse_unfinished

DEFAULT_CHAT_TEMPLATE = Path(__file__).parent / "templates" / "chat_template.jinja"


def load_error(kind: str, name: str, error: Exception) -> ModelError:
    message = str(error)
    if "trust_remote_code" in message:
        return ModelError(
            f"{name} runs its own code to load; set `trust_remote_code: true` only if you trust that repository."
        )
    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        return ModelError(f"{kind} folder not found: {name}; fix the path (a local folder, or a Hub id like owner/name).")
    if Path(name).is_file():
        return ModelError(f"{name} is a file; point model_name_or_path at the folder that holds the model.")
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file() and adapter_config(name) is None:
        return ModelError(
            f"{name} is not a model folder (no config.json or adapter_config.json); point model_name_or_path at a "
            "folder written by save_pretrained, an earlier stage's output_dir, or a Hub id."
        )
    if kind == "Tokenizer" and Path(name).is_dir() and not any(Path(name).glob("tokenizer*")):
        return ModelError(f"{name} has no tokenizer files (tokenizer.json, tokenizer_config.json); save the tokenizer there too.")
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return ModelError(
        f"Could not load the {kind.lower()} from '{name}': {first} "
        "(a local folder needs its config.json/tokenizer files; a Hub id needs a connection or a cached copy)."
    )


def check_weight_files(folder: str | Path) -> None:
    """
    Refuse a local model or adapter folder whose safetensors files are damaged or cut short (a copy that stopped,
    a full disk): safetensors reads the header lazily, so such a file otherwise fails late, or loads garbage.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for file in sorted(folder.glob("*.safetensors")):
        size = file.stat().st_size
        try:
            with open(file, "rb") as f:
                header_bytes = int.from_bytes(f.read(8), "little")
                if size < 8 + header_bytes:
                    raise ValueError
                header = json.loads(f.read(header_bytes))
            data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ModelError(
                f"{file} is not a readable safetensors file (damaged); copy it again or rerun the run that wrote it."
            ) from None
        if size < 8 + header_bytes + data_end:
            raise ModelError(
                f"{file} is cut short ({size:,} of {8 + header_bytes + data_end:,} bytes); copy it again or rerun the run "
                "that wrote it."
            )


def load_tokenizer(model_args: ModelConfig, trust_remote_code: bool = False, chat_template_path: str | None = None):
    """
    The tokenizer for `model_args.model_name_or_path`, ready for training: a pad token (the EOS token when the
    base defines none) and a chat template (`chat_template_path`, else the base's own, else alignkit's default).
    """
    name = model_args.model_name_or_path
    if not name:
        raise ModelError("No model given: set `model_name_or_path` to a Hub id or a local model folder.")
    # An adapter saved without its tokenizer uses its base's.
    if adapter_config(name) is not None and not any(Path(name).glob("tokenizer*")):
        name = adapter_base(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise load_error("Tokenizer", name, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template_path and not Path(chat_template_path).is_file():
        raise ModelError(f"chat_template_path: {chat_template_path} not found; point it at a .jinja chat template file.")
    if chat_template_path:
        tokenizer.chat_template = Path(chat_template_path).read_text(encoding="utf-8")
    elif not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE.read_text(encoding="utf-8")
    return tokenizer


def load_model_config(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's config (no weights): enough to know it exists, loads, and whether it needs remote code."""
    check_weight_files(name)
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise load_error("Model", name, e) from None


def _dtype(name: str | None):
    if name in (None, "auto"):
        return "auto"
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelError(f"Unknown dtype '{name}'; use auto, float32, bfloat16 or float16.") from None


def adapter_config(path: str | Path) -> dict | None:
    """The adapter_config.json of a PEFT adapter folder, or None when `path` holds no adapter."""
    file = Path(path) / "adapter_config.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def adapter_base(path: str | Path) -> str | None:
    """The base model a PEFT adapter folder was trained on, or None when `path` holds no adapter."""
    config = adapter_config(path)
    if config is None:
        return None
    file = Path(path) / "adapter_config.json"
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{file} names no base_model_name_or_path; add the base model's Hub id or folder to it.")
    if Path(base).is_absolute() and not Path(base).exists():  # peft would report a misleading "Repo id" error
        raise ModelError(
            f"{path} is an adapter on {base}, which is no longer there; "
            f"point base_model_name_or_path in {file} at the base's new folder or Hub id."
        )
    if not any((Path(path) / f"adapter_model.{ext}").is_file() for ext in ("safetensors", "bin")):
        # peft would look the folder up on the Hub and fail with the same misleading "Repo id" error
        raise ModelError(
            f"{path} has adapter_config.json but no adapter weights (adapter_model.safetensors); "
            "the run that wrote it did not finish: rerun it or point at a complete adapter folder."
        )
    return base


def apply_adapter(model: PreTrainedModel, path: str, trainable: bool, reward: bool):
    from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = PeftConfig.from_pretrained(path)
    if not trainable:
        return PeftModel.from_pretrained(model, path).merge_and_unload()
    if reward and config.task_type != "SEQ_CLS":
        # A reward model starts from the SFT adapter's weights and adds a trainable score head (PEFT keeps
        # SEQ_CLS heads in modules_to_save), so its output is again one adapter on the original base.
        config.task_type, config.inference_mode = "SEQ_CLS", False
        peft_model = get_peft_model(model, config)
        weights = get_peft_model_state_dict(peft_model)  # the new score head keeps its fresh initialisation
        weights.update(load_file(Path(path) / "adapter_model.safetensors"))
        set_peft_model_state_dict(peft_model, weights)
        return peft_model
    return PeftModel.from_pretrained(model, path, is_trainable=True)


def load_model(
    model_args: ModelConfig,
    trust_remote_code: bool = False,
    from_scratch: bool = False,
    gradient_checkpointing: bool = False,
    seed: int = 42,
    reward: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
):
    """
    A causal LM (or, with `reward`, a one-output sequence classifier) from a Hub id or local folder, quantised to
    4/8 bit when asked (and prepared for k-bit training), or freshly initialised from its config (`from_scratch`).
    With `tokenizer`, a tokenizer with ids beyond the model's embeddings is refused before any weight is read.

    `model_name_or_path` may be an earlier stage's output that holds a PEFT adapter: its base is loaded and the
    adapter applied. With `use_peft` the adapter comes back trainable and the stage continues it, so its output
    is again one adapter on the original base; without, the adapter is merged into the weights.
    """
    name = model_args.model_name_or_path
    refuse_unfinished(name)
    base = adapter_base(name)
    for folder in (name, base):
        if folder is not None:
            check_weight_files(folder)
    if tokenizer is not None:
        config = load_model_config(base or name, model_args.model_revision, trust_remote_code)
        rows = getattr(config.get_text_config(), "vocab_size", None)
        if rows is not None and (problem := vocab_problem(tokenizer, rows, name)):
            raise ModelError(problem)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None and from_scratch:
        raise ModelError("from_scratch trains every weight, so it cannot load the base in 4 or 8 bit; drop load_in_4bit/8bit.")
    model_class = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=_dtype(model_args.dtype),
    )
    if reward:
        kwargs["num_labels"] = 1
    try:
        if from_scratch:
            config = AutoConfig.from_pretrained(name, revision=model_args.model_revision, trust_remote_code=trust_remote_code)
            set_seed(seed)  # the same seed gives the same initial weights, so runs are reproducible
            kwargs.pop("revision")
            if kwargs["dtype"] == "auto":
                kwargs["dtype"] = torch.float32
            return model_class.from_config(config, **kwargs)
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
            if torch.cuda.is_available():  # each process puts its copy on its own GPU
                kwargs["device_map"] = {"": PartialState().local_process_index}
        if reward:  # a causal LM's head is replaced by a new score head; that is expected, not worth a warning
            with suppress_seqcls_warning():
                model = model_class.from_pretrained(base or name, **kwargs)
        else:
            model = model_class.from_pretrained(base or name, **kwargs)
    except (OSError, ValueError) as e:
        raise load_error("Model", base or name, e) from None
    if quantization_config is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if base is not None:
        model = apply_adapter(model, name, trainable=model_args.use_peft, reward=reward)
    return model


def new_peft_config(model, model_args: ModelConfig, reward: bool = False):
    """The LoRA config for a new adapter, or None when there is none to add (no `use_peft`, or one is loaded)."""
    from peft import PeftModel

    if isinstance(model, PeftModel) or not model_args.use_peft:
        return None
    config = get_peft_config(model_args)
    # peft fails inside the trainer on a target that matches no module, naming no config key; fail here instead.
    # As peft matches them: a list by module-name suffix, a single string as a regex over full module names.
    targets, names = config.target_modules, [name for name, _ in model.named_modules()]
    if isinstance(targets, str) and targets != "all-linear":
        missing = [] if any(re.fullmatch(targets, name) for name in names) else [targets]
    else:
        suffixes = {name.rsplit(".", 1)[-1] for name in names}
        missing = sorted(t for t in targets or () if t not in suffixes) if not isinstance(targets, str) else []
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ModelError(
            f"lora_target_modules: {', '.join(missing)} matches no module of {model_args.model_name_or_path}; "
            f"use some of {', '.join(linear)}, or all-linear."
        )
    if reward:  # without SEQ_CLS, "all-linear" puts a LoRA on the score head instead of training it (and loses it)
        config.task_type = "SEQ_CLS"
    return config


def embedding_rows(model: PreTrainedModel) -> int:
    """Token embeddings the model has, also under DeepSpeed ZeRO-3 (whose partitioned weights have shape (0,))."""
    embeddings = model.get_input_embeddings()
    weight = embeddings.weight
    return getattr(embeddings, "num_embeddings", None) or getattr(weight, "ds_shape", weight.shape)[0]


def vocab_problem(tokenizer: PreTrainedTokenizerBase, rows: int, name: str) -> str | None:
    """What is wrong when the tokenizer has ids beyond the model's `rows` token embeddings, else None."""
    if len(tokenizer) <= rows:
        return None
    return (
        f"{name}: the tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings; "
        "use the tokenizer saved with this model."
    )


def check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """A tokenizer with ids the model has no embedding for fails deep inside a forward pass; fail here instead."""
    problem = vocab_problem(tokenizer, embedding_rows(model), name)
    if problem:
        raise ModelError(problem)


# ------------------------------------------------------------------------------------------ finished outputs


def load_dequantised(base: str, reward: bool, trust_remote_code: bool):
    """A base stored quantised (bitsandbytes 4/8-bit), loaded and dequantised to its compute dtype."""
    model_class = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    try:
        model = model_class.from_pretrained(base, trust_remote_code=trust_remote_code, **({"num_labels": 1} if reward else {}))
    except (OSError, ValueError) as e:
        raise load_error("Model", base, e) from None
    return model.dequantize()


def load_output_tokenizer(path: Path):
    """The tokenizer saved with a stage output (or, for an adapter saved without one, its base's), prepared the
    way alignkit's training prepared it: a pad token and a chat template."""
    source = path
    if not (path / "tokenizer_config.json").is_file() and adapter_base(path) is not None:
        source = Path(adapter_base(path))
    return load_tokenizer(ModelConfig(model_name_or_path=str(source)))


def check_folder(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"No {what} at {path}: expected a stage's output folder (a full model or a PEFT adapter).")
    return path


def _architectures(path: Path) -> list[str]:
    try:
        return list(AutoConfig.from_pretrained(path).architectures or [])
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not read the model config in {path}: {str(e).strip().splitlines()[0]}") from None


def to_process_device(model: PreTrainedModel, device=None) -> PreTrainedModel:
    """
    A model that generates outside a Trainer (critique_revise, ai_feedback), on `device` (by default this process's:
    its own GPU under `accelerate launch`, else the CPU). A quantized model was placed when it loaded and stays.
    """
    if getattr(model, "hf_device_map", None) is None:
        model.to(device or PartialState().device)
    return model


def load_for_inference(path: str | Path):
    """(model, tokenizer) from a stage's output folder, whether it holds a full causal LM or a PEFT adapter."""
    path = check_folder(path, "stage output")
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
    return model.eval(), load_output_tokenizer(path)


def check_reward_folder(path: str | Path) -> tuple[Path, dict | None]:
    """(folder, adapter config or None) for a reward model, checked without loading weights."""
    path = check_folder(path, "reward model")
    adapter = adapter_config(path)
    if adapter is not None:
        adapter_base(path)  # a moved base or missing weights: say that first
    if adapter is None:
        architectures = _architectures(path)
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            what = " but a causal LM" if any(a.endswith("ForCausalLM") for a in architectures) else ""
            raise ModelError(
                f"{path} holds no reward model{what}: it has no trained score head, so its scores would be random; "
                "pass the reward stage's output_dir."
            )
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
    path, adapter = check_reward_folder(path)
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
    tokenizer = load_output_tokenizer(path)
    config = model.config.get_text_config()
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
