"""Check one stage's config without training: keys and values, data, output folder, models, memory, preview."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from alignkit import data, memory, models, outputs, stages
from alignkit.check.findings import Report
from alignkit.check.preview import preview
from alignkit.config import parse_args, stage_dataclasses
from alignkit.configfile import cli_values, load_yaml
from alignkit.errors import AlignkitError, ConfigError, DataError
from alignkit.pipeline import stage_keys
from alignkit.preflight import required_message

HUB_ROWS = 200  # rows streamed from a Hub data set
# Accelerate launchers that need CUDA devices (MULTI_GPU also runs CPU processes over gloo: alignkit sets `use_cpu`).
GPU_ONLY_LAUNCHERS = ("DEEPSPEED", "FSDP", "MEGATRON_LM", "XLA")


def check_accelerate_config(path: str | Path) -> list[str]:
    """Problems with an accelerate config file on this machine (a GPU-only launcher without CUDA, too many processes)."""
    try:
        config = load_yaml(str(path))
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



def infer_stage(path: str, config: dict[str, Any]) -> str:
    """The stage a config file is for: its name or folder, else the one stage whose keys fit it."""
    p = Path(path)
    for name in (p.stem, p.parent.name):
        if name in stages.STAGES:
            return name
    fits = [stage for stage in stages.names() if set(config) - {"env"} <= stage_keys(stage)]
    if len(fits) == 1:
        return fits[0]
    fits = fits or list(stages.names())
    raise ConfigError(
        f"{path}: cannot tell which stage this config is for (its keys fit {', '.join(fits)}); "
        f"add --stage {fits[0]} (or one of {', '.join(stages.names())})."
    )



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
    spec = stages.get(stage)
    inputs = inputs or StageInputs()
    raw = {**settings, **{k.replace("-", "_"): v for k, v in cli_values(args).items() if v is not None}}

    # 1. Keys and values, with the strict parser of the run.
    parsed = None
    try:
        parsed = parse_args(stage_dataclasses(stage), args, config=settings, source=source)
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
    dataset, sources = None, []
    text_field = str(value("dataset_text_field", "text"))
    name = value("dataset_name")
    if name is not None and "${" in str(name):
        report.add("data", f"{name}: written by the pipeline's setup, not checked before it runs")
    elif "dataset_name" in inputs.pending:
        report.add("data", f"{name}: written by stage '{inputs.pending['dataset_name']}', not checked before it runs")
    elif name is not None and not Path(str(name)).expanduser().exists() and data.is_hub_id(str(name)):
        try:  # a Hub data set: stream its first rows instead of downloading it all
            split = str(value("dataset_train_split", "train"))
            streamed = data.load_raw(str(name), value("dataset_config"), streaming=True)
            if split not in streamed:
                raise DataError(f"{name} has no '{split}' split (it has {sorted(streamed)}); set `dataset_train_split`.")
            sample = Dataset.from_list(list(streamed[split].take(HUB_ROWS)))
            train, _ = data.prepare(sample, spec.data_format, f"{name} [{split}]", text_field)
            dataset = {"train": train}
            report.add("data", f"{name} [{split}]: reachable; its first {len(sample)} rows checked (streamed, not downloaded)")
        except AlignkitError as e:
            report.problem(e)
    elif "${" in str(value("datasets")):
        report.add("data", "datasets: written by the pipeline's setup, not checked before it runs")
    else:
        try:
            data_args = SimpleNamespace(
                dataset_name=None if name is None else str(name),
                dataset_config=value("dataset_config"),
                dataset_streaming=False,
                dataset_train_split=str(value("dataset_train_split", "train")),
                dataset_test_split=str(value("dataset_test_split", "test")),
                eval_split_size=float(value("eval_split_size", 0.05)) if parsed else 0,
                datasets=value("datasets"),  # a mixture: each data set checked, reported and previewed on its own
                test_split_size=value("test_split_size") if parsed else None,
            )
            sources = data.load_sources(data_args, spec.data_format, text_field)
            dataset = data.combine(sources, data_args)
            for source in sources if data_args.datasets else []:
                report.add("data", f"{source.label}: {len(source.train)} rows, columns {source.train.column_names}")
            test = f", {len(dataset['test'])} eval rows" if "test" in dataset else ""
            what = f"the mixture of {len(sources)}" if data_args.datasets else name
            report.add("data", f"{what}: {len(dataset['train'])} train rows{test}, columns {dataset['train'].column_names}")
        except ConfigError as e:  # a `datasets` entry the parser has already reported, when it failed
            if parsed:
                report.problem(e)
        except AlignkitError as e:
            report.problem(e)
        except (TypeError, ValueError) as e:  # a raw value of the wrong type, already reported by the parser
            if parsed:
                raise
            report.problem(f"{source}: dataset settings unusable ({e}).")

    # 3. The output folder: the run's rule, without the run's side effect (overwrite deletes the earlier run).
    output_dir = value("output_dir")
    # A live run's folder (it holds the folder's lock; asked without taking it): no other run may start there.
    holder = outputs.output_dir_holder(str(output_dir)) if output_dir is not None else None
    if holder is not None:
        report.problem(outputs.in_use_message(output_dir, holder))
    elif inputs.output_note:
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
                outputs.prepare_output_dir(str(output_dir), overwrite=False, resume=resume, lock=False)
                state = "resumes the run there" if resume else ("new" if not folder.exists() else "empty")
                report.add("output_dir", f"{output_dir}: {state}")
            except AlignkitError as e:
                report.problem(e)

    # 4. Models and tokenizers.
    tokenizer, model_config = _check_model("model_name_or_path", value, inputs, report)
    models_ok = model_config is not None
    for role in spec.inputs[1:]:  # the models beside the policy (PPO's reward and value models)
        key = stages.INPUT_KEYS[role]
        if value(key):
            other, other_config = _check_model(key, value, inputs, report)
            models_ok = models_ok and other_config is not None
            if tokenizer is not None and other is not None:
                _compare_tokenizers(value("model_name_or_path"), tokenizer, key, value(key), other, report)
        elif key in spec.required:
            report.problem(f"{source}: {required_message(spec, key)}")

    # The LoRA targets of a new adapter, against the model's module names (an empty `meta` copy: no weights).
    if parsed and model_config is not None and model_args.use_peft and not _is_adapter(value("model_name_or_path")):
        _check_lora_targets(model_config, model_args, report)

    # 5. The memory estimate, from the module that makes it.
    if spec.output == "data":
        report.add("memory", "not estimated: the stage only generates (no training step)")
    elif not models_ok:
        report.add("memory", "not estimated: the models are not there to read their sizes")
    elif parsed:
        try:
            estimate = memory.estimate(stage, model_args, training_args, model_config=model_config)
            report.add("memory", estimate.summary().removeprefix("memory estimate: "))
        except AlignkitError as e:
            report.problem(e)
        except (OSError, ValueError) as e:  # a model the estimate reads itself (PPO's reward model), not loadable
            report.add("memory", f"not estimated ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})")

    # 6. The first rows as the trainer will see them, and what max_length drops.
    if parsed and dataset is not None and tokenizer is not None:
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # a check prints its summary, not the trainer's tokenising progress
        try:
            for source in sources if len(sources) > 1 else []:
                preview(spec, source.train, tokenizer, script_args, training_args, source.label, report, of_source=True)
            if len(sources) < 2:
                preview(spec, dataset["train"], tokenizer, script_args, training_args, str(name), report)
        finally:
            if bars:
                datasets.enable_progress_bars()


def _check_model(key: str, value, inputs: StageInputs, report: Report):
    """Check the model at `key` (folder, adapter base, config, remote code, tokenizer); return its tokenizer."""
    name = value(key)
    what = key.removesuffix("_name_or_path").removesuffix("_path")
    if not name:
        report.problem(f"`{key}` is not set; give a Hub id, a local model folder or an earlier stage's output_dir.")
        return None, None
    name = str(name)
    source = name
    if key not in inputs.pending:
        try:  # a run that did not finish is no model to start from
            outputs.refuse_unfinished(name, key)
        except AlignkitError as e:
            report.problem(e)
            return None, None
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
    if key == "reward_model_path" and source == name and Path(name).is_dir():
        try:  # a causal LM here would score with a random head
            models.check_reward_folder(name)
        except AlignkitError as e:
            report.problem(f"{key}: {e}")  # and go on: its tokenizer is still compared with the policy's
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
    return name is not None and Path(str(name)).is_dir() and models.adapter_config(str(name)) is not None


def _check_lora_targets(model_config, model_args, report: Report) -> None:
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

