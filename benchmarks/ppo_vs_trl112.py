"""PPO: alignkit's trainer beside TRL 1.12.0's (the last TRL with a PPOTrainer), same models, same settings, one run.

    python benchmarks/ppo_vs_trl112.py [--out results.json] [--venv /tmp/alignkit-trl112-venv] [--threads 1]

TRL 1.12.0 lives in a throw-away virtualenv (created on the first run, reused after): the CPU torch wheel this
machine holds, and trl==1.12.0 with the transformers/peft/accelerate/datasets versions of alignkit's own venv.
Each side trains in its own subprocess (`--worker alignkit|trl`, this file run by that venv's Python), so both are
measured the same way: seconds per PPO update (median, the first update left out as warm-up; wall time, which the
bars use, and the process's CPU time, which other jobs on a shared machine disturb far less), peak RSS of the
process, real optimiser steps per update (counted with a step hook on the torch optimiser), and the score and KL
of every update.

Sizes: `tiny` (Llama, hidden 64, 2 layers) and `large` (hidden 512, 8 layers, vocab 16384: 42M parameters, where
weights dominate memory). Models are built once by this process: a tokenizer trained on the demo world's text (pad
!= EOS), an "SFT" policy (random init + a few dozen causal-LM steps on the world's answers), and a reward model (a
SEQ_CLS LoRA adapter on the SFT folder with a random score head, and the same adapter merged into a full
classifier; TRL's value model starts from that classifier, as alignkit's does). Prompts: the world's questions as
plain text ("User: ...\nAssistant:"). Rows:
  tiny  full              alignkit full mode vs TRL (policy, ref, value, reward: four full models)
  large full              the same at 42M parameters
  large lora              alignkit LoRA mode (one base: policy adapter, ref = adapters off, value and reward
                          adapters) vs TRL's four full models
  large lora_vs_trl_peft  alignkit LoRA mode vs TRL with `peft_config` (LoRA policy, ref = adapter off; value and
                          reward stay full models: three copies of the weights)

Batch semantics bridged (see the two PPOConfig docstrings): a rollout batch of B prompts split into M minibatches
with gradient_accumulation_steps=1 is, in alignkit, per_device_train_batch_size=B/M, num_mini_batches=M, and in
TRL 1.12, per_device_train_batch_size=B, num_mini_batches=M (its rollout batch is per_device * grad_accum and a
minibatch is that / M; with grad_accum > 1 its num_mini_batches has no effect, so it is kept at 1 here). Both then
make num_ppo_epochs * M optimiser steps per update on minibatches of B/M sequences. Both generate the whole rollout
batch in one call (alignkit's default; TRL's local_rollout_forward_batch_size keeps its default of 64 >= B, so TRL
also runs its rollout forwards on the whole batch, where alignkit uses micro-batches of B/M). TRL 1.12 never
clips gradients, so alignkit runs with max_grad_norm=0 (no clipping) too. Responses are a fixed `response_length`
tokens on both sides (stop_token null, and no EOS in the SFT model's generation config), so both do the same work
every update; --stop-at-eos ends them at EOS instead. Each trainer keeps its own optimiser implementation (the
table says which) and its own process settings: on CPU alignkit's trainer keeps freed memory for reuse
(`PPOConfig.keep_freed_cpu_memory`); --trl-same-allocator gives TRL's process the same glibc malloc settings, to see
how much of the difference that makes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

TRL_VERSION = "1.12.0"
PINNED = ("transformers", "peft", "accelerate", "datasets")  # the same versions as alignkit's venv

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=256, num_attention_heads=4, vocab_size=None,
                 sft_steps=40, sft_lr=3e-3),
    "large": dict(hidden_size=512, num_hidden_layers=8, intermediate_size=1408, num_attention_heads=8,
                  vocab_size=16384, sft_steps=16, sft_lr=1e-3),
}
# The same PPO settings for both sides (B = rollout_batch prompts, M = num_mini_batches).
SETTINGS = dict(rollout_batch=8, num_mini_batches=2, num_ppo_epochs=2, response_length=24, temperature=0.7,
                kl_coef=0.05, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, seed=0,
                stop_at_eos=False)
LEARNING_RATE = {"full": 3e-5, "lora": 3e-4}
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


# --- measuring (both workers) ----------------------------------------------------------------------------------------


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """
    This process's peak resident memory. Linux's VmHWM where there is one: `getrusage`'s ru_maxrss survives exec,
    so a worker started by a parent holding 1.4 GB would report at least the parent's 1.4 GB.
    """
    return _proc_status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


class Recorder:
    """Time stamps, optimiser-step counts and stats at the end of every update."""

    def __init__(self):
        self.start = time.perf_counter()
        self.ends: list[float] = []
        # CPU seconds of this process too: on a shared machine other jobs stretch wall time, hardly CPU time.
        self.cpu_start = time.process_time()
        self.cpu_ends: list[float] = []
        self.steps_at_end: list[int] = []
        self.gc_at_end: list[float] = []
        self.steps = 0
        self.history: list[dict] = []
        # Time inside Python's garbage collector (automatic and explicit gc.collect() calls) during training.
        self.gc_seconds, self._gc_start = 0.0, None
        gc.callbacks.append(self._gc)

    def _gc(self, phase, info):
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start is not None:
            self.gc_seconds += time.perf_counter() - self._gc_start
            self._gc_start = None

    def hook(self, optimizer) -> None:
        # The torch optimiser inside Accelerate's wrapper, which calls its step() only when gradients sync.
        inner = getattr(optimizer, "optimizer", optimizer)

        def count(*_):
            self.steps += 1

        inner.register_step_post_hook(count)

    def end_update(self, stats: dict) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.steps_at_end.append(self.steps)
        self.gc_at_end.append(self.gc_seconds)
        self.history.append(stats)

    def result(self, **extra) -> dict:
        times = [b - a for a, b in zip([self.start] + self.ends, self.ends)]
        cpu_times = [b - a for a, b in zip([self.cpu_start] + self.cpu_ends, self.cpu_ends)]
        steps = [b - a for a, b in zip([0] + self.steps_at_end, self.steps_at_end)]
        gc_seconds = (self.gc_at_end[-1] - self.gc_at_end[0]) / (len(times) - 1)  # in the measured updates
        return {
            "seconds_per_update": statistics.median(times[1:]),
            "update_seconds": [round(t, 3) for t in times],
            "cpu_seconds_per_update": statistics.median(cpu_times[1:]),
            "optimizer_steps_per_update": steps,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "gc_seconds_per_update": round(gc_seconds, 4),
            **{k: [round(h[k], 4) if h.get(k) is not None else None for h in self.history]
               for k in ("score", "kl", "reward", "response_length")},
            **extra,
        }


def _lora_config(task_type: str):
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, **LORA)


def _trainable(params) -> int:
    return sum(p.numel() for p in params if p.requires_grad)


def _optimizer_name(optimizer) -> str:
    inner = getattr(optimizer, "optimizer", optimizer)
    return type(inner).__name__ + (" (fused)" if inner.defaults.get("fused") else "")


def worker_alignkit(spec: dict) -> dict:
    import torch
    from transformers import AutoTokenizer

    from alignkit.ppo import PPOConfig, PPOTrainer, load_ppo_models

    s, lora = spec["settings"], spec["mode"] == "lora"
    tokenizer = AutoTokenizer.from_pretrained(spec["sft"])
    models = load_ppo_models(
        spec["sft"],
        spec["reward_lora"] if lora else spec["reward_full"],
        use_peft=lora,
        peft_config=_lora_config("CAUSAL_LM") if lora else None,
        dtype=torch.float32,
    )
    args = PPOConfig(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=s["rollout_batch"] // s["num_mini_batches"],
        num_updates=s["num_updates"],
        max_new_tokens=s["response_length"],
        max_grad_norm=0.0,  # TRL 1.12's PPO never clips
        activation_checkpointing=False,
        **shared_args(s),
    )
    trainer = PPOTrainer(args, models, tokenizer, [{"prompt": p} for p in spec["prompts"]])
    rss_after_init = current_rss_mb()  # weights loaded from safetensors are memory-mapped: they count once touched
    recorder = Recorder()
    recorder.hook(trainer.optimizer)
    log = trainer._log  # called once at the end of every update, with that update's stats

    def logged(stats, progress):
        log(stats, progress)
        recorder.end_update(trainer.log_history[-1])

    trainer._log = logged
    recorder.start, recorder.cpu_start, recorder.gc_seconds = time.perf_counter(), time.process_time(), 0.0
    trainer.train()
    if trainer.optimizer_steps != recorder.steps:
        raise RuntimeError(f"alignkit counted {trainer.optimizer_steps} optimiser steps, the hook {recorder.steps}")
    return recorder.result(
        rss_after_init_mb=rss_after_init,
        trainable_parameters=_trainable(trainer.policy_params) + _trainable(trainer.value_params),
        optimizer=_optimizer_name(trainer.optimizer),
    )


def shared_args(s: dict) -> dict:
    """The settings both trainers spell the same way, so the two sides cannot drift apart."""
    same = ("num_mini_batches", "num_ppo_epochs", "temperature", "kl_coef", "cliprange", "cliprange_value", "vf_coef",
            "gamma", "lam", "learning_rate", "seed")
    # gradient_accumulation_steps=1: with more, TRL 1.12 ignores num_mini_batches.
    return {k: s[k] for k in same} | dict(
        gradient_accumulation_steps=1, stop_token="eos" if s["stop_at_eos"] else None, lr_scheduler_type="constant",
        bf16=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
    )


def worker_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    s, peft = spec["settings"], spec["mode"] == "lora"
    tokenizer = AutoTokenizer.from_pretrained(spec["sft"], padding_side="left")  # queries are left-padded
    load = dict(dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(spec["sft"], **load)
    ref = None if peft else AutoModelForCausalLM.from_pretrained(spec["sft"], **load)  # peft: ref = adapter off
    value = AutoModelForSequenceClassification.from_pretrained(spec["reward_full"], num_labels=1, **load)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_full"], num_labels=1, **load)
    ids = [tokenizer(p)["input_ids"] for p in spec["prompts"]]  # as alignkit tokenises a text prompt
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=s["rollout_batch"],  # TRL 1.12: rollout batch = per_device * grad_accum
        total_episodes=s["num_updates"] * s["rollout_batch"],
        response_length=s["response_length"],
        gradient_checkpointing=False,
        logging_steps=1,
        num_sample_generations=0,
        **shared_args(s),
    )
    recorder = Recorder()
    latest: dict = {}

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            latest.update(logs or {})

        def on_step_end(self, args, state, control, **kwargs):  # after each update's optimisation and log
            recorder.end_update({
                "score": latest.get("objective/scores"),
                "kl": latest.get("objective/kl"),
                "reward": latest.get("objective/rlhf_reward"),
                "num_eos_tokens": latest.get("val/num_eos_tokens"),
            })

    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(s["rollout_batch"])),  # only for sample generations, which are off
        callbacks=[Record()],
        peft_config=_lora_config("CAUSAL_LM") if peft else None,
    )
    rss_after_init = current_rss_mb()
    recorder.hook(trainer.optimizer)
    recorder.start, recorder.cpu_start, recorder.gc_seconds = time.perf_counter(), time.process_time(), 0.0
    trainer.train()
    return recorder.result(
        rss_after_init_mb=rss_after_init,
        num_eos_tokens=[h.get("num_eos_tokens") for h in recorder.history],
        trainable_parameters=_trainable(trainer.model.parameters()),
        optimizer=_optimizer_name(trainer.optimizer),
    )


def run_worker(side: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    result = (worker_alignkit if side == "alignkit" else worker_trl)(spec)
    Path(spec["result"]).write_text(json.dumps(result))


# --- the TRL 1.12 virtualenv ----------------------------------------------------------------------------------------


def pins() -> dict[str, str]:
    from importlib.metadata import version

    return {"torch": version("torch"), "trl": TRL_VERSION, **{p: version(p) for p in PINNED}}


def ensure_venv(path: Path, wanted: dict[str, str]) -> tuple[Path, float, bool]:
    """A venv at `path` with exactly `wanted`; created (or completed) if needed. Returns (python, seconds, reused)."""
    start = time.time()
    python, marker = path / "bin" / "python", path / ".alignkit-bench.json"
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
        return python, time.time() - start, True
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]

    def install(*args):
        done = subprocess.run(pip + list(args), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")

    # torch first, pinned to alignkit's exact build (e.g. 2.13.0+cpu, which only the wheel on disk provides), then
    # held there by a constraint so nothing below can swap in another (CUDA) build.
    constraints = path / "torch-constraint.txt"
    constraints.write_text(f"torch=={wanted['torch']}\n")
    install(f"torch=={wanted['torch']}")
    install("-c", str(constraints), *[f"{k}=={v}" for k, v in wanted.items() if k != "torch"])
    check = "import torch, trl; print(torch.__version__, torch.version.cuda, trl.__version__)"
    got = subprocess.run([str(python), "-c", check], check=True, capture_output=True, text=True).stdout.split()
    import torch

    if got != [torch.__version__, str(torch.version.cuda), TRL_VERSION]:
        raise RuntimeError(f"{path}: has torch {got[0]} (CUDA {got[1]}) and trl {got[2]}; wanted torch "
                           f"{torch.__version__} (CUDA {torch.version.cuda}) and trl {TRL_VERSION}")
    marker.write_text(json.dumps(wanted))
    return python, time.time() - start, False


# --- the shared models (built once, in this process) -----------------------------------------------------------------


def _chat(question: str) -> str:
    return f"User: {question}\nAssistant:"


def build_models(root: Path, size: str, world) -> dict:
    """Tokenizer + SFT policy + reward (LoRA adapter and merged full model) for `size`, under `root/size`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    from alignkit.demo.base import make_base

    folder = root / size
    paths = {"sft": str(folder / "sft"), "reward_lora": str(folder / "rm_lora"), "reward_full": str(folder / "rm_full")}
    if (folder / "done").exists():
        return paths
    spec = SIZES[size]
    tokenizer_dir = root / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        make_base(world, tokenizer_dir)  # a world-trained BPE tokenizer (pad <pad> != eos </s>) and a tiny config
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=spec["vocab_size"] or len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_attention_heads"],
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    # No EOS in the generation config: with `stop_token: null` both trainers then sample exactly `response_length`
    # tokens every update (the same work on both sides); with --stop-at-eos both pass the EOS id explicitly.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # A few causal-LM steps on the world's Q&A (the tiny model picks up their shape and EOS; the large one barely).
    texts = [_chat(ex["messages"][0]["content"]) + " " + ex["messages"][1]["content"] + tokenizer.eos_token
             for ex in world.sft_examples()]
    rows = [tokenizer(t)["input_ids"] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["sft_lr"])
    for _ in range(spec["sft_steps"]):
        batch = [rows[i] for i in torch.randint(len(rows), (16,)).tolist()]
        width = max(map(len, batch))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in batch])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"  {size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, SFT loss {loss.item():.2f}")
    model.save_pretrained(paths["sft"])
    tokenizer.save_pretrained(paths["sft"])

    # Reward: a SEQ_CLS LoRA adapter on the SFT folder (what alignkit's LoRA mode shares a base with) with a random
    # score head, and the same model merged into a full classifier (what full mode and TRL load).
    base = AutoModelForSequenceClassification.from_pretrained(paths["sft"], num_labels=1)
    rm = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                         modules_to_save=["score"]))
    torch.manual_seed(1)
    for name, p in rm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
        elif "modules_to_save" in name:
            torch.nn.init.normal_(p, std=1 / spec["hidden_size"] ** 0.5)  # scores of order 1
    rm.save_pretrained(paths["reward_lora"])
    tokenizer.save_pretrained(paths["reward_lora"])
    probe = tokenizer([texts[0]], return_tensors="pt")
    with torch.no_grad():
        expected = rm(**probe).logits
        merged = rm.merge_and_unload()
        assert torch.allclose(merged(**probe).logits, expected, atol=1e-4)
    merged.save_pretrained(paths["reward_full"])
    tokenizer.save_pretrained(paths["reward_full"])
    (folder / "done").touch()
    return paths


