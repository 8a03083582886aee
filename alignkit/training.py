"""The after-training sequence every stage shares: train (resuming if asked), stop on NaN, evaluate, and write the
output (weights, config, metrics, model card, run record), then push when asked. The run holds its output folder's
lock (`outputs.lock_output_dir`) throughout."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from alignkit import __version__, hub, memory, modelcard, stages, tracking
from alignkit.config import save_config
from alignkit.errors import AlignkitError
from alignkit.models import adapter_base
from alignkit.outputs import (
    RUN_FILE_NAME,
    complete_checkpoints,
    drop_previous,
    finish_run,
    lock_output_dir,
    read_run,
    release_output_dir,
    restore_previous,
    resume_checkpoint,
    set_aside,
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


class NothingLeftToTrain(Exception):
    """Raised by `RunTotals` when a run resumed from its last step is about to take a step beyond `max_steps`."""


class RunTotals(TrainerCallback, ExportableState):
    """
    Keeps the whole run's figures across a resume. The HF Trainer counts the loss behind `train_loss` and the
    training time from its (re)start, so a resumed run would report the mean loss of the steps after the resume only.
    Each checkpoint's trainer_state.json (the file that marks it complete) carries, as this callback's state, the sum
    of the losses logged up to it and the training seconds spent reaching it; a resumed run continues that sum where
    the checkpoint left it, so its `train_loss` is the uninterrupted run's, to the last bit (`whole_run_metrics`).
    Reads and sets `Trainer._total_loss_scalar`, the Trainer's running total (transformers 5). Made for a trainer by
    `RunTotals.of(trainer)`.
    """

    trainer = None  # set on the class `of` makes: the Trainer re-creates stateful callbacks from their class alone

    @classmethod
    def of(cls, trainer) -> RunTotals:
        """A RunTotals for `trainer`, of a class of its own that carries it (and is still named RunTotals, the name
        its state is kept under): with `restore_callback_states_from_checkpoint` the Trainer replaces the callback by a
        new one made from its class, which must still reach the trainer."""
        return type(cls.__name__, (cls,), {"trainer": trainer})()

    @staticmethod
    def find(trainer) -> RunTotals | None:
        return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RunTotals)), None)

    def __init__(self):
        self.seconds_before = 0.0  # training seconds that reached the checkpoint this run resumed from
        self._started: float | None = None

    def state(self) -> dict:
        loss_sum = getattr(self.trainer, "_total_loss_scalar", 0.0) if self.trainer is not None else 0.0
        seconds = self.seconds_before + (time.monotonic() - self._started if self._started is not None else 0.0)
        return {"args": {}, "attributes": {"loss_sum": float(loss_sum), "train_seconds": seconds}}

    def on_train_begin(self, args, state, control, **kwargs):
        self._started, self.seconds_before = time.monotonic(), 0.0
        name = type(self).__name__
        saved = state.stateful_callbacks.get(name)
        saved = saved.get("attributes", {}) if isinstance(saved, dict) else {}
        if state.global_step > 0 and self.trainer is not None:  # resumed from a checkpoint
            # A checkpoint written before this callback existed: its logged (per-interval mean) losses.
            self.trainer._total_loss_scalar = float(saved.get("loss_sum", _logged_loss_sum(state.log_history)))
            self.seconds_before = float(saved.get("train_seconds", 0.0))
        state.stateful_callbacks[name] = self.state()  # the Trainer updates only entries that exist

    def on_step_begin(self, args, state, control, **kwargs):
        # A run killed after its last checkpoint (before it was marked finished) resumes at `max_steps`; the Trainer
        # checks for the end only after a step, so it would train one step more. Stop it before that step's forward.
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise NothingLeftToTrain

    def finished_metrics(self, trainer) -> dict[str, Any]:
        """What `train()` reports, for a resume that found nothing left to train (`whole_run_metrics` completes it)."""
        trainer.is_in_train = False
        return {"train_runtime": 0.0, "train_samples_per_second": 0.0, "train_steps_per_second": 0.0,
                "total_flos": trainer.state.total_flos, "train_loss": 0.0}


def _logged_loss_sum(log_history: list[dict]) -> float:
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total


def whole_run_metrics(trainer, metrics: dict[str, Any], totals: RunTotals | None) -> dict[str, Any]:
    """
    `trainer.train()`'s metrics for the whole run when it resumed from a checkpoint: the mean loss over every step
    (not only those after the resume), the training time of the steps that count (before the checkpoint and after the
    resume) and the throughput over both. The end-of-run entry of the log history says the same. A run resumed from
    its last checkpoint (killed after training, before it was marked finished) trains no step and still reports them.
    """
    if totals is None or totals.trainer is None:  # alignkit's PPO trainer restores its own (`log_history`)
        return metrics
    steps, first = trainer.state.global_step, getattr(trainer, "_initial_global_step", 0)
    if not first or steps <= 0:
        return metrics
    metrics = dict(metrics)
    if "train_loss" in metrics and hasattr(trainer, "_total_loss_scalar"):
        metrics["train_loss"] = trainer._total_loss_scalar / steps  # as the Trainer divides an uninterrupted run's
    session = metrics.get("train_runtime")
    if isinstance(session, (int, float)):
        runtime = totals.seconds_before + session
        metrics["train_runtime"] = round(runtime, 4)
        if runtime > 0:
            if steps > first and "train_samples_per_second" in metrics:
                per_step = metrics["train_samples_per_second"] * session / (steps - first)
            else:
                args = trainer.args
                per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            if "train_samples_per_second" in metrics:
                metrics["train_samples_per_second"] = round(per_step * steps / runtime, 3)
            if "train_steps_per_second" in metrics:
                metrics["train_steps_per_second"] = round(steps / runtime, 3)
    for entry in reversed(trainer.state.log_history):  # the summary the Trainer logged at the end
        if "train_loss" in entry:
            entry.update({k: v for k, v in metrics.items() if k in entry})
            break
    return metrics


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
    whatever `extra(trainer)` returns), which marks the run finished and is written last, atomically, after the model
    card made from it (`outputs.finish_run`). Returns the metrics, the whole run's when it resumed (`RunTotals`). A
    NaN/inf loss stops training (`StopOnNonFinite`); an earlier run that `overwrite_output_dir` replaces stays whole
    in `<output_dir>.previous` until this one has finished, and is put back if it fails. The output folder's lock
    (taken by the recipe's `prepare_output_dir`, or here) is held to the end, push included, and let go however the
    run ends.
    """
    output_dir = training_args.output_dir
    lock_output_dir(output_dir)  # the recipe took it already (`prepare_output_dir`); held until the run ends
    try:
        return _run(trainer, stage, script_args, training_args, model_args, extra)
    finally:
        release_output_dir(output_dir)


