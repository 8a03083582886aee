"""alignkit.memory's estimate against the measured peak memory of real runs, side by side.

    python benchmarks/memory_estimate.py [--sizes tiny,30m] [--stages sft,pretrain_full,reward,dpo] [--steps 2]

Each run is a stage's recipe (`main()`, in-process) on a model built from `gpu_check.CONFIGS` with random weights
and data that fills `max_length`, so the estimate's worst case is what runs. Measured peak:
- on a GPU, `torch.cuda.max_memory_allocated()` over the run;
- on CPU, the peak of live tensor bytes from `torch.profiler` memory events over the whole `main()` (model load
  included): every CPU allocation and free the profiler records, summed in time order. That is the CPU analogue of
  `max_memory_allocated` — it excludes the Python heap, the stack's ~540 MB of imported code and allocator slack,
  which RSS would mix in.
Prints estimate, measurement and their ratio per size and stage; nothing is asserted here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# stage name here -> (recipe stage, extra args); `pretrain_full` is full fine-tuning on packed blocks: weight-dominated.
RUNS = {
    "sft": ("sft", ["--use_peft", "true", "--lora_target_modules", "all-linear"]),
    "pretrain_full": ("pretrain", []),
    "reward": ("reward", ["--use_peft", "true", "--lora_target_modules", "all-linear"]),
    "dpo": ("dpo", ["--use_peft", "true", "--lora_target_modules", "all-linear"]),
    "ppo": ("ppo", []),  # gpu_check.ppo_updates: LoRA policy and value on one base, a rule-based reward
}


def profiled_peak(fn):
    """(fn's result, peak bytes of live CPU tensors while it ran) from the profiler's memory events."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak


def measured_peak(fn):
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        return result, torch.cuda.max_memory_allocated()
    return profiled_peak(fn)


def write_data(root: Path, world, tokenizer, max_length: int) -> dict[str, Path]:
    """Data whose rows reach max_length: long completions (SFT), long prompts with short answers (pairs)."""
    def texts(n_tokens: int, count: int) -> list[str]:  # documents joined to exactly n_tokens tokens each
        out, words = [], []
        for doc in world.pretrain_documents(20 * count * max(1, n_tokens // 40)):
            for word in doc.split():
                words.append(word)
                if len(words) >= n_tokens // 2 and len(tokenizer(" ".join(words))["input_ids"]) >= n_tokens:
                    out.append(" ".join(words))
                    words = []
                    if len(out) == count:
                        return out
        return out

    long_texts = texts(max_length + 16, 64)  # truncated to max_length
    prompts = texts(max_length - 40, 64)  # leaves room for the template and a short answer: pairs are kept whole
    prefs = [p for p in world.preference_examples() if p["flaw"] != "verbose"]  # short answers: pairs fit whole
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    rows = {
        "sft": [{"prompt": p["prompt"], "completion": [{"role": "assistant", "content": t}]}
                for p, t in zip(prefs, long_texts)],
        "pretrain_full": [{"text": t} for t in long_texts],
        "reward": [{"prompt": user(t + " " + p["prompt"][0]["content"]), "chosen": p["chosen"], "rejected": p["rejected"]}
                   for p, t in zip(prefs, prompts)],
    }
    rows["dpo"] = rows["reward"]
    rows["ppo"] = [{"prompt": user(t)} for t in texts(64, 64)]  # longer than ppo_updates' max_prompt_length
    paths = {}
    for name, data in rows.items():
        path = root / "data" / name / "train.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
        paths[name] = path.parent
    return paths


def run(name: str, base: Path, data: Path, out: Path, steps: int, batch: int, max_length: int):
    """Estimate, then train `steps` steps of one stage; returns (estimate, measured peak bytes)."""
    from gpu_check import recipe

    from alignkit import memory
    from alignkit.config import STAGE_ARGS, parse_args

    stage, extra = RUNS[name]
    if stage == "ppo":
        from gpu_check import ppo_updates

        (_, estimate), peak = measured_peak(lambda: ppo_updates(base, data / "train.jsonl", out, steps))
        return estimate, peak
    args = ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out),
            "--max_steps", str(steps), "--per_device_train_batch_size", str(batch), "--max_length", str(max_length),
            "--eval_split_size", "0", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--activation_checkpointing", "false", "--logging_steps", "1", "--seed", "0", *extra]
    parsed = parse_args(STAGE_ARGS[stage], args)
    estimate = memory.estimate(stage, parsed[2], parsed[1])
    _, peak = measured_peak(lambda: recipe(stage).main(*parse_args(STAGE_ARGS[stage], args)))
    return estimate, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,30m")
    parser.add_argument("--stages", default=",".join(RUNS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--out")
    opts = parser.parse_args(argv)

    import torch
    from gpu_check import build
    from transformers import AutoTokenizer

    from alignkit.demo.world import make_world

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    root = Path(tempfile.mkdtemp(prefix="memory_estimate_"))
    world = make_world(0)
    rows = []
    print(f"{'size':<6} {'stage':<14} {'estimate':>10} {'measured':>10} {'ratio':>6}  parts of the estimate (MiB)")
    for size in opts.sizes.split(","):
        base, n_params = build(size, root, world)
        data = write_data(root / size, world, AutoTokenizer.from_pretrained(base), opts.max_length)
        for name in opts.stages.split(","):
            estimate, peak = run(name, base, data[name], root / size / name, opts.steps, opts.batch, opts.max_length)
            parts = {k: round(getattr(estimate, k) / 2**20, 1)
                     for k in ("weights", "adapters", "gradients", "optimizer", "activations")}
            rows.append({"size": size, "params": n_params, "stage": name, "estimate_mib": round(estimate.total / 2**20, 1),
                         "measured_mib": round(peak / 2**20, 1), "ratio": round(estimate.total / peak, 3), **parts})
            r = rows[-1]
            print(f"{size:<6} {name:<14} {r['estimate_mib']:>8.1f}Mi {r['measured_mib']:>8.1f}Mi {r['ratio']:>6.2f}  {parts}",
                  flush=True)
    if opts.out:
        Path(opts.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
