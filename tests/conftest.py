"""Shared fixtures: one tiny model (built from a config, saved and loaded back by path) and small data sets."""

import os

# Offline and single-threaded before anything imports the stack: loads of uncached Hub ids fail at once, and
# timings stay stable on a shared 2-core machine.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
HEAVY_MODULES = ("torch", "trl", "peft", "accelerate")  # seconds to import; `datasets` reads data for the quick checks

# `python -m alignkit ...`, writing at exit which of the heavy ML modules it had imported to the file in argv[1].
_PROBE = f"""import atexit, runpy, sys
record = sys.argv.pop(1)
atexit.register(lambda: open(record, "w").write(" ".join(m for m in {HEAVY_MODULES!r} if m in sys.modules)))
sys.argv[0] = "alignkit"
runpy.run_module("alignkit", run_name="__main__", alter_sys=True)
"""


def run_alignkit(*args, cwd=REPO, env=None, timeout=120) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The `alignkit` command in a fresh process, and the heavy ML modules it had imported when it exited: a user
    error caught by the quick checks must not wait for the stack's import."""
    record = Path(tempfile.mkstemp(prefix="alignkit_imports_")[1])
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(record), *map(str, args)], capture_output=True, text=True,
                              cwd=cwd, env=env, timeout=timeout)
        return proc, record.read_text().split()
    finally:
        record.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def world():
    from alignkit.demo.world import make_world

    return make_world(0)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, world) -> Path:
    """A random-weight Llama (hidden 64, 2 layers) with the demo tokenizer, saved like a Hub model folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignkit.demo.base import make_base

    path = make_base(world, tmp_path_factory.mktemp("tiny_base"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).save_pretrained(path)
    return Path(path)


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sft_messages_file(tmp_path_factory, world) -> Path:
    """64 conversational SFT rows from the demo world."""
    rows = [{"messages": ex["messages"]} for ex in world.sft_examples()[:64]]
    return write_jsonl(tmp_path_factory.mktemp("sft") / "train.jsonl", rows)


@pytest.fixture(scope="session")
def preference_file(tmp_path_factory, world) -> Path:
    """48 preference pairs with explicit prompts from the demo world (reward, DPO, and PPO's prompts): rude, wrong or
    long-winded rejected answers, which a tiny model learns to tell apart in a few steps (the garbled ones take the
    demo's full training)."""
    examples = [ex for ex in world.preference_examples() if ex["flaw"] != "garbled"]
    rows = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in examples[:48]]
    return write_jsonl(tmp_path_factory.mktemp("preference") / "train.jsonl", rows)


def stored_bytes(*modules) -> int:
    """Bytes of every distinct parameter tensor the modules hold: shared and tied tensors count once."""
    seen, total = set(), 0
    for p in (p for module in modules for p in module.parameters()):
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


@pytest.fixture(scope="session")
def pretrain_dir(tmp_path_factory, world) -> Path:
    path = tmp_path_factory.mktemp("pretrain")
    write_jsonl(path / "train.jsonl", [{"text": t} for t in world.pretrain_documents(400, "train")])
    write_jsonl(path / "test.jsonl", [{"text": t} for t in world.pretrain_documents(40, "test")])
    return path


def run_stage(stage: str, *args: str):
    """Parse `args` as the stage's CLI would and run its recipe's main() in-process; returns the trainer."""
    import importlib

    from alignkit.config import STAGE_ARGS, parse_args

    recipe = importlib.import_module(f"alignkit.recipes.{stage}")
    return recipe.main(*parse_args(STAGE_ARGS[stage], list(args)))


# Settings that keep every recipe test to a few seconds on a CPU.
FAST = [
    "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--logging_steps", "1",
    "--activation_checkpointing", "false", "--per_device_train_batch_size", "8", "--seed", "0",
]
