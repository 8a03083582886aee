"""What a pipeline run does after a crash: stages trained from an input that changed since run again, leftover
`<stage>.previous` folders are resolved or reported, and an input folder holding an unfinished run is refused.
Checked on planted folders (no training); tests/pipeline/test_pipeline_crash.py kills a real run."""

import json
import os
import subprocess

import pytest
import yaml
from conftest import REPO

from alignkit.errors import ConfigError
from alignkit.outputs import unfinished_run
from alignkit.pipeline import STATE_FILE, load_pipeline
from alignkit.runner import _resolve_previous

DEMO = REPO / "recipes" / "demo"
STAGES = {
    "pretrain": {"recipe": "pretrain", "config": str(DEMO / "pretrain.yaml"), "model": "base"},
    "sft": {"recipe": "sft", "config": str(DEMO / "sft.yaml"), "model": "pretrain"},
    "reward": {"recipe": "reward", "config": str(DEMO / "reward.yaml"), "model": "sft"},
    "dpo": {"recipe": "dpo", "config": str(DEMO / "dpo.yaml"), "model": "sft"},
    "ppo": {"recipe": "ppo", "config": str(DEMO / "ppo.yaml"), "model": "sft", "reward_model": "reward"},
}


def pipeline_at(tmp_path, base_model="some/base", **stage_edits):
    stages = {name: {**spec, **stage_edits.get(name, {})} for name, spec in STAGES.items()}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"base_model": base_model, "output_dir": str(tmp_path / "out"), "stages": stages},
                                   sort_keys=False))
    return load_pipeline(path).validate()


