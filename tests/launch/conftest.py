"""
Helpers for `launch` tests: run a recipe under `accelerate launch` with 2 real processes on CPU and read back
what each rank ended with.

    from launch.conftest import RANK_DUMP, accelerate_launch, assert_ranks_agree, read_rank_dumps

    result = accelerate_launch(RANK_DUMP, [dump_dir, "sft", "--config", cfg, ...])
    ranks = read_rank_dumps(dump_dir / "sft")  # one dict per rank: rank, world_size, global_step, weights
    assert_ranks_agree(ranks, world_size=2)

`RANK_DUMP` (tests/launch/rank_dump.py) runs stages' recipes exactly as `alignkit <stage>` does (several stages
in one launch when separated by ":::"), then every rank saves `<dump_dir>/<stage>/rank<k>.pt` ({"rank",
"world_size", "global_step", "weights": {name: tensor}} of the trainable parameters), so no test code lives in
the library. tests/launch is a package so that this conftest does not shadow tests/conftest.py (both would be
the module `conftest`): import these helpers as `launch.conftest`, and `FAST`, `write_jsonl` from `conftest`.

Per STACK-NOTES, only `--multi_gpu` (or a MULTI_GPU config such as recipes/accelerate/multi_gpu.yaml) with
`use_cpu` runs cooperating gloo DDP processes on CPU; other spellings silently run one process or two unrelated
trainings. `accelerate launch --multi_gpu` rewrites ACCELERATE_USE_CPU in the processes it starts from its own
`--cpu`/config `use_cpu`, so on CPU it is alignkit's `use_cpu=True` default (alignkit.config, on machines without
an accelerator) that makes the README's command work unchanged; the variable is still set here for scripts that are
started another way. Equal weights alone do not prove cooperation (two unrelated runs with one seed also agree):
assert the world size too, and where possible a step count that only a shared data set gives.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from alignkit.runner import free_port

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = REPO / ".venv" / "bin" / "accelerate"
RANK_DUMP = str(Path(__file__).with_name("rank_dump.py"))


def launch_env(env: dict | None = None) -> dict:
    """The environment of a CPU launch: offline, one thread per process, Accelerate told to use the CPU."""
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }


def accelerate_launch(
    script: str,
    args: list[str],
    nproc: int = 2,
    env: dict | None = None,
    timeout: int = 300,
    config_file: str | Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """
    Run `accelerate launch --multi_gpu --num_processes <nproc> --main_process_port <free port> <script> <args>` on
    CPU (ACCELERATE_USE_CPU=true, OMP_NUM_THREADS=1) from the repo root and return the finished process (text
    stdout/stderr captured). With `config_file`, `--config_file <file>` replaces `--multi_gpu`, as the README's
    preset command spells it. With `check`, fails the test, showing the output's tail, when the launch exits
    non-zero.
    """
    launcher = ["--config_file", str(config_file)] if config_file else ["--multi_gpu"]
    command = [
        str(ACCELERATE), "launch", *launcher, "--num_processes", str(nproc), "--main_process_port", str(free_port()),
        script, *map(str, args),
    ]
    result = subprocess.run(command, cwd=REPO, env=launch_env(env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{(result.stdout + result.stderr)[-6000:]}")
    return result


def read_rank_dumps(dump_dir: str | Path) -> list[dict]:
    """What each rank saved through rank_dump.py, ordered by rank."""
    files = sorted(Path(dump_dir).glob("rank*.pt"), key=lambda p: int(p.stem[4:]))
    return [torch.load(f, weights_only=True) for f in files]


def assert_ranks_agree(ranks: list[dict], world_size: int = 2) -> None:
    """Every rank saw `world_size` processes, and all ended with identical trainable weights (which exist)."""
    assert [r["rank"] for r in ranks] == list(range(world_size)), "expected one dump per rank"
    assert all(r["world_size"] == world_size for r in ranks), [r["world_size"] for r in ranks]
    first = ranks[0]["weights"]
    assert first, "no trainable weights were dumped"
    for other in ranks[1:]:
        assert other["weights"].keys() == first.keys()
        for name, tensor in first.items():
            assert torch.equal(other["weights"][name], tensor), f"rank {other['rank']} differs at {name}"


def sft_and_reward_adapters(root: Path, tiny_base: Path, sft_messages_file: Path, world) -> Path:
    """
    Train, in-process, what a PPO launch starts from: an SFT LoRA adapter in `root/sft` and a reward LoRA adapter on
    it in `root/reward` (a few steps each). Returns the preference file whose prompts PPO samples from.
    """
    from conftest import FAST, run_stage, write_jsonl  # tests/conftest.py

    common = [*FAST, "--use_peft", "true", "--learning_rate", "3e-3", "--max_steps", "4"]
    run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
              "--output_dir", str(root / "sft"), *common)  # fmt: skip
    prefs = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples()[:48]]
    prefs_file = write_jsonl(root / "prefs.jsonl", prefs)
    run_stage("reward", "--model_name_or_path", str(root / "sft"), "--dataset_name", str(prefs_file),
              "--output_dir", str(root / "reward"), "--max_length", "64", *common)  # fmt: skip
    return prefs_file
