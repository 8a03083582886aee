"""Reward model on real preference data: alignkit's reward recipe beside TRL's RewardTrainer, same settings.

    python benchmarks/reward_hh.py [--data_dir ../shared/data] [--epochs 1] [--out results.json]

Base: `stories260k` (a real trained tiny Llama); data: Anthropic hh-rlhf harmless test pairs (chosen/rejected
dialogues with an implicit prompt), split 80/20 with a fixed seed. Both runs train the full model with the same
hyperparameters. TRL drops every pair longer than `max_length` (in training and evaluation); alignkit cuts such
prompts from the left instead and keeps them. Accuracy (exact pairwise accuracy) is reported for both models on
the same pairs — the held-out pairs TRL keeps — and for alignkit also on every held-out pair.
"""

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def split_data(data_dir: Path, out: Path, seed: int) -> Path:
    with gzip.open(data_dir / "hh-rlhf-harmless-test" / "test.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    random.Random(seed).shuffle(rows)
    cut = int(0.8 * len(rows))
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:cut]), ("test", rows[cut:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"chosen": r["chosen"], "rejected": r["rejected"]}) + "\n" for r in part))
    return out


SETTINGS = dict(max_length=512, per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=3e-4,
                lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=20, save_strategy="no", report_to="none",
                activation_checkpointing=False, seed=0, disable_tqdm=True)


def run_alignkit(base: Path, data: Path, out: Path, epochs: float):
    from alignkit.config import STAGE_ARGS, parse_args
    from alignkit.recipes import reward

    args = ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out),
            "--num_train_epochs", str(epochs)]
    for key, value in SETTINGS.items():
        args += [f"--{key}", str(value)]
    return reward.main(*parse_args(STAGE_ARGS["reward"], args))


def run_trl(base: Path, data: Path, out: Path, epochs: float):
    from datasets import load_dataset
    from trl import RewardConfig, RewardTrainer

    dataset = load_dataset(str(data))
    config = RewardConfig(output_dir=str(out), num_train_epochs=epochs, bf16=False, use_cpu=True, **SETTINGS)
    trainer = RewardTrainer(model=str(base), args=config, train_dataset=dataset["train"], eval_dataset=dataset["test"])
    trainer.train()
    return trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--out", help="write the results as JSON here")
    opts = parser.parse_args()
    data_dir = Path(opts.data_dir)
    if not (data_dir / "hh-rlhf-harmless-test").is_dir():
        sys.exit(f"skipped: no real data at {data_dir} (needs stories260k/ and hh-rlhf-harmless-test/)")

    from types import SimpleNamespace

    import torch

    from alignkit.metrics import reward_stats

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(tempfile.mkdtemp(prefix="reward_hh_"))
    data = split_data(data_dir, work / "data", seed=0)
    base = data_dir / "stories260k"
    trainers, seconds = {}, {}
    for name, run in (("alignkit", run_alignkit), ("trl", run_trl)):
        start = time.time()
        trainers[name] = run(base, data, work / name, opts.epochs)
        seconds[name] = round(time.time() - start, 1)
    # Score both models on the pairs TRL kept, tokenised by TRL, so the comparison is like for like.
    common = {"eval_dataset": trainers["trl"].eval_dataset, "data_collator": trainers["trl"].data_collator}
    results = {}
    for name, trainer in trainers.items():
        stats = reward_stats(SimpleNamespace(model=trainer.model, train_dataset=None, **common))
        results[name] = {"accuracy": stats["accuracy"], "margin": stats["margin"], "train_pairs": len(trainer.train_dataset),
                         "eval_pairs": stats["pairs"], "prefers_longer": stats["prefers_longer"],
                         "chosen_longer": stats["chosen_longer"], "seconds": seconds[name]}
    own = reward_stats(trainers["alignkit"])  # every held-out pair, long prompts cut from the left
    results["alignkit_all_eval_pairs"] = {"accuracy": own["accuracy"], "eval_pairs": own["pairs"]}
    results["accuracy_ratio"] = results["alignkit"]["accuracy"] / results["trl"]["accuracy"]
    print(f"{'':10}{'accuracy':>10}{'margin':>9}{'train':>7}{'eval':>6}{'prefers longer':>16}{'seconds':>9}")
    for name in ("alignkit", "trl"):
        r = results[name]
        print(f"{name:10}{r['accuracy']:>10.3f}{r['margin']:>9.3f}{r['train_pairs']:>7}{r['eval_pairs']:>6}"
              f"{r['prefers_longer']:>16.3f}{r['seconds']:>9}")
    print(f"accuracy alignkit/trl on the same {results['trl']['eval_pairs']} pairs: {results['accuracy_ratio']:.3f}; "
          f"alignkit on all {own['pairs']} held-out pairs: {own['accuracy']:.3f} (chance: 0.5; the chosen answer is "
          f"the longer one in {results['trl']['chosen_longer']:.0%} of pairs)")
    if opts.out:
        Path(opts.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