def finish(stage_dir, content="1", when=None):
    """A finished run (as far as the plan can tell), its record written at `when` (seconds since the epoch)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    record = stage_dir / "alignkit_run.json"
    record.write_text(json.dumps({"stage": stage_dir.name, "run": content}))
    if when is not None:
        os.utime(record, (when, when))


def record_all(pipeline):
    """What `alignkit run` notes after each stage: the runs of its inputs it was trained from."""
    for stage in pipeline.stages.values():
        pipeline.record_trained(stage)


T0 = 1_700_000_000


def test_a_stage_is_trained_again_when_an_input_run_differs_from_the_one_it_was_trained_from(tmp_path):
    pipeline = pipeline_at(tmp_path)
    out = tmp_path / "out"
    for i, name in enumerate(STAGES):
        finish(out / name, when=T0 + i)
    record_all(pipeline)
    assert set(pipeline.plan().values()) == {"skip"} and pipeline.why == {}
    state = json.loads((out / STATE_FILE).read_text())["stages"]
    assert set(state["ppo"]["trained_from"]) == {"sft", "reward"}

    # SFT trained again (`--from sft`, say) and the process killed before its dependants ran. The new record keeps
    # the old one's time (a copied folder, a coarse clock), so only the digests can tell that the run they were
    # trained from is gone.
    finish(out / "sft", content="2", when=T0 + 1)
    assert pipeline.plan() == {"pretrain": "skip", "sft": "skip", "reward": "rerun", "dpo": "rerun", "ppo": "rerun"}
    assert pipeline.why["dpo"] == "its input sft was trained again after it"
    assert pipeline.why["ppo"] == "its input reward is trained again"  # the first reason found

    # Once DPO is trained again (and noted), it is up to date; the other two are still stale.
    finish(out / "dpo", content="2")
    pipeline.record_trained(pipeline.stages["dpo"])
    assert pipeline.plan() == {"pretrain": "skip", "sft": "skip", "reward": "rerun", "dpo": "skip", "ppo": "rerun"}
    # --from still reruns everything after it.
    assert pipeline.plan("pretrain") == dict.fromkeys(STAGES, "rerun") and pipeline.why["sft"] == "--from pretrain"


def test_without_a_record_an_input_that_finished_after_a_stage_makes_it_stale(tmp_path):
    pipeline = pipeline_at(tmp_path)
    out = tmp_path / "out"
    for i, name in enumerate(STAGES):
        finish(out / name, when=T0 + i)
    assert set(pipeline.plan().values()) == {"skip"}  # an older folder: each stage finished after its inputs
    finish(out / "reward", content="2", when=T0 + 10)  # retrained by a run killed before it noted anything
    assert pipeline.plan() == {"pretrain": "skip", "sft": "skip", "reward": "skip", "dpo": "skip", "ppo": "rerun"}
    assert pipeline.why["ppo"] == "its input reward was trained again after it"

    # A record noted for another run of the stage is not trusted: here PPO was retrained from the new reward model
    # and noted, then its earlier run (trained before that reward model existed) was restored from ppo.previous.
    finish(out / "ppo", content="2", when=T0 + 11)
    record_all(pipeline)
    assert pipeline.plan()["ppo"] == "skip"
    finish(out / "ppo", content="1", when=T0 + 4)
    assert pipeline.plan()["ppo"] == "rerun"


def test_an_interrupted_stage_whose_checkpoints_predate_its_inputs_run_starts_over(tmp_path):
    pipeline = pipeline_at(tmp_path)
    out = tmp_path / "out"
    for i, name in enumerate(STAGES):
        finish(out / name, when=T0 + i)
    record_all(pipeline)
    (out / "dpo" / "alignkit_run.json").unlink()
    checkpoint = out / "dpo" / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    os.utime(checkpoint / "trainer_state.json", (T0 + 5, T0 + 5))
    assert pipeline.plan()["dpo"] == "resume"  # written after SFT's run: resumed
    finish(out / "sft", content="2", when=T0 + 10)
    assert pipeline.plan()["dpo"] == "rerun"  # from an SFT run that is gone: trained again


def test_leftover_previous_folders_are_deleted_when_stale_and_otherwise_kept_with_how_to_restore_them(tmp_path, capsys):
    pipeline = pipeline_at(tmp_path)
    out = tmp_path / "out"
    for name in STAGES:
        finish(out / name)
    # SFT: the new run finished but the process was killed before it deleted the run it replaced.
    finish(tmp_path / "out" / "sft.previous", content="old")
    # DPO: killed part way through an overwrite, the earlier run waits in dpo.previous.
    (out / "dpo" / "alignkit_run.json").unlink()
    finish(tmp_path / "out" / "dpo.previous", content="old")
    leftovers = pipeline.leftovers()
    assert set(leftovers) == {"sft", "dpo"}
    assert leftovers["sft"] == (f"{out}/sft.previous is left over from an overwrite that finished ({out}/sft holds the "
                                "new run); `alignkit run` deletes it")
    assert leftovers["dpo"].endswith(f"To keep the earlier run instead: `rm -rf {out}/dpo && mv {out}/dpo.previous {out}/dpo`")

    _resolve_previous(pipeline, "sft")
    _resolve_previous(pipeline, "dpo")
    printed = capsys.readouterr().out
    assert not (out / "sft.previous").exists() and (out / "dpo.previous" / "alignkit_run.json").is_file()
    assert f"sft: removed {out}/sft.previous" in printed and "dpo: " + leftovers["dpo"] in printed
    # The documented restore works as written.
    subprocess.run(leftovers["dpo"].rsplit("`", 2)[1], shell=True, check=True)
    assert json.loads((out / "dpo" / "alignkit_run.json").read_text())["run"] == "old" and pipeline.leftovers() == {}


# ----------------------------------------------------------------------------------------- unfinished inputs


def model_folder(path, *files):
    path.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", *files):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("{}")
    return path


def test_a_folder_left_by_a_stopped_run_is_unfinished_and_a_plain_model_folder_is_not(tmp_path):
    killed = tmp_path / "killed"
    (killed / "checkpoint-10").mkdir(parents=True)
    (killed / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (killed / "README.md").write_text("placeholder")
    assert unfinished_run(killed) == (
        f"{killed} holds an unfinished run (no alignkit_run.json; its last complete checkpoint is checkpoint-10)")
    # A finished run resumed and killed again: the weights of the earlier finish, the saved config, no record.
    resumed = model_folder(tmp_path / "resumed", "alignkit_config.yaml", "trainer_state.json")
    assert "holds an unfinished run (no alignkit_run.json; it was stopped before it finished)" in unfinished_run(resumed)
    replacing = model_folder(tmp_path / "replacing")
    (tmp_path / "replacing.previous").mkdir()
    assert f"the run it was replacing is in {tmp_path / 'replacing.previous'}" in unfinished_run(replacing)
    # A model from the Hub or another trainer (checkpoints beside its weights) and a finished run are fine.
    assert unfinished_run(model_folder(tmp_path / "hub_model")) is None
    assert unfinished_run(model_folder(tmp_path / "other_trainer", "checkpoint-5/trainer_state.json")) is None
    finished = model_folder(tmp_path / "finished", "alignkit_config.yaml", "alignkit_run.json")
    assert unfinished_run(finished) is None and unfinished_run(tmp_path / "nowhere") is None


def test_a_pipeline_refuses_an_input_folder_holding_an_unfinished_run_before_anything_runs(tmp_path):
    killed = tmp_path / "killed_sft"
    (killed / "checkpoint-3").mkdir(parents=True)
    (killed / "checkpoint-3" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError) as caught:
        pipeline_at(tmp_path, base_model=str(killed))
    assert str(caught.value) == (
        f"{tmp_path / 'pipeline.yaml'}: stage 'pretrain': model_name_or_path {killed} holds an unfinished run (no "
        "alignkit_run.json; its last complete checkpoint is checkpoint-3). Finish that run (rerun its command with "
        "`--resume_from_checkpoint true`, or rerun its pipeline) or point at a finished run's folder."
    )
    with pytest.raises(ConfigError, match=r"stage 'dpo': model_name_or_path .*killed_sft holds an unfinished run"):
        pipeline_at(tmp_path, dpo={"model": str(killed)})
    with pytest.raises(ConfigError, match=r"stage 'ppo': reward_model_path .*killed_sft holds an unfinished run"):
        pipeline_at(tmp_path, ppo={"reward_model": str(killed)})
    # Known only when setup has run (`${setup.base}`): refused when the stage is about to run, nothing written.
    path = tmp_path / "later.yaml"
    path.write_text(yaml.safe_dump({"base_model": "${setup.base}", "setup": "x:y", "output_dir": str(tmp_path / "o"),
                                    "stages": {"sft": STAGES["sft"] | {"model": "base"}}}, sort_keys=False))
    later = load_pipeline(path).validate()
    later.variables = {"base": str(killed)}
    with pytest.raises(ConfigError, match=r"stage 'sft': model_name_or_path .*killed_sft holds an unfinished run"):
        later.stage_args(later.stages["sft"], "start", tmp_path / "sft.yaml")
    assert not (tmp_path / "sft.yaml").exists()
