"""Operating-system faults and Ctrl-C end an `alignkit` command in one line (exit 2, or 130 for Ctrl-C), never a
traceback unless `--debug` asks for it; bad `--set` values and a pipeline output_dir that is a file likewise."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import FAST, REPO, run_stage

from alignkit import cli, runner
from alignkit.errors import ConfigError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def tiny_pipeline(tmp_path, tiny_base, data):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(tiny_base), "output_dir": str(tmp_path / "out"), "stages": {
        "sft": {"recipe": "sft", "model": "base", "args": {"dataset_name": str(data), "max_steps": 2}}}}))
    return path


def alignkit(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "alignkit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=120)


def test_an_unparsable_set_value_and_an_output_dir_that_is_a_file_are_one_line_errors(tmp_path, tiny_base, sft_messages_file):
    path = tiny_pipeline(tmp_path, tiny_base, sft_messages_file)
    proc = alignkit("run", path, "--set", "sft.max_steps=[1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"alignkit: error: {path}: --set sft.max_steps=[1: '[1' is not a valid value (expected ',' or ']', but got "
        "'<stream end>'). Write it as in YAML: a number, true/false, a [list] or {mapping} closed on the same value, "
        "or a string in quotes (e.g. `--set 'sft.max_steps=\"[1\"'`)."
    ]
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for output_dir in (a_file, a_file / "out"):
        proc = alignkit("run", path, "--output_dir", output_dir)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"alignkit: error: {path}: output_dir {output_dir} cannot hold the stages' folders: {a_file} is a file, not a "
            "folder. Choose another output_dir (in the file, or `--output_dir DIR`)."
        ]
    assert a_file.read_text() == "not a folder"


def test_a_stage_whose_output_dir_is_under_a_file_fails_in_one_line(tmp_path, tiny_base, sft_messages_file, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    args = ["sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
            "--output_dir", str(a_file / "out"), "--max_steps", "1", *FAST]
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # found with the config, before anything loads
        f"alignkit: error: command line: output_dir {a_file / 'out'} cannot be created: {a_file} is a file; "
        "choose a folder elsewhere.")
    with pytest.raises(ConfigError):  # --debug: the traceback
        cli.main([*args, "--debug"])


@pytest.mark.parametrize("fault, code, line", [
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"), 2,
     "alignkit: error: cannot write /mnt/ro/out: the file system is read-only; choose a folder on a writable disk."),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors"), 2,
     "alignkit: error: cannot write /data/out/model.safetensors: no space left on the device; free some or choose another disk."),
    (PermissionError(errno.EACCES, "Permission denied", "/root/out"), 2,
     "alignkit: error: cannot access /root/out: permission denied; choose a path you may write to."),
    (KeyboardInterrupt(), 130, "alignkit: interrupted"),
])
def test_os_errors_and_ctrl_c_in_any_command_are_one_line(monkeypatch, capsys, fault, code, line):
    def fail(*args, **kwargs):
        raise fault

    monkeypatch.setattr(runner, "run_pipeline", fail)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "pipeline.yaml"])
    assert exit_.value.code == code and capsys.readouterr().err.strip().splitlines() == [line]
    with pytest.raises(type(fault)):
        cli.main(["run", "pipeline.yaml", "--debug"])
    monkeypatch.setattr("alignkit.preflight.check", fail)  # a stage command too
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sft", "--config", "sft.yaml"])
    assert exit_.value.code == code and capsys.readouterr().err.strip().splitlines() == [line]


def test_ctrl_c_during_an_overwrite_puts_the_earlier_run_back_and_says_so_in_a_line(tiny_base, sft_messages_file, tmp_path):
    out = tmp_path / "run"
    common = ["--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file), "--output_dir", str(out),
              *[a for a in FAST if a not in ("--save_strategy", "no")]]
    run_stage("sft", *common, "--max_steps", "2", "--save_strategy", "no")
    earlier = (out / "alignkit_run.json").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignkit", "sft", *common, "--max_steps", "1000", "--save_strategy", "steps",
         "--save_steps", "1", "--overwrite_output_dir", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV,
    )
    try:
        deadline = time.time() + 120
        while not (out.with_name("run.previous").is_dir() and list(out.glob("checkpoint-*/trainer_state.json"))):
            assert proc.poll() is None and time.time() < deadline, "the overwrite did not start training"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "alignkit: interrupted"
    assert f"The earlier run in {out} was left as it was" in err
    assert (out / "alignkit_run.json").read_bytes() == earlier and not out.with_name("run.previous").exists()
    assert json.loads((out / "alignkit_run.json").read_text())["stage"] == "sft"
