"""The after-training sequence every stage shares: train (resuming if asked), stop on NaN, evaluate, and write the
output (weights, config, metrics, model card, run record), then push when asked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from alignkit import __version__, hub, memory, modelcard, stages, tracking
from alignkit.config import save_config
from alignkit.errors import AlignkitError
from alignkit.models import adapter_base
from alignkit.outputs import (
    RUN_FILE_NAME,
    complete_checkpoints,
    drop_previous,
    read_run,
    restore_previous,
    resume_checkpoint,
    set_aside,
    write_json_atomic,
)


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


def lineage(model_name_or_path: str, dataset_name: str | list[str] | None) -> dict[str, Any]:
    """Where a stage's model came from: the original base, the earlier stage it continues (if any), its data (a
    mixture's: the list of its data sets)."""
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
    # eval_loss is absent when TRL dropped every eval row; perplexity means something for language-model losses only.
    if "eval_loss" in metrics and stages.get(stage).perplexity:
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    trainer.save_model(training_args.output_dir)  # weights and tokenizer (with chat template)
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.save_state()
        save_config(training_args.output_dir, script_args, training_args, model_args)
        dataset = script_args.dataset_name or [s.path for s in getattr(script_args, "datasets", None) or []]  # a mixture's
        record = {
            "stage": stage,
            "alignkit_version": __version__,
            "model_name_or_path": model_args.model_name_or_path,
            "dataset_name": script_args.dataset_name,
            "lineage": lineage(model_args.model_name_or_path, dataset),
            "metrics": metrics,
            "tracking": tracking.runs(trainer),  # where report_to logged (TensorBoard folder, wandb URL), if anywhere
            **(extra(trainer) if extra else {}),
        }
        write_json_atomic(Path(training_args.output_dir, RUN_FILE_NAME), record)
        modelcard.write_model_card(training_args.output_dir)  # replaces the placeholder card PEFT/TRL save
    return metrics


def eval_history(trainer) -> list[dict[str, float]]:
    """(step, eval_loss) of every evaluation in the run, including one before training when `eval_on_start`."""
    return [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in trainer.state.log_history if "eval_loss" in h]
