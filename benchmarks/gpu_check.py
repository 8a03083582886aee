"""GPU check: real architectures with random weights, a few training steps per stage, memory and speed.

    python benchmarks/gpu_check.py [--sizes 0.5b,7b] [--steps 6] [--presets ...] [--out results.json]
    python benchmarks/gpu_check.py --sizes tiny --steps 2 --presets single_gpu   # the CPU smoke run of the tests
    python benchmarks/gpu_check.py --sizes 0.5b --presets_only                   # only the preset launches

On the GPU machine (no package index), install the wheels that travel in .whl/ first; DeepSpeed and its
dependencies are in .whl/deepspeed/ and only the two ZeRO presets need them:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/deepspeed/*.whl || echo "DeepSpeed wheels not installed: the ZeRO presets will report it"
    export PYTHONPATH=/tmp/site:$PWD && python3 benchmarks/gpu_check.py --out gpu_check.json

Builds each model from its published config (no download), saves it like a Hub folder, and runs through
alignkit's recipes: QLoRA (4-bit NF4 base, LoRA on all linear layers, activation checkpointing) and LoRA in bf16
on packed 1024-token blocks, then a few LoRA PPO updates with a rule-based reward. Prints peak GPU memory,
tokens per second and model FLOPs utilisation (6 * parameters * tokens / time / peak bf16 FLOP/s), and beside
each peak the memory alignkit estimates for it (`alignkit.memory`, printed before training starts).

Then the Accelerate presets that need a GPU (`--presets`, on the first size): each runs a few LoRA steps under
`accelerate launch --config_file recipes/accelerate/<preset>.yaml --num_processes 1`, saves the adapter, and this
script reloads it by path and checks that it trained. Under ZeRO-3 it also runs one PPO update (generation with
gathered ZeRO-3 parameters). With GPU_CHECK_LOGS=<dir>, a failed launch's whole log is written there (the error
message keeps only its tail, which torchelastic's summary fills).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
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
    # ~25M parameters: weight-dominated on CPU (memory_estimate.py's second size)
    "30m": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, vocab_size=1024, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
REPO = Path(__file__).resolve().parents[1]
GPU_PRESETS = "single_gpu,deepspeed_zero2,deepspeed_zero3,fsdp2"
# What Accelerate's state must say under each preset, or the preset silently ran as something else.
PRESET_TYPES = {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED",
                "deepspeed_zero3": "DEEPSPEED", "fsdp2": "FSDP"}


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
    from alignkit import memory
    from alignkit.config import STAGE_ARGS, parse_args

    args = ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out),
            "--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--lora_target_modules", "all-linear",
            "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--max_length", str(max_length),
            "--learning_rate", "1e-4", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--eval_split_size", "0", "--disable_tqdm", "true", "--activation_checkpointing", "true"]
    if quantized:
        args += ["--load_in_4bit", "true", "--dtype", "bfloat16"]
    parsed = parse_args(STAGE_ARGS["pretrain"], args)
    estimate = memory.estimate("pretrain", parsed[2], parsed[1])
    trainer = recipe("pretrain").main(*parsed)
    logs = [h for h in trainer.state.log_history if "num_tokens" in h]
    return trainer, logs[-1]["num_tokens"] if logs else steps * 4 * max_length, estimate


def ppo_updates(base: Path, prompts: Path, out: Path, updates: int):
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import ModelConfig

    from alignkit import memory
    from alignkit.ppo import PPOConfig, PPOTrainer, load_ppo_models

    tokenizer = AutoTokenizer.from_pretrained(base)
    from alignkit.models import DEFAULT_CHAT_TEMPLATE

    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE.read_text()
    cuda = torch.cuda.is_available()
    args = PPOConfig(output_dir=str(out), num_updates=updates, per_device_train_batch_size=16, num_mini_batches=1,
                     num_ppo_epochs=2, max_new_tokens=64, max_prompt_length=48, learning_rate=1e-4, save_strategy="no",
                     report_to="none", bf16=cuda, use_cpu=not cuda, disable_tqdm=True)
    dtype = "bfloat16" if cuda else "float32"
    model_args = ModelConfig(model_name_or_path=str(base), use_peft=True, lora_r=16, lora_alpha=32,
                             lora_target_modules=["all-linear"], dtype=dtype)
    estimate = memory.estimate("ppo", model_args, args)
    models = load_ppo_models(str(base), None, use_peft=True, dtype=dtype,
                             peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))

    def reward_fn(prompts, responses):  # rewards short answers that end politely; only the timing matters here
        return torch.tensor([float("!" in r) - len(r) / 200 for r in responses])

    trainer = PPOTrainer(args, models, tokenizer, load_dataset("json", data_files=str(prompts))["train"], reward_fn=reward_fn)
    trainer.train()
    return trainer, estimate


def gib(estimate) -> float:
    return round(estimate.total / 2**30, 2)


def worker(opts) -> None:
    """Inside `accelerate launch`: train (or run PPO) under the preset, save, and record what Accelerate ran."""
    import torch

    out = Path(opts.worker)
    if opts.worker_stage == "ppo":
        (trainer, estimate), seconds, peak = measure(lambda: ppo_updates(Path(opts.worker_base), Path(opts.worker_data), out, 1))
        trainer.save_model(str(out))
    else:
        (trainer, _, estimate), seconds, peak = measure(
            lambda: train_blocks(Path(opts.worker_base), Path(opts.worker_data), out, opts.steps, False, opts.max_length))
    state = trainer.accelerator.state
    plugin = getattr(state, "deepspeed_plugin", None)
    record = {"distributed_type": state.distributed_type.value, "num_processes": state.num_processes,
              "zero_stage": plugin.zero_stage if plugin else None,
              "fsdp_version": getattr(getattr(state, "fsdp_plugin", None), "fsdp_version", None),
              "peak_gib": round(peak, 2), "estimate_gib": gib(estimate), "seconds": round(seconds, 1),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    if state.is_main_process:
        (out / "worker.json").write_text(json.dumps(record))


def run_preset(preset: str, base: Path, data: Path, out: Path, steps: int, max_length: int, stage: str = "sft") -> dict:
    """
    A few LoRA steps (or one PPO update) under `accelerate launch --config_file recipes/accelerate/<preset>.yaml
    --num_processes 1`; then the saved adapter is reloaded by path here and must hold trained (non-zero) LoRA B
    weights, and Accelerate must have run the preset's distributed type.
    """
    import torch
    from peft import AutoPeftModelForCausalLM

    from alignkit.runner import free_port

    if preset.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError("DeepSpeed is not installed (pip install deepspeed; on the GPU machine .whl/deepspeed/)")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "recipes" / "accelerate" / f"{preset}.yaml"), "--num_processes", "1",
               "--main_process_port", str(free_port()), __file__, "--worker", str(out), "--worker_stage", stage,
               "--worker_base", str(base), "--worker_data", str(data), "--steps", str(steps),
               "--max_length", str(max_length)]
    start = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    if proc.returncode != 0:
        if os.environ.get("GPU_CHECK_LOGS"):  # the whole launch log, for a failure the summary hides
            Path(os.environ["GPU_CHECK_LOGS"], f"launch-{int(time.time())}.log").write_text(proc.stdout + proc.stderr)
        raise RuntimeError(f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    record = json.loads((out / "worker.json").read_text())
    if record["distributed_type"] != PRESET_TYPES[preset]:
        raise RuntimeError(f"{preset} ran as {record['distributed_type']}, not {PRESET_TYPES[preset]}")
    model = AutoPeftModelForCausalLM.from_pretrained(out)  # the adapter saved under the preset, reloaded by path
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    if not lora_b or not any(p.abs().sum() > 0 for p in lora_b):
        raise RuntimeError(f"{preset}: the reloaded adapter has no trained LoRA weights")
    if not all(torch.isfinite(p).all() for p in lora_b):
        raise RuntimeError(f"{preset}: the reloaded adapter holds NaN/inf")
    return {**record, "launch_seconds": round(time.time() - start, 1), "adapter_reloaded": True}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5b,7b")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ppo_updates", type=int, default=3)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--presets", default=None,
                        help=f"comma-separated recipes/accelerate presets to launch on the first size "
                             f"(default on a GPU: {GPU_PRESETS}; on CPU: none); 'none' for none")
    parser.add_argument("--presets_only", action="store_true", help="build the first size and launch the presets only")
    parser.add_argument("--out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # set by run_preset inside `accelerate launch`
    parser.add_argument("--worker_stage", default="sft", help=argparse.SUPPRESS)
    parser.add_argument("--worker_base", help=argparse.SUPPRESS)
    parser.add_argument("--worker_data", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        return worker(opts)

    import torch

    from alignkit.demo.world import make_world, write_world

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    presets = opts.presets if opts.presets is not None else (GPU_PRESETS if torch.cuda.is_available() else "none")
    presets = [] if presets == "none" else presets.split(",")
    print(f"device: {gpu}; torch {torch.__version__}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    world = make_world(0)
    data = write_world(world, root / "data", n_pretrain_docs=2000)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": ex["prompt"]}) + "\n" for ex in world.preference_examples()[:256]))
    rows = []
    for index, size in enumerate(opts.sizes.split(",")[:1] if opts.presets_only else opts.sizes.split(",")):
        (base, n_params), seconds, _ = measure(lambda: build(size, root, world))
        print(f"{size}: {n_params / 1e6:.0f}M parameters, built and saved in {seconds:.0f} s", flush=True)
        runs = [("qlora_4bit", lambda: train_blocks(base, data["pretrain"], root / f"{size}-q", opts.steps, True, opts.max_length))]
        if opts.presets_only:
            runs = []
        elif size != "7b" or not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory > 60 * 2**30:
            runs.append(("lora_bf16", lambda: train_blocks(base, data["pretrain"], root / f"{size}-l", opts.steps, False, opts.max_length)))
        for mode, run in runs:
            try:
                (trainer, tokens, estimate), seconds, peak = measure(run)
            except Exception as e:  # report and go on: one failing mode should not hide the others
                rows.append({"size": size, "mode": mode, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(f"  {mode}: FAILED {rows[-1]['error']}", flush=True)
                continue
            runtime = trainer.state.log_history[-1].get("train_runtime", seconds)
            tps = tokens / runtime
            mfu = 6 * n_params * tps / peak_flops if peak_flops else None
            rows.append({"size": size, "mode": mode, "params": n_params, "peak_gib": round(peak, 2),
                         "estimate_gib": gib(estimate), "tokens_per_s": round(tps),
                         "mfu": round(mfu, 3) if mfu else None, "steps": opts.steps})
            print(f"  {mode:<11} peak {peak:6.2f} GiB (estimate {gib(estimate):6.2f} GiB)  {tps:9.0f} tokens/s  "
                  f"MFU {mfu if mfu is None else round(mfu, 3)}", flush=True)
            del trainer
        if size != "7b" and opts.ppo_updates and not opts.presets_only:
            try:
                (trainer, estimate), seconds, peak = measure(
                    lambda: ppo_updates(base, prompts, root / f"{size}-ppo", opts.ppo_updates))
                per_update = seconds / opts.ppo_updates
                rows.append({"size": size, "mode": "ppo_lora", "params": n_params, "peak_gib": round(peak, 2),
                             "estimate_gib": gib(estimate), "seconds_per_update": round(per_update, 2),
                             "updates": opts.ppo_updates, "kl": [round(h["kl"], 3) for h in trainer.log_history]})
                print(f"  ppo_lora    peak {peak:6.2f} GiB (estimate {gib(estimate):6.2f} GiB)  "
                      f"{per_update:.2f} s/update (incl. load)", flush=True)
            except Exception as e:
                rows.append({"size": size, "mode": "ppo_lora", "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(f"  ppo_lora: FAILED {rows[-1]['error']}", flush=True)
        if index == 0:  # the presets on the first (smallest) size: they check wiring, not speed
            launches = [(p, "sft") for p in presets] + [("deepspeed_zero3", "ppo")] * ("deepspeed_zero3" in presets)
            for preset, stage in launches:
                mode = f"preset_{preset}" + ("_ppo" if stage == "ppo" else "")
                out = root / f"{size}-{mode}"
                try:
                    source = prompts if stage == "ppo" else data["pretrain"]
                    record = run_preset(preset, base, source, out, min(opts.steps, 3), min(opts.max_length, 256), stage)
                    rows.append({"size": size, "mode": mode, **record})
                    print(f"  {mode:<28} ran as {record['distributed_type']}; adapter saved and reloaded; peak "
                          f"{record['peak_gib']:.2f} GiB (estimate {record['estimate_gib']:.2f} GiB, not sharded); "
                          f"{record['launch_seconds']:.0f} s", flush=True)
                except Exception as e:
                    rows.append({"size": size, "mode": mode, "error": f"{type(e).__name__}: {str(e)[-600:]}"})
                    print(f"  {mode}: FAILED {rows[-1]['error']}", flush=True)
        shutil.rmtree(base, ignore_errors=True)
    if opts.out:
        Path(opts.out).write_text(json.dumps({"device": gpu, "rows": rows}, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
