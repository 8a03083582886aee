"""The bad-input suite: every broken config, data set or model fails fast, in a few lines that name the
file/key/row and the fix, with no traceback, and writes nothing into output_dir — both when a stage runs
(`alignkit <stage>`) and when `alignkit check` looks at the same config.

Most cases run in-process through `alignkit.cli.main` (the ML stack is imported once); a few run the real
`alignkit` command to prove the exit code and the absence of a traceback end to end.
"""

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from badinput_fixtures import bad_models, earlier_run, good_data  # noqa: F401  (pytest fixtures)

from alignkit import cli

# Generous bounds: in-process the stack is already imported; a subprocess that fails before importing it
# measured ~1.5 s of CPU (5 s wall on a busy 2-core machine).
IN_PROCESS_SECONDS = 30
SUBPROCESS_SECONDS = 60
MAX_MESSAGE_LINES = 3


def _file(name: str, content: bytes | str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    return write


def _jsonl(name: str, rows: list[dict]) -> Callable[[Path], Path]:
    import json

    return _file(name, "".join(json.dumps(r) + "\n" for r in rows))


CHAT = [{"role": "user", "content": "What does the owl eat?"}, {"role": "assistant", "content": "Mice."}]


@dataclass
class Case:
    id: str
    stage: str
    expect: str  # a regex both the run's message and `alignkit check`'s problem list must match
    config: dict = field(default_factory=dict)  # merged over the stage's good config (None removes a key)
    args: list = field(default_factory=list)  # command-line overrides
    data: Callable[[Path], Path] | None = None  # writes the data file
    model: str | None = None  # a bad_models key, as model_name_or_path
    reward_model: str | None = None  # a bad_models key, as reward_model_path
    run: bool = True  # also run the stage (False: `alignkit check` only)
    extra_yaml: str = ""  # lines appended to the written YAML as they are (e.g. a key given twice)


CASES = [
    # ----------------------------------------------------------------------------------------------- configs
    Case("yaml-misspelt-key", "sft", r"unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)", {"learning_rat": 1e-4}),
    Case("yaml-unknown-key", "dpo", r"unknown key 'frobnicate'", {"frobnicate": True}),
    Case("cli-misspelt-key", "sft", r"unknown command-line option '--lerning_rate' \(did you mean 'learning_rate'\?\)",
         args=["--lerning_rate", "1e-4"]),
    Case("cli-key-of-another-stage", "sft", r"unknown command-line option '--reward_model_path'",
         args=["--reward_model_path", "x"]),
    Case("learning-rate-abc", "sft", r"`learning_rate` must be a float, got 'abc'", {"learning_rate": "abc"}),
    Case("epochs-as-list", "sft", r"`num_train_epochs` must be a single float, got \[1\]", {"num_train_epochs": [1]}),
    Case("max-length-as-mapping", "reward", r"`max_length` must be a single int", {"max_length": {"a": 1}}),
    Case("bool-maybe", "sft", r"`use_peft` must be a bool \(true/false\), got 'maybe'", {"use_peft": "maybe"}),
    Case("choice-typo", "sft", r"`lr_scheduler_type` cannot be 'cosin' \(did you mean 'cosine'\?\)",
         {"lr_scheduler_type": "cosin"}),
    Case("cli-wrong-type", "sft", r"invalid value for max_length.*'abc'", args=["--max_length", "abc"]),
    Case("batch-size-zero", "sft", r"`per_device_train_batch_size` must be at least 1, got 0", {"per_device_train_batch_size": 0}),
    Case("quantized-base-without-lora", "dpo", r"load_in_4bit/load_in_8bit trains adapters only: set `use_peft: true`",
         {"load_in_4bit": True}),
    Case("dpo-loss-type-typo", "dpo", r"`loss_type` cannot be 'sigmoidd' \(did you mean 'sigmoid'\?\); use one of sigmoid, hinge",
         {"loss_type": ["sigmoidd"]}),
    Case("ppo-without-reward-model", "ppo", r"PPO needs `reward_model_path`: the reward stage's output folder",
         {"reward_model_path": None}),
    # ----------------------------------------------------------------------------------------------- data
    Case("missing-columns", "sft", r"has columns \['answer_text', 'query'\]; a sft data set needs",
         data=_jsonl("d.jsonl", [{"query": "a", "answer_text": "b"}] * 3)),
    Case("reward-without-rejected", "reward", r"has columns \['chosen', 'prompt'\]; a preference data set needs 'chosen' \+ 'rejected'",
         data=_jsonl("d.jsonl", [{"prompt": "a", "chosen": "b"}] * 3)),
    Case("extra-columns-but-rejected-misnamed", "dpo", r"has columns \['chosen', 'prompt', 'rejected_answer', 'score'\]",
         data=_jsonl("d.jsonl", [{"prompt": "a", "chosen": "b", "rejected_answer": "c", "score": 1}] * 3)),
    Case("ppo-data-without-prompts", "ppo", r"a prompts data set needs 'prompt' or 'messages'",
         data=_jsonl("d.jsonl", [{"text": "a"}] * 3)),
    Case("empty-file", "sft", r"d\.jsonl is empty", data=_file("d.jsonl", "")),
    Case("blank-lines", "sft", r"d\.jsonl is empty", data=_file("d.jsonl", "\n  \n\n")),
    Case("csv-header-only", "pretrain", r"d\.csv is empty", data=_file("d.csv", "text\n")),
    Case("malformed-jsonl", "sft", r"d\.jsonl, line 2: malformed JSON",
         data=_file("d.jsonl", '{"messages": []}\n{"messages": [\n')),
    Case("malformed-json", "pretrain", r"d\.json, line 1: malformed JSON", data=_file("d.json", '[{"text": "a"}, {"text": ')),
    Case("not-utf8", "pretrain", r"d\.jsonl, line 2: not valid UTF-8 text\. Re-save the file as UTF-8",
         data=_file("d.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n')),
    Case("empty-cell", "reward", r"d\.jsonl, row 2: column 'rejected' is empty",
         data=_jsonl("d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": ""}])),
    Case("no-assistant-turn", "sft", r"d\.jsonl, row 1: 'messages' has no assistant turn",
         data=_jsonl("d.jsonl", [{"messages": CHAT[:1]}] * 2)),
    # conversations: [system], user, assistant, user, ... with text contents
    Case("assistant-speaks-first", "sft", r"d\.jsonl, row 2: turn 1 of 'messages' is an assistant turn before any user turn",
         data=_jsonl("d.jsonl", [{"messages": CHAT}, {"messages": CHAT[::-1]}])),
    Case("two-user-turns-in-a-row", "sft", r"d\.jsonl, row 1: turn 2 of 'messages' is a second user turn in a row; "
         r"turns must alternate user/assistant", data=_jsonl("d.jsonl", [{"messages": [CHAT[0], *CHAT]}] * 2)),
    Case("system-message-not-first", "sft", r"d\.jsonl, row 1: turn 2 of 'messages' is a system message; only the first",
         data=_jsonl("d.jsonl", [{"messages": [CHAT[0], {"role": "system", "content": "Be brief."}, CHAT[1]]}])),
    Case("null-content", "sft", r"d\.jsonl, row 2: turn 2 of 'messages' has content None; a turn's content must be text",
         data=_jsonl("d.jsonl", [{"messages": CHAT}, {"messages": [CHAT[0], {"role": "assistant", "content": None}]}])),
    Case("number-content", "sft", r"d\.jsonl, line 2: 'messages\[\]\.content' is a number \(42\) where most rows have text",
         data=_jsonl("d.jsonl", [{"messages": CHAT}, {"messages": [CHAT[0], {"role": "assistant", "content": 42}]}])),
    Case("sharegpt-null-value", "sft", r"d\.jsonl, row 1: turn 2 of 'messages' has content None",
         data=_jsonl("d.jsonl", [{"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": None}]}])),
    Case("dpo-answer-repeats-the-users-turn", "dpo", r"d\.jsonl, row 1: turn 1 of 'rejected' is a second user turn in a row",
         data=_jsonl("d.jsonl", [{"prompt": CHAT[:1], "chosen": CHAT[1:], "rejected": CHAT}] * 2)),
    Case("reward-prompt-starts-with-assistant", "reward", r"row 1: turn 1 of 'prompt' is an assistant turn before any user turn",
         data=_jsonl("d.jsonl", [{"prompt": CHAT[1:], "chosen": CHAT[1:], "rejected": CHAT[1:]}] * 2)),
    Case("ppo-prompt-ends-with-assistant", "ppo", r"d\.jsonl, row 1: 'prompt' ends with an assistant turn; a prompt ends with "
         r"the user turn", data=_jsonl("d.jsonl", [{"prompt": CHAT}] * 2)),
    Case("ppo-messages-assistant-first", "ppo", r"d\.jsonl, row 1: turn 1 of 'messages' is an assistant turn before any user",
         data=_jsonl("d.jsonl", [{"messages": CHAT[::-1]}] * 2)),
    # preference pairs
    Case("every-pair-chosen-equals-rejected", "dpo", r"d\.jsonl: 'chosen' is identical to 'rejected' in all 3 pairs",
         data=_jsonl("d.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "4"}] * 3)),
    Case("text-prompt-with-turn-answers", "reward", r"row 1: 'prompt', 'chosen', 'rejected' must all be text or all be lists",
         data=_jsonl("d.jsonl", [{"prompt": "2+2?", "chosen": CHAT[1:], "rejected": CHAT[1:]}] * 2)),
    # CSV rows with more cells than the header
    Case("csv-row-with-an-extra-cell", "sft", r"d\.csv, line 3: 3 cells, but the header has 2 columns \(prompt, completion\)\. "
         r"Quote a cell that contains a comma", data=_file("d.csv", "prompt,completion\n2+2?,4\n3+3?,6,six\n")),
    Case("csv-every-row-one-cell-too-many", "sft", r"d\.csv, line 2: 3 cells, but the header has 2 columns",
         data=_file("d.csv", "prompt,completion\nWhat is 2+2?,Four, I think.\nWhat is 3+3?,Six, I think.\n")),
    Case("data-file-missing", "sft", r"Data file or folder not found: .*nowhere\.jsonl", {"dataset_name": "/nonexistent/nowhere.jsonl"}),
    Case("unsupported-file-type", "sft", r"unsupported file type '\.xml'", data=_file("d.xml", "<a/>")),
    Case("all-rows-longer-than-max-length", "sft", r"All \d+ training rows are longer than max_length=2 and would be dropped",
         {"max_length": 2}),
    Case("all-pairs-longer-than-max-length", "reward", r"All \d+ training pairs are longer than max_length=3",
         {"max_length": 3, "prompt_truncation": "none"}),
    # ----------------------------------------------------------------------------------------------- models
    Case("model-path-missing", "sft", r"folder not found: /nonexistent/model; fix the path", {"model_name_or_path": "/nonexistent/model"}),
    Case("model-folder-empty", "dpo", r"is not a model folder \(no config\.json", model="empty_folder"),
    Case("adapter-base-missing", "sft", r"is an adapter on .*moved_base, which is no longer there; point base_model_name_or_path",
         model="orphan_adapter"),
    Case("adapter-without-weights", "dpo", r"has adapter_config\.json but no adapter weights", model="adapter_without_weights"),
    Case("trust-remote-code-off", "sft", r"runs its own code to load; set `trust_remote_code: true`", model="remote_code"),
    Case("reward-model-missing", "ppo", r"folder not found: /nonexistent/reward", {"reward_model_path": "/nonexistent/reward"}),
    Case("reward-adapter-base-missing", "ppo", r"which is no longer there", reward_model="orphan_adapter"),
    Case("mismatched-tokenizers", "ppo", r"(another tokenizer than the policy|must use the SFT model's tokenizer)",
         reward_model="other_tokenizer"),
    Case("model-path-is-a-file", "sft", r"model\.safetensors is a file; point model_name_or_path at the folder",
         data=None, config={"model_name_or_path": "BASE/model.safetensors"}),
    Case("lora-target-typo", "sft", r"lora_target_modules: q_prj matches no module of .*; use some of .*q_proj",
         {"use_peft": True, "lora_target_modules": ["q_prj", "v_proj"]}),
    Case("chat-template-missing", "sft", r"chat_template_path: .*none\.jinja not found", {"chat_template_path": "/nonexistent/none.jinja"}),
    # ----------------------------------------------------------------------------------------------- output_dir
    Case("output-dir-is-a-file", "sft", r"output_dir .*notes\.txt is a file, not a folder", {"output_dir": "FILE"}),
    Case("output-dir-under-a-file", "sft", r"output_dir .*notes\.txt/run cannot be created: .*notes\.txt is a file",
         {"output_dir": "FILE/run"}),
    Case("output-dir-empty", "sft", r"`output_dir` is empty; set it to a new folder", {"output_dir": ""}),
    # ----------------------------------------------------------------------------------------------- values a trainer rejects late
    Case("learning-rate-negative", "sft", r"`learning_rate` must be positive, got -0\.0001", {"learning_rate": -1e-4}),
    Case("learning-rate-zero-ppo", "ppo", r"`learning_rate` must be positive, got 0", {"learning_rate": 0}),
    Case("epochs-negative", "sft", r"`num_train_epochs` must be positive, got -1", {"num_train_epochs": -1, "max_steps": -1}),
    Case("zero-epochs-zero-steps", "dpo", r"`num_train_epochs: 0` with no `max_steps` trains 0 steps",
         {"num_train_epochs": 0, "max_steps": -1}),
    Case("lora-rank-zero", "sft", r"`lora_r` must be at least 1 \(the adapter's rank\), got 0", {"use_peft": True, "lora_r": 0}),
    Case("lora-dropout-one", "reward", r"`lora_dropout` must be in \[0, 1\), got 1", {"use_peft": True, "lora_dropout": 1.0}),
    Case("duplicate-yaml-key", "sft", r"sft\.yaml \(line \d+\): key 'max_steps' appears twice \(lines \d+ and \d+\); keep one",
         extra_yaml="max_steps: 5\n"),
    # ----------------------------------------------------------------------------------------------- damaged models
    Case("safetensors-cut-short", "sft", r"model\.safetensors is cut short \([\d,]+ of [\d,]+ bytes\); copy it again",
         model="truncated_weights"),
    Case("safetensors-damaged", "dpo", r"model\.safetensors is not a readable safetensors file \(damaged\)", model="damaged_weights"),
    Case("reward-model-is-a-causal-lm", "ppo", r"reward_model_path: .* holds no reward model but a causal LM: it has no trained "
         r"score head", reward_model="base"),
    Case("model-is-an-unfinished-run", "dpo", r"model_name_or_path: .*unfinished_sft holds an unfinished run \(no alignkit_run\.json; "
         r"its last complete checkpoint is checkpoint-1\)\. Finish that run", model="unfinished_sft"),
    Case("reward-model-is-an-unfinished-run", "ppo", r"reward_model_path: .*unfinished_sft holds an unfinished run",
         reward_model="unfinished_sft"),
    Case("resume-from-missing-checkpoint", "sft", r"resume_from_checkpoint: .*checkpoint-9 does not exist",
         {"resume_from_checkpoint": "/nonexistent/checkpoint-9"}),
]


def _good_config(stage: str, good_data, models, out: Path) -> dict:
    config = {
        "model_name_or_path": str(models["base"]),
        "dataset_name": str(good_data["preference" if stage in ("reward", "dpo", "ppo") else "sft"]),
        "output_dir": str(out),
        "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "seed": 0,
    }
    if stage in ("sft", "reward", "dpo", "pretrain"):
        config.update(max_length=64, max_steps=1, activation_checkpointing=False, per_device_train_batch_size=2)
    if stage == "pretrain":
        config["dataset_name"] = str(good_data["sft"])
    if stage == "ppo":
        config.update(reward_model_path=str(models["reward"]), use_peft=True, num_updates=1,
                      per_device_train_batch_size=2, max_new_tokens=2, num_ppo_epochs=1)
    return config


def _write_case(case: Case, folder: Path, good_data, models, out: Path) -> Path:
    config = _good_config(case.stage, good_data, models, out)
    if case.data:
        config["dataset_name"] = str(case.data(folder))
    if case.model:
        config["model_name_or_path"] = str(models[case.model])
    if case.reward_model:
        config["reward_model_path"] = str(models[case.reward_model])
    config.update(case.config)
    if str(config["output_dir"]).startswith("FILE"):  # a file where the output folder (or a folder above it) should go
        config["output_dir"] = str(config["output_dir"]).replace("FILE", str(folder / "notes.txt"))
        (folder / "notes.txt").write_text("not a folder")
    config["model_name_or_path"] = str(config["model_name_or_path"]).replace("BASE", str(models["base"]))
    path = folder / f"{case.stage}.yaml"
    path.write_text(yaml.safe_dump(config) + case.extra_yaml)
    return path


def _call(argv: list[str], capsys) -> tuple[int, str, float]:
    capsys.readouterr()
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code, capsys.readouterr().err, time.monotonic() - start


def _error_message(err: str) -> str:
    """The message alignkit printed (library warnings on stderr before it are not part of it)."""
    assert "alignkit: error:" in err, err
    return err[err.index("alignkit: error:"):].strip()


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_fast_in_a_few_lines_and_writes_nothing(case, good_data, bad_models, tmp_path, capsys):
    out = tmp_path / "out"
    config = _write_case(case, tmp_path, good_data, bad_models, out)

    if case.run:
        code, err, seconds = _call([case.stage, "--config", str(config), *case.args], capsys)
        assert code == 2
        assert "Traceback" not in err
        message = _error_message(err)
        assert re.search(case.expect, message), message
        assert len(message.splitlines()) <= MAX_MESSAGE_LINES, message
        assert seconds < IN_PROCESS_SECONDS
        assert not out.exists()

    code, err, seconds = _call(["check", str(config), "--stage", case.stage, *case.args], capsys)
    assert code == 1
    assert "Traceback" not in err
    assert re.search(case.expect, err), err
    assert seconds < IN_PROCESS_SECONDS
    assert not out.exists()


def test_an_output_dir_holding_a_run_is_refused_and_left_untouched(good_data, bad_models, earlier_run, tmp_path, capsys):
    before = _snapshot(earlier_run)
    config = _write_case(Case("x", "sft", ""), tmp_path, good_data, bad_models, earlier_run)
    code, err, _ = _call(["sft", "--config", str(config)], capsys)
    assert code == 2
    message = _error_message(err)
    assert f"output_dir {earlier_run} already holds a finished run" in message
    assert "--overwrite_output_dir true" in message and "--resume_from_checkpoint true" in message
    code, err, _ = _call(["check", str(config), "--stage", "sft"], capsys)
    assert code == 1 and "already holds a finished run" in err
    assert _snapshot(earlier_run) == before


@pytest.mark.parametrize("case_id", ["learning-rate-abc", "malformed-jsonl", "adapter-base-missing", "all-rows-longer-than-max-length"])
def test_a_failed_run_leaves_an_earlier_run_in_output_dir_untouched(case_id, good_data, bad_models, earlier_run, tmp_path, capsys):
    case = next(c for c in CASES if c.id == case_id)
    before = _snapshot(earlier_run)
    config = _write_case(case, tmp_path, good_data, bad_models, earlier_run)
    for argv in ([case.stage, "--config", str(config), "--overwrite_output_dir", "true"],
                 ["check", str(config), "--stage", case.stage, "--overwrite_output_dir", "true"]):
        code, err, _ = _call(argv, capsys)
        assert code in (1, 2) and re.search(case.expect, err), err
        assert _snapshot(earlier_run) == before


def test_a_config_with_several_problems_lists_every_one(good_data, bad_models, tmp_path, capsys):
    out = tmp_path / "out"
    config = _write_case(
        Case("x", "sft", "", {"learning_rat": 1e-4, "num_train_epochs": [1], "seed": 1.5}), tmp_path, good_data, bad_models, out
    )
    code, err, _ = _call(["sft", "--config", str(config)], capsys)
    assert code == 2 and "learning_rat" in err  # the run stops at the quick key check
    config = _write_case(
        Case("x", "sft", "", {"learning_rat": 1e-4, "num_train_epochs": [1], "seed": 1.5, "dataset_name": "/nonexistent/d.jsonl"},
             model="orphan_adapter"), tmp_path, good_data, bad_models, out,
    )
    code, err, _ = _call(["check", str(config), "--stage", "sft"], capsys)
    assert code == 1
    for expected in ("unknown key 'learning_rat'", "`num_train_epochs` must be a single float", "`seed` must be an int, got 1.5",
                     "Data file or folder not found", "which is no longer there"):
        assert expected in err, err
    assert "5 problems" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------- accelerate presets
@pytest.mark.parametrize(
    "launcher, expect",
    [("DEEPSPEED", "needs CUDA GPUs and this machine has none"), ("FSDP", "needs CUDA GPUs and this machine has none"),
     ("MULTI_CPU", "runs a single process unless started with mpirun")],
)
def test_a_preset_asking_for_gpus_on_a_cpu_machine_is_refused(launcher, expect, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"distributed_type: {launcher}\nnum_processes: 2\nuse_cpu: false\nmixed_precision: bf16\n")
    code, err, seconds = _call(["check", "--accelerate_config", str(preset)], capsys)
    assert code == 1 and f"{preset}: distributed_type: {launcher} {expect}" in err
    assert "Traceback" not in err and seconds < IN_PROCESS_SECONDS


def test_the_multi_gpu_preset_runs_cpu_processes_and_passes(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    preset = tmp_path / "preset.yaml"
    preset.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\nuse_cpu: false\n")
    from alignkit.check import main

    main(["--accelerate_config", str(preset)])  # no SystemExit: nothing wrong
    assert "fits this machine" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- pipeline files
PIPELINE_CASES = {
    "unknown-recipe": ({"recipe": "sfft"}, r"stage 'sft': unknown recipe 'sfft' \(did you mean 'sft'\?\)"),
    "uses-a-later-stage": ({"model": "dpo"}, r"stage 'sft': uses 'dpo' as its model, but 'dpo' runs later"),
    "misspelt-arg": (
        {"args": {"learning_rat": 1e-4}}, r"stage 'sft': unknown key 'learning_rat' in args \(did you mean 'learning_rate'\?\)"
    ),
    "bad-data": ({"args": {"dataset_name": "MISSING"}}, r"stage 'sft': .*Data file or folder not found"),
}


@pytest.mark.parametrize("case_id", sorted(PIPELINE_CASES))
def test_pipeline_file_errors_fail_before_anything_is_written(case_id, good_data, bad_models, tmp_path, capsys):
    change, expect = PIPELINE_CASES[case_id]
    out = tmp_path / "out"
    sft = {"recipe": "sft", "model": "base", "args": {"dataset_name": str(good_data["sft"]), "max_length": 64}}
    dpo = {"recipe": "dpo", "model": "sft", "args": {"dataset_name": str(good_data["preference"])}}
    sft.update(change)
    if sft["args"].get("dataset_name") == "MISSING":
        sft["args"]["dataset_name"] = str(tmp_path / "missing.jsonl")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"base_model": str(bad_models["base"]), "output_dir": str(out),
                                        "stages": {"sft": sft, "dpo": dpo}}, sort_keys=False))
    if case_id != "bad-data":  # a data set is the stage's to check: `alignkit run` finds it when the stage starts
        code, err, seconds = _call(["run", str(pipeline)], capsys)
        assert code == 2 and re.search(expect, _error_message(err)) and "Traceback" not in err
        assert seconds < IN_PROCESS_SECONDS
    code, err, _ = _call(["check", str(pipeline)], capsys)
    assert code == 1 and re.search(expect, err), err
    assert not out.exists()


