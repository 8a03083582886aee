"""alignkit's overhead over plain TRL: `alignkit <stage>` beside a plain TRL script, same model, data and settings.

    python benchmarks/overhead.py [--runs 5] [--stages sft,reward,dpo] [--steps 30] [--rows N] [--threads 1] [--out F.json]

Every run is a fresh subprocess, so start-up is real: `python -m alignkit <stage> --config alignkit.yaml` against
`python trl_<stage>.py --config trl.yaml`, a plain-TRL script written here the way TRL's own `trl/scripts/*.py` are
(TrlParser, `load_dataset(dataset_name)`, the trainer given the model's path, `get_peft_config`, train, save). Both
YAML files come from one settings mapping (`settings()`); alignkit's adds only `eval_split_size: 0`, since TRL's
scripts train on every row with evaluation off where alignkit would hold out 5% for a final evaluation. The model
is a tiny random-weight Llama (the demo's tokenizer, alignkit's chat template saved with it, so both sides use
it), built once in the work folder; the data are demo-world conversations (SFT `messages`) and preference pairs
(`prompt`/`chosen`/`rejected`); LoRA on all linear layers, fp32 on CPU, no checkpoints, no evaluation,
`logging_steps: 1`, tqdm off. Both sides train on the same rows in the same order (the losses match).

Runs come in pairs, one of each side, in rounds of one pair per stage after `--warmup` unrecorded rounds. In a
pair, one side starts and runs to the end of its first optimiser step alone, then stops; the other does the same;
then they take turns step by step (which of them goes first swapped every step) so that step k of both runs within
a few hundred milliseconds, under the same load from other jobs; then each finishes in turn. Which side starts
alternates by round. Each run has its own `HF_DATASETS_CACHE`, so neither reuses the other's Arrow files or
tokenisation.
A `sitecustomize.py` on each child's PYTHONPATH measures it without changing either program: as
`transformers.trainer` is imported it wraps `Trainer.__init__` to add a callback that stamps every `on_step_end`
and there waits for the parent's go (a pipe).
- startup: the parent's launch timestamp to the end of the first optimiser step;
- step: the median step, the first few left out: from its turn's go to its `on_step_end` (logging of the step
  before, the next batch, forward, backward, optimiser step and every callback);
- peak RSS: the child's `ru_maxrss` from `os.wait4` (the whole run, saving included);
- the same start-up and step in the child's CPU time (`*_cpu_*`), which other jobs on a shared machine disturb less;
- where start-up goes (`to_trainer_init_s`, `trainer_init_s`, `to_train_begin_s`, `first_step_s`, each also in CPU
  time), and `total_s` (launch to exit, less the time stopped while the other run stepped).
Each ratio is alignkit ÷ TRL: the median, over the alternated pairs, of the pair's ratio (`pair_ratios` holds them
all). `startup_ratio` pools the pairs of every stage. On a machine shared with other jobs one pair can be off by
20% either way, so `*_floor_ratio` adds the least-disturbed view: both sides train on the same batches in the same
order, so step k is the same work in every run; per side, the fastest run of each step, and the fastest start-up.

What each side does before step 1: TRL's script parses the YAML, loads the data set and hands the model's path to
the trainer, which loads model and tokenizer, adds LoRA and tokenises. alignkit also checks keys and data before
importing the stack (and loads the data again in the recipe), loads model and tokenizer itself, checks the
vocabulary and LoRA targets, tokenises reward pairs itself with TRL's own preparation (the trainer takes the ids as
they are) and cuts only the over-long ones from the left, and prints a memory estimate. After training — outside
both measurements, inside `total_s` — TRL's script saves the adapter; alignkit also writes all_results.json, the
trainer state, its resolved config, the run record and the model card, and for a reward model scores up to 2,000
pairs of the eval split (here the training pairs) for `reward_stats`.
Nothing is asserted here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STAGES = ("sft", "reward", "dpo")
SKIP_STEPS = 3  # step intervals left out of the steady per-step time (allocator and caches warming up)


def settings(stage: str, model: Path, data: Path, output_dir: Path, steps: int, cpu: bool) -> dict:
    """The one mapping both sides are configured from: TRL's own keys only."""
    common = {
        "model_name_or_path": str(model),
        "dataset_name": str(data),
        "output_dir": str(output_dir),
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "seed": 0,
        "max_length": 128,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "activation_checkpointing": False,  # TRL's default (on) under the name transformers 5 does not warn about
        "bf16": False,
        "use_cpu": cpu,
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_target_modules": ["all-linear"],
    }
    per_stage = {
        "sft": {"assistant_only_loss": True},  # alignkit turns it on for conversations; say so to both sides
        "reward": {"lora_task_type": "SEQ_CLS"},  # the score head trains in full (alignkit sets it anyway)
        "dpo": {"beta": 0.1},
    }
    return {**common, **per_stage[stage]}


