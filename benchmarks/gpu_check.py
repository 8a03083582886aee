"""GPU check: real architectures with random weights, a few training steps per stage, memory and speed.

    python benchmarks/gpu_check.py [--sizes 0.5b,7b] [--steps 6] [--out results.json]
    python benchmarks/gpu_check.py --sizes tiny --steps 2     # the CPU smoke run the test suite does

Builds each model from its published config (no download), saves it like a Hub folder, and runs through
alignkit's recipes: QLoRA (4-bit NF4 base, LoRA on all linear layers, activation checkpointing) and LoRA in bf16
on packed 1024-token blocks, then a few LoRA PPO updates with a rule-based reward. Prints peak GPU memory,
tokens per second and model FLOPs utilisation (6 * parameters * tokens / time / peak bf16 FLOP/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when alignkit is not installed

# Published configs (Qwen2.5 0.5B and 7B), used only for their shapes; weights are random.
CONFIGS = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def recipe(stage: str):
    try:
        return __import__(f"alignkit.recipes.{stage}", fromlist=["main"])
    except ImportError:  # alignkit run from a checkout without `pip install`
        return __import__(f"recipes.{stage}", fromlist=["main"])


def build(size: str, root: Path, world) -> tuple[Path, int]:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from alignkit.demo.base import train_tokenizer, world_texts

    tokenizer = train_tokenizer(world_texts(world), vocab_size=1024)
    config = Qwen2Config(**CONFIGS[size], max_position_embeddings=4096, rope_theta=1e6,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    path = root / size
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    return path, n_params


def measure(fn):
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    result = fn()
    seconds = time.time() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return result, seconds, peak


def train_blocks(base: Path, data: Path, out: Path, steps: int, quantized: bool, max_length: int):
    from alignkit.config import STAGE_ARGS, parse_args

    args = ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out),
            "--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--lora_target_modules", "all-linear",
            "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--max_length", str(max_length),
            "--learning_rate", "1e-4", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--eval_split_size", "0", "--disable_tqdm", "true", "--activation_checkpointing", "true"]
    if quantized:
        args += ["--load_in_4bit", "true", "--dtype", "bfloat16"]
    trainer = recipe("pretrain").main(*parse_args(STAGE_ARGS["pretrain"], args))
    logs = [h for h in trainer.state.log_history if "num_tokens" in h]
    return trainer, logs[-1]["num_tokens"] if logs else steps * 4 * max_length


def ppo_updates(base: Path, prompts: Path, out: Path, updates: int):
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from alignkit.ppo import PPOConfig, PPOTrainer, load_ppo_models
    from datasets import load_dataset

    tokenizer = AutoTokenizer.from_pretrained(base)
    from alignkit.models import DEFAULT_CHAT_TEMPLATE

    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE.read_text()
    cuda = torch.cuda.is_available()
    args = PPOConfig(output_dir=str(out), num_updates=updates, per_device_train_batch_size=16, num_mini_batches=1,
                     num_ppo_epochs=2, max_new_tokens=64, learning_rate=1e-4, save_strategy="no", report_to="none",
                     bf16=cuda, use_cpu=not cuda, disable_tqdm=True)
    models = load_ppo_models(str(base), None, use_peft=True, dtype="bfloat16" if cuda else "float32",
                             peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))

    def reward_fn(prompts, responses):  # rewards short answers that end politely; only the timing matters here
        return torch.tensor([float("!" in r) - len(r) / 200 for r in responses])

    trainer = PPOTrainer(args, models, tokenizer, load_dataset("json", data_files=str(prompts))["train"], reward_fn=reward_fn)
    trainer.train()
    return trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5b,7b")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ppo_updates", type=int, default=3)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--out")
    opts = parser.parse_args()

    import torch

    from alignkit.demo.world import make_world, write_world

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    print(f"device: {gpu}; torch {torch.__version__}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    world = make_world(0)
    data = write_world(world, root / "data", n_pretrain_docs=2000)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": ex["prompt"]}) + "\n" for ex in world.preference_examples()[:256]))
    rows = []
    for size in opts.sizes.split(","):
        (base, n_params), seconds, _ = measure(lambda: build(size, root, world))
        print(f"{size}: {n_params / 1e6:.0f}M parameters, built and saved in {seconds:.0f} s", flush=True)
        runs = [("qlora_4bit", lambda: train_blocks(base, data["pretrain"], root / f"{size}-q", opts.steps, True, opts.max_length))]
        if size != "7b" or not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory > 60 * 2**30:
            runs.append(("lora_bf16", lambda: train_blocks(base, data["pretrain"], root / f"{size}-l", opts.steps, False, opts.max_length)))
        for mode, run in runs:
            try:
                (trainer, tokens), seconds, peak = measure(run)
            except Exception as e:  # report and go on: one failing mode should not hide the others
                rows.append({"size": size, "mode": mode, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(f"  {mode}: FAILED {rows[-1]['error']}", flush=True)
                continue
            runtime = trainer.state.log_history[-1].get("train_runtime", seconds)
            tps = tokens / runtime
            mfu = 6 * n_params * tps / peak_flops if peak_flops else None
            rows.append({"size": size, "mode": mode, "params": n_params, "peak_gib": round(peak, 2),
                         "tokens_per_s": round(tps), "mfu": round(mfu, 3) if mfu else None, "steps": opts.steps})
            print(f"  {mode:<11} peak {peak:6.2f} GiB  {tps:9.0f} tokens/s  MFU {mfu if mfu is None else round(mfu, 3)}  "
                  f"(estimate: not yet implemented)", flush=True)
            del trainer
        if size != "7b" and opts.ppo_updates:
            try:
                trainer, seconds, peak = measure(lambda: ppo_updates(base, prompts, root / f"{size}-ppo", opts.ppo_updates))
                per_update = seconds / opts.ppo_updates
                rows.append({"size": size, "mode": "ppo_lora", "params": n_params, "peak_gib": round(peak, 2),
                             "seconds_per_update": round(per_update, 2), "updates": opts.ppo_updates,
                             "kl": [round(h["kl"], 3) for h in trainer.log_history]})
                print(f"  ppo_lora    peak {peak:6.2f} GiB  {per_update:.2f} s/update (incl. load)", flush=True)
            except Exception as e:
                rows.append({"size": size, "mode": "ppo_lora", "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(f"  ppo_lora: FAILED {rows[-1]['error']}", flush=True)
        shutil.rmtree(base, ignore_errors=True)
    if opts.out:
        Path(opts.out).write_text(json.dumps({"device": gpu, "rows": rows}, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