@pytest.mark.parametrize(
    "stages_yaml, expect",
    [
        ("  sft: {recipe: sft, model: base}\n  sft: {recipe: dpo, model: base}\n", r"key 'sft' appears twice \(lines 4 and 5\)"),
        ("  sft:\n    recipe: sft\n    model: base\n    recipe: dpo\n", r"key 'recipe' appears twice \(lines 5 and 7\)"),
    ],
    ids=["stage-named-twice", "stage-key-twice"],
)
def test_a_pipeline_naming_a_stage_or_key_twice_is_refused_not_silently_merged(stages_yaml, expect, bad_models, tmp_path, capsys):
    out = tmp_path / "out"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"base_model: {bad_models['base']}\noutput_dir: {out}\nstages:\n{stages_yaml}")
    code, err, _ = _call(["run", str(pipeline)], capsys)
    assert code == 2 and re.search(r"pipeline\.yaml \(line \d+\): " + expect + "; keep one", _error_message(err)), err
    code, err, _ = _call(["check", str(pipeline)], capsys)
    assert code == 1 and re.search(expect, err), err
    assert not out.exists()


# ------------------------------------------------------------------------------------------- end to end
ALIGNKIT = Path(sys.executable).parent / "alignkit"


def _alignkit(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run([str(ALIGNKIT), *args], capture_output=True, text=True, env=env, timeout=300)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("case_id", ["yaml-misspelt-key", "not-utf8", "epochs-as-list", "adapter-base-missing"])
def test_the_real_command_exits_non_zero_without_a_traceback(case_id, good_data, bad_models, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    out = tmp_path / "out"
    config = _write_case(case, tmp_path, good_data, bad_models, out)
    proc, seconds = _alignkit(case.stage, "--config", str(config), *case.args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = _error_message(proc.stderr)
    assert re.search(case.expect, message) and len(message.splitlines()) <= MAX_MESSAGE_LINES
    assert seconds < SUBPROCESS_SECONDS
    assert not out.exists()


def test_debug_shows_the_traceback(good_data, bad_models, tmp_path):
    case = next(c for c in CASES if c.id == "yaml-misspelt-key")
    config = _write_case(case, tmp_path, good_data, bad_models, tmp_path / "out")
    proc, _ = _alignkit(case.stage, "--config", str(config), "--debug")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "ConfigError" in proc.stderr


def test_alignkit_check_command_reports_every_problem_and_exits_1(good_data, bad_models, tmp_path):
    config = _write_case(Case("x", "sft", "", {"learning_rate": "abc"}, model="orphan_adapter"), tmp_path, good_data,
                         bad_models, tmp_path / "out")
    proc, seconds = _alignkit("check", str(config), "--stage", "sft")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "2 problems" in proc.stderr and "learning_rate" in proc.stderr and "no longer there" in proc.stderr
    assert not (tmp_path / "out").exists()
