"""Fail in a second on the commonest mistakes, before the ML stack is imported (that import alone takes ~5 s).

`alignkit <stage>` and `recipes/<stage>.py` run `check()` first: unknown config keys, a missing required key, and a
data set that is unreadable or in the wrong format. The full checks still run after the import
(`config.parse_args`, `data.load_data`); these only make the same errors arrive sooner. Valid keys come from
`config_keys.json` (`alignkit.stages.known_keys`); with other TRL/transformers versions the key check is left to
the full parser.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from alignkit import stages
from alignkit.configfile import cli_values, closest_hint, load_yaml, split_config_arg
from alignkit.errors import ConfigError
from alignkit.outputs import refuse_unfinished


def check(stage: str, args: list[str]) -> None:
    """Raise the `ConfigError` or `DataError` the full run would raise for unknown keys or unusable data."""
    spec = stages.get(stage)
    path, rest = split_config_arg(args)
    config = load_yaml(path) if path else {}
    config.pop("env", None)
    overrides = cli_values(rest)
    valid = stages.known_keys(stage)
    if valid is not None:  # every unknown key at once, one line each
        unknown = [f"{path}: unknown key '{key}'{closest_hint(key, valid)}." for key in config if key not in valid]
        unknown += [
            f"unknown command-line option '--{key}'{closest_hint(key, valid)}."
            for key in overrides if key.replace("-", "_") not in valid
        ]
        if unknown:
            raise ConfigError("\n".join(unknown))
    settings = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    for key in spec.required:
        if not settings.get(key):
            raise ConfigError(f"{path or 'command line'}: {required_message(spec, key)}")
    for role in spec.inputs:  # an earlier run that did not finish is no model to start from
        if settings.get(stages.INPUT_KEYS[role]):
            refuse_unfinished(str(settings[stages.INPUT_KEYS[role]]), stages.INPUT_KEYS[role])
    name = settings.get("dataset_name")
    if name and Path(str(name)).expanduser().exists():  # Hub data waits for the full run
        from alignkit import data  # `datasets` imports in under a second

        script_args = SimpleNamespace(
            dataset_name=str(name),
            dataset_config=settings.get("dataset_config"),
            dataset_streaming=False,
            dataset_train_split=str(settings.get("dataset_train_split", "train")),
            dataset_test_split=str(settings.get("dataset_test_split", "test")),
            eval_split_size=0,
        )
        data.load_data(script_args, spec.data_format, str(settings.get("dataset_text_field", "text")))
    entries = settings.get("datasets")
    if entries and isinstance(entries, list) and all(_local_entry(e) for e in entries):  # a mixture of local data sets
        from alignkit import data

        script_args = SimpleNamespace(datasets=entries, dataset_name=None, test_split_size=None, eval_split_size=0)
        data.load_data(script_args, spec.data_format, str(settings.get("dataset_text_field", "text")))


def _local_entry(entry) -> bool:
    path = entry.get("path") if isinstance(entry, dict) else entry
    return isinstance(path, str) and Path(path).expanduser().exists()


def required_message(spec: stages.Stage, key: str) -> str:
    """What to say when a stage's required key is missing."""
    if key == "reward_model_path":
        return f"{spec.name.upper()} needs `reward_model_path`: the reward stage's output folder."
    return f"{spec.name} needs `{key}`."
