"""Pipeline files: parse, check and plan them (what `alignkit run` and `alignkit check` read; `alignkit.runner` runs).

A pipeline file (see `recipes/demo/pipeline.yaml`) names its stages in order; each names its recipe (pretrain,
sft, reward, dpo, ppo), its stage config (a YAML file relative to the pipeline file, and/or inline `args`) and
its inputs by stage name (`model`, `reward_model`, `value_model`), which resolve to those stages' output folders
under `<output_dir>/<stage>`. The whole file is checked before anything trains: recipes, stage references (only
earlier stages: no cycles), input kinds (a reward model is no policy), config keys, config files, input folders
that hold an unfinished run, an output_dir that cannot be a folder.

Every relative path in the file and its stage configs (chat templates, data sets, models, evaluation prompts,
accelerate and DeepSpeed configs) means the same from any working directory: see `Pipeline.resolve_path`.

`Pipeline.plan` decides what a run does with each stage: skip a finished run, resume an interrupted stage from its
last complete checkpoint, start over a stage that left no checkpoint, and rerun every stage whose input is trained
again, or was trained again since the stage ran: the runner notes which input runs each stage was trained from
(`STATE_FILE`), so a run killed between a retrained stage and its dependants is completed by the next plain run.
`--from STAGE` reruns that stage and all later ones. `--set base_model=...` replaces a top-level key,
`--set sft.learning_rate=...` one stage's inline arg.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignkit import stages
from alignkit.configfile import closest_hint, load_yaml
from alignkit.errors import ConfigError
from alignkit.outputs import (
    RUN_FILE_NAME,
    complete_checkpoints,
    previous_dir,
    read_run,
    unfinished_run,
    write_json_atomic,
)

# A stage's inputs by role, and the config key each one sets.
INPUTS = stages.INPUT_KEYS
PIPELINE_KEYS = ("base_model", "output_dir", "setup", "evaluation", "stages")
STAGE_KEYS = ("recipe", "config", *INPUTS, "args", "num_processes", "accelerate_config", "evaluate")
EVALUATION_KEYS = ("prompts", "judge", "max_new_tokens", "batch_size", "num_examples", "audit_reward_model")
# The config key an online stage (PPO, GRPO, RLOO) gets the audit reward stage's output in.
AUDIT_KEY = "audit_reward_model_path"
# Keys the pipeline sets itself in every stage's config.
RUNNER_KEYS = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint")
VARIABLE = re.compile(r"\$\{([^}]*)\}")
# Settings that name a file: a relative one is looked up beside the pipeline file, then (for files written relative to
# a project root, as the shipped recipes are) in the working directory and in the folders above the pipeline file.
FILE_KEYS = ("chat_template_path", "deepspeed", "fsdp_config", "accelerator_config", "constitution", "judge_prompts")
# Settings that name a file or folder which may also be a Hub id: a relative one is taken beside the pipeline file
# (or the stage config that sets it) when it exists there, else as written (the working directory, or the Hub).
PATH_KEYS = (*FILE_KEYS, "dataset_name", *INPUTS.values())
# Beside report.json: what each stage was trained from (a digest of each input stage's run record when it ran).
STATE_FILE = ".alignkit_pipeline.json"
# Never written into the config file a stage is handed: it goes to the stage through the environment.
SECRET_KEYS = {"hub_token": "HF_TOKEN"}


@dataclass
class Stage:
    name: str
    recipe: str
    config: str | None = None  # as written: relative to the pipeline file
    inputs: dict[str, str] = field(default_factory=dict)  # role -> an earlier stage, `base`, or a path / Hub id
    args: dict[str, Any] = field(default_factory=dict)
    num_processes: int = 1
    accelerate_config: str | None = None
    evaluate: bool = True  # a policy's answers to `evaluation.prompts` in the report (false: a model that only judges)

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
    why: dict[str, str] = field(default_factory=dict)  # why `plan` reruns a stage, by stage
    overridden: set[str] = field(default_factory=set)  # keys `--set` gave: their paths are the working directory's

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
            settings = {**self._config(stage), **stage.args}
            if "model" not in stage.inputs and "model_name_or_path" not in settings:
                raise self.error(stage.name, "no model to start from", "Add `model: base` or `model: <an earlier stage>`")
            for role, value in stage.inputs.items():  # earlier stages are trained first; other folders must be finished
                literal = value not in self.stages and "${" not in self._raw_input(value)  # else known only at run time
                settings[INPUTS[role]] = self.input_path(value) if literal else None
            self.refuse_unfinished_inputs(stage, settings)
            if stage.accelerate_config is not None and self.accelerate_config_path(stage) is None:
                raise self.error(stage.name, f"accelerate_config {stage.accelerate_config} not found", "Fix the path")
        self._check_evaluation()
        self._check_output_dir()
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

    def _check_output_dir(self) -> None:
        if "${" in self.output_dir:
            return
        out = Path(self.output_dir)
        for folder in (*(self.stage_dir(name) for name in self.stages), out):
            blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                raise self.error(
                    None, f"output_dir {self.output_dir} cannot hold the stages' folders: {blocker} is a file, not a folder",
                    "Choose another output_dir (in the file, or `--output_dir DIR`)",
                )

    def refuse_unfinished_inputs(self, stage: Stage, settings: Mapping[str, Any]) -> None:
        """A `ConfigError` when an input folder of `stage` (model, reward or value model) holds an unfinished run."""
        for key in INPUTS.values():
            value = settings.get(key)
            if isinstance(value, str) and "${" not in value and (why := unfinished_run(value)) is not None:
                stages_dir = Path(self.output_dir)
                fix = ("Rerun the pipeline to finish it" if Path(value).parent == stages_dir else
                       "Finish that run (rerun its command with `--resume_from_checkpoint true`, or rerun its pipeline) "
                       "or point at a finished run's folder")
                raise self.error(stage.name, f"{key} {why}", fix)

    def _check_evaluation(self) -> None:
        if not self.evaluation:
            return
        self._check_audit()
        if "prompts" not in self.evaluation and set(self.evaluation) != {"audit_reward_model"}:
            raise self.error(None, "evaluation has no prompts", "Add `prompts: <a JSONL file with a prompt column>`")
        for key in ("max_new_tokens", "batch_size", "num_examples"):
            value = self.evaluation.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "num_examples" else 1)):
                raise self.error(None, f"evaluation.{key} must be a positive whole number, got {value!r}", "Fix its value")

    def _check_audit(self) -> None:
        """`evaluation.audit_reward_model`: a reward stage that no stage optimises against, trained before they run."""
        audit = self.audit_stage
        if audit is None:
            return
        rewards = [n for n, s in self.stages.items() if not s.spec.is_policy]
        if audit not in rewards:
            what = f"is a {self.stages[audit].recipe} stage" if audit in self.stages else "is no stage of this pipeline"
            raise self.error(None, f"evaluation.audit_reward_model '{audit}' {what}{closest_hint(audit, rewards)}",
                             f"Name a reward stage ({', '.join(rewards) or 'add one'})")
        names = list(self.stages)
        for name, stage in self.stages.items():
            if stage.inputs.get("reward_model") == audit:
                raise self.error(
                    name, f"optimises against '{audit}', the audit reward model (evaluation.audit_reward_model)",
                    "An audit reward model must never be optimised against: train another reward stage for one of the two",
                )
            if AUDIT_KEY in stage_keys(stage.recipe) and names.index(audit) > names.index(name):
                raise self.error(
                    name, f"runs before the audit reward stage '{audit}', so it cannot log its score",
                    f"Move '{audit}' above '{name}'",
                )

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
        """The stage's config file: relative to the pipeline file (or, failing that, to the working directory)."""
        beside = self.path.parent / stage.config
        return Path(stage.config) if not beside.is_file() and Path(stage.config).is_file() else beside

    def accelerate_config_path(self, stage: Stage) -> Path | None:
        path = Path(self.resolve_path(stage.accelerate_config, file=True, key=f"{stage.name}.accelerate_config"))
        return path if path.is_file() else None

    def resolve_path(self, value, file: bool = False, beside: Path | None = None, key: str | None = None):
        """
        A relative path written in this pipeline (or in the stage config in folder `beside`) as a path that works from
        any working directory: beside the pipeline file when it exists there, else beside the stage config, else as
        written when it exists from the working directory; a `file` is also looked for in the pipeline file's
        parent folders (the shipped recipes name files from the repository root). Anything else (a Hub id, an
        output written later, a `${...}` value) is returned as it is.
        """
        if not isinstance(value, str) or not value.strip() or "${" in value or Path(value).is_absolute():
            return value
        if key in self.overridden and _exists(Path(value)):
            return value  # given on the command line: relative to the working directory first
        here = self.path.parent
        candidates = [here / value, *([beside / value] if beside is not None else []), Path(value)]
        if file:
            candidates += [folder / value for folder in here.absolute().parents]
        return next((str(c) for c in candidates if _exists(c, file)), value)

    def resolve_paths(self, settings: Mapping[str, Any], beside: Path | None = None) -> dict[str, Any]:
        """`settings` with every relative file or folder setting (`PATH_KEYS`) resolved by `resolve_path`."""
        return {key: self.resolve_path(value, key in FILE_KEYS, beside) if key in PATH_KEYS else value
                for key, value in settings.items()}

    def _config(self, stage: Stage) -> dict[str, Any]:
        if stage.config is None:
            return {}
        path = self.config_path(stage)
        return self.resolve_paths(load_yaml(str(path)), beside=path.parent)

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

    def _raw_input(self, value: str) -> str:
        return str(self.base_model) if value == "base" else value

    def input_path(self, value: str) -> str:
        if value in self.stages:
            return str(self.stage_dir(value))
        raw = self._raw_input(value)
        return self.substitute(raw) if "${" in raw else self.resolve_path(raw, key="base_model" if value == "base" else None)

    @property
    def audit_stage(self) -> str | None:
        """The reward stage `evaluation.audit_reward_model` names: watched, never optimised against (or None)."""
        audit = self.evaluation.get("audit_reward_model")
        return None if audit is None else str(audit)

    def audits(self, stage: Stage) -> bool:
        """Whether `stage` is handed the audit reward model: an online stage (PPO, GRPO, RLOO: one that takes it)."""
        return self.audit_stage in self.stages and AUDIT_KEY in stage_keys(stage.recipe)

    def settings(self, stage: Stage) -> dict[str, Any]:
        """
        The stage's whole config: its config file, then its inline args, its inputs and its output folder (and, for
        an online stage, the audit reward stage's output as `audit_reward_model_path` unless it sets one).
        """
        settings = {**self._config(stage), **self.substitute(stage.args)}
        for role, value in stage.inputs.items():
            settings[INPUTS[role]] = self.input_path(value)
        if self.audits(stage) and settings.get(AUDIT_KEY) is None:
            settings[AUDIT_KEY] = str(self.stage_dir(self.audit_stage))
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
        (nothing usable yet) or `rerun` (asked by `from_stage`, an input is trained again in this run, or an input
        was trained again after this stage's run: its output is stale). Why a stage reruns is kept in `self.why`.

        A finished stage is stale when the run record of an input stage differs from the one recorded when it was
        trained (`record_trained`, in `STATE_FILE`); without such a record (an older pipeline folder, or a process
        killed before writing it), when an input's run finished after this stage's run, or after the checkpoint an
        unfinished stage would resume from.
        """
        names = list(self.stages)
        if from_stage is not None and from_stage not in self.stages:
            hint = closest_hint(from_stage, names)
            raise self.error(None, f"--from {from_stage}: no such stage{hint}", f"Choose one of {', '.join(names)}")
        first = names.index(from_stage) if from_stage else len(names)
        state = self.read_state()
        actions: dict[str, str] = {}
        self.why = {}
        for index, (name, stage) in enumerate(self.stages.items()):
            out = self.stage_dir(name)
            if read_run(out) is not None:
                actions[name] = "skip"
                changed = self._changed_input(stage, out / RUN_FILE_NAME, state.get(name))
            elif complete_checkpoints(out):
                actions[name] = "resume"
                changed = self._changed_input(stage, complete_checkpoints(out)[-1] / "trainer_state.json", None)
            else:
                actions[name] = "start"
                changed = None
            stale = [value for value in self.input_stages(stage) if actions.get(value, "skip") != "skip"]
            if actions[name] == "start":
                continue
            if index >= first:
                self.why[name] = f"--from {from_stage}"
            elif stale:
                self.why[name] = f"its input {stale[0]} is trained again"
            elif changed:
                self.why[name] = f"its input {changed} was trained again after it"
            else:
                continue
            actions[name] = "rerun"
        return actions

    # ------------------------------------------------------------------------------------ what stages ran from

    def input_stages(self, stage: Stage) -> list[str]:
        """The stages of this pipeline whose outputs `stage` reads: its input models, the audit reward model's (for an
        online stage), and data an earlier stage wrote that its args name by path (`${output_dir}/ai_feedback/preference`),
        so it reruns when that stage does."""
        audit = [self.audit_stage] if self.audits(stage) else []
        read = [value for value in [*stage.inputs.values(), *audit] if value in self.stages]
        return list(dict.fromkeys(read + self.data_stages(stage, stage.args)))

    def data_stages(self, stage: Stage, value) -> list[str]:
        """The earlier stages whose output folder `value` (one of `stage`'s args, or all of them) names by path."""
        names = list(self.stages)[: list(self.stages).index(stage.name)]
        return [n for text in _strings(value) for n in names if f"${{output_dir}}/{n}/" in f"{text}/"]

    def run_digest(self, name: str) -> str | None:
        """A digest of stage `name`'s run record (None when it holds no finished run): it changes with every run."""
        path = self.stage_dir(name) / RUN_FILE_NAME
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()[:32]
        except OSError:
            return None

    def read_state(self) -> dict[str, Any]:
        try:
            state = json.loads((Path(self.output_dir) / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # none yet, or damaged: the plan falls back to the runs' times
        return state.get("stages", {}) if isinstance(state, dict) and isinstance(state.get("stages"), dict) else {}

    def record_trained(self, stage: Stage) -> None:
        """
        Note in `STATE_FILE` which runs of its input stages the finished run in `stage`'s folder was trained from
        (digests of their run records as they are now), so that a later `plan` reruns it when one of them changes.
        """
        own = self.run_digest(stage.name)
        state = self.read_state()
        if own is None:
            state.pop(stage.name, None)
        else:
            state[stage.name] = {"run": own, "trained_from": {name: self.run_digest(name) for name in self.input_stages(stage)}}
        write_json_atomic(Path(self.output_dir) / STATE_FILE, {"stages": state})

    def _changed_input(self, stage: Stage, own_file: Path, record: Mapping | None) -> str | None:
        """The first input stage whose run is not the one the output in `own_file` was trained from, if any."""
        trained_from = None
        if isinstance(record, Mapping) and record.get("run") == self.run_digest(stage.name):
            trained_from = record.get("trained_from")
        for name in self.input_stages(stage):
            if isinstance(trained_from, Mapping) and name in trained_from:
                if trained_from[name] != self.run_digest(name):
                    return name
                continue
            try:  # no record: an input whose run finished after this output was written is newer than it
                if (self.stage_dir(name) / RUN_FILE_NAME).stat().st_mtime_ns > own_file.stat().st_mtime_ns:
                    return name
            except OSError:
                continue
        return None

    def leftovers(self) -> dict[str, str]:
        """
        Stage folders with a `<stage>.previous` beside them (an overwrite that was stopped part way), by stage, each
        with what `alignkit run` does about it.
        """
        found = {}
        for name in self.stages:
            out = self.stage_dir(name)
            previous = previous_dir(out)
            if not previous.is_dir():
                continue
            if read_run(out) is not None:
                found[name] = (f"{previous} is left over from an overwrite that finished ({out} holds the new run); "
                               "`alignkit run` deletes it")
            else:
                found[name] = (f"{previous} holds the run {out} was replacing when it was stopped; `alignkit run` "
                               f"finishes the stage and then deletes it. To keep the earlier run instead: "
                               f"`rm -rf {out} && mv {previous} {out}`")
        return found


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
        self.refuse_unfinished_inputs(stage, settings)
        settings.pop("env", None)
        for key in SECRET_KEYS:  # `stage_env` passes them; nothing secret is written to disk
            settings.pop(key, None)
        config_file.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        return ["--config", str(config_file)]

    def stage_env(self, stage: Stage) -> dict[str, str]:
        """
        Environment variables the stage runs with: its config file's `env:` block (which TRL would export) and its
        Hub token (`hub_token` in a config or args, as HF_TOKEN), kept out of the config file `stage_args` writes.
        """
        settings = self.settings(stage)
        env = settings.get("env") or {}
        if not isinstance(env, Mapping):
            raise self.error(stage.name, "`env` in its config file is not a mapping", "Write `env: {NAME: value}`")
        env = {str(k): str(v) for k, v in env.items()}
        for key, variable in SECRET_KEYS.items():
            if settings.get(key):
                env[variable] = str(settings[key])
        return env


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
        pipeline.overridden.add(key)
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
    if "prompts" in evaluation:
        evaluation["prompts"] = pipeline.resolve_path(evaluation["prompts"], file=True, key="evaluation.prompts")
    for stage in pipeline.stages.values():
        stage.args = {key: pipeline.resolve_path(value, key in FILE_KEYS, key=f"{stage.name}.{key}") if key in PATH_KEYS else value
                      for key, value in stage.args.items()}
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
    evaluate = spec.get("evaluate", True)
    if not isinstance(evaluate, bool):
        raise pipeline.error(name, f"evaluate must be true or false, got {evaluate!r}", "Fix its value")
    return Stage(
        name=name,
        recipe=recipe,
        config=None if spec.get("config") is None else str(spec["config"]),
        inputs={role: str(spec[role]) for role in INPUTS if spec.get(role) is not None},
        args=args,
        num_processes=processes,
        accelerate_config=None if spec.get("accelerate_config") is None else str(spec["accelerate_config"]),
        evaluate=evaluate,
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
        try:
            typed = value if value.lower() in ("", "yes", "no", "on", "off", "y", "n") else yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = str(getattr(e, "problem", None) or e).splitlines()[0]
            raise pipeline.error(
                None, f"--set {item}: {value!r} is not a valid value ({problem})",
                "Write it as in YAML: a number, true/false, a [list] or {mapping} closed on the same value, "
                f"or a string in quotes (e.g. `--set '{key}=\"{value}\"'`)",
            ) from None
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


def _exists(path: Path, file: bool = False) -> bool:
    try:
        return path.is_file() if file else path.exists()
    except OSError:  # a name too long to be a path: a Hub id or free text
        return False


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def has_gpu() -> bool:
    return importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()
