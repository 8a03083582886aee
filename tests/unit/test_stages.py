"""The stage registry: one declaration per stage that the CLI, pipelines, check, memory, cards and report read."""

import dataclasses
import subprocess
import sys

import pytest
from conftest import REPO

from alignkit import data, stages
from alignkit.config import STAGE_ARGS, stage_dataclasses
from alignkit.memory import estimate
from alignkit.pipeline import load_pipeline

DATA_FORMATS = set(data.EXPECTED)  # the formats alignkit.data loads and checks


@pytest.mark.parametrize("name", stages.names())
def test_every_stage_has_a_recipe_configs_a_data_format_and_a_demo_config(name):
    spec = stages.get(name)
    assert (REPO / "recipes" / f"{name}.py").is_file()
    assert (REPO / "recipes" / "demo" / f"{name}.yaml").is_file()
    script, training, model = stage_dataclasses(name)
    assert all(dataclasses.is_dataclass(c) for c in (script, training, model)) and STAGE_ARGS[name][1] is training
    assert spec.data_format in DATA_FORMATS and spec.output in ("policy", "reward_model", "data")
    assert set(spec.inputs) <= set(stages.INPUT_KEYS) and spec.inputs[0] == "model"
    assert stages.known_keys(name) is not None and set(spec.required) <= stages.known_keys(name)


def test_an_unknown_stage_is_named_with_the_known_ones():
    with pytest.raises(Exception, match="unknown stage 'sfft'; expected one of pretrain, sft"):
        stages.get("sfft")


@pytest.mark.parametrize("name", stages.names())
def test_the_memory_estimate_covers_every_stage(name, tiny_base, tmp_path):
    if stages.get(name).output == "data":
        pytest.skip("a data stage (AI feedback) generates and trains nothing: there is no training step to size")
    _, training, model = stage_dataclasses(name)
    extra = {"reward_model_path": str(tiny_base)} if "reward_model_path" in stages.get(name).required else {}
    training_args = training(output_dir=str(tmp_path), bf16=False, use_cpu=True, **extra)
    result = estimate(name, model(model_name_or_path=str(tiny_base)), training_args)
    assert result.total > result.weights > 0


def test_a_pipeline_accepts_exactly_the_registered_recipes(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("base_model: m\nstages:\n  a: {recipe: sft, model: base}\n  b: {recipe: sfx, model: a}\n")
    with pytest.raises(Exception, match=r"unknown recipe 'sfx' \(did you mean 'sft'\?\)\. Use one of " + ", ".join(stages.names())):
        load_pipeline(path)


def test_a_stage_prints_its_options_grouped_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "alignkit", "sft", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    groups = ["alignkit options", "data options", "training options (trl.trainer.sft_config.SFTConfig)", "model options"]
    assert [out.index(g) for g in groups] == sorted(out.index(g) for g in groups)
    assert "--overwrite_output_dir" in out and "--learning_rate" in out and "--lora_r" in out and "--dataset_name" in out