ALIGNKIT_ONLY = {"eval_split_size": 0}  # TRL's scripts evaluate nothing unless eval_strategy is on

TRL_SCRIPT = '''"""Plain TRL {stage}: its trainer on the benchmark's config, as TRL's own example scripts do it."""

import trl
from datasets import load_dataset
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

Config, Trainer = getattr(trl, "{config}"), getattr(trl, "{trainer}")

if __name__ == "__main__":
    script_args, training_args, model_args = TrlParser((ScriptArguments, Config, ModelConfig)).parse_args_and_config()
    training_args.model_init_kwargs = dict(dtype=model_args.dtype, attn_implementation=model_args.attn_implementation)
    dataset = load_dataset(script_args.dataset_name)
    trainer = Trainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.end()
'''
TRAINERS = {"sft": ("SFTConfig", "SFTTrainer"), "reward": ("RewardConfig", "RewardTrainer"),
            "dpo": ("DPOConfig", "DPOTrainer")}

# Loaded by every child interpreter (on its PYTHONPATH); records times and writes them as JSON when it exits.
HOOK = '''"""benchmarks/overhead.py's probe: stamps a run's trainer set-up and optimiser steps without changing the run."""

import atexit
import functools
import importlib.machinery
import importlib.util
import json
import os
import sys
import time

_out = os.environ.get("OVERHEAD_TIMINGS")
marks = {"launch": float(os.environ.get("OVERHEAD_LAUNCH", "nan")), "interpreter": time.time()}
cpu_marks = {"interpreter": time.process_time()}


def _mark(name, again=True):
    if again or name not in marks:
        marks[name], cpu_marks[name] = time.time(), time.process_time()
steps = []  # wall time at the end of each optimiser step
resumed = []  # wall time each step's turn began (the end of the previous step when not taking turns)
cpu_steps = []  # this process's CPU time then (user + system, every thread): less disturbed by other jobs
_turns = os.environ.get("OVERHEAD_TURNS")  # "<go fd>,<done fd>": after each step, wait for the parent's go


def _take_turn():
    """Say a step is done and wait until the parent lets this process go on (it alternates two runs' steps)."""
    if _turns:
        go, done = map(int, _turns.split(","))
        os.write(done, b"s")
        os.read(go, 1)
    resumed.append(time.time())


def _vmhwm_kib():
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)


def _patch(module):
    from transformers.trainer_callback import TrainerCallback

    Trainer = module.Trainer
    original = Trainer.__init__

    class Stamp(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            _mark("train_begin")

        def on_step_end(self, args, state, control, **kwargs):
            steps.append(time.time())
            cpu_steps.append(time.process_time())
            _take_turn()

        def on_train_end(self, args, state, control, **kwargs):
            _mark("train_end")
            marks["vmhwm_train_end_kib"] = _vmhwm_kib()

    def __init__(self, *args, **kwargs):
        _mark("trainer_init_start", again=False)
        _mark("base_init_start", again=False)
        original(self, *args, **kwargs)
        _mark("trainer_init_end")
        if not any(isinstance(c, Stamp) for c in self.callback_handler.callbacks):
            self.add_callback(Stamp())

    def __init_subclass__(cls, **kwargs):
        # A trainer subclass (SFTTrainer, ...) loads its model and tokenises its data before Trainer.__init__.
        super(Trainer, cls).__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            @functools.wraps(init)
            def subclass_init(self, *args, **kwargs):
                _mark("trainer_init_start", again=False)
                return init(self, *args, **kwargs)

            cls.__init__ = subclass_init

    Trainer.__init__ = __init__
    Trainer.__init_subclass__ = classmethod(__init_subclass__)


class _Finder:
    """Patch `transformers.trainer` right after it is executed, whoever imports it first."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers.trainer":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _mark("transformers_trainer_imported")
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _write():
    _mark("exit")
    marks["vmhwm_exit_kib"] = _vmhwm_kib()
    with open(_out, "w") as f:
        json.dump({"marks": marks, "cpu_marks": cpu_marks, "steps": steps, "resumed": resumed, "cpu_steps": cpu_steps}, f)


if _out:
    sys.meta_path.insert(0, _Finder())
    atexit.register(_write)

# Keep any other sitecustomize the interpreter would have loaded.
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
'''


