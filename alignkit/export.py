"""Export a stage's output as a full model: merge its LoRA adapter into the base and save safetensors.

    alignkit merge <stage_output> --output_dir DIR [--overwrite_output_dir true] [--trust_remote_code true]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from trl import ModelConfig

from alignkit import models, outputs
from alignkit.errors import ModelError, OutputDirError


def merge(stage_output: str | Path, output_dir: str | Path, overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """
    Merge the LoRA adapter in `stage_output` into its base model and save the result to `output_dir` as a full
    model (safetensors) with the tokenizer and chat template. The base is loaded in its own dtype, never quantised:
    an adapter trained on a 4-bit base (QLoRA) is merged into the full-precision base, and a base stored only in
    4/8 bit is dequantised before the merge (merging into quantised weights would round). A reward adapter (SEQ_CLS)
    merges into a sequence classifier with its trained score head. The run's record is copied, so the merged
    folder is a finished run that `alignkit push` accepts and later stages can start from.
    """
    stage_output, output_dir = Path(stage_output), Path(output_dir)
    adapter = models.adapter_config(stage_output)
    if adapter is None:
        what = "a full model" if (stage_output / "config.json").is_file() else "no adapter_config.json"
        raise ModelError(f"{stage_output} holds {what}, so there is no adapter to merge; use the folder as it is.")
    base = models.adapter_base(stage_output)  # a moved local base gets a clear message here
    _check_output_dir(output_dir, overwrite)
    try:
        return _merge_into(stage_output, output_dir, adapter, base, trust_remote_code)
    finally:
        outputs.release_output_dir(output_dir)  # the lock prepare_output_dir took for this merge


def _merge_into(stage_output: Path, output_dir: Path, adapter: dict, base: str, trust_remote_code: bool) -> Path:
    stored = getattr(models.load_model_config(base, trust_remote_code=trust_remote_code), "quantization_config", None)
    config_file = stage_output / outputs.CONFIG_FILE_NAME
    run_config = outputs.read_saved_config(stage_output)
    reward = adapter.get("task_type") == "SEQ_CLS"
    if stored:  # only quantised weights exist: merging into them would round the adapter's update away
        print(f"alignkit: the base {base} is stored quantised; it is dequantised to full precision before merging.")
        model = models.apply_adapter(models.load_dequantised(base, reward, trust_remote_code), str(stage_output), False, reward)
    else:
        if run_config.get("load_in_4bit") or run_config.get("load_in_8bit"):
            bits = 4 if run_config.get("load_in_4bit") else 8
            print(f"alignkit: the adapter was trained on a {bits}-bit base; it is merged into the full-precision base {base}.")
        model_args = ModelConfig(model_name_or_path=str(stage_output), dtype="auto")  # the base's own dtype, unquantised
        model = models.load_model(model_args, trust_remote_code, reward=reward)  # base + adapter, merged and unloaded
    has_tokenizer = (stage_output / "tokenizer_config.json").is_file()
    tokenizer = models.load_tokenizer(ModelConfig(model_name_or_path=str(stage_output) if has_tokenizer else base), trust_remote_code)
    if reward:  # the score is read at the last non-pad token, as in training
        model.config.pad_token_id = tokenizer.pad_token_id
    # A folder being replaced keeps its run until the merged model is whole: it is written beside it, then swapped in.
    replacing = output_dir.is_dir() and any(output_dir.iterdir())
    target = Path(f"{output_dir}.merging") if replacing else output_dir
    if replacing:
        shutil.rmtree(target, ignore_errors=True)  # left by a merge that was stopped
    try:
        model.save_pretrained(target)  # safetensors
        tokenizer.save_pretrained(target)  # with the chat template
        record = outputs.read_run(stage_output)
        if record is not None:
            if config_file.is_file():
                shutil.copy(config_file, target / outputs.CONFIG_FILE_NAME)
            record["merged_from"] = str(stage_output)
            outputs.write_json_atomic(target / outputs.RUN_FILE_NAME, record)  # the "finished" marker, written last
    except BaseException:
        if replacing:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if replacing:
        previous = outputs.previous_dir(output_dir)
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(output_dir, previous)
        os.rename(target, output_dir)
        shutil.rmtree(previous)
    print(f"alignkit: merged the adapter in {stage_output} into {base}; saved the full model to {output_dir}.")
    return output_dir


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse a file, a folder holding something other than a run, and (unless asked to replace it) a run."""
    outputs.prepare_output_dir(str(output_dir), overwrite=True)  # a file, or a folder no run wrote: never replaced
    if not overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        state = "a finished run" if outputs.read_run(output_dir) else "an unfinished run"
        raise OutputDirError(
            f"output_dir {output_dir} already holds {state}. Pass `--overwrite_output_dir true` to replace it, "
            "or choose another output_dir."
        )


def _flag(value: str) -> bool:
    """A command-line truth value, as the stage commands take them: `--overwrite_output_dir true`."""
    lowered = value.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def merge_main(argv: list[str] | None = None) -> Path:
    """`alignkit merge <stage_output> --output_dir DIR`"""
    parser = argparse.ArgumentParser(prog="alignkit merge", description="Merge a stage's LoRA adapter into its base model.")
    parser.add_argument("stage_output", help="a stage's output folder holding an adapter (adapter_config.json)")
    parser.add_argument("--output_dir", required=True, help="an empty or new folder for the merged model")
    parser.add_argument("--overwrite_output_dir", nargs="?", const=True, default=False, type=_flag, metavar="true|false",
                        help="replace a run already in output_dir")
    parser.add_argument("--trust_remote_code", nargs="?", const=True, default=False, type=_flag, metavar="true|false",
                        help="allow the base's own loading code")
    args = parser.parse_args(argv)
    return merge(args.stage_output, args.output_dir, args.overwrite_output_dir, args.trust_remote_code)
