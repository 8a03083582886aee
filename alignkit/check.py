"""`alignkit check`: validate a stage config or a pipeline without training, listing every problem at once.

    alignkit check <stage-config.yaml> [--stage sft|...] [--key value ...]
    alignkit check <pipeline.yaml> [--from STAGE] [--set KEY=VALUE ...] [--output_dir DIR]
    alignkit check [...] --accelerate_config <accelerate.yaml>

For each stage it checks, with the same code the run uses: the config's keys and values (`config.parse_args`,
strict), the data set (`data.load_data`: reachable, in the stage's format), the model (folder or adapter and its
base, its config, `trust_remote_code`), the tokenizer and its chat template, for PPO that the reward (and value)
model uses the policy's tokenizer, that `output_dir` holds no earlier run (`outputs.prepare_output_dir`'s rule,
without its side effects), the memory estimate (`alignkit.memory`, when installed), and it previews the first
rows as TRL's trainer tokenises them, trained tokens «in guillemets», counting the rows `max_length` would drop.

The stage is `--stage`, else the file's name or folder (`sft.yaml`, `recipes/<model>/dpo/lora.yaml`), else the
one stage whose keys fit the config (`reward_model_path` is PPO's, `beta` DPO's ...); a file with `stages:` is a
pipeline. In a pipeline, stages `alignkit run` would skip are only parsed, and a model an earlier stage has not
produced yet is checked through the model it starts from (its tokenizer and chat template).

Nothing is written: no output folder, no temporary config (reading a local data file fills the `datasets` cache as
any load does; a Hub data set is streamed, not downloaded). Exits 0 when all is well, 1 with every problem listed,
2 for a usage error.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from alignkit import preflight
from alignkit.errors import AlignkitError, ConfigError, DataError

STAGES = ("pretrain", "sft", "reward", "dpo", "ppo")
PREVIEW_ROWS = 2
# Rows tokenised to count what `max_length` drops; more would make a check of a large data set slow.
COUNT_ROWS = 5000
PREVIEW_CHARS = 600
HUB_ROWS = 200  # rows streamed from a Hub data set
# What `alignkit run` will do with a stage's output folder (`Pipeline.plan`).
PLAN_WORDS = {"start": "new: the stage trains", "skip": "holds a finished run: skipped", "resume": "resumes its last checkpoint",
              "rerun": "trained again (--from, or an input is trained again)"}
# Accelerate launchers that need CUDA devices (MULTI_GPU also runs CPU processes over gloo: alignkit sets `use_cpu`).
GPU_ONLY_LAUNCHERS = ("DEEPSPEED", "FSDP", "MEGATRON_LM", "XLA")


@dataclass
class Report:
    """What a check found: lines for the summary, and the problems (each one names its file/key/row and fix)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, what: str, text: str) -> None:
        self.lines.append(f"  {what:<11} {text}")

    def problem(self, error: AlignkitError | str, where: str = "") -> None:
        for line in str(error).splitlines():
            self.problems.append(f"{where}{line}" if where and not line.startswith(where) else line)


# ------------------------------------------------------------------------------------------ accelerate configs
def check_accelerate_config(path: str | Path) -> list[str]:
    """Problems with an accelerate config file on this machine (a GPU-only launcher without CUDA, too many processes)."""
    import torch

    try:
        config = preflight.load_yaml(str(path))
    except ConfigError as e:
        return [str(e)]
    launcher = str(config.get("distributed_type", "NO")).upper()
    use_cpu = bool(config.get("use_cpu", False))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = []
    if launcher in GPU_ONLY_LAUNCHERS and gpus == 0:
        problems.append(
            f"{path}: distributed_type: {launcher} needs CUDA GPUs and this machine has none; on a CPU use "
            "recipes/accelerate/multi_gpu.yaml (N CPU processes over gloo) or single_gpu.yaml."
        )
    elif launcher == "MULTI_CPU":
        problems.append(
            f"{path}: distributed_type: MULTI_CPU runs a single process unless started with mpirun; "
            "use recipes/accelerate/multi_gpu.yaml, which runs N CPU processes over gloo on a machine without GPUs."
        )
    processes = config.get("num_processes")
    if gpus and not use_cpu and isinstance(processes, int) and processes > gpus:
        problems.append(f"{path}: num_processes: {processes} but this machine has {gpus} GPU(s); lower num_processes.")
    return problems


