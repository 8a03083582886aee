"""Reward model on real preference data: alignkit's reward recipe beside plain TRL RewardTrainer, same settings.

    python benchmarks/reward_hh.py [--data <hh-rlhf test.jsonl.gz>] [--base <model folder>] [--out results.json]
                                   [--threads N] [--limit N] [--max_steps N] [--max_length N] [--work_dir DIR]

`--data` and `--base` default to `hh-rlhf-harmless-test/test.jsonl.gz` and `stories260k/` in `../shared/data`
beside the repository; without them the benchmark exits with a "skipped" message.

Data: Anthropic hh-rlhf preference pairs (`chosen`/`rejected` dialogues "\\n\\nHuman: ... \\n\\nAssistant: ...", the
prompt implicit), split with `datasets` `train_test_split(test_size=0.2, seed=0)` over the rows in file order
(2,312 rows -> 1,849 training / 463 held-out pairs). `--limit N` uses only the first N rows (a smoke test).

Both trainers get their settings from the one mapping `SETTINGS`: LoRA r16, alpha 32, dropout 0.05 on every linear
layer (the score head trained in full), learning rate 1e-3, 1 epoch, batch 8, max_length 512, seed 0, no gradient
checkpointing. Plain RewardTrainer drops every pair longer than max_length. alignkit cuts a long prompt from the left
and, where an answer alone leaves no room for the end of its prompt, that answer's end (its log says how many), and
drops no pair.

Both models are scored on every held-out pair in the training format: the held-out pairs as alignkit's run
tokenised them (RewardTrainer's own `_prepare_dataset`, after alignkit's truncation), batched by RewardTrainer's
collator. The JSON also gives both accuracies on the held-out pairs that fit max_length uncut (the ones plain TRL
would evaluate itself).

Threads: torch uses `--threads`, else the caller's OMP_NUM_THREADS, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The one source of both trainers' settings: RewardConfig fields, then ModelConfig's LoRA fields.
SETTINGS = {
    "learning_rate": 1e-3,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "max_length": 512,
    "seed": 0,
    "activation_checkpointing": False,
    "max_steps": -1,
    "logging_steps": 25,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "use_peft": True,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": "all-linear",
    "lora_task_type": "SEQ_CLS",  # the score head is trained in full and saved with the adapter
}


# ------------------------------------------------------------------------------ shared with dpo_hh.py
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=str(SHARED_DATA / "hh-rlhf-harmless-test" / "test.jsonl.gz"),
                   help="hh-rlhf JSONL (.jsonl or .jsonl.gz) with `chosen` and `rejected`")
    p.add_argument("--base", default=str(SHARED_DATA / "stories260k"), help="base model folder (a causal LM with its tokenizer)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--threads", type=int, help="torch threads (default: $OMP_NUM_THREADS, else 1)")
    p.add_argument("--limit", type=int, help="use only the first N rows of the file (a smoke test)")
    p.add_argument("--max_steps", type=int, help="stop each training after this many steps (a smoke test)")
    p.add_argument("--max_length", type=int, help="override max_length (default 512)")
    p.add_argument("--work_dir", help="keep the split and both trained models here (default: a temporary folder)")
    return p


def configure_threads(threads: int | None) -> int:
    """torch's thread count: `threads` if given, else the caller's OMP_NUM_THREADS, else 1 (set before torch loads)."""
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    with contextlib.suppress(ValueError):  # an OMP_NUM_THREADS torch cannot read: keep torch's own choice
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    return torch.get_num_threads()


def settings_for(base: dict, opts) -> dict:
    """`base` with the run's overrides and the machine's precision and device (the same for both trainers)."""
    import torch

    settings = dict(base)
    if opts.max_steps is not None:
        settings["max_steps"] = opts.max_steps
    if opts.max_length is not None:
        settings["max_length"] = opts.max_length
    settings["bf16"] = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    settings["use_cpu"] = not torch.cuda.is_available()
    return settings


def read_rows(path: Path, limit: int | None = None) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[:limit] if limit else rows
    return [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def split_rows(path: Path, limit: int | None, folder: Path):
    """The split (`train`, `test`) of the file's rows in file order, also written to `folder` as train/test.jsonl."""
    from datasets import Dataset

    split = Dataset.from_list(read_rows(path, limit)).train_test_split(test_size=0.2, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return split


def cli_args(settings: dict) -> list[str]:
    """`settings` as `--key value` flags for an alignkit stage."""
    args = []
    for key, value in settings.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        args += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return args


def trl_configs(settings: dict, config_class, output_dir: Path):
    """(`config_class` training config, LoRA config) from `settings`, as TRL's own scripts build them."""
    from trl import ModelConfig, get_peft_config

    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    training = config_class(output_dir=str(output_dir), **{k: v for k, v in settings.items() if k not in model_keys})
    peft_config = get_peft_config(ModelConfig(**{k: v for k, v in settings.items() if k in model_keys}))
    return training, peft_config


def run_alignkit(stage: str, base: Path, data: Path, out: Path, settings: dict):
    """alignkit's `stage` recipe through its CLI entry point, in-process; returns its trainer."""
    from alignkit.cli import run_recipe

    args = ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out)] + cli_args(settings)
    return run_recipe(stage, args)


