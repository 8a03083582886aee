"""The output folder's lock (`alignkit.outputs.lock_output_dir`): one live run per folder, refused in one line naming the
holder; re-entrant in the process that holds it; let go when the run ends or its process dies (even by SIGKILL);
beside the folder, so nothing that looks into it or moves it (`set_aside`) sees the lock."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from conftest import REPO

from alignkit import outputs
from alignkit.errors import OutputDirError

HOLD = """
import sys, time
from alignkit import outputs
outputs.lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that takes the lock of tmp_path/out and keeps it until killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_folder_another_process_holds_is_refused_in_one_line_naming_it(holder, tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    with pytest.raises(OutputDirError) as refused:
        outputs.prepare_output_dir(str(out))
    message = str(refused.value)
    assert time.monotonic() - start < 5 and len(message.splitlines()) == 1
    assert message.startswith(f"output_dir {out} is in use by a running alignkit run, process {holder.pid} (`python")
    assert "-c" in message and "Wait for it to finish" in message
    # Asking who holds it takes nothing, writes nothing, and does not disturb the holder.
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert outputs.output_dir_holder(out)["pid"] == holder.pid
    assert sorted(p.name for p in tmp_path.iterdir()) == listing == ["out.lock"]  # beside the folder, never in it
    assert outputs.output_dir_holder(out)["pid"] == holder.pid


def test_a_lock_whose_holder_was_killed_with_sigkill_is_taken_by_the_next_run(holder, tmp_path):
    out = tmp_path / "out"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert outputs.lock_path(out).is_file()  # left behind by the killed process, holding nothing
    assert outputs.output_dir_holder(out) is None
    try:
        outputs.prepare_output_dir(str(out))
        assert json.loads(outputs.lock_path(out).read_text())["pid"] == os.getpid()
    finally:
        outputs.release_output_dir(out)
    assert not outputs.lock_path(out).exists()


def test_the_lock_is_reentrant_in_its_process_and_let_go_once(tmp_path):
    out = tmp_path / "a" / "out"  # its parent does not exist yet
    try:
        assert outputs.lock_output_dir(out) is True
        assert outputs.lock_output_dir(str(out)) is False  # already ours
        outputs.prepare_output_dir(str(out))  # a recipe run again in this process
        assert outputs.output_dir_holder(out) is None  # this process may use it
    finally:
        outputs.release_output_dir(out)
    assert not (tmp_path / "a").exists()  # the folder made for the lock file went with it
    outputs.release_output_dir(out)  # nothing held: nothing to do


def test_a_refused_folder_lets_go_of_the_lock_it_took_but_not_of_one_held_before(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / outputs.RUN_FILE_NAME).write_text('{"stage": "sft"}')
    with pytest.raises(OutputDirError, match="already holds a finished run"):
        outputs.prepare_output_dir(str(out))
    assert not outputs.lock_path(out).exists()
    try:
        outputs.lock_output_dir(out)
        with pytest.raises(OutputDirError, match="already holds a finished run"):
            outputs.prepare_output_dir(str(out))
        assert outputs.lock_path(out).exists() and outputs._lock_key(out) in outputs._HELD
    finally:
        outputs.release_output_dir(out)


def test_setting_the_earlier_run_aside_and_putting_it_back_keeps_the_lock(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / outputs.RUN_FILE_NAME).write_text('{"stage": "sft"}')
    try:
        outputs.prepare_output_dir(str(out), overwrite=True)
        outputs.set_aside(out)
        assert not (outputs.previous_dir(out) / "out.lock").exists() and outputs.lock_path(out).is_file()
        outputs.restore_previous(out)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.lock"]
        assert outputs.read_run(out) == {"stage": "sft"}
        assert outputs._lock_key(out) in outputs._HELD
    finally:
        outputs.release_output_dir(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_only_the_main_process_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_process_state", lambda: SimpleNamespace(is_main_process=False))
    assert outputs.lock_output_dir(tmp_path / "out") is False
    outputs.prepare_output_dir(str(tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_alignkit_check_reports_a_folder_a_live_run_holds_without_taking_it(holder, tiny_base, sft_messages_file, tmp_path):
    from alignkit.check import run_check

    out = tmp_path / "out"
    config = tmp_path / "sft.yaml"
    config.write_text(f"model_name_or_path: {tiny_base}\ndataset_name: {sft_messages_file}\noutput_dir: {out}\n")
    problems = run_check([str(config), "--stage", "sft"]).problems
    assert [str(p) for p in problems] == [f"output_dir {out} is in use by a running alignkit run, process {holder.pid} "
                                          f"(`{outputs._holder_info(outputs.lock_path(out))['command']}`). Wait for it "
                                          "to finish, or stop it and continue it with `--resume_from_checkpoint true`; "
                                          "or choose another output_dir."]
    assert outputs.output_dir_holder(out)["pid"] == holder.pid  # still the holder's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.lock", "sft.yaml"]