# ------------------------------------------------------------------------------------------ which stage
def infer_stage(path: str, config: dict[str, Any]) -> str:
    """The stage a config file is for: its name or folder, else the one stage whose keys fit it."""
    p = Path(path)
    for name in (p.stem, p.parent.name):
        if name in STAGES:
            return name
    fits = [stage for stage in STAGES if (keys := preflight.known_keys(stage)) is None or set(config) - {"env"} <= keys]
    if len(fits) == 1:
        return fits[0]
    fits = fits or list(STAGES)
    raise ConfigError(
        f"{path}: cannot tell which stage this config is for (its keys fit {', '.join(fits)}); "
        f"add --stage {fits[0]} (or one of {', '.join(STAGES)})."
    )


# ------------------------------------------------------------------------------------------ one stage
@dataclass
class StageInputs:
    """Inputs of a pipeline stage that earlier stages produce: key -> (stage name, where the tokenizer comes from)."""

    pending: dict[str, str] = field(default_factory=dict)  # config key -> producing stage, for outputs not there yet
    tokenizer_from: dict[str, str] = field(default_factory=dict)  # config key -> the model its tokenizer comes from
    chat_template_from: dict[str, str] = field(default_factory=dict)  # config key -> an earlier stage's template file
    output_note: str | None = None  # the pipeline decides what happens to the output folder
    finished: bool = False  # the stage's output holds a finished run, which `alignkit run` skips