# ------------------------------------------------------------------------------------------------- the work folder
def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def build(work: Path, hidden: int, layers: int, rows: int) -> dict[str, Path]:
    """The tiny model (saved like a Hub folder, with the chat template), the data, the TRL scripts and the probe."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from alignkit.demo.base import make_base
    from alignkit.demo.world import make_world
    from alignkit.models import DEFAULT_CHAT_TEMPLATE

    world = make_world(0)
    model = make_base(world, work / "model", hidden_size=hidden, num_layers=layers)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).save_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)  # both sides get the same template from the model folder
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE.read_text(encoding="utf-8")
    tokenizer.save_pretrained(model)

    def take(examples, keys):
        return [{k: examples[i % len(examples)][k] for k in keys} for i in range(rows)]

    write_jsonl(work / "data" / "sft" / "train.jsonl", take(world.sft_examples(), ["messages"]))
    pairs = take(world.preference_examples(), ["prompt", "chosen", "rejected"])
    for stage in ("reward", "dpo"):
        write_jsonl(work / "data" / stage / "train.jsonl", pairs)
    for stage, (config, trainer) in TRAINERS.items():
        (work / f"trl_{stage}.py").write_text(TRL_SCRIPT.format(stage=stage, config=config, trainer=trainer))
    (work / "hook").mkdir(exist_ok=True)
    (work / "hook" / "sitecustomize.py").write_text(HOOK)
    return {"model": model, "data": work / "data"}


# ------------------------------------------------------------------------------------------------------- one pair
class Run:
    """One child process: `alignkit <stage>` or the plain-TRL script, stopping after each step until told to go on."""

    def __init__(self, side: str, stage: str, work: Path, paths: dict, steps: int, threads: int, cpu: bool, tag: str):
        self.side, self.stage, self.steps = side, stage, steps
        self.dir = work / "runs" / f"{stage}-{side}-{tag}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        config = settings(stage, paths["model"], paths["data"] / stage, self.dir / "output", steps, cpu)
        if side == "alignkit":
            config = {**config, **ALIGNKIT_ONLY}
            self.cmd = [sys.executable, "-m", "alignkit", stage, "--config", str(self.dir / "config.yaml")]
        else:
            self.cmd = [sys.executable, str(work / f"trl_{stage}.py"), "--config", str(self.dir / "config.yaml")]
        (self.dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.timings = self.dir / "timings.json"
        go_read, self.go = os.pipe()
        self.done, done_write = os.pipe()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(work / "hook")] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
            "OVERHEAD_TIMINGS": str(self.timings),
            "OVERHEAD_TURNS": f"{go_read},{done_write}",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(self.dir / "datasets_cache"),  # no run reuses another's Arrow files or tokenisation
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        with open(self.dir / "log.txt", "wb") as log:
            env["OVERHEAD_LAUNCH"] = repr(time.time())
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                         pass_fds=(go_read, done_write))
        os.close(go_read)
        os.close(done_write)  # so that a child that dies reads as the end of its pipe
        self.usage = None

    def step_done(self) -> None:
        """Wait until the child has finished its next optimiser step and stopped."""
        if os.read(self.done, 1) != b"s":
            self.wait()
            raise self.failure()

    def go_on(self) -> None:
        os.write(self.go, b"g")

    def wait(self) -> None:
        if self.usage is None:
            _, status, self.usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            os.close(self.go)
            os.close(self.done)

    def kill(self) -> None:
        if self.usage is None:
            self.proc.kill()
            self.wait()

    def failure(self) -> RuntimeError:
        tail = (self.dir / "log.txt").read_text(errors="replace")[-3000:]
        return RuntimeError(f"{self.side} {self.stage} failed (exit {self.proc.returncode}): {' '.join(self.cmd)}\n{tail}")

    def finish(self) -> dict:
        """Let the child run to its end (saving and so on) and read what it measured."""
        self.go_on()
        self.wait()
        if self.proc.returncode != 0 or not self.timings.is_file():
            raise self.failure()
        return measurements(json.loads(self.timings.read_text()), self.usage, self.steps, f"{self.side} {self.stage}")


def run_pair(first: str, second: str, stage: str, **kwargs) -> dict[str, dict]:
    """
    Start `first` and let it reach the end of its first step, then `second` (each starts up alone, the other
    stopped), then let them take turns step by step — second, first, first, second, second, ... — so that step k of
    both sides runs within a few hundred milliseconds, under the same load from other jobs; then each finishes.
    """
    runs = {}
    try:
        for side in (first, second):
            runs[side] = Run(side, stage, **kwargs)
            runs[side].step_done()
        a, b = runs[first], runs[second]
        for k in range(1, kwargs["steps"]):
            for run in (a, b) if k % 2 == 0 else (b, a):
                run.go_on()
                run.step_done()
        return {side: runs[side].finish() for side in (first, second)}
    finally:
        for run in runs.values():
            run.kill()


def measurements(data: dict, usage, steps: int, name: str) -> dict:
    marks, stamps, resumed = data["marks"], data["steps"], data["resumed"]
    if len(stamps) != steps:
        raise RuntimeError(f"{name}: {len(stamps)} optimiser steps recorded, expected {steps}")
    launch = marks["launch"]
    # From the moment a step's turn began (the previous step's end, without turns) to its end.
    wall = [end - start for start, end in zip(resumed, stamps[1:])]
    cpu = [b - a for a, b in zip(data["cpu_steps"], data["cpu_steps"][1:])]  # no CPU time passes while stopped
    waited = sum(r - s for s, r in zip(stamps, resumed))  # stopped while the other run stepped

    def steady(intervals):  # the median step, the first few left out
        return statistics.median(intervals[steady_from(len(intervals)) :])

    def since(a, b, marks=marks):
        return marks[b] - marks[a] if a in marks and b in marks else None

    cpu_marks = {**data["cpu_marks"], "launch": 0.0, "step_1": data["cpu_steps"][0]}

    return {
        "startup_s": stamps[0] - launch,
        "step_s": steady(wall),
        "startup_cpu_s": data["cpu_steps"][0],
        "step_cpu_s": steady(cpu),
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "total_s": marks["exit"] - launch - waited,
        # where the start-up goes: launch -> interpreter -> trainer __init__ -> train() -> step 1
        "interpreter_s": since("launch", "interpreter"),
        "to_trainer_init_s": since("interpreter", "trainer_init_start"),
        "trainer_init_s": since("trainer_init_start", "trainer_init_end"),
        "to_train_begin_s": since("trainer_init_end", "train_begin"),
        "first_step_s": stamps[0] - marks["train_begin"] if "train_begin" in marks else None,
        "after_train_s": marks["exit"] - resumed[-1],
        # the same in CPU time
        "interpreter_cpu_s": since("launch", "interpreter", cpu_marks),
        "to_trainer_init_cpu_s": since("interpreter", "trainer_init_start", cpu_marks),
        "trainer_init_cpu_s": since("trainer_init_start", "trainer_init_end", cpu_marks),
        "to_train_begin_cpu_s": since("trainer_init_end", "train_begin", cpu_marks),
        "first_step_cpu_s": since("train_begin", "step_1", cpu_marks),
        "rss_train_end_mib": (marks.get("vmhwm_train_end_kib") or 0) / 1024,
        "intervals_s": wall,
        "cpu_intervals_s": cpu,
    }


def steady_from(n_intervals: int) -> int:
    return max(0, min(SKIP_STEPS, n_intervals - 1))


def floor_step(runs: list[dict], key: str) -> float:
    """
    Both sides train on the same batches in the same order, so interval k is the same work in every run of a stage:
    the fastest of the runs at each k is that step least disturbed by other jobs; this is their median.
    """
    n = min(len(r[key]) for r in runs)
    return statistics.median(min(r[key][k] for r in runs) for k in range(steady_from(n), n))


# ------------------------------------------------------------------------------------------------------- summary
def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def summarise(results: dict, stages) -> dict:
    out = {}
    pooled_startup, pooled_startup_cpu = [], []
    for stage in stages:
        trl, ak = results[stage]["trl"], results[stage]["alignkit"]
        pairs = list(zip(trl, ak))
        entry = {"runs": len(pairs), "trl": {}, "alignkit": {}}
        for key in (k for k, v in trl[0].items() if not isinstance(v, list)):
            entry["trl"][key] = median([r[key] for r in trl])
            entry["alignkit"][key] = median([r[key] for r in ak])
        for name, key in (("step", "step_s"), ("startup", "startup_s"), ("peak_rss", "peak_rss_mib"), ("total", "total_s"),
                          ("step_cpu", "step_cpu_s"), ("startup_cpu", "startup_cpu_s")):
            ratios = [a[key] / t[key] for t, a in pairs]
            entry[f"{name}_ratio"] = median(ratios)
            entry.setdefault("pair_ratios", {})[name] = ratios  # the spread behind each median
            entry[f"{name}_ratio_of_medians"] = entry["alignkit"][key] / entry["trl"][key]
        # Least-disturbed figures (a robustness check on a shared machine, not the medians asked for).
        for name, key in (("step_floor", "intervals_s"), ("step_cpu_floor", "cpu_intervals_s")):
            entry[f"{name}_ratio"] = floor_step(ak, key) / floor_step(trl, key)
        entry["startup_floor_ratio"] = min(r["startup_s"] for r in ak) / min(r["startup_s"] for r in trl)
        pooled_startup += [a["startup_s"] / t["startup_s"] for t, a in pairs]
        pooled_startup_cpu += [a["startup_cpu_s"] / t["startup_cpu_s"] for t, a in pairs]
        entry["all"] = {"trl": trl, "alignkit": ak}
        out[stage] = entry
    summary = {f"{stage}_step_ratio": out[stage]["step_ratio"] for stage in stages}
    summary["startup_ratio"] = median(pooled_startup)
    summary.update({f"{stage}_startup_ratio": out[stage]["startup_ratio"] for stage in stages})
    summary.update({f"{stage}_peak_rss_ratio": out[stage]["peak_rss_ratio"] for stage in stages})
    # The same in CPU time: what each side computes, whatever else the machine was running meanwhile.
    summary.update({f"{stage}_step_cpu_ratio": out[stage]["step_cpu_ratio"] for stage in stages})
    summary["startup_cpu_ratio"] = median(pooled_startup_cpu)
    summary.update({f"{stage}_step_floor_ratio": out[stage]["step_floor_ratio"] for stage in stages})
    summary.update({f"{stage}_startup_floor_ratio": out[stage]["startup_floor_ratio"] for stage in stages})
    return {**summary, "stages": out}


def print_table(summary: dict, stages) -> None:
    columns = (("startup s", "startup_s", 1, ".2f"), ("step ms", "step_s", 1000, ".1f"),
               ("CPU startup s", "startup_cpu_s", 1, ".2f"), ("CPU step ms", "step_cpu_s", 1000, ".1f"),
               ("peak RSS MiB", "peak_rss_mib", 1, ".0f"), ("total s", "total_s", 1, ".2f"))
    ratios = ("startup_ratio", "step_ratio", "startup_cpu_ratio", "step_cpu_ratio", "peak_rss_ratio", "total_ratio")
    print(f"{'stage':7}{'':>9}" + "".join(f"{title:>15}" for title, *_ in columns))
    for stage in stages:
        entry = summary["stages"][stage]
        for side in ("trl", "alignkit"):
            print(f"{stage:7}{side:>9}" + "".join(f"{scale * entry[side][key]:>15{fmt}}" for _, key, scale, fmt in columns))
        print(f"{'':7}{'ratio':>9}" + "".join(f"{entry[key]:>15.3f}" for key in ratios))
    steps = ", ".join(f"{s} {summary[f'{s}_step_ratio']:.3f}" for s in stages)
    cpu = ", ".join(f"{s} {summary[f'{s}_step_cpu_ratio']:.3f}" for s in stages)
    print(f"alignkit / TRL, medians of {summary['stages'][stages[0]]['runs']} alternated pairs: step {steps}; "
          f"startup {summary['startup_ratio']:.3f} (CPU time: step {cpu}; startup {summary['startup_cpu_ratio']:.3f})")
    floor = ", ".join(f"{s} {summary[f'{s}_step_floor_ratio']:.3f}/{summary[f'{s}_startup_floor_ratio']:.3f}" for s in stages)
    print(f"least disturbed of the runs (fastest run of each step / fastest start-up): {floor}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side and stage")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded pairs per stage before the measured ones")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per run")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="torch threads per child (OMP_NUM_THREADS; default: yours, else 1)")
    parser.add_argument("--rows", type=int, help="rows per data set (default: enough for --steps, 8 a step); "
                        "start-up work on the data grows with it, training does not")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--work", help="work folder (default: a new temporary one, deleted afterwards)")
    parser.add_argument("--out", help="write the results as JSON here")
    opts = parser.parse_args(argv)
    stages = [s for s in opts.stages.split(",") if s]
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    if opts.runs < 1 or opts.steps < 2:
        parser.error("--runs must be >= 1 and --steps >= 2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    cpu = not torch.cuda.is_available()
    work = Path(opts.work) if opts.work else Path(tempfile.mkdtemp(prefix="overhead_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = opts.rows or max(64, opts.steps * 8)
        paths = build(work, opts.hidden, opts.layers, rows)
        results = {stage: {"trl": [], "alignkit": []} for stage in stages}
        # Rounds of one pair per stage, so that a stretch of load from other jobs falls on every stage alike.
        for i in range(opts.warmup + opts.runs):
            for stage in stages:
                # Which side starts alternates too, so a load that grows or fades favours neither.
                order = ("trl", "alignkit") if i % 2 == 0 else ("alignkit", "trl")
                pair = run_pair(*order, stage, work=work, paths=paths, steps=opts.steps, threads=opts.threads, cpu=cpu,
                                tag=str(i))
                for side, r in pair.items():
                    if i >= opts.warmup:
                        results[stage][side].append(r)
                    print(f"{stage} {side} {'warm-up' if i < opts.warmup else i - opts.warmup}: startup "
                          f"{r['startup_s']:.2f} s, step {1000 * r['step_s']:.1f} ms, peak RSS {r['peak_rss_mib']:.0f} MiB",
                          flush=True)
        summary = summarise(results, stages)
        summary["settings"] = {"runs": opts.runs, "warmup": opts.warmup, "steps": opts.steps, "threads": opts.threads,
                               "hidden": opts.hidden, "layers": opts.layers, "rows": rows, "skip_steps": SKIP_STEPS,
                               "config": {s: settings(s, Path("MODEL"), Path("DATA"), Path("OUT"), opts.steps, cpu)
                                          for s in stages}, "alignkit_only": ALIGNKIT_ONLY}
    finally:
        if not opts.work:
            shutil.rmtree(work, ignore_errors=True)
    print_table(summary, stages)
    if opts.out:
        Path(opts.out).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
