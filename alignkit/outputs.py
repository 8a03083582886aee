"""What a stage writes to its `output_dir`, and the guard that keeps an earlier run from being overwritten."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import Trainer, TrainerCallback

from alignkit import __version__, hub, memory
from alignkit.config import CONFIG_FILE_NAME, save_config
from alignkit.errors import AlignkitError, OutputDirError

logger = logging.getLogger(__name__)

RUN_FILE_NAME = "alignkit_run.json"
# Files that show a folder holds a training run (ours or a plain Trainer's).
RUN_MARKERS = (RUN_FILE_NAME, CONFIG_FILE_NAME, "trainer_state.json", "adapter_config.json", "model.safetensors")


def _holds_run(path: Path) -> bool:
    return any((path / m).exists() for m in RUN_MARKERS) or any(path.glob("checkpoint-*"))


def read_run(output_dir: str | Path) -> dict[str, Any] | None:
    """The record of a finished run in `output_dir`, or None when it holds no finished run."""
    path = Path(output_dir) / RUN_FILE_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def prepare_output_dir(output_dir: str, overwrite: bool = False, resume: bool | str | None = None) -> None:
    """
    Refuse to train into a folder that holds an earlier run unless the user asked to overwrite or resume it.
    Checked before any model is loaded; writes nothing. An earlier run that `overwrite` replaces is only set aside
    when training starts (`train_and_save`), and only deleted once the new run has finished.
    """
    path, resume = Path(output_dir), resume_arg(resume)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output_dir {output_dir} is a file, not a folder; choose a new folder for this run.")
    if not path.exists() or not any(path.iterdir()):
        if resume is True:
            raise OutputDirError(f"resume_from_checkpoint: {output_dir} holds no checkpoint to resume from.")
        if resume and not Path(str(resume)).exists():
            raise OutputDirError(f"resume_from_checkpoint: {resume} does not exist.")
        return
    if resume:
        if resume is True and not complete_checkpoints(path):
            raise OutputDirError(no_checkpoint(output_dir))
        return
    if not _holds_run(path):
        raise OutputDirError(f"output_dir {output_dir} is not empty and holds no alignkit run; choose an empty or new folder.")
    if not overwrite:
        state = "a finished run" if read_run(path) else "an unfinished run"
        kept = f" (the run it replaced is kept in {previous_dir(path)})" if previous_dir(path).exists() else ""
        raise OutputDirError(
            f"output_dir {output_dir} already holds {state}{kept}. Pass `--overwrite_output_dir true` to replace it, "
            "`--resume_from_checkpoint true` to continue it, or choose another output_dir."
        )


def resume_arg(value: str | bool | None) -> str | bool | None:
    """`resume_from_checkpoint: true` (or "true"/"last") means the latest checkpoint in output_dir."""
    if isinstance(value, str) and value.lower() in ("true", "last", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", ""):
        return None
    return value


# --- checkpoints and resuming ---------------------------------------------------------------------------------------

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Written last into a checkpoint, by the HF Trainer and by alignkit's PPO trainer alike.
CHECKPOINT_DONE_FILE = "trainer_state.json"


def no_checkpoint(output_dir) -> str:
    return (
        f"{output_dir} has no complete checkpoint-* folder to resume from; "
        "start afresh with `--overwrite_output_dir true`."
    )


def _is_complete(checkpoint: Path) -> bool:
    try:  # a process killed while writing it leaves it missing or cut short
        json.loads((checkpoint / CHECKPOINT_DONE_FILE).read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def _checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-<n> folders, oldest first."""
    path = Path(output_dir)
    found = [p for p in path.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)] if path.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name)[1]))


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """
    The checkpoints in `output_dir` that were written to the end, oldest first. The HF Trainer writes
    `checkpoint-<n>` in place, so a process killed mid-save leaves a folder without a readable trainer_state.json.
    """
    return [p for p in _checkpoints(output_dir) if _is_complete(p)]


def resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> str | None:
    """
    The checkpoint folder to resume from, or None to start afresh. `true` means the latest complete checkpoint in
    `output_dir`; half-written ones (killed mid-save) are deleted so that no later step mistakes them for a checkpoint.
    """
    value = resume_arg(value)
    if value is not True:
        return value
    complete = complete_checkpoints(output_dir)
    if not complete:
        raise OutputDirError(no_checkpoint(output_dir))
    state = PartialState()
    if state.is_main_process:
        for partial in set(_checkpoints(output_dir)) - set(complete):
            logger.warning("Removing %s: it was not written to the end (the run was stopped while saving it).", partial)
            shutil.rmtree(partial)
    state.wait_for_everyone()
    return str(complete[-1])


# --- keeping an earlier run until the new one has finished ----------------------------------------------------------


def previous_dir(output_dir: str | Path) -> Path:
    """Where an earlier run waits while `overwrite_output_dir` replaces it."""
    return Path(f"{Path(output_dir)}.previous")


def failed_dir(output_dir: str | Path) -> Path:
    """Where a failed run's checkpoints go when the earlier run it was replacing is put back."""
    return Path(f"{Path(output_dir)}.failed")


def set_aside(output_dir: str | Path) -> None:
    """
    Move the run in `output_dir` to `previous_dir(output_dir)` (main process only), where it stays whole until the
    new run finishes (`drop_previous`) or fails (`restore_previous`).
    """
    path, previous = Path(output_dir), previous_dir(output_dir)
    state = PartialState()
    if state.is_main_process and path.is_dir() and any(path.iterdir()):
        if previous.exists() and read_run(path) is None:
            shutil.rmtree(path)  # an attempt killed earlier; the run it was replacing is already safe in `previous`
        else:
            shutil.rmtree(previous, ignore_errors=True)  # older than the finished run in output_dir
            os.rename(path, previous)
    state.wait_for_everyone()


def restore_previous(output_dir: str | Path, error: BaseException | None = None) -> None:
    """
    After a failed run, put the run it was replacing back into `output_dir` (main process only). The failed run's
    checkpoints, if any, are kept in `failed_dir(output_dir)`; an alignkit error's message says where things are.
    """
    path, previous = Path(output_dir), previous_dir(output_dir)
    if not PartialState().is_main_process or not previous.is_dir():
        return
    note = f"The earlier run in {path} was left as it was"
    if complete_checkpoints(path):
        shutil.rmtree(failed_dir(path), ignore_errors=True)
        os.rename(path, failed_dir(path))
        note += f"; this run's checkpoints were moved to {failed_dir(path)}"
    elif path.exists():
        shutil.rmtree(path)
    os.rename(previous, path)
    logger.warning("%s.", note)
    if isinstance(error, AlignkitError):
        error.args = (f"{error} {note}.",)


def drop_previous(output_dir: str | Path) -> None:
    """Delete the replaced run once the new one has finished (main process only)."""
    if PartialState().is_main_process:
        shutil.rmtree(previous_dir(output_dir), ignore_errors=True)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it into place: readers see the old file or the new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


# --- NaN and inf ----------------------------------------------------------------------------------------------------


class TrainingStoppedError(AlignkitError):
    """The loss (or the gradient norm) turned NaN or inf."""