def check_stage(
    stage: str,
    settings: dict[str, Any],
    args: list[str],
    source: str,
    report: Report,
    inputs: StageInputs | None = None,
) -> None:
    """Check one stage configured by `settings` (the YAML's) and `args` (command-line overrides); fill `report`."""
    from datasets import Dataset

    from alignkit import data, outputs
    from alignkit.config import STAGE_ARGS, parse_args

    inputs = inputs or StageInputs()
    raw = {**settings, **{k.replace("-", "_"): v for k, v in preflight.cli_values(args).items() if v is not None}}

    # 1. Keys and values, with the strict parser of the run.
    parsed = None
    try:
        parsed = parse_args(STAGE_ARGS[stage], args, config=settings, source=source)
        report.add("config", f"{len(raw)} keys, all valid for {stage}")
    except ConfigError as e:
        report.problem(e)
    script_args, training_args, model_args = parsed or (None, None, None)
    if inputs.finished:  # its data and model were used already; a rerun (--from) would be checked then
        report.add("output_dir", inputs.output_note)
        return

    def value(key: str, default=None):
        for obj in (script_args, training_args, model_args):
            if obj is not None and hasattr(obj, key):
                return getattr(obj, key)
        return raw.get(key, default)

    # 2. The data set, loaded and checked as the recipe does.
    dataset = None
    text_field = str(value("dataset_text_field", "text"))
    name = value("dataset_name")
    if name is not None and "${" in str(name):
        report.add("data", f"{name}: written by the pipeline's setup, not checked before it runs")
    elif name is not None and not Path(str(name)).expanduser().exists() and data.is_hub_id(str(name)):
        try:  # a Hub data set: stream its first rows instead of downloading it all
            split = str(value("dataset_train_split", "train"))
            streamed = data.load_raw(str(name), value("dataset_config"), streaming=True)
            if split not in streamed:
                raise DataError(f"{name} has no '{split}' split (it has {sorted(streamed)}); set `dataset_train_split`.")
            sample = Dataset.from_list(list(streamed[split].take(HUB_ROWS)))
            train, _ = data.prepare(sample, preflight.STAGE_DATA[stage], f"{name} [{split}]", text_field)
            dataset = {"train": train}
            report.add("data", f"{name} [{split}]: reachable; its first {len(sample)} rows checked (streamed, not downloaded)")
        except AlignkitError as e:
            report.problem(e)
    else:
        try:
            dataset = data.load_data(
                SimpleNamespace(
                    dataset_name=None if name is None else str(name),
                    dataset_config=value("dataset_config"),
                    dataset_streaming=False,
                    dataset_train_split=str(value("dataset_train_split", "train")),
                    dataset_test_split=str(value("dataset_test_split", "test")),
                    eval_split_size=float(value("eval_split_size", 0.05)) if parsed else 0,
                ),
                preflight.STAGE_DATA[stage],
                text_field,
            )
            test = f", {len(dataset['test'])} eval rows" if "test" in dataset else ""
            report.add("data", f"{name}: {len(dataset['train'])} train rows{test}, columns {dataset['train'].column_names}")
        except AlignkitError as e:
            report.problem(e)
        except (TypeError, ValueError) as e:  # a raw value of the wrong type, already reported by the parser
            if parsed:
                raise
            report.problem(f"{source}: dataset settings unusable ({e}).")

    # 3. The output folder: the run's rule, without the run's side effect (overwrite deletes the earlier run).
    output_dir = value("output_dir")
    if inputs.output_note:
        report.add("output_dir", inputs.output_note)
    elif output_dir is None:
        report.problem(f"{source}: no output_dir; set it to a new folder for this stage's output.")
    else:
        overwrite = str(value("overwrite_output_dir", False)).lower() in ("true", "1", "yes")
        resume = outputs.resume_arg(value("resume_from_checkpoint"))
        folder = Path(str(output_dir))
        if overwrite and folder.is_dir() and outputs._holds_run(folder):
            report.add("output_dir", f"{output_dir}: holds a run, which overwrite_output_dir will delete")
        else:
            try:
                outputs.prepare_output_dir(str(output_dir), overwrite=False, resume=resume)
                state = "resumes the run there" if resume else ("new" if not folder.exists() else "empty")
                report.add("output_dir", f"{output_dir}: {state}")
            except AlignkitError as e:
                report.problem(e)

    # 4. Models and tokenizers.
    tokenizer, model_config = _check_model("model_name_or_path", value, inputs, report)
    models_ok = model_config is not None
    if stage == "ppo":
        for key in ("reward_model_path", "value_model_path"):
            if value(key):
                other, other_config = _check_model(key, value, inputs, report)
                models_ok = models_ok and other_config is not None
                if tokenizer is not None and other is not None:
                    _compare_tokenizers(value("model_name_or_path"), tokenizer, key, value(key), other, report)
            elif key == "reward_model_path":
                report.problem(f"{source}: PPO needs `reward_model_path`: the reward stage's output folder.")

    # The LoRA targets of a new adapter, against the model's module names (an empty `meta` copy: no weights).
    if parsed and model_config is not None and model_args.use_peft and not _is_adapter(value("model_name_or_path")):
        _check_lora_targets(model_config, model_args, report)

    # 5. The memory estimate, from the module that makes it (when this install has it).
    if importlib.util.find_spec("alignkit.memory") is None:
        report.add("memory", "not estimated: this install has no alignkit.memory")
    elif not models_ok:
        report.add("memory", "not estimated: the models are not there to read their sizes")
    elif parsed:
        from alignkit import memory

        try:
            estimate = memory.estimate(stage, model_args, training_args, model_config=model_config)
            report.add("memory", estimate.summary().removeprefix("memory estimate: "))
        except AlignkitError as e:
            report.problem(e)
        except (OSError, ValueError) as e:  # a model the estimate reads itself (PPO's reward model), not loadable
            report.add("memory", f"not estimated ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})")

    # 6. The first rows as the trainer will see them, and what max_length drops.
    if parsed and dataset is not None and tokenizer is not None:
        import datasets

        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # a check prints its summary, not the trainer's tokenising progress
        try:
            _preview(stage, dataset["train"], tokenizer, script_args, training_args, str(name), report)
        finally:
            if bars:
                datasets.enable_progress_bars()


