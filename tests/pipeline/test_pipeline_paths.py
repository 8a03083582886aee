"""Every path in a pipeline file means the same from any working directory: stage configs, chat templates, data sets,
evaluation prompts and accelerate configs are found beside the pipeline file (or the stage config that names them)
before the working directory, and files named from a project root are found from the pipeline file's folder up."""

import subprocess
import sys

import yaml
from conftest import REPO

from alignkit.pipeline import load_pipeline

QWEN = REPO / "recipes" / "qwen2.5-0.5b"


def test_the_shipped_qwen_pipeline_finds_its_chat_template_and_prompts_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(QWEN / "pipeline.yaml").validate()
    assert pipeline.evaluation["prompts"] == str(QWEN / "heldout_prompts.jsonl")
    pipeline.stage_args(pipeline.stages["sft"], "start", tmp_path / "sft.yaml")  # what the recipe is handed
    assert yaml.safe_load((tmp_path / "sft.yaml").read_text())["chat_template_path"] == str(QWEN / "chat_template.jinja")
    # From the repository root the paths stay as written (relative), as before.
    monkeypatch.chdir(REPO)
    pipeline = load_pipeline("recipes/qwen2.5-0.5b/pipeline.yaml").validate()
    assert pipeline.evaluation["prompts"] == "recipes/qwen2.5-0.5b/heldout_prompts.jsonl"
    assert pipeline.settings(pipeline.stages["sft"])["chat_template_path"] == "recipes/qwen2.5-0.5b/chat_template.jinja"


def test_alignkit_check_of_the_qwen_pipeline_from_another_folder_finds_its_chat_template(tmp_path, tiny_base, sft_messages_file):
    proc = subprocess.run(
        [sys.executable, "-m", "alignkit", "check", str(QWEN / "pipeline.yaml"), "--output_dir", str(tmp_path / "out"),
         "--set", f"base_model={tiny_base}", "--set", f"sft.dataset_name={sft_messages_file}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    sft = proc.stdout.split("stage sft (sft):")[1].split("stage reward")[0]
    assert f"chat template from {QWEN / 'chat_template.jinja'}" in sft, proc.stdout
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("  - ")]
    assert problems and not [p for p in problems if "template" in p], problems  # others: the Hub's data sets


def test_paths_beside_the_pipeline_file_win_over_the_working_directorys_and_set_values_are_the_working_directorys(
    tmp_path, monkeypatch
):
    here, cwd = tmp_path / "project" / "pipelines", tmp_path / "elsewhere"
    for folder in (here, cwd):
        (folder / "configs").mkdir(parents=True)
        for name in ("template.jinja", "prompts.jsonl", "data.jsonl", "accelerate.yaml", "other.jsonl"):
            (folder / name).write_text("{}")
    (here / "configs" / "rows.jsonl").write_text("{}")  # beside the stage config only
    (tmp_path / "project" / "shared" / "deepspeed.json").parent.mkdir(parents=True)
    (tmp_path / "project" / "shared" / "deepspeed.json").write_text("{}")  # named from the project root
    (here / "configs" / "sft.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": "some/model", "dataset_name": "rows.jsonl", "chat_template_path": "template.jinja",
        "deepspeed": "shared/deepspeed.json"}))
    path = here / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"output_dir": "out", "evaluation": {"prompts": "prompts.jsonl"}, "stages": {
        "sft": {"recipe": "sft", "config": "configs/sft.yaml"},
        "dpo": {"recipe": "dpo", "model": "sft", "num_processes": 2, "accelerate_config": "accelerate.yaml",
                "args": {"dataset_name": "data.jsonl", "chat_template_path": "template.jinja"}},
        "ppo": {"recipe": "ppo", "model": "sft", "reward_model": "sft.yaml",
                "args": {"dataset_name": "trl-lib/ultrafeedback-prompt"}},
    }}, sort_keys=False))
    monkeypatch.chdir(cwd)
    pipeline = load_pipeline(path, ["dpo.dataset_name=other.jsonl"])
    sft, dpo = pipeline.settings(pipeline.stages["sft"]), pipeline.settings(pipeline.stages["dpo"])
    assert sft["dataset_name"] == str(here / "configs" / "rows.jsonl")
    assert sft["chat_template_path"] == str(here / "template.jinja")
    assert sft["deepspeed"] == str(tmp_path / "project" / "shared" / "deepspeed.json")
    assert sft["model_name_or_path"] == "some/model"  # a Hub id: as written
    assert dpo["chat_template_path"] == str(here / "template.jinja")
    assert dpo["dataset_name"] == "other.jsonl"  # given with --set: the working directory's
    assert pipeline.evaluation["prompts"] == str(here / "prompts.jsonl")
    assert pipeline.accelerate_config_path(pipeline.stages["dpo"]) == here / "accelerate.yaml"
    assert pipeline.settings(pipeline.stages["ppo"])["dataset_name"] == "trl-lib/ultrafeedback-prompt"
    # Files only the working directory has are still found there.
    (here / "template.jinja").unlink()
    (here / "configs" / "rows.jsonl").unlink()
    pipeline = load_pipeline(path)
    assert pipeline.settings(pipeline.stages["sft"])["chat_template_path"] == "template.jinja"
    assert pipeline.settings(pipeline.stages["sft"])["dataset_name"] == "rows.jsonl"