class StopOnNonFinite(TrainerCallback):
    """
    Stop training when a logged loss or gradient norm is NaN or inf, naming the step and the last good checkpoint.
    The Trainer saves a checkpoint right after it logs, so every step that saves (and the last step) is logged too:
    no checkpoint is written before its loss was seen finite, and a NaN step never becomes the latest checkpoint.
    Needs `logging_nan_inf_filter=False`, or the Trainer logs a running mean in place of a NaN loss.
    """

    def _log_before_saving(self, state, control):
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True

    def on_step_end(self, args, state, control, **kwargs):
        self._log_before_saving(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._log_before_saving(state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # fp16's loss scaler meets inf gradients by design and skips those steps.
        names = ("loss", "eval_loss") if args.fp16 else ("loss", "eval_loss", "grad_norm")
        for name in names:
            value = (logs or {}).get(name)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                done = complete_checkpoints(args.output_dir)
                where = (
                    f"the last good checkpoint is {done[-1]}; continue from it with `--resume_from_checkpoint true` "
                    "and a lower learning_rate"
                    if done
                    else "no checkpoint was saved before it; try a lower learning_rate"
                )
                step = state.global_step
                raise TrainingStoppedError(f"Training stopped at step {step}: the {name} is {value}; {where}.")


def lineage(model_name_or_path: str, dataset_name: str | None) -> dict[str, Any]:
    """Where a stage's model came from: the original base, the earlier stage it continues (if any), its data."""
    from alignkit.models import adapter_base

    parent = read_run(model_name_or_path) if Path(model_name_or_path).is_dir() else None
    base = (parent or {}).get("lineage", {}).get("base_model") or adapter_base(model_name_or_path) or model_name_or_path
    return {
        "base_model": base,
        "parent": model_name_or_path if parent else None,
        "parent_stage": parent["stage"] if parent else None,
        "dataset": dataset_name,
    }


def train_and_save(trainer, stage: str, script_args, training_args, model_args, extra=None) -> dict:
    """
    Train (resuming if asked), evaluate, and write the stage's output: weights (safetensors), tokenizer with its
    chat template, the resolved config, metrics (`all_results.json`) and `alignkit_run.json` (lineage, metrics and
    whatever `extra(trainer)` returns), which marks the run finished and is written last, atomically. Returns the
    metrics. A NaN/inf loss stops training (`StopOnNonFinite`); an earlier run that `overwrite_output_dir` replaces
    stays whole in `<output_dir>.previous` until this one has finished, and is put back if it fails.
    """
    output_dir = training_args.output_dir
    resume = resume_checkpoint(training_args.resume_from_checkpoint, output_dir)
    if isinstance(trainer, Trainer):  # alignkit's PPO trainer has its own health checks
        trainer.args.logging_nan_inf_filter = False  # else a NaN loss is logged as the running mean
        trainer.add_callback(StopOnNonFinite())
    if resume is None and getattr(script_args, "overwrite_output_dir", False):
        set_aside(output_dir)
    elif trainer.is_world_process_zero():  # resuming a finished run: it is unfinished until saved again
        Path(output_dir, RUN_FILE_NAME).unlink(missing_ok=True)
    try:
        metrics = _train_and_write(trainer, stage, script_args, training_args, model_args, extra, resume)
    except BaseException as error:
        restore_previous(output_dir, error)
        raise
    if resume or getattr(script_args, "overwrite_output_dir", False):  # this run (or the one it resumes) replaced it
        drop_previous(output_dir)
    if trainer.is_world_process_zero():  # after the run is safe: a failed push never undoes it
        hub.push_run(training_args)  # only when the config asks for push_to_hub
    return metrics


def _train_and_write(trainer, stage, script_args, training_args, model_args, extra, resume) -> dict:
    if trainer.is_world_process_zero():  # "needs ~X GiB, this device has Y" before any out-of-memory error
        print(memory.report(stage, model_args, training_args), flush=True)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    if "eval_loss" in metrics:  # absent when TRL dropped every eval row (all longer than max_length)
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    trainer.save_model(training_args.output_dir)  # weights and tokenizer (with chat template)
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.save_state()
        save_config(training_args.output_dir, script_args, training_args, model_args)
        record = {
            "stage": stage,
            "alignkit_version": __version__,
            "model_name_or_path": model_args.model_name_or_path,
            "dataset_name": script_args.dataset_name,
            "lineage": lineage(model_args.model_name_or_path, script_args.dataset_name),
            "metrics": metrics,
            **(extra(trainer) if extra else {}),
        }
        write_json_atomic(Path(training_args.output_dir, RUN_FILE_NAME), record)
        from alignkit import modelcard  # imported here: modelcard imports this module

        modelcard.write_model_card(training_args.output_dir)  # replaces the placeholder card PEFT/TRL save
    return metrics


def eval_history(trainer) -> list[dict[str, float]]:
    """(step, eval_loss) of every evaluation in the run, including one before training when `eval_on_start`."""
    return [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in trainer.state.log_history if "eval_loss" in h]
