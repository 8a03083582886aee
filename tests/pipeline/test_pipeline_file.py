"""A pipeline file is checked whole before anything trains; every mistake names the file, the stage and the fix."""

import copy
import json

import pytest
import yaml
from conftest import REPO, run_alignkit

from alignkit import stages
from alignkit.errors import ConfigError
from alignkit.outputs import complete_checkpoints
from alignkit.pipeline import load_pipeline
from alignkit.runner import run_pipeline

DEMO = REPO / "recipes" / "demo"
# The demo's pipeline, with absolute config paths so that a copy anywhere finds them.
PIPELINE = {
    "base_model": "${setup.base}",
    "output_dir": "out",
    "setup": "alignkit.demo.run:setup",
    "stages": {
        "pretrain": {"recipe": "pretrain", "config": str(DEMO / "pretrain.yaml"), "model": "base"},
        "sft": {"recipe": "sft", "config": str(DEMO / "sft.yaml"), "model": "pretrain"},
        "reward": {"recipe": "reward", "config": str(DEMO / "reward.yaml"), "model": "sft"},
        "dpo": {"recipe": "dpo", "config": str(DEMO / "dpo.yaml"), "model": "sft", "args": {"beta": 0.1}},
        "ppo": {"recipe": "ppo", "config": str(DEMO / "ppo.yaml"), "model": "sft", "reward_model": "reward"},
    },
}


