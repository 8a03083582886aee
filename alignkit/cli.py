"""The `alignkit` command.

    alignkit <stage> --config <yaml> [--key value ...]    run one stage's recipe ({stages}); --help lists its options
    alignkit demo [--output_dir outputs/demo] [--seed 0]   the offline demo, every stage on a tiny model
    alignkit eval --policy DIR --reference DIR [--reward_model DIR] --prompts FILE.jsonl
                                                           a policy against its reference: rewards, win rate, KL
    alignkit run <pipeline.yaml> [--from STAGE]            every stage of a pipeline, each fed the earlier ones' outputs
    alignkit check <config-or-pipeline.yaml>               validate configs, data, models and memory without training
    alignkit merge <stage_output> --output_dir DIR         merge an adapter into its base and save the full model
    alignkit push <folder> <repo_id> [--public]            upload a stage's output to the Hub

`--debug` anywhere shows the full traceback of an error instead of its one-line message. Errors exit with 2 (an
operating-system error, such as an output folder that cannot be written, too, in one line), Ctrl-C with 130.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from alignkit import outputs, preflight, stages
from alignkit.errors import AlignkitError


def _fail(error: AlignkitError | str) -> None:
    print(f"alignkit: error: {error}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def _reported(debug: bool):
    """End on a user error, an operating-system error or Ctrl-C with one line (exit 2, or 130), or with its
    traceback under `--debug`."""
    try:
        yield
    except (AlignkitError, OSError, KeyboardInterrupt) as e:
        if debug:
            raise
        if isinstance(e, KeyboardInterrupt):
            print("alignkit: interrupted", file=sys.stderr)
            sys.exit(130)
        _fail(os_error_message(e) if isinstance(e, OSError) else e)


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error: the path, and why it cannot be written (or read) there."""
    path = error.filename
    reason = error.strerror or (str(error).strip().splitlines() or [type(error).__name__])[0]
    if path is None:
        return reason
    if error.errno == errno.ENOTDIR:
        blocker = next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"cannot write {path}: {blocker} is a file, not a folder; choose another path."
    if error.errno == errno.EEXIST and Path(path).exists() and not Path(path).is_dir():
        return f"cannot write {path}: it is a file, not a folder; choose another path."
    if error.errno == errno.EROFS:
        return f"cannot write {path}: the file system is read-only; choose a folder on a writable disk."
    if error.errno == errno.ENOSPC:
        return f"cannot write {path}: no space left on the device; free some or choose another disk."
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"cannot access {path}: permission denied; choose a path you may write to."
    target = f" -> {error.filename2}" if error.filename2 else ""
    return f"{path}{target}: {reason}."


def run_recipe(stage: str, args: list[str] | None = None, main: Callable | None = None):
    """
    Parse a stage's config strictly and run its recipe's `main` (by default `alignkit.recipes.<stage>.main`,
    imported after the quick checks), reporting user errors in a line, not a traceback.
    """
    args = list(sys.argv[1:] if args is None else args)
    if "-h" in args or "--help" in args:
        print(stage_help(stage))
        return None
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    with _reported(debug):
        preflight.check(stage, args)  # typos and bad data fail before the ML stack's ~5 s import
        from alignkit.config import parse_args, stage_dataclasses

        main = main or importlib.import_module(stages.get(stage).recipe_module).main
        parsed = parse_args(stage_dataclasses(stage), args)
        output_dir = Path(getattr(parsed[1], "output_dir", None) or ".")
        existed = output_dir.exists()
        _exit_state.last_run_succeeded = False
        if not _exit_state.registered:  # here, after the stack's import: atexit runs it before the stack's own handlers
            atexit.register(_leave_process_group_at_exit)
            _exit_state.registered = True
        try:
            result = main(*parsed)
        except AlignkitError:
            # The trainer creates output_dir as it starts; a run refused after that leaves no empty folder behind
            # (unless another, live run holds the folder: it may have just created it).
            if (not existed and output_dir.is_dir() and not any(output_dir.iterdir())
                    and outputs.output_dir_holder(output_dir) is None):
                with contextlib.suppress(OSError):  # another process of the run removed it first
                    output_dir.rmdir()
            raise
        _exit_state.last_run_succeeded = True
        return result


