"""recipes/qwen2.5-0.5b/cai.yaml cannot run here (no Hub): its files are checked as `alignkit run` would read them."""

import pytest
import yaml
from conftest import REPO

from alignkit.config import STAGE_ARGS, parse_args
from alignkit.pipeline import load_pipeline

PIPELINE = REPO / "recipes" / "qwen2.5-0.5b" / "cai.yaml"
BASE = "Qwen/Qwen2.5-0.5B-Instruct"


def test_the_cai_pipeline_validates_and_wires_ai_labels_into_reward_and_dpo():
    pipeline = load_pipeline(PIPELINE).validate()
    assert pipeline.base_model == BASE and list(pipeline.stages) == ["critique_revise", "ai_feedback", "reward", "dpo"]
    settings = {name: pipeline.settings(stage) for name, stage in pipeline.stages.items()}
    out = pipeline.output_dir
    assert settings["critique_revise"]["model_name_or_path"] == BASE
    assert all(settings[name]["model_name_or_path"] == f"{out}/critique_revise" for name in ("ai_feedback", "reward", "dpo"))
    assert settings["reward"]["dataset_name"] == settings["dpo"]["dataset_name"] == f"{out}/ai_feedback/preference"
    assert settings["critique_revise"]["constitution"] == settings["ai_feedback"]["constitution"] == "default"


def test_each_resolved_stage_config_parses_strictly_as_the_runner_gives_it(tmp_path):
    pipeline = load_pipeline(PIPELINE).validate()
    for name, stage in pipeline.stages.items():
        args = pipeline.stage_args(stage, "start", tmp_path / f"{name}.yaml")
        script_args, training_args, model_args = parse_args(STAGE_ARGS[stage.recipe], args)
        assert training_args.output_dir == str(pipeline.stage_dir(name))
        assert model_args.use_peft and model_args.dtype == "auto"  # LoRA in the checkpoint's bf16, as the other recipes
        pinned = yaml.safe_load((PIPELINE.parent / stage.config).read_text())["model_revision"]
        assert model_args.model_revision == pinned


@pytest.mark.parametrize("stage", ["critique_revise", "ai_feedback"])
def test_the_prompts_are_disjoint_slices_of_a_hub_prompt_data_set(stage, tmp_path):
    config = PIPELINE.parent / "cai" / f"{stage}.yaml"
    script_args, _, _ = parse_args(STAGE_ARGS[stage], ["--config", str(config), "--model_name_or_path", BASE,
                                                       "--output_dir", str(tmp_path)])
    (source,) = script_args.datasets
    assert source.path == "trl-lib/ultrafeedback-prompt"
    assert source.split == {"critique_revise": "train[:4000]", "ai_feedback": "train[4000:12000]"}[stage]