# --- the run ---------------------------------------------------------------------------------------------------------


def run_side(python: str, side: str, spec: dict, work: Path, env: dict) -> dict:
    tag = f"{spec['size']}-{spec['mode']}-{side}"
    spec = {**spec, "output_dir": str(work / "out" / tag), "result": str(work / f"{tag}.json")}
    spec_file = work / f"{tag}.spec.json"
    spec_file.write_text(json.dumps(spec))
    log = work / f"{tag}.log"
    start = time.time()
    with open(log, "w") as f:
        command = [python, os.path.abspath(__file__), "--worker", side, str(spec_file)]
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(True)[-30:])
        sys.exit(f"{tag} failed (exit {done.returncode}); the end of {log}:\n{tail}")
    result = json.loads(Path(spec["result"]).read_text())
    result["process_seconds"] = round(time.time() - start, 1)
    steps = result["optimizer_steps_per_update"]
    print(f"  {tag:<24} {result['seconds_per_update']:7.3f} s/update  {result['peak_rss_mb']:8.0f} MB peak  "
          f"{steps[-1]} steps/update  ({result['process_seconds']} s in all)", flush=True)
    return result


def _fmt(values) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.3f}" for v in values) + "]"


def report(rows: list[dict], runs: dict[str, dict], settings: dict, threads: int) -> dict[str, float]:
    """Print the table, the trajectories and the bars; return the bars."""
    trl_kind = {"full": "four full models", "lora": "four full models",
                "lora_vs_trl_peft": "peft_config: LoRA policy, ref = adapter off, full value + reward"}
    print(f"\nPPO, alignkit vs TRL {TRL_VERSION}: rollout batch {settings['rollout_batch']}, "
          f"{settings['num_mini_batches']} minibatches, {settings['num_ppo_epochs']} PPO epochs, response "
          f"{'<= ' if settings['stop_at_eos'] else ''}{settings['response_length']} tokens, temperature "
          f"{settings['temperature']}, kl_coef {settings['kl_coef']}, {settings['num_updates']} updates (median of the "
          f"last {settings['num_updates'] - 1}), gradient_accumulation_steps=1, OMP_NUM_THREADS={threads}")
    header = (f"{'size':<6}{'mode':<18}{'side':<9}{'s/update':>9}{'cpu s/upd':>10}{'gc s/upd':>9}{'peak MB':>9}{'steps/upd':>10}"
              f"{'trainable':>12}  optimizer")
    print(header + "\n" + "-" * len(header))
    for row in rows:
        for side in ("alignkit", "trl"):
            r = row[side]
            steps = "/".join(map(str, sorted(set(r["optimizer_steps_per_update"]))))
            print(f"{row['size'] if side == 'alignkit' else '':<6}{row['mode'] if side == 'alignkit' else '':<18}"
                  f"{side:<9}{r['seconds_per_update']:>9.3f}{r['cpu_seconds_per_update']:>10.3f}"
                  f"{r['gc_seconds_per_update']:>9.3f}{r['peak_rss_mb']:>9.0f}"
                  f"{steps:>10}{r['trainable_parameters']:>12,}  {r['optimizer']}")
        print(f"{'':<24}{'ratio':<9}{row['time_ratio']:>9.2f}{row['cpu_time_ratio']:>10.2f}{'':>9}"
              f"{row['memory_ratio']:>9.2f}   time ratio "
              f"{row['time_ratio_without_trl_gc']:.2f} without TRL's gc time; TRL: {trl_kind[row['mode']]}")
    print("\nscore (reward model) / KL to the reference (summed over the response), per update:")
    for name, r in runs.items():
        print(f"  {name:<20} score {_fmt(r['score'])}\n  {'':<20} kl    {_fmt(r['kl'])}")
    by = {(r["size"], r["mode"]): r for r in rows}
    largest = [size for size in SIZES if any(r["size"] == size for r in rows)][-1]
    bars = {}
    if ("tiny", "full") in by:
        bars["time tiny <= 0.6x"] = by["tiny", "full"]["time_ratio"]
    if largest != "tiny":
        bars[f"time {largest}, full vs full <= 0.9x"] = by[largest, "full"]["time_ratio"]
        bars[f"memory {largest}, alignkit LoRA vs TRL four-model <= 0.6x"] = by[largest, "lora"]["memory_ratio"]
    print("\nbars:")
    for name, value in bars.items():
        limit = float(name.rsplit("<=", 1)[1].strip().rstrip("x"))
        print(f"  {name:<55} {value:5.2f}  {'met' if value <= limit else 'MISSED'}")
    return bars


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "alignkit-trl112-venv"),
                        help="TRL 1.12.0's virtualenv (created if missing, reused if complete)")
    parser.add_argument("--workdir", help="models and logs (default: a temporary folder, removed at the end); "
                                          "models found there are reused")
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP threads for every process")
    parser.add_argument("--updates", type=int, default=6, help="PPO updates per run (the first is warm-up)")
    parser.add_argument("--sizes", default="tiny,large", help="comma-separated, from: " + ", ".join(SIZES))
    parser.add_argument("--stop-at-eos", action="store_true",
                        help="end responses at EOS (realistic, but then each side's timing depends on the lengths it "
                             "happened to sample); default: fixed-length responses, the same work on both sides")
    parser.add_argument("--no-trl-peft", action="store_true", help="skip TRL 1.12 with peft_config at the large size")
    parser.add_argument("--trl-same-allocator", action="store_true",
                        help="run TRL with the malloc settings alignkit's trainer applies on CPU (keep freed memory)")
    parser.add_argument("--worker", choices=("alignkit", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        return run_worker(opts.worker, opts.spec)
    if opts.updates < 2:
        parser.error("--updates must be >= 2 (the first update is warm-up)")

    wall = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    os.environ.update({k: env[k] for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")})
    trl_env = env
    if opts.trl_same_allocator:  # what alignkit's keep_freed_cpu_memory sets with mallopt, read by glibc at start
        trl_env = {**env, "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"}
    versions = pins()
    print(f"TRL {TRL_VERSION} venv at {opts.venv} ...", flush=True)
    trl_python, venv_seconds, reused = ensure_venv(Path(opts.venv), versions)
    listed = ", ".join(f"{k} {v}" for k, v in versions.items())
    print(f"  {'reused' if reused else 'set up'} in {venv_seconds:.1f} s: {listed}")

    import torch
    import transformers

    from alignkit.demo.world import make_world

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(opts.threads)
    work = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="ppo_vs_trl112_"))
    work.mkdir(parents=True, exist_ok=True)
    world = make_world(0)
    prompts = [_chat(ex["messages"][0]["content"]) for ex in world.sft_examples()]
    sizes = opts.sizes.split(",")
    print("models ...", flush=True)
    start = time.time()
    models = {size: build_models(work / "models", size, world) for size in sizes}
    build_seconds = time.time() - start
    print(f"  built in {build_seconds:.1f} s", flush=True)

    settings = {**SETTINGS, "num_updates": opts.updates, "stop_at_eos": opts.stop_at_eos}
    rows, runs = [], {}
    print(f"runs (OMP_NUM_THREADS={opts.threads}) ...", flush=True)
    for size in sizes:
        def spec(mode: str) -> dict:
            return {"size": size, "mode": mode, "prompts": prompts, "threads": opts.threads, **models[size],
                    "settings": {**settings, "learning_rate": LEARNING_RATE[mode]}}

        # Alternate the sides, so drift in the machine's load hits both.
        runs[f"{size} full trl"] = run_side(str(trl_python), "trl", spec("full"), work, trl_env)
        runs[f"{size} full alignkit"] = run_side(sys.executable, "alignkit", spec("full"), work, env)
        trl_full = runs[f"{size} full trl"]
        rows.append({"size": size, "mode": "full", "alignkit": runs[f"{size} full alignkit"], "trl": trl_full})
        if size != "tiny":
            runs[f"{size} lora alignkit"] = run_side(sys.executable, "alignkit", spec("lora"), work, env)
            rows.append({"size": size, "mode": "lora", "alignkit": runs[f"{size} lora alignkit"], "trl": trl_full})
            if not opts.no_trl_peft:
                runs[f"{size} peft trl"] = run_side(str(trl_python), "trl", spec("lora"), work, trl_env)
                rows.append({"size": size, "mode": "lora_vs_trl_peft", "alignkit": runs[f"{size} lora alignkit"],
                             "trl": runs[f"{size} peft trl"]})
    for row in rows:
        ours, theirs = row["alignkit"], row["trl"]
        row["time_ratio"] = ours["seconds_per_update"] / theirs["seconds_per_update"]
        row["cpu_time_ratio"] = ours["cpu_seconds_per_update"] / theirs["cpu_seconds_per_update"]
        row["memory_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
        # TRL 1.12 calls gc.collect() twice per update; what the ratio would be without any collector time.
        row["time_ratio_without_trl_gc"] = ours["seconds_per_update"] / (
            theirs["seconds_per_update"] - theirs["gc_seconds_per_update"])
    wall = time.time() - wall

    bars = report(rows, runs, settings, opts.threads)
    venv_note = f"venv {venv_seconds:.0f} s{', reused' if reused else ''}"
    print(f"\nwall time {wall:.0f} s ({venv_note}; models {build_seconds:.0f} s)")
    if opts.out:
        by = {(r["size"], r["mode"]): r for r in rows}
        largest = [size for size in SIZES if size in sizes][-1]
        result = {
            "rows": rows,
            "time_ratio": by[("tiny", "full")]["time_ratio"] if ("tiny", "full") in by else None,
            "memory_ratio": by[(largest, "lora")]["memory_ratio"] if (largest, "lora") in by else None,
            "bars": bars,
            "settings": settings,
            "learning_rate": LEARNING_RATE,
            "lora": LORA,
            "sizes": {size: SIZES[size] for size in sizes},
            "versions": versions,
            "threads": opts.threads,
            "trl_same_allocator": opts.trl_same_allocator,
            "venv_seconds": round(venv_seconds, 1),
            "venv_reused": reused,
            "build_seconds": round(build_seconds, 1),
            "wall_seconds": round(wall, 1),
        }
        Path(opts.out).write_text(json.dumps(result, indent=2))
        print(f"results: {opts.out}")
    if not opts.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
