"""Pipeline files: parse, check and plan them (what `alignkit run` and `alignkit check` read; `alignkit.runner` runs).

A pipeline file (see `recipes/demo/pipeline.yaml`) names its stages in order; each names its recipe (pretrain,
sft, reward, dpo, ppo), its stage config (a YAML file relative to the pipeline file, and/or inline `args`) and
its inputs by stage name (`model`, `reward_model`, `value_model`), which resolve to those stages' output folders
under `<output_dir>/<stage>`. The whole file is checked before anything trains: recipes, stage references (only
earlier stages: no cycles), input kinds (a reward model is no policy), config keys, config files.

`Pipeline.plan` decides what a run does with each stage: skip a finished run, resume an interrupted stage from its
last complete checkpoint, start over a stage that left no checkpoint, and rerun every stage whose input is trained
again (`--from STAGE` reruns that stage and all later ones). `--set base_model=...` replaces a top-level key,
`--set sft.learning_rate=...` one stage's inline arg.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignkit import stages
from alignkit.configfile import closest_hint, load_yaml
from alignkit.errors import ConfigError
from alignkit.outputs import complete_checkpoints, read_run

# A stage's inputs by role, and the config key each one sets.
INPUTS = stages.INPUT_KEYS
PIPELINE_KEYS = ("base_model", "output_dir", "setup", "evaluation", "stages")
STAGE_KEYS = ("recipe", "config", *INPUTS, "args", "num_processes", "accelerate_config")
EVALUATION_KEYS = ("prompts", "judge", "max_new_tokens", "batch_size", "num_examples")
# Keys the pipeline sets itself in every stage's config.
RUNNER_KEYS = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint")
VARIABLE = re.compile(r"\$\{([^}]*)\}")


@dataclass
class Stage:
    name: str
    recipe: str
    config: str | None = None  # as written: relative to the pipeline file
    inputs: dict[str, str] = field(default_factory=dict)  # role -> an earlier stage, `base`, or a path / Hub id
    args: dict[str, Any] = field(default_factory=dict)
    num_processes: int = 1
    accelerate_config: str | None = None

    @property
    def spec(self) -> stages.Stage:
        """What the registry says about this stage's recipe."""
        return stages.STAGES[self.recipe]

    @property
    def kind(self) -> str:
        return self.spec.kind