def write(tmp_path, pipeline, name="pipeline.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def changed(edit):
    pipeline = copy.deepcopy(PIPELINE)
    edit(pipeline)
    return pipeline


def test_the_demo_pipeline_validates_and_feeds_each_stage_the_earlier_stages_outputs(tmp_path):
    pipeline = load_pipeline(DEMO / "pipeline.yaml").validate()
    assert list(pipeline.stages) == ["pretrain", "sft", "reward", "reward_audit", "dpo", "ppo", "grpo", "rloo", "best_of_n"]
    pipeline.output_dir = str(tmp_path)
    pipeline.variables = {"base": "BASE", "pretrain": "P", "sft": "S", "preference": "PREF", "heldout": "H"}
    ppo = pipeline.settings(pipeline.stages["ppo"])
    assert ppo["model_name_or_path"] == str(tmp_path / "sft")
    assert ppo["reward_model_path"] == str(tmp_path / "reward")
    assert ppo["audit_reward_model_path"] == str(tmp_path / "reward_audit")  # watched, never optimised against
    halves = [pipeline.settings(pipeline.stages[name])["dataset_train_split"] for name in ("reward", "reward_audit")]
    assert halves == ["train[:50%]", "train[50%:]"]  # the two reward models never see the same pair
    assert ppo["output_dir"] == str(tmp_path / "ppo")
    assert ppo["dataset_name"] == "PREF"  # inline args (with ${setup.*}) override the config file
    assert ppo["kl_coef"] == yaml.safe_load((REPO / "recipes" / "demo" / "ppo.yaml").read_text())["kl_coef"]  # the rest: ppo.yaml
    assert pipeline.settings(pipeline.stages["pretrain"])["model_name_or_path"] == "BASE"  # `model: base`


def _set(path, value):
    def edit(pipeline):
        *keys, last = path
        target = pipeline
        for key in keys:
            target = target[key]
        if value is None:
            del target[last]
        else:
            target[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, stage, problem, fix",
    [
        (_set(("stages", "sft", "recipe"), "sfft"), "sft", "unknown recipe 'sfft' (did you mean 'sft'?)", "Use one of"),
        (_set(("stages", "dpo", "model"), "sftt"), "dpo", "model 'sftt' is no stage of this pipeline (did you mean 'sft'?)",
         "Name an earlier stage"),
        (_set(("stages", "sft", "model"), "dpo"), "sft", "uses 'dpo' as its model, but 'dpo' runs later",
         "A stage may only use earlier stages (so there can be no cycle)"),
        (_set(("stages", "sft", "model"), "sft"), "sft", "uses its own output as its model", "Name an earlier stage"),
        (_set(("stages", "dpo", "model"), "reward"), "dpo", "model 'reward' is a reward model, not a policy",
         "a reward stage goes in `reward_model`"),
        (_set(("stages", "ppo", "reward_model"), "dpo"), "ppo", "reward_model 'dpo' is a policy (dpo), not a reward model",
         "Name a reward stage"),
        (_set(("stages", "dpo", "reward_model"), "reward"), "dpo", "a dpo stage takes no reward_model", "Remove `reward_model`"),
        (_set(("stages", "dpo", "modle"), "sft"), "dpo", "unknown key 'modle' (did you mean 'model'?)", "Use recipe, config"),
        (_set(("stages", "dpo", "args"), {"learning_rat": 1e-4}), "dpo",
         "unknown key 'learning_rat' in args (did you mean 'learning_rate'?)", "Use a key of the dpo recipe's config"),
        (_set(("stages", "dpo", "args"), {"output_dir": "x"}), "dpo", "args set output_dir", "<output_dir>/<stage>"),
        (_set(("stages", "dpo", "config"), "nowhere/dpo.yaml"), "dpo", "config file", "relative to the pipeline file"),
        (_set(("base_model",), None), "pretrain", "model is `base` but the pipeline sets no base_model", "Add `base_model:"),
        (_set(("stagess",), {}), None, "unknown key 'stagess' (did you mean 'stages'?)", "Use base_model"),
        (_set(("stages",), {}), None, "no stages", "Add `stages:`"),
        (_set(("stages", "dpo", "args"), {"dataset_name": "${setp.data}"}), None, "unknown variable ${setp.data}",
         "${setup.<key>}"),
        (_set(("evaluation",), {"judge": "alignkit.demo.judge:gold_judge"}), None, "evaluation has no prompts", "Add `prompts:"),
    ],
)
def test_a_bad_pipeline_fails_before_anything_runs_naming_file_stage_and_fix(tmp_path, edit, stage, problem, fix):
    path = write(tmp_path, changed(edit))
    with pytest.raises(ConfigError) as caught:
        run_pipeline(path, output_dir=tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(f"{path}: stage '{stage}': " if stage else f"{path}: ")
    assert problem in message and fix in message
    assert not (tmp_path / "out").exists()  # neither setup nor any stage ran


def test_a_cycle_is_caught_as_a_reference_to_a_later_stage(tmp_path):
    pipeline = changed(_set(("stages", "sft", "model"), "dpo"))
    pipeline["stages"]["dpo"]["model"] = "sft"
    with pytest.raises(ConfigError, match="uses 'dpo' as its model, but 'dpo' runs later.*no cycle"):
        load_pipeline(write(tmp_path, pipeline)).validate()


def test_an_unknown_key_in_a_stage_config_file_names_the_file(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text((DEMO / "sft.yaml").read_text() + "lora_rank: 8\n")
    path = write(tmp_path, changed(_set(("stages", "sft", "config"), "sft.yaml")))  # relative to the pipeline file
    with pytest.raises(ConfigError, match=r"stage 'sft': unknown key 'lora_rank' in config file sft.yaml \(did you mean"):
        load_pipeline(path).validate()


def test_set_overrides_a_top_level_key_a_stage_arg_and_a_stage_input(tmp_path):
    path = write(tmp_path, PIPELINE)
    pipeline = load_pipeline(path, ["base_model=some/model", "sft.learning_rate=5e-4", "dpo.model=pretrain",
                                    "evaluation.prompts=p.jsonl"]).validate()
    assert pipeline.base_model == "some/model"
    assert pipeline.stages["sft"].args["learning_rate"] == "5e-4"  # typed by the recipe's parser, as in YAML
    assert pipeline.stages["dpo"].inputs["model"] == "pretrain" and pipeline.evaluation == {"prompts": "p.jsonl"}
    with pytest.raises(ConfigError, match="--set sfr.learning_rate: no stage 'sfr' \\(did you mean 'sft'\\?\\)"):
        load_pipeline(path, ["sfr.learning_rate=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_pipeline(path, ["base_model"])


def _finish(stage_dir):
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "alignkit_run.json").write_text(json.dumps({"stage": stage_dir.name, "metrics": {}}))


def _checkpoint(stage_dir, step, complete=True):
    folder = stage_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_the_plan_skips_finished_stages_resumes_checkpoints_and_reruns_what_depends_on_retrained_stages(tmp_path):
    pipeline = load_pipeline(write(tmp_path, PIPELINE), {"output_dir": str(tmp_path / "out")}).validate()
    out = tmp_path / "out"
    for name in PIPELINE["stages"]:
        _finish(out / name)
    assert set(pipeline.plan().values()) == {"skip"}
    assert pipeline.plan("dpo") == {"pretrain": "skip", "sft": "skip", "reward": "skip", "dpo": "rerun", "ppo": "rerun"}

    # An interrupted reward stage with a complete checkpoint (and a half-written newer one) resumes; its
    # dependant PPO is trained again, while DPO, which does not use it, stays.
    (out / "reward" / "alignkit_run.json").unlink()
    complete = _checkpoint(out / "reward", 40)
    _checkpoint(out / "reward", 80, complete=False)
    assert complete_checkpoints(out / "reward")[-1] == complete
    assert pipeline.plan() == {"pretrain": "skip", "sft": "skip", "reward": "resume", "dpo": "skip", "ppo": "rerun"}

    # An unfinished SFT stage with no checkpoint starts over, and everything after it runs again.
    (out / "sft" / "alignkit_run.json").unlink()
    assert pipeline.plan() == {"pretrain": "skip", "sft": "start", "reward": "rerun", "dpo": "rerun", "ppo": "rerun"}
    with pytest.raises(ConfigError, match="--from dpoo: no such stage \\(did you mean 'dpo'\\?\\)"):
        pipeline.plan("dpoo")


def test_the_command_line_reports_a_bad_pipeline_in_one_line_without_loading_the_stack(tmp_path):
    path = write(tmp_path, changed(_set(("stages", "dpo", "model"), "reward")))
    proc, imported = run_alignkit("run", path, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    policies = ", ".join(name for name in stages.names() if stages.get(name).is_policy)  # every policy stage, in order
    assert proc.stderr.strip().splitlines() == [
        f"alignkit: error: {path}: stage 'dpo': model 'reward' is a reward model, not a policy. `model` must be a "
        f"policy stage ({policies}) or `base`; a reward stage goes in `reward_model`."
    ]
    assert imported == []  # found before the ML stack loads
