"""`alignkit demo`: every stage of the pipeline on a tiny model and a generated world, offline, on a CPU.

    alignkit demo [--output_dir outputs/demo] [--seed 0] [--overwrite]

Generates the world's data sets and a tiny base (config + tokenizer), then runs each stage's recipe with its
config from `recipes/demo/`, exactly as `accelerate launch recipes/<stage>.py --config ...` would, and
measures each stage with the world's gold judge on held-out questions. A stage whose output is already
complete is not trained again. The numbers go to the terminal and to `<output_dir>/report.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from alignkit import outputs
from alignkit.config import STAGE_ARGS, parse_args
from alignkit.demo.base import make_base
from alignkit.demo.judge import GoldJudge
from alignkit.demo.world import World, make_world, write_world
from alignkit.evaluation import evaluate_policy, generate, gold_judge, load_for_inference

# The stages the demo runs, in order, with the stage whose output each one starts from.
STAGES = {"pretrain": "base", "sft": "pretrain", "reward": "sft", "dpo": "sft", "ppo": "sft"}
STAGE_DATA = {"pretrain": "pretrain", "sft": "sft", "reward": "preference", "dpo": "preference", "ppo": "preference"}


def config_path(stage: str) -> Path:
    import alignkit.recipes

    return Path(alignkit.recipes.__file__).parent / "demo" / f"{stage}.yaml"


def run_stage(stage: str, out: Path, model: Path, data: Path, extra: list[str] = ()) -> tuple[dict, bool]:
    """Run one stage's recipe with the demo config, paths redirected into `out`; skip it if already complete."""
    stage_dir = out / stage
    record = outputs.read_run(stage_dir)
    if record is not None:
        return record, False
    args = ["--config", str(config_path(stage)), "--output_dir", str(stage_dir)]
    args += ["--model_name_or_path", str(model), "--dataset_name", str(data), *extra]
    if stage_dir.exists():  # an interrupted earlier attempt: start it again
        args += ["--overwrite_output_dir", "true"]
    recipe = __import__(f"alignkit.recipes.{stage}", fromlist=["main"])
    recipe.main(*parse_args(STAGE_ARGS[stage], args))
    return outputs.read_run(stage_dir), True


def pretrain_report(stage_dir: Path) -> dict:
    history = json.loads((stage_dir / "trainer_state.json").read_text())["log_history"]
    losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {"perplexity_before": math.exp(losses[0]), "perplexity_after": math.exp(losses[-1])}


def gold_report(world: World, stage_dir: Path, heldout: list[dict]) -> dict:
    """The gold judge's rates of greedy answers to the held-out questions, plus a few examples."""
    model, tokenizer = load_for_inference(stage_dir)
    answers = generate(model, tokenizer, [row["prompt"] for row in heldout], max_new_tokens=40)
    items = [(row["entity"], row["attribute"], answer) for row, answer in zip(heldout, answers)]
    rates = GoldJudge(world).rates(items)
    examples = [{"question": row["prompt"][-1]["content"], "answer": a} for row, a in zip(heldout[:3], answers)]
    return {**rates, "examples": examples}


def load_heldout(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "data" / "heldout_prompts.jsonl").read_text().splitlines()]


def policy_report(world_seed: int, out: Path, stage: str, heldout: list[dict]) -> dict:
    """A preference-tuned policy against the SFT model it started from, on the held-out questions."""
    result = evaluate_policy(out / stage, out / "sft", heldout, out / "reward", max_new_tokens=40, judge=gold_judge(world_seed))
    rates = {k: v for k, v in result["policy"].items() if k.startswith("gold_")}
    examples = [{"question": ex["prompt"][-1]["content"], "answer": ex["policy"]} for ex in result["examples"]]
    return {
        **rates,
        "kl_to_sft": result["kl_per_token"],
        "rm_win_rate_vs_sft": result["win_rate"],
        "rm_score": result["policy"]["reward_mean"],
        "sft_rm_score": result["reference"]["reward_mean"],
        "examples": examples,
    }


def print_report(report: dict) -> None:
    stages = report["stages"]
    header = f"{'stage':<9}{'perplexity':>18}{'RM acc':>8}{'correct':>9}{'polite':>8}{'concise':>9}{'RM win':>8}{'KL':>7}"
    print(header)
    for name, s in stages.items():
        cells = [
            f"{s['perplexity_before']:.0f} -> {s['perplexity_after']:.2f}" if "perplexity_after" in s else "",
            f"{s['eval_accuracy']:.2f}" if "eval_accuracy" in s else "",
            *(f"{s[k]:.2f}" if k in s else "" for k in ("gold_correctness", "gold_politeness", "gold_concision")),
            *(f"{s[k]:.2f}" if s.get(k) is not None else "" for k in ("rm_win_rate_vs_sft", "kl_to_sft")),
        ]
        widths = (18, 8, 9, 8, 9, 8, 7)
        print(f"{name:<9}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    for name, s in stages.items():
        for ex in s.get("examples", [])[:1]:
            print(f"{name:<9}Q: {ex['question']}  A: {ex['answer']}")
    print(f"total {report['wall_seconds']:.0f} s")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="alignkit demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="delete output_dir first and run every stage")
    opts = parser.parse_args(argv)
    start = time.time()
    out = Path(opts.output_dir)
    if opts.overwrite and out.exists():
        shutil.rmtree(out)

    world = make_world(opts.seed)
    data = write_world(world, out / "data")
    base = out / "base"
    if not (base / "config.json").is_file():
        make_base(world, base, seed=opts.seed)
    heldout = load_heldout(out)

    report: dict = {"seed": opts.seed, "stages": {}}
    for stage, parent in STAGES.items():
        t0 = time.time()
        extra = ["--reward_model_path", str(out / "reward")] if stage == "ppo" else []
        record, trained = run_stage(stage, out, out / parent, data[STAGE_DATA[stage]], extra)
        entry = {"train_seconds": round(time.time() - t0, 1) if trained else None, "metrics": record["metrics"]}
        if stage == "pretrain":
            entry.update(pretrain_report(out / stage))
        elif stage == "sft":
            entry.update(gold_report(world, out / stage, heldout))
        elif stage == "reward":
            stats = record["reward_stats"]  # exact pairwise accuracy on the held-out pairs
            entry.update(eval_accuracy=stats["accuracy"], eval_margin=stats["margin"], prefers_longer=stats["prefers_longer"])
        else:
            entry.update(policy_report(opts.seed, out, stage, heldout))
        if stage == "ppo":  # the curves per update: the reward model's score rises while KL stays bounded
            history = json.loads((out / stage / "trainer_state.json").read_text())["log_history"]
            entry.update(reward=[round(h["score"], 4) for h in history], kl=[round(h["kl"], 4) for h in history])
        report["stages"][stage] = entry
        print(f"[demo] {stage}: {'trained' if trained else 'already complete, skipped'}", flush=True)

    report["wall_seconds"] = round(time.time() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"report: {out / 'report.json'}")
    return report