@dataclass
class Pipeline:
    path: Path
    stages: dict[str, Stage]
    output_dir: str = "outputs"
    base_model: str | None = None
    setup: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)  # `${setup.<key>}`: what `setup` returned

    # ------------------------------------------------------------------------------------------------ errors

    def error(self, stage: str | None, problem: str, fix: str) -> ConfigError:
        where = f"{self.path}: stage '{stage}'" if stage else str(self.path)
        return ConfigError(f"{where}: {problem}. {fix}{'' if fix.endswith('.') else '.'}")

    # -------------------------------------------------------------------------------------------- validation

    def validate(self) -> Pipeline:
        """Raise a `ConfigError` (naming this file, the stage and the fix) for anything that would fail later."""
        names = list(self.stages)
        for index, stage in enumerate(self.stages.values()):
            valid = stage_keys(stage.recipe)
            if stage.config is not None:
                config = self.config_path(stage)
                if not config.is_file():
                    raise self.error(stage.name, f"config file {config} not found", "Fix the path: it is relative to the pipeline file")
                self._check_keys(stage, load_yaml(str(config)), valid, f"config file {stage.config}")
            self._check_keys(stage, stage.args, valid, "args")
            for role, value in stage.inputs.items():
                if INPUTS[role] not in valid:
                    raise self.error(stage.name, f"a {stage.recipe} stage takes no {role}", f"Remove `{role}`")
                if INPUTS[role] in stage.args:
                    raise self.error(stage.name, f"{role} is set twice, as `{role}` and as args.{INPUTS[role]}", "Keep one")
                self._check_input(index, names, stage, role, value)
            if "model" not in stage.inputs and "model_name_or_path" not in {**self._config(stage), **stage.args}:
                raise self.error(stage.name, "no model to start from", "Add `model: base` or `model: <an earlier stage>`")
            if stage.accelerate_config is not None and self.accelerate_config_path(stage) is None:
                raise self.error(stage.name, f"accelerate_config {stage.accelerate_config} not found", "Fix the path")
        self._check_evaluation()
        for spec, what in ((self.setup, "setup"), (self.evaluation.get("judge"), "evaluation.judge")):
            if spec is not None and not re.fullmatch(r"[\w.]+:\w+", str(spec)):
                raise self.error(None, f"{what} '{spec}' is not `module:function`", f"Write e.g. `{what}: mypackage.module:function`")
        self._check_variables()
        return self

    def _check_keys(self, stage: Stage, settings: Mapping, valid: set[str], source: str) -> None:
        for key in settings:
            if key == "env" and source != "args":
                continue  # a config file's `env:` block, exported as TRL does
            if key not in valid:
                raise self.error(
                    stage.name, f"unknown key '{key}' in {source}{closest_hint(key, valid)}",
                    f"Use a key of the {stage.recipe} recipe's config",
                )
            if key == "output_dir" and source == "args":
                raise self.error(stage.name, "args set output_dir", "Remove it: the pipeline writes each stage to <output_dir>/<stage>")

    def _check_input(self, index: int, names: list[str], stage: Stage, role: str, value: str) -> None:
        if value in self.stages:
            other = self.stages[value]
            if names.index(value) == index:
                raise self.error(stage.name, f"uses its own output as its {role}", "Name an earlier stage")
            if names.index(value) > index:
                raise self.error(
                    stage.name, f"uses '{value}' as its {role}, but '{value}' runs later",
                    f"A stage may only use earlier stages (so there can be no cycle): move '{value}' above '{stage.name}'",
                )
            if role == "model" and other.kind != "policy":
                raise self.error(
                    stage.name, f"model '{value}' is a reward model, not a policy",
                    f"`model` must be a policy stage ({', '.join(n for n, s in stages.STAGES.items() if s.is_policy)}) or "
                    "`base`; a reward stage goes in `reward_model`",
                )
            if role == "reward_model" and other.kind != "reward model":
                raise self.error(
                    stage.name, f"reward_model '{value}' is a policy ({other.recipe}), not a reward model",
                    "Name a reward stage",
                )
            return
        if value == "base" and role == "model":
            if not self.base_model:
                raise self.error(stage.name, "model is `base` but the pipeline sets no base_model", "Add `base_model: <Hub id or folder>`")
            return
        if "${" in value or "/" in value or Path(value).exists():
            return  # a folder or a Hub id, taken as is
        raise self.error(
            stage.name, f"{role} '{value}' is no stage of this pipeline{closest_hint(value, names)}",
            "Name an earlier stage, `base`, a folder or a Hub id (owner/name)",
        )

    def _check_evaluation(self) -> None:
        if not self.evaluation:
            return
        if "prompts" not in self.evaluation:
            raise self.error(None, "evaluation has no prompts", "Add `prompts: <a JSONL file with a prompt column>`")
        for key in ("max_new_tokens", "batch_size", "num_examples"):
            value = self.evaluation.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "num_examples" else 1)):
                raise self.error(None, f"evaluation.{key} must be a positive whole number, got {value!r}", "Fix its value")

    def _check_variables(self) -> None:
        strings = [self.base_model, self.output_dir, *self.evaluation.values()]
        for stage in self.stages.values():
            strings += [*stage.inputs.values(), *_strings(stage.args)]
        for text in strings:
            for name in VARIABLE.findall(text) if isinstance(text, str) else ():
                if name == "output_dir" or (name.startswith("setup.") and self.setup):
                    continue
                fix = "Add `setup: module:function` that returns it" if name.startswith("setup.") else "Use ${output_dir} or ${setup.<key>}"
                raise self.error(None, f"unknown variable ${{{name}}}", fix)

    # ---------------------------------------------------------------------------------------------- resolving

    def config_path(self, stage: Stage) -> Path:
        return self.path.parent / stage.config

    def accelerate_config_path(self, stage: Stage) -> Path | None:
        for path in (self.path.parent / stage.accelerate_config, Path(stage.accelerate_config)):
            if path.is_file():
                return path
        return None

    def _config(self, stage: Stage) -> dict[str, Any]:
        return load_yaml(str(self.config_path(stage))) if stage.config is not None else {}

    def substitute(self, value):
        """`value` with `${output_dir}` and `${setup.<key>}` replaced, in every string inside it."""
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if not isinstance(value, str):
            return value

        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name == "output_dir":
                return str(self.output_dir)
            key = name.removeprefix("setup.")
            if key not in self.variables:
                returned = sorted(self.variables)
                raise self.error(None, f"${{{name}}}: setup {self.setup} returned no '{key}' (it returned {returned})", "Fix the name")
            return self.variables[key]

        return VARIABLE.sub(replace, value)

    def stage_dir(self, name: str) -> Path:
        return Path(self.output_dir) / name

    def input_path(self, value: str) -> str:
        if value in self.stages:
            return str(self.stage_dir(value))
        return self.substitute(self.base_model if value == "base" else value)

    def settings(self, stage: Stage) -> dict[str, Any]:
        """The stage's whole config: its config file, then its inline args, its inputs and its output folder."""
        settings = {**self._config(stage), **self.substitute(stage.args)}
        for role, value in stage.inputs.items():
            settings[INPUTS[role]] = self.input_path(value)
        settings["output_dir"] = str(self.stage_dir(stage.name))
        return settings

    def previous(self, stage: Stage) -> str | None:
        """The earlier stage whose output this stage's model starts from, if any."""
        model = stage.inputs.get("model")
        return model if model in self.stages else None

    def run_setup(self) -> dict[str, str]:
        if self.setup:
            result = import_function(self.setup, self, "setup")(Path(self.output_dir))
            if not isinstance(result, Mapping):
                what = type(result).__name__
                raise self.error(None, f"setup {self.setup} returned a {what}, not a mapping of names to paths", "Return a dict")
            self.variables = {str(k): str(v) for k, v in result.items()}
        return self.variables

    # ------------------------------------------------------------------------------------------------ running

    def plan(self, from_stage: str | None = None) -> dict[str, str]:
        """
        What each stage will do: `skip` (a finished run), `resume` (an unfinished run with a checkpoint), `start`
        (nothing usable yet) or `rerun` (asked by `from_stage`, or an input is trained again: its output is stale).
        """
        names = list(self.stages)
        if from_stage is not None and from_stage not in self.stages:
            hint = closest_hint(from_stage, names)
            raise self.error(None, f"--from {from_stage}: no such stage{hint}", f"Choose one of {', '.join(names)}")
        first = names.index(from_stage) if from_stage else len(names)
        actions: dict[str, str] = {}
        for index, (name, stage) in enumerate(self.stages.items()):
            if read_run(self.stage_dir(name)) is not None:
                actions[name] = "skip"
            elif complete_checkpoints(self.stage_dir(name)):
                actions[name] = "resume"
            else:
                actions[name] = "start"
            stale = any(actions.get(value, "skip") != "skip" for value in stage.inputs.values())
            if actions[name] != "start" and (index >= first or stale):
                actions[name] = "rerun"
        return actions


    def stage_args(self, stage: Stage, action: str, config_file: Path) -> list[str]:
        """Write the stage's config to `config_file` for this action; the recipe's command-line arguments."""
        settings = self.settings(stage)
        output = self.stage_dir(stage.name)
        settings.pop("resume_from_checkpoint", None)
        settings.pop("overwrite_output_dir", None)
        if action == "resume":
            # The recipe resumes from the newest complete checkpoint and removes half-written ones
            # (alignkit.outputs.resume_checkpoint), as it does for `--resume_from_checkpoint true` by hand.
            settings["resume_from_checkpoint"] = True
        elif output.is_dir() and any(output.iterdir()):
            settings["overwrite_output_dir"] = True
        if stage.num_processes > 1 and not has_gpu():
            settings["use_cpu"] = True  # without it, each process trains alone on the same folder (STACK-NOTES)
        config_file.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        return ["--config", str(config_file)]