def _check_model(key: str, value, inputs: StageInputs, report: Report):
    """Check the model at `key` (folder, adapter base, config, remote code, tokenizer); return its tokenizer."""
    from alignkit import models

    name = value(key)
    what = key.removesuffix("_name_or_path").removesuffix("_path")
    if not name:
        report.problem(f"`{key}` is not set; give a Hub id, a local model folder or an earlier stage's output_dir.")
        return None, None
    name = str(name)
    source = name
    if key in inputs.pending:
        source = inputs.tokenizer_from.get(key)
        if source is None:
            producer = inputs.pending[key]
            producer = "the pipeline's setup" if producer == "setup" else f"stage '{producer}'"
            report.add(what, f"{name}: produced by {producer}, not checked before it runs")
            return None, None
    trust = str(value("trust_remote_code", False)).lower() in ("true", "1", "yes")
    template_path = value("chat_template_path") or inputs.chat_template_from.get(key)
    try:
        base = models.adapter_base(source)
        config = models.load_model_config(base or source, value("model_revision"), trust)
        tokenizer = models.load_tokenizer(
            SimpleNamespace(model_name_or_path=source, model_revision=value("model_revision")),
            trust, template_path,
        )
    except AlignkitError as e:
        report.problem(e if key == "model_name_or_path" else f"{key}: {e}")
        return None, None
    if template_path:
        template = f"from {template_path}"
    elif tokenizer.chat_template == models.DEFAULT_CHAT_TEMPLATE.read_text(encoding="utf-8"):
        template = "alignkit's default (the model has none)"
    else:
        template = "the model's own"
    if source != name:
        text = f"{name}: produced by stage '{inputs.pending[key]}'; its tokenizer comes from {source}"
    else:
        text = f"{name}" + (f" (adapter on {base})" if base else "")
    report.add(what, f"{text}; tokenizer {len(tokenizer)} tokens, chat template {template}")
    rows = getattr(getattr(config, "text_config", None) or config, "vocab_size", None)
    problem = models.vocab_problem(tokenizer, rows, name) if rows is not None else None  # as the run, without weights
    if problem:
        report.problem(problem)
    return tokenizer, config


def _is_adapter(name) -> bool:
    from alignkit.models import adapter_config

    return name is not None and Path(str(name)).is_dir() and adapter_config(str(name)) is not None


def _check_lora_targets(model_config, model_args, report: Report) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from alignkit import models

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)
    except Exception:  # an architecture without a causal-LM class: the run reports what it finds
        return
    try:
        models.new_peft_config(model, model_args)
    except AlignkitError as e:
        report.problem(e)


def _compare_tokenizers(policy: str, policy_tok, key: str, other: str, other_tok, report: Report) -> None:
    """PPO scores the policy's token ids with the reward model: both must mean the same ids."""
    if policy_tok.get_vocab() == other_tok.get_vocab():
        return
    a, b = policy_tok.get_vocab(), other_tok.get_vocab()
    differ = sum(1 for token, i in a.items() if b.get(token) != i)
    report.problem(
        f"{key} {other} uses another tokenizer than the policy {policy} ({len(b)} vs {len(a)} tokens, "
        f"{differ} of the policy's tokens differ); train the reward model from the policy's base (e.g. the SFT output)."
    )


# ------------------------------------------------------------------------------------------ preview
def _mark(tokenizer, ids: list[int], trained: list[bool]) -> str:
    """Decode `ids`, wrapping each run of trained tokens in «...»."""
    text, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            piece = tokenizer.decode(ids[start:i])
            text.append(f"«{piece}»" if trained[start] else piece)
            start = i
    out = "".join(text).replace("\n", "\\n")
    return out if len(out) <= PREVIEW_CHARS else out[: PREVIEW_CHARS - 3] + "..."


