"""Check a pipeline file: its shape, then each stage as a stage config (inputs earlier stages produce are noted)."""

from __future__ import annotations

from alignkit import pipeline as pipelines
from alignkit.check.findings import Report
from alignkit.check.stage import StageInputs, check_accelerate_config, check_stage
from alignkit.errors import AlignkitError
from alignkit.outputs import read_run

# What `alignkit run` will do with a stage's output folder (`Pipeline.plan`).
PLAN_WORDS = {"start": "new: the stage trains", "skip": "holds a finished run: skipped", "resume": "resumes its last checkpoint",
              "rerun": "trained again (--from, or an input is trained again)"}


def check_pipeline(
    path: str, overrides: list[str], output_dir: str | None, report: Report, from_stage: str | None = None
) -> None:
    """Check a pipeline file's shape, then each stage as a stage config (inputs earlier stages produce are noted)."""
    try:
        pipe = pipelines.load_pipeline(path, overrides)
    except AlignkitError as e:
        report.problem(e)
        return
    if output_dir is not None:
        pipe.output_dir = str(output_dir)
    try:
        pipe.validate()
    except AlignkitError as e:
        report.problem(e)
    try:
        plan = pipe.plan(from_stage)
    except AlignkitError as e:
        report.problem(e)
        plan = {}
    names = list(pipe.stages)
    report.add("pipeline", f"{path}: stages {', '.join(names)}; output_dir {pipe.output_dir}")
    for note in pipe.leftovers().values():  # an overwrite stopped part way: what `alignkit run` will do about it
        report.add("leftover", note)

    def resolve(value):
        try:
            return pipe.substitute(value)
        except AlignkitError:
            return value  # a ${setup.*} value: setup writes it when the pipeline runs, so it is not checked here

    def input_path(target: str) -> str:
        return resolve(str(pipe.stage_dir(target)) if target in pipe.stages else (pipe.base_model if target == "base" else target))

    for stage in pipe.stages.values():
        report.lines.append(f"stage {stage.name} ({stage.recipe}):")
        where = f"{path}: stage '{stage.name}': "
        try:
            settings = {k: resolve(v) for k, v in {**pipe._config(stage), **stage.args}.items()}
        except AlignkitError as e:
            report.problem(e, where)
            continue
        action = PLAN_WORDS.get(plan.get(stage.name, "start"), plan.get(stage.name))
        inputs = StageInputs(output_note=f"{pipe.stage_dir(stage.name)}: {action}", finished=plan.get(stage.name) == "skip")
        for role, target in stage.inputs.items():
            key = pipelines.INPUTS[role]
            settings[key] = input_path(target)
            if target in pipe.stages and read_run(pipe.stage_dir(target)) is None:
                inputs.pending[key] = target
                source, template = _first_existing(pipe, target, input_path)
                if source is not None:
                    inputs.tokenizer_from[key] = source
                if template is not None:
                    inputs.chat_template_from[key] = template
            elif target == "base" and "${" in str(settings[key]):
                inputs.pending[key] = "setup"
        # Data an earlier stage writes, named by path (`${output_dir}/ai_feedback/preference`), is not there yet.
        unwritten = [n for n in pipe.data_stages(stage, stage.args.get("dataset_name")) if read_run(pipe.stage_dir(n)) is None]
        if unwritten:
            inputs.pending["dataset_name"] = unwritten[0]
        settings.pop("output_dir", None)
        settings["output_dir"] = str(pipe.stage_dir(stage.name))
        before = len(report.problems)
        check_stage(stage.recipe, settings, [], f"{path}: stage '{stage.name}'", report, inputs)
        report.problems[before:] = [p if p.startswith(str(path)) else where + p for p in report.problems[before:]]
        if stage.accelerate_config is not None and (config := pipe.accelerate_config_path(stage)) is not None:
            for problem in check_accelerate_config(config):
                report.problem(problem, where)


def _first_existing(pipe, target: str, input_path) -> tuple[str | None, str | None]:
    """
    Where a not-yet-trained stage's tokenizer comes from: follow `model` inputs back to a model that exists, and
    the chat template file the nearest of those stages sets (a stage saves its tokenizer with that template).
    """
    seen, template = set(), None
    while target in pipe.stages and target not in seen:
        seen.add(target)
        if read_run(pipe.stage_dir(target)) is not None:
            return str(pipe.stage_dir(target)), template
        stage = pipe.stages[target]
        settings = {**pipe._config(stage), **stage.args}
        template = template or settings.get("chat_template_path")
        target = stage.inputs.get("model") or settings.get("model_name_or_path")
        if target is None:
            return None, template
    path = input_path(target) if target else None
    return (None if path is None or "${" in str(path) else str(path)), template

