"""The real-model pipeline (`recipes/qwen2.5-0.5b/pipeline.yaml`) run end to end with a local base and local data.

    python benchmarks/real_pipeline_check.py [--data_dir ../shared/data] [--output_dir DIR] [--steps 30]
    python benchmarks/real_pipeline_check.py --random_shape 0.5b --full_size --steps 6 --no_report   # on a GPU

The pipeline file is used as shipped, through `alignkit.pipeline` (the same validation, stage configs and input
resolution as `alignkit run`); only what must change without the Hub is overridden (`--set`-style):
`base_model` becomes `stories260k` (a real pretrained tiny Llama, 512-token context), and every stage's
`dataset_name` a local file built from Anthropic hh-rlhf's harmless test pairs (SFT conversations end with the
chosen answer; preference pairs share the dialogue as prompt; PPO and the report's held-out prompts are
dialogues without their last answer, from disjoint rows). Without `--full_size` the lengths, batches, steps and
learning rates are shrunk to what a 260k-parameter model on a CPU needs; with it only the number of steps is cut,
so a random-weight base of the real model's shape (`--random_shape 0.5b`: Qwen2.5-0.5B's, built by
`benchmarks/gpu_check.py`) shows each stage's peak GPU memory and speed at the recipe's sizes.
Each stage's own measurements (losses, reward accuracy, DPO preference accuracy, PPO score and KL) are printed,
then the pipeline report (a second `run_pipeline` that skips every finished stage and evaluates them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "recipes" / "qwen2.5-0.5b" / "pipeline.yaml"
STAGES = ("sft", "reward", "dpo", "ppo")
TURN = re.compile(r"\n\n(Human|Assistant): ")

# A 260k-parameter model with a 512-token context, on a CPU: short sequences, small batches, larger steps.
SMALL = {
    "max_length": 256, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
    "per_device_eval_batch_size": 32, "activation_checkpointing": False, "logging_steps": 5,
}
SMALL_STAGE = {
    "sft": {"learning_rate": 2e-3},
    "reward": {"learning_rate": 2e-3},
    "dpo": {"learning_rate": 5e-4},
    "ppo": {"learning_rate": 1e-3, "max_prompt_length": 192, "max_new_tokens": 48, "num_mini_batches": 1,
            "gradient_accumulation_steps": 1, "logging_steps": 1},
}


def conversation(dialogue: str) -> list[dict[str, str]]:
    """An hh-rlhf dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat turns."""
    parts = TURN.split(dialogue)[1:]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[role], "content": text.strip()} for role, text in zip(parts[::2], parts[1::2])]


def _pair(row: dict) -> tuple[list[dict], dict, dict] | None:
    chosen, rejected = conversation(row["chosen"]), conversation(row["rejected"])
    if len(chosen) < 2 or chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant" or not chosen[-1]["content"]:
        return None  # the few pairs whose dialogues differ before the last answer, or lack one
    if rejected[-1]["role"] != "assistant" or not rejected[-1]["content"]:
        return None
    return chosen[:-1], chosen[-1], rejected[-1]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _context(pairs: list, i: int, chars: int) -> list[dict]:
    """Whole turns of the dialogues after the i-th, holding at least `chars` characters (none if `chars` <= 0)."""
    turns, k = [], 1
    while sum(len(t["content"]) for t in turns) < chars:
        prompt, chosen, _ = pairs[(i + k) % len(pairs)]
        turns, k = turns + prompt + [chosen], k + 1
    return turns


def make_data(data_dir: Path, out: Path, seed: int = 0, long_rows: bool = False, limit: int | None = None) -> dict[str, Path]:
    """
    Local data sets for every stage from hh-rlhf's harmless test pairs, split by row so that no stage's held-out
    rows are another's training rows. `long_rows` prefixes prompts with other dialogues' turns so that sequences
    reach the recipes' full `max_length`: SFT conversations run past 2,048 tokens (and are cut there); preference
    prompts hold 1,000 to 1,600 characters — with the 1,024-token vocabulary the device run uses (1.7 characters a
    token), prompts under 1,024 tokens whose pairs run past it, so the reward recipe cuts the prompts to fit and
    DPO cuts the answers. `limit` caps the SFT and preference rows: tokenising thousands of long rows would take
    longer than the few steps trained on them.
    """
    with gzip.open(data_dir / "hh-rlhf-harmless-test" / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    pairs = [p for p in map(_pair, raw) if p is not None]
    random.Random(seed).shuffle(pairs)
    sft_pairs = plain = pairs
    if long_rows:
        sft_pairs = [(_context(pairs, i, 6000) + p, c, r) for i, (p, c, r) in enumerate(pairs)]
        pairs = [(_context(pairs, i, 1000 - sum(len(t["content"]) for t in p)) + p, c, r) for i, (p, c, r) in enumerate(pairs)]
    ppo, rest = pairs[64:576], pairs[576:][:limit]
    sft_rest = sft_pairs[576:][:limit]
    cut = int(0.9 * len(rest))
    files = {}
    for split, part, sft_part in (("train", rest[:cut], sft_rest[:cut]), ("test", rest[cut:], sft_rest[cut:])):
        files["sft"] = _write(out / "sft" / f"{split}.jsonl", [{"messages": p + [c]} for p, c, _ in sft_part]).parent
        files["preference"] = _write(
            out / "preference" / f"{split}.jsonl", [{"prompt": p, "chosen": [c], "rejected": [r]} for p, c, r in part]
        ).parent
    files["prompts"] = _write(out / "prompts.jsonl", [{"prompt": p} for p, _, _ in ppo])
    # Short dialogues only: the report's answers must fit the base's context (stories260k: 512 tokens).
    short = [p for p, _, _ in plain[:64] if sum(len(t["content"]) for t in p) < 400]
    files["heldout"] = _write(out / "heldout_prompts.jsonl", [{"prompt": p} for p in short[:16]])
    return files


def overrides(base: str, data: dict[str, Path], steps: int, full_size: bool) -> dict[str, object]:
    """What replaces the Hub: the base, every stage's data, and (without `full_size`) sizes for a tiny model."""
    sets: dict[str, object] = {"base_model": base, "evaluation.prompts": str(data["heldout"]),
                               "evaluation.max_new_tokens": 32}
    for stage in STAGES:
        sets[f"{stage}.dataset_name"] = str(data[{"sft": "sft", "ppo": "prompts"}.get(stage, "preference")])
        sets[f"{stage}.num_updates" if stage == "ppo" else f"{stage}.max_steps"] = steps
        if stage == "sft":
            sets["sft.dataset_train_split"] = "train"  # the recipe's train_sft is UltraChat's name
        if not full_size:
            for key, value in {**SMALL, **SMALL_STAGE[stage]}.items():
                if stage == "ppo" and key in ("max_length", "per_device_eval_batch_size"):
                    continue  # PPO's lengths are max_prompt_length + max_new_tokens
                sets[f"{stage}.{key}"] = value
    return sets


