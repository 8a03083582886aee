"""`alignkit run`: every stage of a pipeline file, in order, each fed the earlier stages' outputs.

    alignkit run <pipeline.yaml> [--from STAGE] [--output_dir DIR] [--set KEY=VALUE ...]

The file is read, checked and planned by `alignkit.pipeline` before anything trains; this module executes the plan.
Each stage runs its recipe in this process, or under `accelerate launch` when it asks for `num_processes` > 1.
After each stage the report (`alignkit.report`: report.json, report.md, figures) and the stages' model cards are
rewritten, and at the end the report's table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import alignkit.recipes
from alignkit import preflight
from alignkit.errors import AlignkitError
from alignkit.outputs import complete_checkpoints, previous_dir, read_run
from alignkit.pipeline import Pipeline, Stage, has_gpu, load_pipeline

# The ML stack (config, report, model cards) is imported only once the pipeline file checked out: a mistake in the
# file is reported in a second, not after a ~10 s import.


def run_stage(pipeline: Pipeline, stage: Stage, action: str) -> None:
    """
    Run one stage's recipe (in this process, or under `accelerate launch` for `num_processes` > 1). Its settings go
    to the recipe in a temporary config file, all but the secret ones: its Hub token reaches it as HF_TOKEN in its
    environment (`Pipeline.stage_env`), so no file ever holds it.
    """
    with tempfile.TemporaryDirectory(prefix="alignkit-") as tmp:
        try:
            env = pipeline.stage_env(stage)
            args = pipeline.stage_args(stage, action, Path(tmp) / f"{stage.name}.yaml")
            with environment(env):
                preflight.check(stage.recipe, args)
                if stage.num_processes > 1:
                    launch(pipeline, stage, args, env)
                else:
                    from alignkit.config import parse_args, stage_dataclasses

                    recipe = importlib.import_module(stage.spec.recipe_module)
                    recipe.main(*parse_args(stage_dataclasses(stage.recipe), args))
        except AlignkitError as e:
            message = str(e)
            prefix = f"{pipeline.path}: stage '{stage.name}': "
            raise type(e)(message if message.startswith(prefix) else prefix + message) from None


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """`os.environ` with `values` set for the duration of the block, then as it was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def launch(pipeline: Pipeline, stage: Stage, args: list[str], env: dict[str, str] | None = None) -> None:
    """
    The stage's recipe under `accelerate launch --multi_gpu` (on CPU too: gloo DDP with `use_cpu`), with `env` added
    to its environment. On Ctrl-C the processes are given time to put back an earlier run they were replacing.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(stage.num_processes), "--main_process_port", str(free_port())]
    if stage.accelerate_config is not None:
        command += ["--config_file", str(pipeline.accelerate_config_path(stage))]
    command += [str(Path(alignkit.recipes.__file__).parent / f"{stage.recipe}.py"), *args]
    env = {**os.environ, **(env or {})}
    if not has_gpu():
        env["ACCELERATE_USE_CPU"] = "true"
    process = subprocess.Popen(command, env=env)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # A Ctrl-C at the terminal reached the stage's processes too; a signal to this process alone is passed on.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    if code != 0:
        raise AlignkitError(f"`accelerate launch` exited with code {code}; the stage's own error is printed above.")


def free_port() -> int:
    """A local port no process listens on, for `accelerate launch --main_process_port`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------- the run


def _write_model_cards(pipeline: Pipeline, rows: Mapping[str, dict]) -> None:
    from alignkit.modelcard import write_model_card

    for name, row in rows.items():
        if pipeline.stages[name].spec.output == "data":
            continue  # a data set, not a model: its run record and files say what it holds
        write_model_card(pipeline.stage_dir(name), evaluation=row)


def run_pipeline(
    path: str | Path,
    from_stage: str | None = None,
    output_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> dict:
    """Validate, run `setup`, then every stage (skipping, resuming or rerunning as `plan` says); returns the report."""
    start = time.time()
    pipeline = load_pipeline(path, overrides)
    if output_dir is not None:
        pipeline.output_dir = str(output_dir)
    pipeline.validate()  # before the ML stack's import: a mistake in the file is reported in a second
    actions = pipeline.plan(from_stage)

    from alignkit import report

    Path(pipeline.output_dir).mkdir(parents=True, exist_ok=True)
    pipeline.run_setup()
    evaluator = report.Evaluator.from_pipeline(pipeline)  # loads the prompts and judge: fails before training too

    rows = report.load_rows(pipeline.output_dir)  # earlier runs' evaluations, reused for unchanged stages
    for name, stage in pipeline.stages.items():
        action = actions[name]
        print(f"[alignkit run] {name}: {_describe(action, pipeline.stage_dir(name), pipeline.why.get(name))}", flush=True)
        _resolve_previous(pipeline, name)
        began = time.time()
        if action != "skip":
            run_stage(pipeline, stage, action)
        pipeline.record_trained(stage)  # what it was trained from: a later run retrains it when that changes
        _resolve_previous(pipeline, name)
        seconds = None if action == "skip" else round(time.time() - began, 1)
        rows[name] = report.stage_row(pipeline, stage, action, seconds, evaluator, rows.get(name))
        result = report.write_report(pipeline, rows, time.time() - start, evaluator.judge_columns)
        for line in report.overoptimisation_warnings({"stages": {name: rows[name]}}):
            print(f"[alignkit run] {line}", flush=True)
        _write_model_cards(pipeline, {name: result["stages"][name]})
    result = report.write_report(pipeline, rows, time.time() - start, evaluator.judge_columns)
    _write_model_cards(pipeline, result["stages"])  # rows filled in by later stages (an RM score) are final now
    print(report.format_table(result))
    print(f"report: {Path(pipeline.output_dir) / report.MARKDOWN_FILE}")
    return result


def _resolve_previous(pipeline: Pipeline, name: str) -> None:
    """
    A `<stage>.previous` left by an overwrite that was stopped: deleted once the stage holds a finished run (the
    run it kept was replaced), else kept, saying how to restore it.
    """
    out = pipeline.stage_dir(name)
    previous = previous_dir(out)
    if not previous.is_dir():
        return
    if read_run(out) is not None:
        shutil.rmtree(previous)
        print(f"[alignkit run] {name}: removed {previous}, the run that {out}'s finished run replaced", flush=True)
    else:
        print(f"[alignkit run] {name}: {pipeline.leftovers()[name]}", flush=True)


def _describe(action: str, output: Path, why: str | None = None) -> str:
    if action == "resume":
        return f"resuming from {complete_checkpoints(output)[-1].name}"
    if action == "rerun" and why:
        return f"training again ({why})"
    return {"skip": f"already finished in {output}, skipped", "start": "training", "rerun": "training again"}[action]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="alignkit run", description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", help="the pipeline YAML file")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every later one")
    parser.add_argument("--output_dir", help="instead of the file's output_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a top-level key (base_model=...) or a stage's arg (sft.learning_rate=...)")
    opts = parser.parse_args(argv)
    return run_pipeline(opts.pipeline, opts.from_stage, opts.output_dir, opts.overrides)
