"""No Hub token reaches a file alignkit writes: configs, logs, trainer state, checkpoints, model card, run record."""

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
