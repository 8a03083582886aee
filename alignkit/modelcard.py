"""Hub model cards for stage outputs: YAML metadata, lineage back to the base model, metrics and how to load it.

`write_model_card(output_dir)` reads only what the stage wrote (`alignkit_run.json`, `alignkit_config.yaml`,
`adapter_config.json`) and the same files of the earlier stages it names as parents, and writes
`<output_dir>/README.md`. A card is meant to be pushed, so nothing local leaks into it: a local path is shown
as its folder name and never put in the metadata (which takes Hub ids only), and tokens are redacted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from alignkit import stages
from alignkit.models import adapter_config
from alignkit.outputs import CONFIG_FILE_NAME, RUN_FILE_NAME, read_run, read_saved_config

CARD_FILE_NAME = "README.md"
# The settings that tell a reader how a stage was trained, in the order they are listed; the rest of
# alignkit_config.yaml stays in the file (and may hold local paths a card must not show).
KEY_SETTINGS = (
    "from_scratch", "learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps", "num_updates",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "packing",
    "use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit", "load_in_8bit",
    "beta", "loss_type", "kl_coef", "max_new_tokens", "reward_model_path", "seed",
)
# Per-stage throughput numbers say more about the machine than the model.
SKIPPED_METRICS = ("_runtime", "_per_second", "epoch", "total_flos")
TOKEN_VARIABLE = re.compile(r"(^|_)TOKEN($|_)", re.IGNORECASE)  # HF_TOKEN, HUGGING_FACE_HUB_TOKEN, ...
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".gz", ".arrow")
TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


# ------------------------------------------------------------------------------------------------- reading


def _find_stage(recorded: str | None, near: Path) -> Path | None:
    """The folder of an earlier stage recorded as `recorded`: where it says, or beside this stage (a pipeline's
    stages are siblings, and the whole output folder may have moved since)."""
    if not recorded:
        return None
    for candidate in (Path(recorded), near.parent / Path(recorded).name):
        if (candidate / RUN_FILE_NAME).is_file():
            return candidate
    return None


def _lineage_chain(output_dir: Path) -> list[tuple[Path | None, dict]]:
    """This stage and every earlier one it continues, oldest first: (folder or None if gone, alignkit_run.json)."""
    chain, folder, seen = [], output_dir, set()
    record = read_run(output_dir)
    while record is not None:
        chain.append((folder, record))
        seen.add(folder.resolve())
        parent = (record.get("lineage") or {}).get("parent")
        folder = _find_stage(parent, folder)
        if folder is None or folder.resolve() in seen:
            if parent and (record.get("lineage") or {}).get("parent_stage"):  # named but not here: say so
                chain.append((None, {"stage": record["lineage"]["parent_stage"], "output_dir": parent}))
            break
        record = read_run(folder)
    return chain[::-1]


# ------------------------------------------------------------------------------------------------- names


def _is_local(name: str, near: Path) -> bool:
    path = Path(name)
    return (
        path.is_absolute() or path.exists() or (near / name).exists() or name.startswith(".")
        or path.suffix in DATA_SUFFIXES
    )


def hub_id(name: str | None, near: Path) -> str | None:
    """`name` when it is a Hub id (not a local path), else None."""
    if not name or _is_local(str(name), near):
        return None
    try:
        validate_repo_id(str(name))
    except HFValidationError:
        return None
    return str(name)


def display_name(name: str | None, near: Path) -> str | None:
    """How a model or data set is named in a card: a Hub id as is, a local path by its folder (or file) name."""
    if name is None:
        return None
    return hub_id(name, near) or Path(str(name).rstrip("/")).name


def _redact(text: str) -> str:
    """Remove every token the environment holds (and anything shaped like a Hub token) from `text`."""
    secrets = {v for k, v in os.environ.items() if TOKEN_VARIABLE.search(k) and len(v) >= 8}
    try:
        from huggingface_hub import get_token

        secrets.add(get_token() or "")
    except Exception:  # no token store is fine
        pass
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return TOKEN_PATTERN.sub("<redacted>", text)


# ------------------------------------------------------------------------------------------------- writing


def _fmt(value: Any, near: Path) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, near) for v in value)
    if isinstance(value, str) and ("/" in value or os.sep in value):
        return display_name(value, near)
    return str(value)


def _settings(config: dict, near: Path) -> str:
    shown = [f"{key}={_fmt(config[key], near)}" for key in KEY_SETTINGS if config.get(key) not in (None, False, [])]
    return "; ".join(shown) or "defaults"


def _table(rows: dict[str, Any], near: Path) -> list[str]:
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {'—' if value is None else _fmt(value, near)} |" for name, value in rows.items()]
    return lines


def _title(stage: str) -> str:
    return stages.STAGES[stage].title if stage in stages.STAGES else stage


def _is_reward_model(stage: str) -> bool:
    return stage in stages.STAGES and stages.STAGES[stage].is_reward_model


def _metrics(record: dict) -> dict[str, float]:
    # Perplexity is exp(eval_loss): a language model's measure, meaningless for a reward or preference loss.
    perplexity = record["stage"] in stages.STAGES and stages.STAGES[record["stage"]].perplexity
    skipped = SKIPPED_METRICS + (() if perplexity else ("perplexity",))
    return {
        k: v for k, v in (record.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not any(s in k for s in skipped)
    }


def _usage(record: dict, adapter: dict | None, model_id: str, near: Path) -> list[str]:
    reward = _is_reward_model(record["stage"])
    lines = ["```python"]
    if adapter is None:
        auto = "AutoModelForSequenceClassification" if reward else "AutoModelForCausalLM"
        lines += [f"from transformers import {auto}, AutoTokenizer", "",
                  f'model = {auto}.from_pretrained("{model_id}")']
    elif reward:
        base = display_name(adapter.get("base_model_name_or_path"), near)
        lines += ["from peft import PeftModel",
                  "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
                  f'base = AutoModelForSequenceClassification.from_pretrained("{base}", num_labels=1)',
                  f'model = PeftModel.from_pretrained(base, "{model_id}")  # LoRA weights and the trained score head']
    else:
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{model_id}")  # the base, then the adapter']
    lines += [f'tokenizer = AutoTokenizer.from_pretrained("{model_id}")  # with the chat template it was trained with',
              "```"]
    if reward:
        lines += ["", "The score of a conversation rendered with the tokenizer's chat template is "
                      "`model(**tokenizer(text, return_tensors='pt')).logits[0, 0]`; higher is better."]
    if adapter is not None and hub_id(adapter.get("base_model_name_or_path"), near) is None:
        base = display_name(adapter.get("base_model_name_or_path"), near)
        lines += ["", f"This adapter applies to `{base}`, a local folder: push that model too and set "
                      "`base_model_name_or_path` in `adapter_config.json` to its Hub id, or merge the adapter first "
                      "with `alignkit merge`."]
    return lines


def _datasets(record: dict) -> list[str]:
    """The data sets a run trained on: its `dataset_name`, or each data set of its mixture."""
    value = (record.get("lineage") or {}).get("dataset") or record.get("dataset_name")
    return [str(v) for v in value] if isinstance(value, list) else [value] if value else []


def _card_data(chain: list[tuple[Path | None, dict]], adapter: dict | None, config: dict, near: Path) -> ModelCardData:
    record = chain[-1][1]
    stage = record["stage"]
    base = hub_id((record.get("lineage") or {}).get("base_model"), near)
    datasets = []
    for _, rec in chain:
        for dataset in _datasets(rec):
            name = hub_id(dataset, near)
            if name and name not in datasets:
                datasets.append(name)
    tags = ["alignkit", "trl", stage]
    if adapter is not None:
        tags += ["peft", "lora"]
    if config.get("load_in_4bit") or config.get("load_in_8bit"):
        tags.append("qlora" if config.get("load_in_4bit") else "8-bit")
    if _is_reward_model(stage):
        tags.append("reward-model")
    return ModelCardData(
        base_model=base,
        library_name="peft" if adapter is not None else "transformers",
        tags=tags,
        datasets=datasets or None,
        pipeline_tag="text-classification" if _is_reward_model(stage) else "text-generation",
    )


def model_card(
    output_dir: str | Path, evaluation: dict[str, Any] | None = None, repo_id: str | None = None
) -> ModelCard:
    """The model card of a finished stage output (see `write_model_card`)."""
    output_dir = Path(output_dir)
    chain = _lineage_chain(output_dir)
    if not chain or chain[-1][0] != output_dir:
        raise FileNotFoundError(f"{output_dir} holds no {RUN_FILE_NAME}: model cards are written for finished stages.")
    near = output_dir.parent
    record, config, adapter = chain[-1][1], read_saved_config(output_dir), adapter_config(output_dir)
    stage = record["stage"]
    lineage = record.get("lineage") or {}
    base = display_name(lineage.get("base_model"), near)
    name = output_dir.name
    kind = f"a LoRA adapter (r={adapter.get('r')}, alpha={adapter.get('lora_alpha')})" if adapter else "a full model"
    what = "a reward model" if _is_reward_model(stage) else "a causal language model"

    body = [f"# {name}", ""]
    body.append(
        f"{what.capitalize()} trained by alignkit with {_title(stage)}"
        f", from `{display_name(lineage.get('parent') or lineage.get('base_model'), near)}`"
        f" on `{display_name(lineage.get('dataset'), near) or 'its data'}`. The weights here are {kind}."
    )
    body += ["", "## Lineage", "", f"1. **base model**: `{base}`"]
    for i, (folder, rec) in enumerate(chain, start=2):
        if folder is None:
            label = display_name(rec["output_dir"], near)
            body.append(f"{i}. **{rec['stage']}** `{label}`: an earlier stage whose files are not beside this one")
            continue
        label = f"`{folder.name}`"
        data = " + ".join(str(display_name(d, near)) for d in _datasets(rec)) or None
        this = " (this model)" if folder == output_dir else ""
        body.append(
            f"{i}. **{rec['stage']}** {label}{this}: {_title(rec['stage'])} on `{data}`; "
            f"{_settings(read_saved_config(folder), near)}"
        )

    metrics = _metrics(record)
    stats = record.get("reward_stats") or {}
    if metrics or stats:
        body += ["", "## Training metrics", "", f"Measured by the {stage} stage itself (`{RUN_FILE_NAME}`).", ""]
        body += _table(metrics, near)
        if stats:
            body += ["", "Reward model on held-out pairs: pairwise accuracy, mean margin, and how often it prefers the",
                     "longer answer (beside how often the data's chosen answer is the longer one).", ""]
            body += _table({f"reward_{k}": v for k, v in stats.items()}, near)
    # The pipeline passes its report's row for the stage: its numbers make the table; labels, examples, curves and
    # what was not measured (None) do not, nor the wall time, which describes the machine.
    evaluation = {
        k: v for k, v in (evaluation or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "train_seconds"
    }
    if evaluation:
        body += ["", "## Evaluation", "", "On the pipeline's held-out prompts, measured alike for every stage.", ""]
        body += _table(evaluation, near)
    body += ["", "## How to use", ""]
    body += _usage(record, adapter, repo_id or name, near)
    body += ["", f"Trained with alignkit {record.get('alignkit_version', '')} on TRL, PEFT and Accelerate. "
             f"The full training config is in `{CONFIG_FILE_NAME}`."]

    data = _card_data(chain, adapter, config, near)
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    return ModelCard(_redact(text))


def write_model_card(
    output_dir: str | Path, evaluation: dict[str, Any] | None = None, repo_id: str | None = None
) -> Path:
    """
    Write `<output_dir>/README.md`, a Hub model card: metadata (`base_model`, `library_name`, `tags`, `datasets`,
    `pipeline_tag`), the lineage from the base model through each earlier stage (its data and key settings), the
    stage's own metrics, `evaluation` (metric name -> value) when given, and how to load the model. `repo_id` is
    the Hub id the card's code loads from (default: the folder's name).
    """
    path = Path(output_dir) / CARD_FILE_NAME
    model_card(output_dir, evaluation, repo_id).save(path)
    return path