class _exit_state:
    last_run_succeeded = False
    registered = False


def _leave_process_group_at_exit() -> None:
    """The processes of a launch leave their process group together as they exit, while the interpreter is still
    whole: otherwise gloo's threads can abort an exit (SIGABRT, "terminate called without an active exception")
    after the run has finished. At exit, not after each recipe, because one process may run several
    (tests/launch/rank_dump.py); and only if the last one succeeded, so that a failed rank does not wait for the
    others (the launcher ends them when one fails)."""
    import torch.distributed as dist

    if _exit_state.last_run_succeeded and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _field_line(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else (
        "..." if f.default_factory is not dataclasses.MISSING else "required")
    help_text = " ".join(str(f.metadata.get("help", "")).split())
    head = f"  --{f.name} (default: {default})"
    return head + ("\n" + textwrap.fill(help_text, 110, initial_indent=" " * 6, subsequent_indent=" " * 6) if help_text else "")


def stage_help(stage: str) -> str:
    """`alignkit <stage> --help`: the stage's options, grouped as alignkit's, the training config's and the model's."""
    from alignkit.config import stage_dataclasses  # the ML stack: only when help is asked for

    spec = stages.get(stage)
    script, training, model = stage_dataclasses(stage)
    trl_bases = [b for b in script.__mro__[1:] if dataclasses.is_dataclass(b)]  # ScriptArguments, DatasetMixtureConfig
    own = {f.name for f in dataclasses.fields(script)} - {f.name for b in trl_bases for f in dataclasses.fields(b)}
    groups = [
        (f"alignkit options ({script.__module__}.{script.__name__})", [f for f in dataclasses.fields(script) if f.name in own]),
        (f"data options ({', '.join(f'trl.{b.__name__}' for b in trl_bases)})",
         [f for f in dataclasses.fields(script) if f.name not in own]),
        (f"training options ({training.__module__}.{training.__name__})", dataclasses.fields(training)),
        (f"model options ({model.__module__}.{model.__name__})", dataclasses.fields(model)),
    ]
    lines = [f"usage: alignkit {stage} --config <yaml> [--key value ...]", "",
             f"{spec.title}: recipes/{stage}.py. Keys go in the YAML or on the command line; the command line wins."]
    for title, fields in groups:
        lines += ["", f"{title}:"] + [_field_line(f) for f in fields if f.init and not f.name.startswith("_")]
    return "\n".join(lines)


# Commands other than the stages: each is `main(argv)` of its module.
COMMANDS = {
    "demo": "alignkit.demo.run",
    "eval": "alignkit.evaluation.cli",
    "run": "alignkit.runner",
    "check": "alignkit.check",
    "merge": "alignkit.export",
    "push": "alignkit.hub",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().format(stages=", ".join(stages.names())))
        return
    command, rest = argv[0], argv[1:]
    # Return nothing: the console script passes main's result to sys.exit, which would print a trainer and exit 1.
    if command in stages.STAGES:
        run_recipe(command, rest)
        return
    if command not in COMMANDS:
        known = ", ".join((*stages.names(), *COMMANDS))
        print(f"alignkit: unknown command '{command}'; expected one of {known}.", file=sys.stderr)
        sys.exit(2)
    debug = "--debug" in rest
    rest = [a for a in rest if a != "--debug"]
    with _reported(debug):
        module = importlib.import_module(COMMANDS[command])
        # A module serving several commands (merge, push) has one `<command>_main` each.
        entry = getattr(module, f"{command}_main", None) or module.main
        entry(rest)


if __name__ == "__main__":
    main()
