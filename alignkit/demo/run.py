"""`alignkit demo`: the whole pipeline on a tiny model and a generated world, offline, on a CPU.

    alignkit demo [--output_dir outputs/demo] [--from STAGE] [--overwrite]

The same as `alignkit run recipes/demo/pipeline.yaml`: its `setup` (below) writes the world's data sets and a
tiny base (config + tokenizer), then the pipeline pretrains, fine-tunes, trains a reward model, and runs DPO and
PPO from the SFT model, each stage with its config from `recipes/demo/`, and reports every stage on held-out
questions with the world's gold judge (`<output_dir>/report.md`, `report.json`). Finished stages are skipped
when it runs again.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from alignkit.demo.base import make_base
from alignkit.demo.world import make_world, write_world

WORLD_SEED = 0


def pipeline_path() -> Path:
    import alignkit.recipes

    return Path(alignkit.recipes.__file__).parent / "demo" / "pipeline.yaml"


def setup(output_dir: Path) -> dict[str, str]:
    """The pipeline's `setup`: the world's data sets and the tiny base in `output_dir`, by name."""
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        # A model this small gains nothing from a second thread and loses to its synchronisation: on a 2-core
        # machine the demo took 6 min of wall time (7 of CPU) with torch's default 2 threads, 1.5 min with one.
        torch.set_num_threads(1)
    world = make_world(WORLD_SEED)
    data = write_world(world, Path(output_dir) / "data")  # deterministic: rewriting gives the same files
    base = Path(output_dir) / "base"
    if not (base / "config.json").is_file():
        make_base(world, base, seed=WORLD_SEED)
    return {
        "base": str(base),
        "pretrain": str(data["pretrain"]),
        "sft": str(data["sft"]),
        "preference": str(data["preference"]),
        "heldout": str(data["heldout_prompts"]),
    }


def main(argv: list[str] | None = None) -> dict:
    from alignkit.runner import run_pipeline

    parser = argparse.ArgumentParser(prog="alignkit demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=None, help="instead of outputs/demo")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every later one")
    parser.add_argument("--overwrite", action="store_true", help="delete output_dir first and run every stage")
    opts = parser.parse_args(argv)
    if opts.overwrite:
        from alignkit.pipeline import load_pipeline

        out = Path(opts.output_dir or load_pipeline(pipeline_path()).output_dir)
        if out.exists():
            shutil.rmtree(out)
    return run_pipeline(pipeline_path(), from_stage=opts.from_stage, output_dir=opts.output_dir)
