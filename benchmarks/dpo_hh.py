"""DPO on real preference data: alignkit's dpo recipe beside plain TRL DPOTrainer, same settings.

    python benchmarks/dpo_hh.py [--data <hh-rlhf test.jsonl.gz>] [--base <model folder>] [--out results.json]
                                [--threads N] [--limit N] [--max_steps N] [--max_length N] [--work_dir DIR]

The counterpart of `reward_hh.py`, with the same data, split (`train_test_split(test_size=0.2, seed=0)` over the
rows in file order: 1,849 training / 463 held-out pairs), thread rule and LoRA (r16, alpha 32, dropout 0.05, all
linear layers; the reference is the base, i.e. the policy with its adapter disabled). Both trainers get their
settings from the one mapping `SETTINGS`: learning rate 5e-4 (the rate alignkit's demo DPO uses for LoRA on a tiny
model; DPO's default 1e-6 is set for full fine-tuning), beta 0.1, 1 epoch,
batch 8, max_length 512, seed 0, no gradient checkpointing, and `truncation_mode="keep_end"`: a sequence longer
than max_length keeps its end (the latest turns and the answer). With TRL's default `keep_start`, every pair whose
prompt alone fills max_length is dropped (293 of the 1,849 training pairs here, 78 of the 463 held out) and long
prompts leave their answers a few tokens.

Score: implicit-reward accuracy on every held-out pair — how often beta * (log p_policy - log p_reference) of the
chosen answer is above the rejected one's — for both models on the held-out pairs as alignkit's run tokenised them
(DPOTrainer's own `_prepare_dataset`), batched and truncated by DPOTrainer's collator, as in training.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reward_hh import (  # noqa: E402
    configure_threads,
    finish,
    parser,
    run_alignkit,
    settings_for,
    split_rows,
    timed,
    train_runtime,
    trl_configs,
)

# The one source of both trainers' settings: DPOConfig fields, then ModelConfig's LoRA fields.
SETTINGS = {
    "learning_rate": 5e-4,
    "beta": 0.1,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "max_length": 512,
    "truncation_mode": "keep_end",
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
    "lora_task_type": "CAUSAL_LM",
}


def run_trl(base: Path, train, out: Path, settings: dict):
    """Plain TRL: DPOTrainer from the model's path, with its own tokenizer and defaults beyond `settings`."""
    from trl import DPOConfig, DPOTrainer

    config, peft_config = trl_configs(settings, DPOConfig, out)
    trainer = DPOTrainer(model=str(base), args=config, train_dataset=train, peft_config=peft_config)
    trainer.train()
    return trainer


def implicit_rewards(model, dataset, collator, beta: float, batch_size: int):
    """beta * (log p_policy - log p_reference) of each pair's chosen and rejected answer; the reference is the
    policy with its adapter disabled, as in training."""
    import torch
    from trl.trainer.utils import selective_log_softmax

    def answer_logps(batch):
        ids = batch["input_ids"].to(model.device)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(model.device), use_cache=False).logits
        per_token = selective_log_softmax(logits[:, :-1].float(), ids[:, 1:])
        return (per_token * batch["completion_mask"][:, 1:].to(model.device)).sum(-1).cpu()

    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collator(rows)  # chosen sequences first, then the rejected ones
            policy = answer_logps(batch)
            with model.disable_adapter():
                reference = answer_logps(batch)
            rewards = beta * (policy - reference)
            chosen.append(rewards[: len(rows)])
            rejected.append(rewards[len(rows) :])
    return torch.cat(chosen), torch.cat(rejected)


def main(argv: list[str] | None = None) -> dict:
    opts = parser(__doc__.splitlines()[0]).parse_args(argv)
    data_file, base = Path(opts.data), Path(opts.base)
    if not data_file.is_file() or not base.is_dir():
        sys.exit(f"skipped: no data file at {data_file} or no model folder at {base}")
    threads = configure_threads(opts.threads)
    settings = settings_for(SETTINGS, opts)
    work = Path(opts.work_dir) if opts.work_dir else Path(tempfile.mkdtemp(prefix="dpo_hh_"))
    start = time.perf_counter()
    try:
        split = split_rows(data_file, opts.limit, work / "data")
        print(f"split: {len(split['train'])} training / {len(split['test'])} held-out pairs; {threads} thread(s)", flush=True)
        ours, ours_s = timed(run_alignkit, "dpo", base, work / "data", work / "alignkit", settings)
        theirs, theirs_s = timed(run_trl, base, split["train"], work / "trl", settings)

        # Every held-out pair, tokenised by DPOTrainer in alignkit's run, batched and truncated by its collator.
        heldout, collator = ours.eval_dataset, ours.data_collator
        score_start = time.perf_counter()
        rewards = {name: implicit_rewards(t.model, heldout, collator, settings["beta"], settings["per_device_eval_batch_size"])
                   for name, t in (("alignkit", ours), ("trl", theirs))}
        score_s = round(time.perf_counter() - score_start, 1)
    finally:
        if not opts.work_dir:
            import shutil

            shutil.rmtree(work, ignore_errors=True)

    results = {"benchmark": "dpo_hh", "heldout_n": len(heldout), "heldout_pairs_in_split": len(split["test"]),
               "train_pairs_in_split": len(split["train"])}
    for name, trainer in (("alignkit", ours), ("trl", theirs)):
        chosen, rejected = rewards[name]
        results[f"{name}_accuracy"] = round((chosen > rejected).float().mean().item(), 4)
        results[f"{name}_margin"] = round((chosen - rejected).mean().item(), 4)
        results[f"{name}_chosen_reward"] = round(chosen.mean().item(), 4)
        results[f"{name}_rejected_reward"] = round(rejected.mean().item(), 4)
        results[f"{name}_train_pairs"] = len(trainer.train_dataset)
        results[f"{name}_train_pairs_dropped"] = len(split["train"]) - len(trainer.train_dataset)
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
