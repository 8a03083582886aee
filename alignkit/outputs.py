"""What a stage writes to its `output_dir`, and the guard that keeps an earlier run from being overwritten."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from accelerate import PartialState

from alignkit import __version__
from alignkit.config import CONFIG_FILE_NAME, save_config
from alignkit.errors import OutputDirError

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
    Checked before any model is loaded; nothing is written unless `overwrite` clears an earlier run.
    """
    path = Path(output_dir)
    if not path.exists() or not any(path.iterdir()):
        if resume and resume is not True and not Path(str(resume)).exists():
            raise OutputDirError(f"resume_from_checkpoint: {resume} does not exist.")
        return
    if resume:
        if resume is True and not any(path.glob("checkpoint-*")):
            raise OutputDirError(f"{output_dir} has no checkpoint-* folder to resume from.")
        return
    if not _holds_run(path):
        raise OutputDirError(f"output_dir {output_dir} is not empty and holds no alignkit run; choose an empty or new folder.")
    if not overwrite:
        state = "a finished run" if read_run(path) else "an unfinished run"
        raise OutputDirError(
            f"output_dir {output_dir} already holds {state}. Pass `--overwrite_output_dir true` to replace it, "
            "`--resume_from_checkpoint true` to continue it, or choose another output_dir."
        )
    state = PartialState()
    if state.is_main_process:
        shutil.rmtree(path)
    state.wait_for_everyone()


def resume_arg(value: str | bool | None) -> str | bool | None:
    """`resume_from_checkpoint: true` (or "true"/"last") means the latest checkpoint in output_dir."""
    if isinstance(value, str) and value.lower() in ("true", "last", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", ""):
        return None
    return value


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
    whatever `extra(trainer)` returns), which marks the run finished. Returns the metrics.
    """
    result = trainer.train(resume_from_checkpoint=resume_arg(training_args.resume_from_checkpoint))
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
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
        Path(training_args.output_dir, RUN_FILE_NAME).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return metrics


def eval_history(trainer) -> list[dict[str, float]]:
    """(step, eval_loss) of every evaluation in the run, including one before training when `eval_on_start`."""
    return [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in trainer.state.log_history if "eval_loss" in h]
