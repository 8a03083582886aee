"""Fail in a second on the commonest mistakes, before the ML stack is imported (that import alone takes ~5 s).

`alignkit <stage>` and `recipes/<stage>.py` run `check()` first: unknown config keys, and a data set that is
unreadable or in the wrong format. The full checks still run after the import (`config.parse_args`,
`data.load_data`); these only make the same errors arrive sooner. Valid keys come from `config_keys.json`, written
for the TRL and transformers versions it names (`python -m alignkit.preflight` rewrites it; a test keeps it in
step); with other versions the key check is left to the full parser.
"""

from __future__ import annotations

import difflib
import json
import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from alignkit.errors import ConfigError

KEYS_FILE = Path(__file__).with_name("config_keys.json")
# The data format each stage's recipe asks `data.load_data` for.
STAGE_DATA = {"pretrain": "pretrain", "sft": "sft", "reward": "preference", "dpo": "preference", "ppo": "prompts"}


def stack_versions() -> dict[str, str]:
    return {"trl": version("trl"), "transformers": version("transformers")}


def closest_hint(key: str, valid) -> str:
    match = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def load_yaml(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = f" (line {e.problem_mark.line + 1})" if getattr(e, "problem_mark", None) else ""
        raise ConfigError(f"{path}{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must be a YAML mapping of `key: value` lines, got a {type(config).__name__}.")
    return config


def split_config_arg(args: list[str]) -> tuple[str | None, list[str]]:
    """(`--config` path, the other arguments)."""
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1 :]
    if "--config" not in args:
        return None, list(args)
    i = args.index("--config")
    if i + 1 >= len(args):
        raise ConfigError("--config needs a path to a YAML file.")
    return args[i + 1], args[:i] + args[i + 2 :]


def cli_values(args: list[str]) -> dict[str, str | None]:
    """`--key value` / `--key=value` pairs as given (a flag with no value maps to None)."""
    values: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            nxt = args[i + 1] if i + 1 < len(args) else None
            values[key] = value if eq else (nxt if nxt is not None and not nxt.startswith("--") else None)
    return values


def known_keys(stage: str) -> set[str] | None:
    """The valid config keys of `stage` for the installed stack, or None when the key file is for other versions."""
    if not KEYS_FILE.is_file():
        return None
    saved = json.loads(KEYS_FILE.read_text())
    if saved["versions"] != stack_versions() or stage not in saved["stages"]:
        return None
    return set(saved["stages"][stage])


def check(stage: str, args: list[str]) -> None:
    """Raise the `ConfigError` or `DataError` the full run would raise for unknown keys or unusable data."""
    path, rest = split_config_arg(args)
    config = load_yaml(path) if path else {}
    config.pop("env", None)
    overrides = cli_values(rest)
    valid = known_keys(stage)
    if valid is not None:  # every unknown key at once, one line each
        unknown = [f"{path}: unknown key '{key}'{closest_hint(key, valid)}." for key in config if key not in valid]
        unknown += [
            f"unknown command-line option '--{key}'{closest_hint(key, valid)}."
            for key in overrides if key.replace("-", "_") not in valid
        ]
        if unknown:
            raise ConfigError("\n".join(unknown))
    settings = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    if stage == "ppo" and not settings.get("reward_model_path"):
        raise ConfigError(f"{path or 'command line'}: PPO needs `reward_model_path`: the reward stage's output folder.")
    name = settings.get("dataset_name")
    if stage in STAGE_DATA and name and Path(str(name)).expanduser().exists():  # Hub data waits for the full run
        from alignkit import data  # `datasets` imports in under a second

        script_args = SimpleNamespace(
            dataset_name=str(name),
            dataset_config=settings.get("dataset_config"),
            dataset_streaming=False,
            dataset_train_split=str(settings.get("dataset_train_split", "train")),
            dataset_test_split=str(settings.get("dataset_test_split", "test")),
            eval_split_size=0,
        )
        data.load_data(script_args, STAGE_DATA[stage], str(settings.get("dataset_text_field", "text")))


def write_keys_file() -> Path:
    """Record every valid key per stage for the installed TRL/transformers (imports the whole stack)."""
    from alignkit.config import STAGE_ARGS, valid_keys

    # argparse also accepts each key with dashes (`--max-length`); `check` folds those to underscores.
    stages = {stage: sorted(k for k in valid_keys(types) if "-" not in k) for stage, types in STAGE_ARGS.items()}
    KEYS_FILE.write_text(json.dumps({"versions": stack_versions(), "stages": stages}, indent=1) + "\n")
    return KEYS_FILE


if __name__ == "__main__":
    print(f"wrote {write_keys_file()}", file=sys.stderr)