def _preview(stage, train, tokenizer, script_args, training_args, name: str, report: Report) -> None:
    """Tokenise the first rows with the trainer's own dataset preparation; show them and count dropped rows."""
    from datasets import Dataset

    from alignkit import data

    rows = Dataset.from_list(train.select(range(min(len(train), COUNT_ROWS))).to_list())  # in memory: no cache files
    of = f"{len(rows)}" + (f" (the first {COUNT_ROWS})" if len(train) > COUNT_ROWS else "")
    args = copy.copy(training_args)
    args.dataset_num_proc, args.shuffle_dataset = None, False
    try:
        if stage in ("sft", "pretrain"):
            shown, kept, loss = _preview_sft(stage, rows, tokenizer, args)
            what = "training rows"
        elif stage == "dpo":
            shown, kept, loss = _preview_dpo(rows, tokenizer, args)
            what = "training pairs"
        elif stage == "reward":
            if script_args.prompt_truncation == "left" and args.max_length:  # as the recipe does
                rows = data.truncate_prompts(rows, tokenizer, args.max_length)
            shown, kept, loss = _preview_reward(rows, tokenizer, args)
            what = "training pairs"
        else:
            shown, kept = _preview_prompts(rows, tokenizer, args), len(rows)
            loss, what = "the policy's own answers, scored by the reward model", "prompts"
    except AlignkitError as e:
        report.problem(e)
        return
    except Exception as e:  # a chat template or tokenizer that cannot render these rows fails the run the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        report.problem(f"{name}: the tokenizer/chat template cannot render the rows ({type(e).__name__}: {first}).")
        return
    max_length = getattr(args, "max_length", None)
    if kept == 0:
        try:
            data.check_kept(len(rows), kept, what, max_length)
        except AlignkitError as e:
            report.problem(f"{name}: {e}" + (f" (checked the first {COUNT_ROWS})" if len(train) > COUNT_ROWS else ""))
    elif kept < len(rows):
        report.add("max_length", f"{len(rows) - kept} of {of} {what} are longer than max_length={max_length} and will be dropped")
    report.add("loss on", loss)
    if not shown:
        return
    per_row = max(1, len(shown) // max(1, min(PREVIEW_ROWS, kept)))
    report.add("preview", "the first rows as the trainer tokenises them; trained tokens «like this»")
    for i, (label, line) in enumerate(shown):
        report.add(f"row {i // per_row + 1}", f"{label}: {line}" if label else line)


def _preview_sft(stage, rows, tokenizer, args) -> tuple[list, int, str]:
    from trl import SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    first = rows[0]
    # As recipes/sft.py: conversations learn from assistant turns when the template marks them.
    if stage == "sft" and "messages" in first and has_generation_markers(tokenizer.chat_template):
        args.assistant_only_loss = True
    # The attributes SFTTrainer.__init__ sets for its `_prepare_dataset`, computed the same way.
    host = SimpleNamespace(
        _tokenizer=tokenizer,
        chat_template=get_training_chat_template(tokenizer)
        if args.assistant_only_loss and not has_generation_markers(tokenizer.chat_template) else None,
        completion_only_loss=("prompt" in first and "completion" in first)
        if args.completion_only_loss is None else args.completion_only_loss,
    )
    prepared = SFTTrainer._prepare_dataset(host, rows, tokenizer, args, False, None, "check")
    kept = len(prepared) if not args.packing else len(rows)  # packing splits long rows instead of dropping them
    shown = [
        ("", _mark(tokenizer, row["input_ids"], [label != -100 for label in row["labels"]]))
        for row in prepared.select(range(min(PREVIEW_ROWS, len(prepared))))
    ]
    if args.assistant_only_loss:
        loss = "the assistant's turns only"
    elif host.completion_only_loss and "prompt" in first:
        loss = "the completions only"
    elif "messages" in first:
        loss = ("every token, questions included: the chat template marks no assistant turns "
                "({% generation %}); use one that does, or prompt/completion data, to train on answers only")
    else:
        loss = "every token" + (" (completion_only_loss does nothing on text data)" if args.completion_only_loss else "")
    return shown, kept, loss


def _preview_dpo(rows, tokenizer, args) -> tuple[list, int, str]:
    from trl import DPOTrainer

    prepared = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), rows, tokenizer, args, "check")
    shown = []
    for row in prepared.select(range(min(PREVIEW_ROWS, len(prepared)))):
        prompt = row["prompt_ids"]
        for side in ("chosen", "rejected"):
            ids = prompt + row[f"{side}_ids"]
            shown.append((side, _mark(tokenizer, ids, [i >= len(prompt) for i in range(len(ids))])))
    return shown, len(prepared), "the chosen and rejected answers (log-probabilities against the reference)"


