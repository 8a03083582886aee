"""Experiment tracking: `report_to` for alignkit's own PPO trainer, and where every stage's run logged.

The Trainer-based stages (pretrain, SFT, reward, DPO) track through transformers' callbacks, unchanged: `report_to:
tensorboard` writes `<output_dir>/runs/<date>_<host>/`, `wandb` and `trackio` log where they are set up to.
alignkit's PPO trainer logs its per-update statistics (`score`, `kl`, losses, ...) through the same trackers by way of
Accelerate (`accelerate_trackers`), TensorBoard into the same kind of folder. `runs` reads back where a finished
run logged, for its `alignkit_run.json` (`tracking`) and the pipeline report's links.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from transformers.utils import logging

from alignkit.errors import ConfigError

logger = logging.get_logger(__name__)

TRACKING_EXTRA = 'pip install -e ".[tracking]"'


def accelerate_trackers(args) -> tuple[list, dict[str, dict]]:
    """
    The Accelerate trackers `args.report_to` names, for `Accelerator(log_with=...)`, and their `init_kwargs`.
    TensorBoard logs under `<output_dir>/runs/` in a folder named as the Trainer names its own; wandb and trackio use
    `args.project` as their project and `args.run_name` as the run's name, when set.
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, TensorBoardTracker
    from transformers.integrations.integration_utils import default_logdir

    names = [n for n in args.report_to or [] if n not in ("none", None)]
    unknown = [n for n in names if n not in LOGGER_TYPE_TO_CLASS]
    if unknown:
        logger.warning(f"report_to {', '.join(unknown)}: Accelerate has no such tracker, so PPO does not log to it "
                       f"(it can log to {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}).")
    trackers: list = []
    for name in (n for n in names if n in LOGGER_TYPE_TO_CLASS):
        if name == "tensorboard":
            if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
                raise ConfigError(f"report_to: tensorboard needs the tensorboard package; install it with `{TRACKING_EXTRA}`.")
            trackers.append(TensorBoardTracker(Path(default_logdir()).name, os.path.join(args.output_dir, "runs")))
        else:
            trackers.append(name)
    run_name = getattr(args, "run_name", None)
    init_kwargs = {name: {"name": run_name} for name in ("wandb", "trackio") if name in names and run_name}
    return trackers, init_kwargs


def runs(trainer) -> list[dict[str, Any]]:
    """
    Where `trainer`'s run logged: `{"tracker": "tensorboard", "logging_dir": <relative to output_dir>}`,
    `{"tracker": "wandb", "url": ...}`, `{"tracker": "trackio", "project": ..., "url": ...}`; empty without tracking.
    Reads the Trainer's callbacks and an Accelerator's trackers (alignkit's PPO).
    """
    output_dir = Path(trainer.args.output_dir)
    found: list[dict[str, Any]] = []
    callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", [])
    accelerator = getattr(trainer, "accelerator", None)
    for source in [*callbacks, *getattr(accelerator, "trackers", [])]:
        kind = type(source).__name__.lower()
        if "tensorboard" in kind and getattr(source, "logging_dir", None):
            found.append({"tracker": "tensorboard", "logging_dir": _relative(Path(source.logging_dir), output_dir)})
        elif "wandb" in kind:
            run = getattr(source, "run", None) or getattr(getattr(source, "_wandb", None), "run", None)
            if getattr(run, "url", None):
                found.append({"tracker": "wandb", "url": run.url})
        elif "trackio" in kind:
            space = getattr(source, "_static_space_id", None) or getattr(source, "_space_id", None)
            entry = {"tracker": "trackio", "project": getattr(trainer.args, "project", None)}
            found.append({**entry, "url": f"https://huggingface.co/spaces/{space}"} if space else entry)
    return found


def _relative(path: Path, output_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(output_dir.resolve()))
    except ValueError:  # logged outside the output folder (TENSORBOARD_LOGGING_DIR)
        return str(path.resolve())


def links(tracking: list[dict[str, Any]], stage_dir: Path, report_dir: Path) -> list[tuple[str, str]]:
    """(label, target) of each tracking run, a TensorBoard folder given relative to the report's folder."""
    result = []
    for run in tracking or []:
        if run.get("url"):
            result.append((run["tracker"], run["url"]))
        elif run.get("logging_dir"):
            folder = Path(run["logging_dir"]) if Path(run["logging_dir"]).is_absolute() else stage_dir / run["logging_dir"]
            result.append((run["tracker"], os.path.relpath(folder, report_dir)))
    return result
