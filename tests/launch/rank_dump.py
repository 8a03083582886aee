"""
Run stages' recipes as `alignkit <stage>` does, then save what this rank ended with (for launch tests).

    accelerate launch ... tests/launch/rank_dump.py <dump_dir> <stage> [--key value ...] [::: <stage> ...]

Stages separated by `:::` run one after another in the same processes (one import of the stack for all).
After each stage every rank writes `<dump_dir>/<stage>/rank<k>.pt`: {"rank", "world_size", "global_step",
"weights": {name: tensor}} with the trained model's trainable parameters. It needs only a trainer with
`.accelerator` and `.model`, so it serves TRL's trainers and alignkit's PPOTrainer alike.
"""

import sys
from pathlib import Path

import torch

from alignkit.cli import run_recipe


def dump(trainer, dump_dir: Path) -> None:
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    weights = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = getattr(trainer, "state", None)
    record = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "global_step": getattr(state, "global_step", None),
        "weights": weights,
    }
    dump_dir.mkdir(parents=True, exist_ok=True)
    torch.save(record, dump_dir / f"rank{accelerator.process_index}.pt")


def split_stages(argv: list[str]) -> list[list[str]]:
    stages, current = [], []
    for arg in argv:
        if arg == ":::":
            stages.append(current)
            current = []
        else:
            current.append(arg)
    return stages + [current]


if __name__ == "__main__":
    dump_dir, *rest = sys.argv[1:]
    for stage, *args in split_stages(rest):
        trainer = run_recipe(stage, args)
        if trainer is None:  # run_recipe printed a user error
            sys.exit(2)
        dump(trainer, Path(dump_dir) / stage)
