"""Recipe configuration: TRL's dataclasses, parsed strictly, plus the few fields TRL lacks.

A recipe is configured by `(ScriptArguments, <Method>Config, ModelConfig)`, exactly as TRL's own scripts
are, so every field keeps its TRL/transformers name (`model_name_or_path`, `max_length`, `lora_r`, ...).
`parse_args` adds what TRL's parser does not do: it rejects unknown or misspelt keys (naming the closest
valid one), reports bad values in one line instead of an argparse usage wall, and picks precision and
device defaults that work on the machine at hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trl
import yaml
from trl import DatasetMixtureConfig, SFTConfig, TrlParser

from alignkit import data, stages
from alignkit.configfile import closest_hint, load_yaml, split_config_arg
from alignkit.errors import ConfigError
from alignkit.hub import take_hub_settings
from alignkit.outputs import CONFIG_FILE_NAME


@dataclass
class ScriptArguments(trl.ScriptArguments, DatasetMixtureConfig):
    """
    TRL's script arguments and its data set mixture fields (`DatasetMixtureConfig`), plus what alignkit adds.

    Args:
        dataset_name (`str`):
            A Hub dataset id, a local `.jsonl`/`.json`/`.csv`/`.parquet`/`.txt` file, or a local folder of such
            files (files named `train.*` and `test.*` become those splits).
        datasets (`list`):
            Instead of `dataset_name`, a mixture (TRL's `DatasetMixtureConfig`): entries `{path, name, data_dir,
            data_files, split, columns, fraction}`, each checked like `dataset_name` and then concatenated.
            `test_split_size` holds out part of the mixture for evaluation (else `eval_split_size` does);
            `streaming` is not supported (every row is checked before training).
        eval_split_size (`float`, *optional*, defaults to `0.05`):
            When the data set has no `dataset_test_split`, hold out this fraction of the training rows (or this
            many rows, if >= 1) for evaluation. `0` disables evaluation.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Replace a previous run found in `output_dir`. Without it such a run is never touched.
        from_scratch (`bool`, *optional*, defaults to `False`):
            Initialise random weights from `model_name_or_path`'s config instead of loading its weights
            (pretraining a new model).
        prompt_truncation (`str`, *optional*, defaults to `"left"`):
            Reward stage: `"left"` cuts the start of prompts so pairs fit `max_length` (long dialogues keep their
            latest turns), and the end of an answer too long to leave the prompt its last `max_length // 4` tokens;
            `"none"` keeps TRL's behaviour of dropping pairs that do not fit.
    """

    eval_split_size: float = field(
        default=0.05,
        metadata={"help": "Fraction (or row count if >= 1) of train held out for eval when there is no test split."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a previous run found in `output_dir`."}
    )
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Initialise random weights from the model's config instead of loading its weights."},
    )
    prompt_truncation: str = field(
        default="left",
        metadata={"help": "Reward stage: 'left' cuts prompts from the start (and over-long answers at the end) to fit "
                          "max_length; 'none' drops such pairs.",
                  "choices": ["left", "none"]},
    )

    def __post_init__(self):
        if self.eval_split_size < 0:
            raise ValueError(f"eval_split_size must be >= 0, got {self.eval_split_size}.")
        # TRL's mixture fields, checked as strictly as the rest: each entry named in errors (`datasets[1] (path): ...`).
        self.datasets = data.dataset_sources(self.datasets)
        if self.datasets and self.dataset_name:
            raise ConfigError("both `dataset_name` and `datasets` are set; keep one (`datasets` mixes several data sets).")
        if self.streaming:
            raise ConfigError("`streaming` is not supported: alignkit checks every row before training; drop it.")
        if self.test_split_size is not None and not self.datasets:
            raise ConfigError("`test_split_size` splits a `datasets` mixture; with `dataset_name` use `eval_split_size`.")
        if self.test_split_size is not None and self.test_split_size < 0:
            raise ConfigError(f"`test_split_size` must be >= 0, got {self.test_split_size}.")


@dataclass
class PretrainConfig(SFTConfig):
    """
    `SFTConfig` with defaults for raw text: sequences are packed into `max_length` blocks, and documents longer
    than a block are split across blocks rather than truncated (`packing_strategy="bfd_split"`).
    """

    packing: bool = field(default=True, metadata={"help": "Pack sequences into `max_length` blocks."})
    packing_strategy: str = field(
        default="bfd_split", metadata={"help": "Packing strategy: 'bfd', 'bfd_split' or 'wrapped'."}
    )


class _StrictParser(TrlParser):
    """TrlParser whose argparse errors become one-line `ConfigError`s instead of a usage dump and exit."""

    def error(self, message):
        raise ConfigError(message.replace("argument --", "invalid value for "))


def _parser_keys(parser: TrlParser) -> set[str]:
    return {a.dest for a in parser._actions} | {
        opt[2:] for a in parser._actions for opt in a.option_strings if opt.startswith("--")
    }


def valid_keys(dataclass_types) -> set[str]:
    """Every key a config for `dataclass_types` may hold (YAML or `--flag`)."""
    return _parser_keys(_StrictParser(dataclass_types)) - {"help", "h"}


def _cli_keys(args: list[str]) -> list[str]:
    return [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def has_accelerator() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available()
    )


def _device_defaults(explicit: set[str], dataclass_types) -> dict[str, Any]:
    """TRL defaults to bf16, which fails on machines without bf16 support; choose what the machine supports."""
    training_fields = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    defaults = {}
    if "bf16" in training_fields and not explicit & {"bf16", "fp16"}:
        defaults["bf16"] = bf16_supported()
    # Without an accelerator, say so to Accelerate: it is also what makes multi-process CPU runs use gloo DDP.
    if "use_cpu" in training_fields and "use_cpu" not in explicit and not has_accelerator():
        defaults["use_cpu"] = True
    # TRL's default `gradient_checkpointing=True` uses the name transformers 5 deprecated, which warns on every
    # run; pass the same default under the new name unless the user chose either.
    if "activation_checkpointing" in training_fields and not explicit & {"activation_checkpointing", "gradient_checkpointing"}:
        defaults["activation_checkpointing"] = next(
            f.default for t in dataclass_types for f in dataclasses.fields(t) if f.name == "gradient_checkpointing"
        )
    return defaults


def _value_problems(parser: TrlParser, config: dict[str, Any], source: str) -> list[str]:
    """
    YAML values the parser would not convert. argparse converts only string defaults, so `num_train_epochs: [1]`
    or `max_length: {a: 1}` would otherwise reach the trainer and fail deep inside it with a bare TypeError.
    """
    actions = {a.dest: a for a in parser._actions}
    problems = []
    for key, value in config.items():
        action = actions.get(key)
        if action is None or value is None or action.type in (None, str) or isinstance(action.type, type(enum.Enum)):
            continue  # free-form fields (str, dicts and lists given as YAML) are checked by their dataclass
        if dataclasses.is_dataclass(action.type):
            continue  # a list of mappings (TRL's `datasets`), checked entry by entry by `ScriptArguments`
        values = value if action.nargs in ("+", "*") and isinstance(value, list) else [value]
        for item in values:
            try:
                if isinstance(item, (list, dict)):
                    raise ValueError
                converted = action.type(item if isinstance(item, str) else str(item))
                if action.choices and converted not in action.choices:
                    raise ValueError
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                kind = getattr(action.type, "__name__", "value").replace("string_to_bool", "bool (true/false)")
                kind = "value" if kind == "<lambda>" else kind
                if action.choices:
                    hint = closest_hint(str(item), map(str, action.choices)) or f" (one of {', '.join(map(str, action.choices[:8]))}, ...)"
                    problems.append(f"{source}: `{key}` cannot be {item!r}{hint}.")
                else:
                    article = "a single " if isinstance(item, (list, dict)) else ("an " if kind[0] in "aeiou" else "a ")
                    problems.append(f"{source}: `{key}` must be {article}{kind}, got {item!r}.")
                break
    return problems


def parse_args(
    dataclass_types, args: list[str] | None = None, config: dict[str, Any] | None = None, source: str | None = None
) -> tuple:
    """
    Parse `--config file.yaml` plus CLI overrides into `dataclass_types`, strictly.

    Unknown keys (in the YAML or on the command line) are an error naming the closest valid key; a YAML `env:`
    block is exported as TRL does. `config` gives the YAML's settings already loaded (e.g. a pipeline stage's,
    named `source` in errors) instead of `--config`.
    """
    path, args = split_config_arg(list(sys.argv[1:] if args is None else args))
    if config is None:
        config = load_yaml(path) if path else {}
    else:
        config = dict(config)
    source = source or path or "command line"
    if config:
        env = config.pop("env", {})
        if not isinstance(env, dict):
            raise ConfigError(f"{source}: `env` must be a mapping of variable names to values.")
        os.environ.update({k: str(v) for k, v in env.items()})

    parser = _StrictParser(dataclass_types)  # a fresh parser per parse: TrlParser keeps YAML values as defaults
    valid = _parser_keys(parser)
    # Every problem at once, one line each, so a user fixes the config in one go.
    problems = [f"{source}: unknown key '{key}'{closest_hint(key, valid)}." for key in config if key not in valid]
    cli_keys = _cli_keys(args)
    problems += [
        f"unknown command-line option '--{key}'{closest_hint(key, valid)}." for key in cli_keys if key not in valid
    ]
    problems += _value_problems(parser, {k: v for k, v in config.items() if k in valid}, source)
    if problems:
        raise ConfigError("\n".join(problems))

    explicit = set(config) | set(cli_keys)
    parser.set_defaults_with_config(**{**_device_defaults(explicit, dataclass_types), **config})
    try:
        parsed = parser.parse_args_into_dataclasses(args=args)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except (ValueError, TypeError) as e:  # a dataclass's __post_init__ rejecting a combination of values
        raise ConfigError(f"{source}: {e}") from None
    for parsed_config in parsed:  # alignkit, not the Trainer, pushes the saved output; hub_token stays off disk
        take_hub_settings(parsed_config)
    problems = _late_problems(parsed, source)
    if problems:
        raise ConfigError("\n".join(problems))
    return parsed


# Sizes the trainers accept in their configs but fail on later (in the data loader, after loading the model).
POSITIVE_KEYS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")


def _late_problems(parsed, source: str) -> list[str]:
    """Values the dataclasses accept but the run would reject only after loading the model, with a traceback."""
    problems = []
    for config in parsed:
        for key in POSITIVE_KEYS:
            value = getattr(config, key, None)
            if isinstance(value, int) and value < 1:
                problems.append(f"{source}: `{key}` must be at least 1, got {value}.")
        # TRL's `loss_type` is a free string (list) that a trainer rejects only at its first step; the valid
        # names are those its help text lists.
        f = next((f for f in dataclasses.fields(config) if f.name == "loss_type"), None)
        help_text = f.metadata.get("help", "") if f else ""
        valid = re.findall(r"`'([\w-]+)'`", help_text.partition("Possible values are")[2])
        values = getattr(config, "loss_type", None)
        for value in [values] if isinstance(values, str) else values or []:
            if valid and value not in valid:
                problems.append(
                    f"{source}: `loss_type` cannot be {value!r}{closest_hint(value, valid)}; use one of {', '.join(valid)}."
                )
        problems += _range_problems(config, source)
        # A 4/8-bit base cannot be trained itself, only adapters on it (QLoRA).
        quantized = getattr(config, "load_in_4bit", False) or getattr(config, "load_in_8bit", False)
        if quantized and not config.use_peft:
            problems.append(f"{source}: load_in_4bit/load_in_8bit trains adapters only: set `use_peft: true` (QLoRA) or drop it.")
        if quantized and importlib.util.find_spec("bitsandbytes") is None:  # else transformers fails with a traceback
            problems.append(f"{source}: load_in_4bit/load_in_8bit needs bitsandbytes, which alignkit installs but this "
                            "environment lacks; reinstall alignkit (`pip install -e .`) or `pip install bitsandbytes`.")
    return problems


def _range_problems(config, source: str) -> list[str]:
    """Values the trainers, PEFT or torch reject (or silently mis-train with) deep inside a run, checked up front."""
    problems = []
    for key in ("learning_rate", "value_learning_rate"):
        if not hasattr(config, key):
            continue
        value = getattr(config, key)
        if value is None and key == "learning_rate":
            problems.append(f"{source}: `learning_rate` is empty; give a positive number such as 1e-4.")
        elif value is not None and not value > 0:
            problems.append(f"{source}: `{key}` must be positive, got {value}.")
    epochs, max_steps = getattr(config, "num_train_epochs", None), getattr(config, "max_steps", None)
    if epochs is not None and epochs < 0:
        problems.append(f"{source}: `num_train_epochs` must be positive, got {epochs}.")
    elif epochs == 0 and max_steps is not None and max_steps <= 0 and getattr(config, "num_updates", None) is None:
        problems.append(f"{source}: `num_train_epochs: 0` with no `max_steps` trains 0 steps; set one of them above 0.")
    if max_steps is not None and max_steps < -1:
        problems.append(f"{source}: `max_steps` must be positive (or -1 to train `num_train_epochs`), got {max_steps}.")
    if getattr(config, "use_peft", False):
        if config.lora_r is not None and config.lora_r < 1:
            problems.append(f"{source}: `lora_r` must be at least 1 (the adapter's rank), got {config.lora_r}.")
        if config.lora_alpha is not None and config.lora_alpha <= 0:
            problems.append(f"{source}: `lora_alpha` must be positive, got {config.lora_alpha}.")
        if config.lora_dropout is not None and not 0 <= config.lora_dropout < 1:
            problems.append(f"{source}: `lora_dropout` must be in [0, 1), got {config.lora_dropout}.")
    if hasattr(config, "output_dir"):
        problems += _output_dir_problems(config.output_dir, source)
    return problems


def _output_dir_problems(output_dir, source: str) -> list[str]:
    """An output folder the run could not create or write, found before anything is loaded."""
    if output_dir is None or not str(output_dir).strip():
        return [f"{source}: `output_dir` is empty; set it to a new folder for this stage's output."]
    path = Path(output_dir).expanduser()
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor != path and not ancestor.is_dir():
        return [f"{source}: output_dir {output_dir} cannot be created: {ancestor} is a file; choose a folder elsewhere."]
    if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
        return [f"{source}: output_dir {output_dir} cannot be written: {ancestor} is read-only for this user; choose "
                "a folder you can write."]
    return []


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def resolved_config(*configs) -> dict[str, Any]:
    """The values that differ from the dataclasses' defaults, as one flat mapping that `--config` accepts."""
    resolved = {}
    for config in configs:
        for f in dataclasses.fields(config):
            if not f.init or f.name.endswith("_token") or f.name.startswith("_"):
                continue  # tokens never leave the process
            value = getattr(config, f.name)
            if value != _field_default(f):
                resolved[f.name] = _plain(value)
        if getattr(config, "alignkit_push_to_hub", False):  # turned off for the Trainer by take_hub_settings
            resolved["push_to_hub"] = True
    return resolved


def save_config(output_dir: str | Path, *configs) -> Path:
    path = Path(output_dir) / CONFIG_FILE_NAME
    path.write_text(yaml.safe_dump(resolved_config(*configs), sort_keys=True), encoding="utf-8")
    return path


def _resolve(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def stage_dataclasses(stage: str) -> tuple:
    """The dataclasses stage `stage` is configured with: (ScriptArguments, <Method>Config, ModelConfig)."""
    return tuple(_resolve(spec) for spec in stages.get(stage).config_classes)


# Every stage's dataclasses, by stage name.
STAGE_ARGS = {name: stage_dataclasses(name) for name in stages.names()}


def write_keys_file() -> Path:
    """Record every valid key per stage for the installed TRL/transformers in `stages.KEYS_FILE`."""
    # argparse also accepts each key with dashes (`--max-length`); preflight folds those to underscores.
    keys = {stage: sorted(k for k in valid_keys(types) if "-" not in k) for stage, types in STAGE_ARGS.items()}
    stages.KEYS_FILE.write_text(json.dumps({"versions": stages.stack_versions(), "stages": keys}, indent=1) + "\n")
    return stages.KEYS_FILE


if __name__ == "__main__":
    print(f"wrote {write_keys_file()}", file=sys.stderr)
