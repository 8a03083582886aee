"""The audit reward model's parts that need no training: the over-optimisation rule, disjoint data slices for two
reward models, and the pipeline's `evaluation.audit_reward_model` (checked, and wired into online stages)."""

import pytest
import yaml
from conftest import write_jsonl

from alignkit.config import ScriptArguments
from alignkit.data import load_data
from alignkit.errors import ConfigError, DataError
from alignkit.pipeline import load_pipeline
from alignkit.rewards import describe_overoptimisation, overoptimisation

# --- the rule ---------------------------------------------------------------------------------------------------------


def test_the_rule_fires_when_the_optimised_score_rises_while_the_audit_score_falls_from_its_best():
    optimised = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]
    audit = [0.0, 0.3, 0.5, 0.5, 0.3, 0.1, -0.1, -0.3]  # rises with it at first, then parts from it (Gao et al.)
    found = overoptimisation(optimised, audit)
    # Windows of 8 // 4 = 2 updates: optimised 0.1 -> 1.3; audit best 0.5 (updates 3-4) -> -0.2.
    assert found == pytest.approx({"optimised_start": 0.1, "optimised_end": 1.3, "audit_best": 0.5, "audit_end": -0.2})
    line = describe_overoptimisation(found)
    assert "0.10 -> 1.30" in line and "0.50 -> -0.20" in line and len(line.splitlines()) == 1


@pytest.mark.parametrize(
    "optimised, audit",
    [
        ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),  # both rise: sound
        ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4], [0.0, 0.05, -0.05, 0.04, -0.04, 0.03, 0.0, -0.03]),  # audit noise
        # The demo's GRPO (30 updates): the audit score rises with the optimised one, then wanders by ~0.2 an update,
        # so some window of it sits above where it ends; its held-out score rose from -1.43 to 2.70.
        ([-0.41, -0.24, 0.08, 0.04, -0.18, -0.24, 0.45, -0.13, 0.12, 0.31, 0.08, -0.27, 0.39, 0.04, 0.15, 0.23, 0.31,
          0.29, 0.16, 0.19, 0.31, 0.3, 0.26, 0.33, 0.26, -0.03, 0.27, 0.23, 0.15, 0.42],
         [-0.81, -0.59, -0.3, -0.17, -0.28, -0.11, -0.01, -0.09, -0.11, -0.18, -0.01, -0.28, -0.19, -0.12, -0.22, 0.07,
          0.13, -0.02, 0.12, -0.06, -0.15, -0.11, 0.26, -0.21, -0.38, -0.26, -0.07, 0.12, 0.06, -0.07]),
        ([1.4, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0], [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]),  # both fall
        ([0.0], [1.0]),  # nothing to compare
    ],
)
def test_the_rule_stays_quiet_unless_the_scores_part(optimised, audit):
    assert overoptimisation(optimised, audit) is None


def test_stage_start_and_end_are_two_points_and_the_tolerance_is_in_each_models_score_scale():
    assert overoptimisation([1.0, 2.0], [0.5, 0.2]) is not None  # before -> after a stage
    # The same change is noise for reward models whose scores spread 5 wide.
    assert overoptimisation([1.0, 2.0], [0.5, 0.2], scales=(5.0, 5.0)) is None


# --- disjoint halves of one data set ----------------------------------------------------------------------------------


def test_dataset_train_split_takes_a_slice_so_two_reward_models_train_on_disjoint_halves(tmp_path, world):
    rows = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples()[:40]]
    write_jsonl(tmp_path / "prefs" / "train.jsonl", rows)
    write_jsonl(tmp_path / "prefs" / "test.jsonl", rows[:4])

    def load(split):
        args = ScriptArguments(dataset_name=str(tmp_path / "prefs"), dataset_train_split=split)
        return load_data(args, "preference")

    first, second = load("train[:50%]"), load("train[50%:]")
    chosen = lambda d: [r["chosen"][0]["content"] for r in d["train"]]  # noqa: E731
    assert chosen(first) == [r["chosen"][0]["content"] for r in rows[:20]]
    assert chosen(second) == [r["chosen"][0]["content"] for r in rows[20:]]
    assert len(first["test"]) == len(second["test"]) == 4  # both keep the data set's own held-out pairs
    with pytest.raises(DataError, match=r"no 'valid\[:50%\]' split \(it has \['test', 'train'\]\).*train\[:50%\]"):
        load("valid[:50%]")


# --- the pipeline key -------------------------------------------------------------------------------------------------


def pipeline_file(tmp_path, audit="reward_audit", ppo_reward="reward", order=None, **evaluation):
    stages = {
        "sft": {"recipe": "sft", "model": "base"},
        "reward": {"recipe": "reward", "model": "sft", "args": {"dataset_train_split": "train[:50%]"}},
        "reward_audit": {"recipe": "reward", "model": "sft", "args": {"dataset_train_split": "train[50%:]"}},
        "dpo": {"recipe": "dpo", "model": "sft"},
        "ppo": {"recipe": "ppo", "model": "sft", "reward_model": ppo_reward},
        "grpo": {"recipe": "grpo", "model": "sft", "reward_model": ppo_reward},
    }
    if order:
        stages = {name: stages[name] for name in order}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "base_model": "org/base", "output_dir": str(tmp_path / "out"),
        "evaluation": {"audit_reward_model": audit, **evaluation}, "stages": stages,
    }, sort_keys=False))
    return path


def test_online_stages_get_the_audit_reward_models_folder_and_are_retrained_with_it(tmp_path):
    pipeline = load_pipeline(pipeline_file(tmp_path)).validate()  # no prompts: the audit is logged in training alone
    for name in ("ppo", "grpo"):
        settings = pipeline.settings(pipeline.stages[name])
        assert settings["audit_reward_model_path"] == str(tmp_path / "out" / "reward_audit")
        assert settings["reward_model_path"] == str(tmp_path / "out" / "reward")
        assert "reward_audit" in pipeline.input_stages(pipeline.stages[name])
    assert "audit_reward_model_path" not in pipeline.settings(pipeline.stages["dpo"])  # offline: nothing to log


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(audit="reward_audti"), "'reward_audti' is no stage of this pipeline (did you mean 'reward_audit'?)"),
        (dict(audit="dpo"), "'dpo' is a dpo stage"),
        (dict(ppo_reward="reward_audit"), "stage 'ppo': optimises against 'reward_audit', the audit reward model"),
        (dict(order=["sft", "reward", "ppo", "reward_audit"]), "stage 'ppo': runs before the audit reward stage"),
    ],
)
def test_an_audit_reward_model_that_is_no_reward_stage_or_is_optimised_against_is_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigError) as excinfo:
        load_pipeline(pipeline_file(tmp_path, **kwargs)).validate()
    assert message in str(excinfo.value) and len(str(excinfo.value).splitlines()) <= 2


def test_stop_on_overoptimisation_without_an_audit_reward_model_is_refused(tmp_path):
    from alignkit.ppo import PPOConfig

    with pytest.raises(ValueError, match="stop_on_overoptimisation needs audit_reward_model_path"):
        PPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", stop_on_overoptimisation=True)
