"""Importing alignkit keeps other libraries' import-time notices about code the run does not use off the console."""

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import REPO

NEEDS_BITSANDBYTES = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")


@NEEDS_BITSANDBYTES
def test_bitsandbytes_and_kernels_say_nothing_offline_about_a_cpu_kernel_they_fall_back_from():
    # Offline, bitsandbytes looks for a CPU kernel on the Hub through `kernels` (a dependency of transformers >= 5.25):
    # one notice from each, printed ahead of whatever a run prints, e.g. ahead of a one-line error.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = lambda code: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run("import alignkit, bitsandbytes").stderr == ""
    # The same import without alignkit first is what a user would otherwise see (when this stack prints anything).
    if importlib.util.find_spec("kernels") is not None:
        assert "Skipping publisher trust check" in run("import bitsandbytes").stderr


@NEEDS_BITSANDBYTES
def test_a_recipe_launched_as_a_script_prints_only_its_one_line_error():
    # `python recipes/sft.py` (as `accelerate launch` runs it) imports alignkit before transformers (recipes/ruff.toml),
    # so alignkit's logging settings are in place before transformers loads bitsandbytes.
    run = subprocess.run([sys.executable, "recipes/sft.py", "--bogus", "1"], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True)
    assert run.returncode != 0 and run.stderr.splitlines() == ["alignkit: error: unknown command-line option '--bogus'."]