def _peak_memory_gib() -> float | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process's peak RSS (Linux: KiB)


def measured(stage: str, record: dict, stage_dir: Path, steps: int) -> dict[str, float]:
    """The numbers a stage measured itself, from its alignkit_run.json and log: speed, losses, accuracies."""
    m = record.get("metrics", {})
    speed = {"seconds_per_step": m["train_runtime"] / steps} if m.get("train_runtime") else {}
    history = json.loads((stage_dir / "trainer_state.json").read_text())["log_history"]
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h and "loss" in h]
    if tokens and m.get("train_runtime"):  # SFT counts the tokens it trained on
        speed["tokens_per_second"] = tokens[-1] / m["train_runtime"]
    keys = {
        "sft": ("train_loss", "eval_loss", "eval_mean_token_accuracy"),
        "reward": ("train_loss", "eval_loss", "eval_accuracy"),
        "dpo": ("train_loss", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"),
        "ppo": ("train_loss",),
    }[stage]
    out = {**speed, **{k: m[k] for k in keys if k in m}}
    if stage == "reward" and "reward_stats" in record:
        out["heldout_pair_accuracy"] = record["reward_stats"]["accuracy"]
    return out


def _ppo_curve(stage_dir: Path) -> dict[str, float]:
    history = json.loads((stage_dir / "trainer_state.json").read_text())["log_history"]
    scores, kls = [h["score"] for h in history if "score" in h], [h["kl"] for h in history if "kl" in h]
    if not scores:
        return {}
    k = max(1, len(scores) // 4)  # first and last quarter of the updates
    return {"score_first": sum(scores[:k]) / k, "score_last": sum(scores[-k:]) / k, "kl_last": sum(kls[-k:]) / k}


def _line(row: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--base", help="the base model folder (default: <data_dir>/stories260k)")
    parser.add_argument("--random_shape", choices=["tiny", "0.5b", "7b"],
                        help="instead of --base: random weights in this shape (benchmarks/gpu_check.py's CONFIGS)")
    parser.add_argument("--output_dir", help="default: a new temporary folder")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per stage (PPO: updates)")
    parser.add_argument("--full_size", action="store_true",
                        help="keep the recipes' lengths and batches; cut steps only")
    parser.add_argument("--no_report", action="store_true",
                        help="skip the pipeline report (evaluation of every stage)")
    parser.add_argument("--out", help="write the measurements as JSON here")
    opts = parser.parse_args(argv)
    data_dir = Path(opts.data_dir)
    if not (data_dir / "hh-rlhf-harmless-test").is_dir() or not (
        opts.base or opts.random_shape or (data_dir / "stories260k").is_dir()
    ):
        sys.exit(f"skipped: no real data at {data_dir} (needs hh-rlhf-harmless-test/ and stories260k/)")

    import torch

    from alignkit.pipeline import load_pipeline
    from alignkit.runner import run_stage

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))))
    # Absolute paths: the run changes into the repository below.
    out = Path(opts.output_dir or tempfile.mkdtemp(prefix="real_pipeline_")).resolve()
    out_file = Path(opts.out).resolve() if opts.out else None
    data = make_data(data_dir, out / "data", long_rows=opts.full_size,
                     limit=20 * opts.steps + 40 if opts.full_size else None)
    base = opts.base or str(data_dir / "stories260k")
    if opts.random_shape:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu_check import build

        from alignkit.demo.world import make_world

        base = str(build(opts.random_shape, out / "base", make_world(0))[0])
    sets = overrides(base, data, opts.steps, opts.full_size)
    os.chdir(REPO)  # the recipes name the chat template relative to the repository root, as `alignkit run` expects

    pipeline = load_pipeline(PIPELINE, sets)
    pipeline.output_dir = str(out / "run")
    pipeline.validate()
    actions = pipeline.plan()
    results: dict[str, dict] = {}
    for name, stage in pipeline.stages.items():
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.time()
        if actions[name] != "skip":
            run_stage(pipeline, stage, actions[name])
        record = json.loads((pipeline.stage_dir(name) / "alignkit_run.json").read_text())
        results[name] = {"seconds": round(time.time() - start, 1), "peak_memory_gib": _peak_memory_gib(),
                         **measured(name, record, pipeline.stage_dir(name), opts.steps)}
        if name == "ppo":
            results[name].update(_ppo_curve(pipeline.stage_dir(name)))
        print(f"[check] {name}: {_line(results[name])}", flush=True)

    memory = "peak GPU memory (GiB)" if torch.cuda.is_available() else "peak process RSS so far (GiB)"
    sizes = "the recipes' full" if opts.full_size else "CPU"
    print(f"\nbase {Path(sets['base_model']).name}, {opts.steps} steps per stage, {sizes} sizes; {memory}")
    for name, row in results.items():
        print(f"{name:<8}{_line(row)}")
    if not opts.no_report:
        from alignkit.runner import run_pipeline

        # Every stage is finished, so this run skips them all and only evaluates them and writes the report.
        report = run_pipeline(PIPELINE, output_dir=out / "run", overrides=sets)
        results["report"] = {
            name: {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for name, row in report["stages"].items()
        }
    if out_file:
        out_file.write_text(json.dumps(results, indent=2))
    print(f"outputs: {out}")
    return results


if __name__ == "__main__":
    main()
