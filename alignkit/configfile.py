"""Reading config files and command-line flags, before (and without) the ML stack: YAML, `--config`, typo hints."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import ConfigError


def closest_hint(key: str, valid) -> str:
    match = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: int, again: int):
        super().__init__(f"key '{key}' appears twice (lines {first} and {again}); keep one")
        self.line = again


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error instead of the last one winning."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        config = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"{path} (line {e.line}): {e}.") from None
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
