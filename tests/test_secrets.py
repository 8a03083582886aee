"""No Hub token reaches a file alignkit writes: configs, logs, trainer state, checkpoints, model card, run record."""

import os
from pathlib import Path

import torch
import yaml
from conftest import FAST, run_stage
from huggingface_hub import HfApi

from alignkit import hub

ENV_TOKEN = "hf_FAKEenvironmentsecret1234567890"
CONFIG_TOKEN = "hf_FAKEconfigsecret0987654321abc"


def test_no_hub_token_is_written_under_output_dir(tiny_base, sft_messages_file, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    # A push at the end of the run, recorded instead of sent, so the token is shown to have been used.
    pushes = []
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: pushes.append(("create_repo", kw["token"])))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: pushes.append(("upload_folder", kw["token"])))
    out = tmp_path / "run"
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_base), "dataset_name": str(sft_messages_file), "output_dir": str(out),
        "hub_token": CONFIG_TOKEN, "push_to_hub": True, "hub_model_id": "me/secret-test",
        "use_peft": True, "max_steps": 2, "save_strategy": "steps", "save_steps": 1,  # checkpoints too
    }))
    run_stage("sft", "--config", str(config), *[a for a in FAST if a not in ("--save_strategy", "no")])

    assert pushes == [("create_repo", CONFIG_TOKEN), ("upload_folder", CONFIG_TOKEN)]
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.relative_to(out).as_posix() for p in files}
    # The files a token could hide in are all there to be checked.
    assert {"alignkit_config.yaml", "alignkit_run.json", "README.md", "trainer_state.json", "training_args.bin",
            "checkpoint-1/training_args.bin", "checkpoint-2/trainer_state.json"} <= names
    for path in files:
        data = path.read_bytes()
        for token in (ENV_TOKEN, CONFIG_TOKEN):
            assert token.encode() not in data, f"{path.relative_to(out)} holds a Hub token"
    # training_args.bin is a pickle of the Trainer's arguments: the token is not in it under any encoding either.
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.hub_token is None and args.push_to_hub is False
    logs = capfd.readouterr()
    assert CONFIG_TOKEN not in logs.out + logs.err and ENV_TOKEN not in logs.out + logs.err


# ------------------------------------------------------------------------------------------------ pipelines


def _secret_pipeline(tmp_path, tiny_base, sft_messages_file, **stage):
    config = tmp_path / "sft.yaml"  # the token in the stage's config file, as a user may write it
    config.write_text(yaml.safe_dump({"hub_token": CONFIG_TOKEN, "push_to_hub": True, "hub_model_id": "me/secret-test",
                                      "env": {"ALIGNKIT_TEST_SETTING": "from-env-block"}}))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(tiny_base), "output_dir": str(tmp_path / "out"), "stages": {"sft": {
        "recipe": "sft", "config": "sft.yaml", "model": "base", **stage,
        "args": {"dataset_name": str(sft_messages_file), "max_steps": 1, "use_peft": True, "report_to": "none"}}}}))
    return path


def test_a_pipeline_hands_a_stage_its_hub_token_through_the_environment_never_a_file(
    tiny_base, sft_messages_file, tmp_path, monkeypatch
):
    from alignkit import runner
    from alignkit.pipeline import Pipeline

    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    monkeypatch.delenv("ALIGNKIT_TEST_SETTING", raising=False)
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)
    pushes, written = [], []

    def record(action):
        def call(self, *args, **kwargs):  # the token the client would send: the one in the environment
            pushes.append((action, kwargs.get("token") or hub.get_token(), os.environ.get("ALIGNKIT_TEST_SETTING")))
        return call

    monkeypatch.setattr(HfApi, "create_repo", record("create_repo"))
    monkeypatch.setattr(HfApi, "upload_folder", record("upload_folder"))
    stage_args = Pipeline.stage_args

    def spy(self, stage, action, config_file):
        args = stage_args(self, stage, action, config_file)
        written.append(config_file.read_text())  # what a kill -9 would leave in the temp folder
        return args

    monkeypatch.setattr(Pipeline, "stage_args", spy)
    runner.run_pipeline(_secret_pipeline(tmp_path, tiny_base, sft_messages_file))

    assert pushes == [("create_repo", CONFIG_TOKEN, "from-env-block"), ("upload_folder", CONFIG_TOKEN, "from-env-block")]
    assert len(written) == 1 and "hub_token" not in written[0] and CONFIG_TOKEN not in written[0]
    assert "push_to_hub: true" in written[0] and "env" not in yaml.safe_load(written[0])
    assert os.environ["HF_TOKEN"] == ENV_TOKEN and "ALIGNKIT_TEST_SETTING" not in os.environ  # as they were
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert CONFIG_TOKEN.encode() not in path.read_bytes(), f"{path} holds the Hub token"


def test_a_stage_under_accelerate_launch_gets_its_hub_token_in_its_environment(
    tiny_base, sft_messages_file, tmp_path, monkeypatch
):
    import subprocess

    from alignkit import runner
    from alignkit.pipeline import load_pipeline

    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    launched = []

    class Launch:  # `accelerate launch`, recorded instead of started
        def __init__(self, command, env):
            config = command[command.index("--config") + 1]
            launched.append({"env": env, "config": Path(config).read_text()})

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Launch)
    pipeline = load_pipeline(_secret_pipeline(tmp_path, tiny_base, sft_messages_file, num_processes=2)).validate()
    runner.run_stage(pipeline, pipeline.stages["sft"], "start")
    (launch,) = launched
    assert launch["env"]["HF_TOKEN"] == CONFIG_TOKEN and launch["env"]["ALIGNKIT_TEST_SETTING"] == "from-env-block"
    assert CONFIG_TOKEN not in launch["config"] and "hub_token" not in launch["config"]
    assert os.environ["HF_TOKEN"] == ENV_TOKEN