def _preview_reward(rows, tokenizer, args) -> tuple[list, int, str]:
    from trl import RewardTrainer

    prepared = RewardTrainer._prepare_dataset(None, rows, tokenizer, args, "check")
    shown = []
    for row in prepared.select(range(min(PREVIEW_ROWS, len(prepared)))):
        for side in ("chosen", "rejected"):  # the whole sequence is read; its score is taken at the last token
            ids = row[f"{side}_ids"]
            shown.append((f"{side} (scored at its last token)", _mark(tokenizer, ids, [False] * (len(ids) - 1) + [True])))
    return shown, len(prepared), "the score at each answer's last token (chosen above rejected)"


def _preview_prompts(rows, tokenizer, args) -> list:
    from trl.data_utils import is_conversational

    shown = []
    for row in rows.select(range(min(PREVIEW_ROWS, len(rows)))):
        prompt = row["prompt"]
        if is_conversational(row):
            prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        limit = getattr(args, "max_prompt_length", None)
        cut = f" [{len(ids) - limit} tokens cut from the left]" if limit and len(ids) > limit else ""
        shown.append(("prompt", _mark(tokenizer, ids, [False] * len(ids)) + "«...the policy's answer»" + cut))
    return shown


# ------------------------------------------------------------------------------------------ a pipeline
def check_pipeline(
    path: str, overrides: list[str], output_dir: str | None, report: Report, from_stage: str | None = None
) -> None:
    """Check a pipeline file's shape, then each stage as a stage config (inputs earlier stages produce are noted)."""
    from alignkit import pipeline as pipelines
    from alignkit.outputs import read_run

    try:
        pipe = pipelines.load_pipeline(path, overrides)
    except AlignkitError as e:
        report.problem(e)
        return
    if output_dir is not None:
        pipe.output_dir = str(output_dir)
    try:
        pipe.validate()
    except AlignkitError as e:
        report.problem(e)
    try:
        plan = pipe.plan(from_stage)
    except AlignkitError as e:
        report.problem(e)
        plan = {}
    names = list(pipe.stages)
    report.add("pipeline", f"{path}: stages {', '.join(names)}; output_dir {pipe.output_dir}")

    def resolve(value):
        try:
            return pipe.substitute(value)
        except AlignkitError:
            return value  # a ${setup.*} value: setup writes it when the pipeline runs, so it is not checked here

    def input_path(target: str) -> str:
        return resolve(str(pipe.stage_dir(target)) if target in pipe.stages else (pipe.base_model if target == "base" else target))

    for stage in pipe.stages.values():
        report.lines.append(f"stage {stage.name} ({stage.recipe}):")
        where = f"{path}: stage '{stage.name}': "
        try:
            settings = {k: resolve(v) for k, v in {**pipe._config(stage), **stage.args}.items()}
        except AlignkitError as e:
            report.problem(e, where)
            continue
        action = PLAN_WORDS.get(plan.get(stage.name, "start"), plan.get(stage.name))
        inputs = StageInputs(output_note=f"{pipe.stage_dir(stage.name)}: {action}", finished=plan.get(stage.name) == "skip")
        for role, target in stage.inputs.items():
            key = pipelines.INPUTS[role]
            settings[key] = input_path(target)
            if target in pipe.stages and read_run(pipe.stage_dir(target)) is None:
                inputs.pending[key] = target
                source, template = _first_existing(pipe, target, input_path)
                if source is not None:
                    inputs.tokenizer_from[key] = source
                if template is not None:
                    inputs.chat_template_from[key] = template
            elif target == "base" and "${" in str(settings[key]):
                inputs.pending[key] = "setup"
        settings.pop("output_dir", None)
        settings["output_dir"] = str(pipe.stage_dir(stage.name))
        before = len(report.problems)
        check_stage(stage.recipe, settings, [], f"{path}: stage '{stage.name}'", report, inputs)
        report.problems[before:] = [p if p.startswith(str(path)) else where + p for p in report.problems[before:]]
        if stage.accelerate_config is not None and (config := pipe.accelerate_config_path(stage)) is not None:
            for problem in check_accelerate_config(config):
                report.problem(problem, where)


