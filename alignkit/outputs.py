"""The storage layer: a stage's output folder, its checkpoints and its run record, and the guard that keeps an
earlier run from being overwritten. Imports no other alignkit module but `errors`."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded against each other there
    fcntl = None

import yaml

from alignkit.errors import AlignkitError, OutputDirError

logger = logging.getLogger(__name__)

RUN_FILE_NAME = "alignkit_run.json"
CONFIG_FILE_NAME = "alignkit_config.yaml"  # the resolved config a run was trained with (`config.save_config`)


def _process_state():
    """Accelerate's view of this process (main or not), imported when needed: `alignkit push` reads this module and
    must fail fast, before the ML stack loads."""
    from accelerate import PartialState

    return PartialState()


# Files that show a folder holds a training run (ours or a plain Trainer's).
RUN_MARKERS = (RUN_FILE_NAME, CONFIG_FILE_NAME, "trainer_state.json", "adapter_config.json", "model.safetensors")


def _holds_run(path: Path) -> bool:
    # `runs/`: the TensorBoard logs of a run (`report_to: tensorboard`) stopped before its first checkpoint.
    return any((path / m).exists() for m in RUN_MARKERS) or any(path.glob("checkpoint-*")) or (path / "runs").is_dir()


def read_run(output_dir: str | Path) -> dict[str, Any] | None:
    """
    The record of a finished run in `output_dir`, or None when it holds no finished run. While this process is
    finishing the run there (`finish_run`), the record it is about to write: what is written from the record (the
    model card) lands before the record itself, which marks the run finished.
    """
    finishing = _FINISHING.get(_key(output_dir))
    if finishing is not None:
        return json.loads(finishing)
    path = Path(output_dir) / RUN_FILE_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


_FINISHING: dict[str, str] = {}  # output folder -> the JSON of the record this process is about to write there


def _key(output_dir: str | Path) -> str:
    return os.path.realpath(output_dir)


def finish_run(output_dir: str | Path, record: dict[str, Any], write_from_record: Iterable[Callable[[], Any]] = ()) -> None:
    """
    Mark the run in `output_dir` finished by writing its record (`alignkit_run.json`), last and atomically. Each of
    `write_from_record` runs first, seeing the record through `read_run` as if it were written (the model card is
    made from it), so a kill at any moment leaves either a run marked finished with everything it promises, or no
    mark. Main process only.
    """
    text = json.dumps(record, indent=2)  # refuses what JSON cannot hold before anything is written
    key = _key(output_dir)
    _FINISHING[key] = text
    try:
        for write in write_from_record:
            write()
    finally:
        _FINISHING.pop(key, None)
    _write_text_atomic(Path(output_dir) / RUN_FILE_NAME, text)


def read_saved_config(output_dir: str | Path) -> dict[str, Any]:
    """The settings a run saved to `output_dir` ({} when it saved none)."""
    path = Path(output_dir) / CONFIG_FILE_NAME
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def unfinished_run(folder: str | Path) -> str | None:
    """
    Why `folder` holds an alignkit run that did not finish (words to follow the folder's name), or None: no folder,
    a finished run, or a model folder that no alignkit run wrote. A run is finished once `alignkit_run.json` is
    written; a folder without it that has the run's saved config, checkpoints but no model, or a `.previous` beside it
    (an overwrite) was left by a run that was stopped, and its weights (if any) are not the run's result.
    """
    path = Path(folder)
    try:
        if not path.is_dir() or read_run(path) is not None:
            return None
    except (OSError, ValueError):
        return None
    previous = previous_dir(path)
    model = any((path / name).is_file() for name in ("config.json", "adapter_config.json"))
    if not (previous.is_dir() or (path / CONFIG_FILE_NAME).is_file() or (not model and any(path.glob("checkpoint-*")))):
        return None
    checkpoints = complete_checkpoints(path)
    detail = (f"the run it was replacing is in {previous}" if previous.is_dir() else
              f"its last complete checkpoint is {checkpoints[-1].name}" if checkpoints else "it was stopped before it finished")
    return f"{folder} holds an unfinished run (no {RUN_FILE_NAME}; {detail})"


def refuse_unfinished(folder: str | Path, key: str = "model_name_or_path") -> None:
    """A stage must not start from a run that did not finish: its weights are not that run's result."""
    if (why := unfinished_run(folder)) is not None:
        raise OutputDirError(
            f"{key}: {why}. Finish that run (rerun it with `--resume_from_checkpoint true`) or point at a finished run's folder."
        )


def prepare_output_dir(
    output_dir: str, overwrite: bool = False, resume: bool | str | None = None, lock: bool = True
) -> None:
    """
    Refuse to train into a folder that another live run holds, or that holds an earlier run unless the user asked to
    overwrite or resume it. Checked before any model is loaded; writes nothing into `output_dir`. With `lock` (a run,
    not `alignkit check`), the main process takes the folder's lock (`lock_output_dir`) first, and keeps it for the
    run's life (`train_and_save` releases it). An earlier run that `overwrite` replaces is only set aside when
    training starts (`train_and_save`), and only deleted once the new run has finished.
    """
    taken = lock_output_dir(output_dir) if lock else False
    try:
        _check_output_dir(output_dir, overwrite, resume)
    except BaseException:
        if taken:
            release_output_dir(output_dir)
        raise


def _check_output_dir(output_dir: str, overwrite: bool, resume: bool | str | None) -> None:
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
    state = _process_state()
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
    state = _process_state()
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
    if not _process_state().is_main_process or not previous.is_dir():
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
    if _process_state().is_main_process:
        shutil.rmtree(previous_dir(output_dir), ignore_errors=True)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it into place: readers see the old file or the new, never half."""
    _write_text_atomic(Path(path), json.dumps(data, indent=2))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # the rename must not land before the bytes do
    os.replace(tmp, path)


# --- one run per output folder -----------------------------------------------------------------------------------------
#
# A run holds an exclusive `flock` on `<output_dir>.lock`, a file beside the folder (so nothing that looks into the
# folder, nor `set_aside`'s rename of it, ever sees the lock), from `prepare_output_dir` to the end of
# `train_and_save`. The kernel drops the lock when its holder dies, even by `kill -9`: a lock file left behind by a
# killed run holds nothing, and the next run takes it. The holder writes its pid and command line into the file
# for the refusal message. Under several processes (DDP) the main process alone takes it: all share one folder.

LOCK_SUFFIX = ".lock"
_HELD: dict[str, tuple[int, int, list[Path]]] = {}  # lock file -> (fd, holder pid, folders made for it)
_TAKE_SECONDS = 1.0  # how long a run retries before refusing: rides out `alignkit check` probing the lock


def lock_path(output_dir: str | Path) -> Path:
    """The lock file of `output_dir`: `<output_dir>.lock`, beside the folder (the real one, when a link names it)."""
    path = Path(os.path.realpath(output_dir))
    return path.with_name(path.name + LOCK_SUFFIX)


def _lock_key(output_dir: str | Path) -> str:
    return str(lock_path(output_dir))


def in_use_message(output_dir: str | Path, holder: dict[str, Any]) -> str:
    pid = holder.get("pid")
    who = f"process {pid}" if pid else "another process"
    if holder.get("command"):
        who += f" (`{holder['command']}`)"
    return (
        f"output_dir {output_dir} is in use by a running alignkit run, {who}. Wait for it to finish, or stop it and "
        "continue it with `--resume_from_checkpoint true`; or choose another output_dir."
    )


def _holder_info(lock_file: Path) -> dict[str, Any]:
    try:
        return json.loads(lock_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # the holder has not written it yet, or wrote it by hand
        return {}


def _command_line() -> str:
    args = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    command = " ".join(" ".join([Path(args[0]).name, *args[1:]]).split())  # one line, whatever the arguments hold
    return command if len(command) <= 300 else command[:297] + "..."


def lock_output_dir(output_dir: str | Path) -> bool:
    """
    Take `output_dir`'s lock for this run (main process only), or raise `OutputDirError` naming the process that
    holds it. Taking it again in the process that holds it does nothing (several recipes run in one process, one after
    another, sometimes on the same folder). True when this call took it.
    """
    key = _lock_key(output_dir)
    if fcntl is None or key in _HELD or not _process_state().is_main_process:
        return False
    lock_file = Path(key)
    made = [p for p in (lock_file.parent, *lock_file.parent.parents) if not p.exists()]
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + _TAKE_SECONDS
    for _ in range(1000):
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            _remove_empty(made)
            raise OutputDirError(in_use_message(output_dir, _holder_info(lock_file))) from None
        try:  # the file we locked must still be the one at the path: its last holder deletes it as it lets go
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "command": _command_line(), "output_dir": str(output_dir),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = (fd, os.getpid(), made)
        return True
    raise OutputDirError(f"could not take the lock {lock_file} of output_dir {output_dir}.")


def release_output_dir(output_dir: str | Path) -> None:
    """Let go of `output_dir`'s lock if this process holds it, deleting the lock file (it is never needed after)."""
    _release(_lock_key(output_dir))


def _release(key: str) -> None:
    held = _HELD.get(key)
    if held is None or held[1] != os.getpid():  # a forked child does not own its parent's lock
        return
    fd, _, made = _HELD.pop(key)
    with contextlib.suppress(OSError):
        os.unlink(key)  # while still holding it, so the next taker never locks a file about to vanish
    os.close(fd)
    _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first; a folder the run wrote into is not empty and stays
        with contextlib.suppress(OSError):
            folder.rmdir()


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        _release(key)


def output_dir_holder(output_dir: str | Path) -> dict[str, Any] | None:
    """
    The process (`pid`, `command`) whose run holds `output_dir`, or None when no other process holds it. Takes
    nothing and writes nothing: it only asks for a shared lock, and lets go at once.
    """
    key = _lock_key(output_dir)
    if fcntl is None or key in _HELD:
        return None
    try:
        fd = os.open(key, os.O_RDONLY)
    except OSError:  # no lock file: no run has held the folder, or the last one let go
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_info(Path(key)) or {"pid": None}
    finally:
        os.close(fd)
    return None