def _run(trainer, stage, script_args, training_args, model_args, extra) -> dict:
    output_dir = training_args.output_dir
    resume = resume_checkpoint(training_args.resume_from_checkpoint, output_dir)
    if isinstance(trainer, Trainer):  # alignkit's PPO trainer has its own health checks and keeps its own totals
        trainer.args.logging_nan_inf_filter = False  # else a NaN loss is logged as the running mean
        trainer.add_callback(StopOnNonFinite())
        trainer.add_callback(RunTotals.of(trainer))
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
    try:
        result = dict(trainer.train(resume_from_checkpoint=resume).metrics)
        metrics = whole_run_metrics(trainer, result, RunTotals.find(trainer) if isinstance(trainer, Trainer) else None)
    except NothingLeftToTrain:  # resumed from its last step: the checkpoint's weights and state are the run's result
        totals = RunTotals.find(trainer)
        metrics = whole_run_metrics(trainer, totals.finished_metrics(trainer), totals)
        trainer.log(metrics)  # the end-of-run summary the Trainer would have logged (it adds `epoch`, as there)
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
        # The card (replacing the placeholder PEFT/TRL save) is made from the record before the record lands: the
        # record marks the run finished, so it comes last, and a kill before it leaves an unfinished run.
        finish_run(training_args.output_dir, record, [lambda: modelcard.write_model_card(training_args.output_dir)])
    return metrics


def eval_history(trainer) -> list[dict[str, float]]:
    """(step, eval_loss) of every evaluation in the run, including one before training when `eval_on_start`."""
    return [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in trainer.state.log_history if "eval_loss" in h]