def _first_existing(pipe, target: str, input_path) -> tuple[str | None, str | None]:
    """
    Where a not-yet-trained stage's tokenizer comes from: follow `model` inputs back to a model that exists, and
    the chat template file the nearest of those stages sets (a stage saves its tokenizer with that template).
    """
    from alignkit.outputs import read_run

    seen, template = set(), None
    while target in pipe.stages and target not in seen:
        seen.add(target)
        if read_run(pipe.stage_dir(target)) is not None:
            return str(pipe.stage_dir(target)), template
        stage = pipe.stages[target]
        settings = {**pipe._config(stage), **stage.args}
        template = template or settings.get("chat_template_path")
        target = stage.inputs.get("model") or settings.get("model_name_or_path")
        if target is None:
            return None, template
    path = input_path(target) if target else None
    return (None if path is None or "${" in str(path) else str(path)), template


# ------------------------------------------------------------------------------------------ the command
def _split_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """check's own options (path, --stage, --accelerate_config, --set, --output_dir) and the stage overrides."""
    opts: dict[str, Any] = {"path": None, "stage": None, "accelerate_config": None, "set": [], "output_dir": None, "from": None}
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, eq, val = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key in ("stage", "accelerate_config", "set", "from") or (key == "config" and opts["path"] is None):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"--{key} needs a value.")
                i, val = i + 1, argv[i + 1]
            if key == "set":
                opts["set"].append(val)
            else:
                opts["path" if key == "config" else key] = val
        elif not arg.startswith("--") and opts["path"] is None and not rest:
            opts["path"] = arg
        else:
            rest.append(arg)
        i += 1
    return opts, rest


def run_check(argv: list[str]) -> Report:
    """Everything `alignkit check argv` checks, as a report (nothing printed)."""
    opts, rest = _split_argv(argv)
    report = Report()
    if opts["path"] is None and opts["accelerate_config"] is None:
        raise ConfigError("alignkit check needs a stage config or pipeline YAML (or --accelerate_config FILE).")
    if opts["accelerate_config"] is not None:
        problems = check_accelerate_config(opts["accelerate_config"])
        report.problems += problems
        if not problems:
            report.add("accelerate", f"{opts['accelerate_config']}: fits this machine")
    path = opts["path"]
    if path is None:
        return report
    try:
        config = preflight.load_yaml(path)
    except ConfigError as e:
        report.problem(e)
        return report
    if "stages" in config:
        output_dir = preflight.cli_values(rest).get("output_dir") or opts["output_dir"]
        unknown = [a for a in rest if a.startswith("--") and not a.startswith("--output_dir")]
        if unknown:
            report.problem(f"{unknown[0]}: a pipeline takes --set STAGE.KEY=VALUE (or --set KEY=VALUE) overrides.")
        check_pipeline(path, opts["set"], output_dir, report, opts["from"])
        return report
    if opts["set"]:
        report.problem(f"--set is for pipeline files; {path} is a stage config: pass --key value instead.")
    stage = opts["stage"]
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"--stage {stage}: expected one of {', '.join(STAGES)}.")
    try:
        stage = stage or infer_stage(path, config)
    except ConfigError as e:
        report.problem(e)
        return report
    report.lines.append(f"stage {stage}: {path}")
    check_stage(stage, config, rest, path, report)
    return report


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    report = run_check(argv)
    print("\n".join(["alignkit check", *report.lines]))
    if report.problems:
        count = len(report.problems)
        print(f"alignkit check: {count} problem{'s' * (count != 1)}:", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        sys.exit(1)
    print("alignkit check: no problems found.")