# -------------------------------------------------------------------------------------------------- loading


def load_pipeline(path: str | Path, overrides: Mapping[str, Any] | Iterable[str] | None = None) -> Pipeline:
    """
    Read a pipeline file, apply `overrides` (`{"base_model": ..., "sft.learning_rate": ...}` or `KEY=VALUE`
    strings, as `--set` gives them) and check its shape. `Pipeline.validate()` checks the rest.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Pipeline file not found: {path}. Give the path of a pipeline YAML (e.g. recipes/demo/pipeline.yaml).")
    raw = load_yaml(str(path))
    pipeline = Pipeline(path=path, stages={})  # for its error messages
    for key, value in _overrides(overrides, pipeline):
        _apply_override(raw, key, value, pipeline)
    for key in raw:
        if key not in PIPELINE_KEYS:
            raise pipeline.error(None, f"unknown key '{key}'{closest_hint(key, PIPELINE_KEYS)}", f"Use {', '.join(PIPELINE_KEYS)}")
    specs = raw.get("stages")
    if not isinstance(specs, dict) or not specs:
        raise pipeline.error(None, "no stages", "Add `stages:` mapping each stage's name to its recipe, config and inputs")
    for name, spec in specs.items():
        pipeline.stages[str(name)] = _stage(str(name), spec, pipeline)
    evaluation = raw.get("evaluation") or {}
    if not isinstance(evaluation, dict):
        raise pipeline.error(None, "evaluation must be a mapping", f"Give it {', '.join(EVALUATION_KEYS)}")
    for key in evaluation:
        if key not in EVALUATION_KEYS:
            hint = closest_hint(key, EVALUATION_KEYS)
            raise pipeline.error(None, f"unknown key 'evaluation.{key}'{hint}", f"Use {', '.join(EVALUATION_KEYS)}")
    pipeline.evaluation = evaluation
    pipeline.output_dir = str(raw.get("output_dir") or "outputs")
    pipeline.base_model = None if raw.get("base_model") is None else str(raw["base_model"])
    pipeline.setup = raw.get("setup")
    return pipeline


def _stage(name: str, spec: Any, pipeline: Pipeline) -> Stage:
    if not isinstance(spec, dict):
        raise pipeline.error(name, "is not a mapping", "Give it `recipe:` and its config, inputs and args")
    for key in spec:
        if key not in STAGE_KEYS:
            raise pipeline.error(name, f"unknown key '{key}'{closest_hint(key, STAGE_KEYS)}", f"Use {', '.join(STAGE_KEYS)}")
    recipe = spec.get("recipe")
    if recipe not in stages.STAGES:
        recipes = stages.names()
        raise pipeline.error(name, f"unknown recipe '{recipe}'{closest_hint(str(recipe), recipes)}", f"Use one of {', '.join(recipes)}")
    args = spec.get("args") or {}
    if not isinstance(args, dict):
        raise pipeline.error(name, "args must be a mapping of config keys to values", "Write `args: {key: value}`")
    processes = spec.get("num_processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise pipeline.error(name, f"num_processes must be a whole number >= 1, got {processes!r}", "Fix its value")
    return Stage(
        name=name,
        recipe=recipe,
        config=None if spec.get("config") is None else str(spec["config"]),
        inputs={role: str(spec[role]) for role in INPUTS if spec.get(role) is not None},
        args=args,
        num_processes=processes,
        accelerate_config=None if spec.get("accelerate_config") is None else str(spec["accelerate_config"]),
    )


def _overrides(overrides, pipeline: Pipeline) -> list[tuple[str, Any]]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        key, eq, value = str(item).partition("=")
        if not eq or not key:
            raise pipeline.error(None, f"--set {item}: expected KEY=VALUE", "Write e.g. `--set base_model=path/to/model`")
        # Typed as YAML would type it, except YAML 1.1's yes/no/on/off: `save_strategy=no` means the string.
        typed = value if value.lower() in ("", "yes", "no", "on", "off", "y", "n") else yaml.safe_load(value)
        pairs.append((key, typed))
    return pairs


def _apply_override(raw: dict, key: str, value: Any, pipeline: Pipeline) -> None:
    head, dot, rest = key.partition(".")
    if not dot:
        raw[key] = value
    elif head == "evaluation":
        raw.setdefault("evaluation", {})[rest] = value
    elif head in (raw.get("stages") or {}):
        spec = raw["stages"][head]
        if rest in STAGE_KEYS and rest != "args":
            spec[rest] = value
        else:
            spec.setdefault("args", {})[rest] = value
    else:
        hint = closest_hint(head, raw.get("stages") or {})
        raise pipeline.error(None, f"--set {key}: no stage '{head}'{hint}", "Name a stage, `evaluation`, or a top-level key")


# --------------------------------------------------------------------------------------------------- helpers


def stage_keys(recipe: str) -> set[str]:
    """Every key `recipe`'s config accepts (from the shipped key list; the full parser's for other versions)."""
    keys = stages.known_keys(recipe)
    if keys is None:
        from alignkit.config import stage_dataclasses, valid_keys  # the ML stack: only for untested TRL versions

        keys = valid_keys(stage_dataclasses(recipe))
    return keys


def import_function(spec: str, pipeline: Pipeline, what: str):
    module, _, name = str(spec).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise pipeline.error(None, f"{what} {spec} cannot be imported ({e})", "Fix the `module:function` name") from None


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def has_gpu() -> bool:
    return importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()