def fits_uncut(rows, tokenizer, max_length: int) -> list[bool]:
    """Which raw pairs plain TRL keeps: each whole dialogue plus EOS within max_length tokens."""
    return [
        max(len(tokenizer(r[k] + tokenizer.eos_token)["input_ids"]) for k in ("chosen", "rejected")) <= max_length
        for r in rows
    ]


def train_runtime(trainer) -> float | None:
    """Seconds `trainer.train()` itself took (its own measure, without loading, tokenising or saving)."""
    return next((round(h["train_runtime"], 1) for h in reversed(trainer.state.log_history) if "train_runtime" in h), None)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, round(time.perf_counter() - start, 1)


def finish(results: dict, out: str | None, columns: list[str]) -> dict:
    print(json.dumps({k: results[k] for k in columns}, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results: {out}")
    return results


# ------------------------------------------------------------------------------------------- reward
def run_trl(base: Path, train, out: Path, settings: dict):
    """Plain TRL: RewardTrainer from the model's path, with its own tokenizer and defaults beyond `settings`."""
    from trl import RewardConfig, RewardTrainer

    config, peft_config = trl_configs(settings, RewardConfig, out)
    trainer = RewardTrainer(model=str(base), args=config, train_dataset=train, peft_config=peft_config)
    trainer.train()
    return trainer


def pair_scores(model, dataset, collator, batch_size: int):
    """The model's scores of each pair's chosen and rejected sequence, batched as in training."""
    import torch

    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collator(rows)  # chosen sequences first, then the rejected ones
            scores = model(input_ids=batch["input_ids"].to(model.device),
                           attention_mask=batch["attention_mask"].to(model.device)).logits[:, 0].float().cpu()
            chosen.append(scores[: len(rows)])
            rejected.append(scores[len(rows) :])
    return torch.cat(chosen), torch.cat(rejected)


def main(argv: list[str] | None = None) -> dict:
    opts = parser(__doc__.splitlines()[0]).parse_args(argv)
    data_file, base = Path(opts.data), Path(opts.base)
    if not data_file.is_file() or not base.is_dir():
        sys.exit(f"skipped: no data file at {data_file} or no model folder at {base}")
    threads = configure_threads(opts.threads)
    settings = settings_for(SETTINGS, opts)
    work = Path(opts.work_dir) if opts.work_dir else Path(tempfile.mkdtemp(prefix="reward_hh_"))
    start = time.perf_counter()
    try:
        split = split_rows(data_file, opts.limit, work / "data")
        print(f"split: {len(split['train'])} training / {len(split['test'])} held-out pairs; {threads} thread(s)", flush=True)
        ours, ours_s = timed(run_alignkit, "reward", base, work / "data", work / "alignkit", settings)
        theirs, theirs_s = timed(run_trl, base, split["train"], work / "trl", settings)

        # Every held-out pair, tokenised by RewardTrainer after alignkit's truncation, batched by its collator.
        heldout, collator = ours.eval_dataset, ours.data_collator
        batch = settings["per_device_eval_batch_size"]
        score_start = time.perf_counter()
        scores = {name: pair_scores(t.model, heldout, collator, batch) for name, t in (("alignkit", ours), ("trl", theirs))}
        score_s = round(time.perf_counter() - score_start, 1)
    finally:
        if not opts.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    import torch

    fit = torch.tensor(fits_uncut(split["test"], ours.processing_class, settings["max_length"]))
    results = {"benchmark": "reward_hh", "heldout_n": len(heldout), "heldout_pairs_in_split": len(split["test"]),
               "train_pairs_in_split": len(split["train"])}
    for name, trainer in (("alignkit", ours), ("trl", theirs)):
        chosen, rejected = scores[name]
        right = chosen > rejected
        results[f"{name}_accuracy"] = round(right.float().mean().item(), 4)
        results[f"{name}_margin"] = round((chosen - rejected).mean().item(), 4)
        if len(right) == len(fit):  # every held-out pair scored: also on those that fit uncut
            results[f"{name}_accuracy_on_uncut_pairs"] = round(right[fit].float().mean().item(), 4) if fit.any() else None
        results[f"{name}_train_pairs"] = len(trainer.train_dataset)
        results[f"{name}_train_pairs_dropped"] = len(split["train"]) - len(trainer.train_dataset)
    results["heldout_uncut_n"] = int(fit.sum())
    results.update(
        alignkit_wall_s=ours_s, trl_wall_s=theirs_s, scoring_wall_s=score_s,
        alignkit_train_runtime_s=train_runtime(ours), trl_train_runtime_s=train_runtime(theirs),
        total_wall_s=round(time.perf_counter() - start, 1), threads=threads,
        data=str(data_file), base=str(base), limit=opts.limit, settings=settings,
    )
    return finish(results, opts.out, ["alignkit_accuracy", "trl_accuracy", "heldout_n", "alignkit_train_pairs_dropped",
                                      "trl_train_pairs_dropped", "alignkit_wall_s", "trl_wall_s"])


if __name__ == "__main__":
    main()
