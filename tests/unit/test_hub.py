"""Pushing stage outputs to the Hub (tested at the HfApi boundary: nothing reaches the network) and merging adapters."""

import json
import os
import shutil
from pathlib import Path

import httpx2
import pytest
import torch
import yaml
from conftest import FAST, run_alignkit, run_stage
from huggingface_hub import HfApi, hf_api
from huggingface_hub.errors import HfHubHTTPError

from alignkit import cli, export, hub, training
from alignkit.config import CONFIG_FILE_NAME, STAGE_ARGS, parse_args
from alignkit.errors import ModelError, OutputDirError

# What a push must upload, by kind of output (see alignkit.hub.PUSH_PATTERNS).
ADAPTER = {"adapter_model.safetensors", "adapter_config.json"}
FULL = {"model.safetensors", "config.json", "generation_config.json"}
TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
CARD_AND_RECORD = {"README.md", CONFIG_FILE_NAME, "alignkit_run.json"}
FAKE_TOKEN = "hf_FAKEpushtoken1234567890abcdef"


class RecordingApi(HfApi):
    """
    The real HfApi up to the network: `upload_folder` chooses the files as it always does, and the repo creation
    and the commit it would send are recorded instead.
    """

    def __init__(self):
        super().__init__(endpoint="https://hub.test")
        self.repos, self.commits, self.cards = [], [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append({"repo_id": repo_id, **kwargs})
        return f"{self.endpoint}/{repo_id}"

    def _validate_yaml(self, content, **kwargs):  # a request to the Hub in the real client
        self.cards.append(content)

    def create_commit(self, repo_id, operations, **kwargs):
        self.commits.append({"repo_id": repo_id, "files": sorted(op.path_in_repo for op in operations), **kwargs})


class FlakyApi(RecordingApi):
    """Repo creation fails with `errors` (one per call) before it works."""

    def __init__(self, errors):
        super().__init__()
        self.errors, self.calls = list(errors), 0

    def create_repo(self, repo_id, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().create_repo(repo_id, **kwargs)


def http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://hub.test/api/repos/create")
    return HfHubHTTPError(f"{status} error", response=httpx2.Response(status, request=request))


@pytest.fixture
def online(monkeypatch):
    """The Hub looks reachable to alignkit (conftest sets HF_HUB_OFFLINE=1), a token is set, and every HfApi that
    alignkit builds is a RecordingApi whose commits go nowhere."""
    api = RecordingApi()
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(hub, "HfApi", lambda: api)
    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)  # upload_folder commits with create_commit
    monkeypatch.setattr(hub.time, "sleep", lambda s: None)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return api


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------------ stage outputs


def stage_args(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out), *FAST,
            "--max_length", "64", "--eval_split_size", "0", "--max_steps", "2", *extra]


LORA = ("--use_peft", "true", "--lora_target_modules", "all-linear", "--learning_rate", "5e-2")


@pytest.fixture(scope="module")
def sft_full(tiny_base, sft_messages_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_full") / "run"
    run_stage("sft", *stage_args(tiny_base, sft_messages_file, out))
    return out


@pytest.fixture(scope="module")
def sft_lora(tiny_base, sft_messages_file, tmp_path_factory):
    """A LoRA SFT run that also saved checkpoints (which a push must leave behind)."""
    out = tmp_path_factory.mktemp("sft_lora") / "run"
    run_stage("sft", *stage_args(tiny_base, sft_messages_file, out, *LORA, "--save_strategy", "steps", "--save_steps", "1"))
    return out


@pytest.fixture(scope="module")
def reward_lora(tiny_base, preference_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward_lora") / "run"
    run_stage("reward", *stage_args(tiny_base, preference_file, out, *LORA))
    return out


@pytest.fixture(scope="module")
def dpo_lora(sft_lora, preference_file, tmp_path_factory):
    """DPO continuing the SFT adapter: TRL saves a frozen `ref/` copy of it beside the trained adapter."""
    out = tmp_path_factory.mktemp("dpo_lora") / "run"
    run_stage("dpo", *stage_args(sft_lora, preference_file, out, "--use_peft", "true", "--learning_rate", "5e-2"))
    return out


# ------------------------------------------------------------------------------------------------------- push


@pytest.mark.parametrize("kind, expected", [
    ("sft_full", FULL | TOKENIZER | CARD_AND_RECORD),
    ("sft_lora", ADAPTER | TOKENIZER | CARD_AND_RECORD),
    ("reward_lora", ADAPTER | TOKENIZER | CARD_AND_RECORD),
    ("dpo_lora", ADAPTER | TOKENIZER | CARD_AND_RECORD),
])
def test_a_push_uploads_exactly_the_weights_tokenizer_template_card_and_record(kind, expected, request, online):
    folder = request.getfixturevalue(kind)
    left_behind = files_in(folder) - expected
    # What the folder holds besides: logs, the pickled args, and for some kinds checkpoints or DPO's ref/ adapter.
    assert {"training_args.bin", "trainer_state.json", "all_results.json"} <= left_behind
    if kind == "sft_lora":
        assert any(f.startswith("checkpoint-1/") for f in left_behind) and any("optimizer" in f for f in left_behind)
    if kind == "dpo_lora":
        assert any(f.startswith("ref/") for f in left_behind)

    url = hub.push_output(folder, f"me/{kind}")

    assert online.repos == [{"repo_id": f"me/{kind}", "token": None, "private": True, "exist_ok": True}]
    [commit] = online.commits
    assert commit["repo_id"] == f"me/{kind}" and commit["files"] == sorted(expected)
    assert hub.files_to_push(folder) == sorted(expected)
    assert url == f"https://hub.test/me/{kind}"


def test_the_reward_adapter_pushed_holds_its_score_head(reward_lora):
    from safetensors.torch import load_file

    config = json.loads((reward_lora / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    assert any("score" in name for name in load_file(reward_lora / "adapter_model.safetensors"))


def test_a_missing_model_card_is_written_before_the_push_and_names_the_repo(sft_lora, tmp_path, online):
    folder = tmp_path / "run"
    shutil.copytree(sft_lora, folder)
    (folder / "README.md").unlink()
    hub.push_output(folder, "me/tiny-chat")
    assert "README.md" in online.commits[0]["files"]
    assert online.cards and 'from_pretrained("me/tiny-chat")' in online.cards[0]


def test_alignkit_push_is_private_unless_public_is_asked(sft_lora, online):
    cli.main(["push", str(sft_lora), "me/a"])
    cli.main(["push", str(sft_lora), "me/b", "--public"])
    assert [(r["repo_id"], r["private"]) for r in online.repos] == [("me/a", True), ("me/b", False)]


def test_server_errors_are_retried_with_growing_waits_then_the_push_goes_through(sft_lora, online, monkeypatch):
    waits = []
    monkeypatch.setattr(hub.time, "sleep", waits.append)
    api = FlakyApi([http_error(503), httpx2.ConnectError("connection reset")])
    hub.push_output(sft_lora, "me/x", api=api, retries=3, backoff=1.5)
    assert api.calls == 3 and waits == [1.5, 3.0]
    assert len(api.commits) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_an_unauthorised_push_fails_at_once_with_the_login_hint(sft_lora, online, status):
    api = FlakyApi([http_error(status)] * 3)
    with pytest.raises(hub.HubError, match=f"Not authorised to write to me/x \\(HTTP {status}\\).*hf auth login.*HF_TOKEN"):
        hub.push_output(sft_lora, "me/x", api=api)
    assert api.calls == 1 and not api.commits


def test_a_hub_that_stays_unreachable_gives_up_after_the_retries_and_says_how_to_push_later(sft_lora, online):
    api = FlakyApi([httpx2.ConnectError("Name or service not known")] * 5)
    with pytest.raises(hub.HubError, match=f"after 3 tries.*alignkit push {sft_lora} me/x") as error:
        hub.push_output(sft_lora, "me/x", api=api, retries=3)
    assert api.calls == 3 and "\n" not in str(error.value)


def test_a_folder_without_a_finished_run_is_refused(tmp_path, tiny_base, online, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["push", str(tiny_base), "me/x"])  # a model folder, but no alignkit run
    assert exit_.value.code == 2
    assert "holds no finished alignkit run (alignkit_run.json is missing)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["push", str(tmp_path / "nowhere"), "me/x"])
    assert "is not a folder" in capsys.readouterr().err
    assert not online.repos


def run_cli(*args, env, timeout=60):
    """The command in a fresh process; a push that hangs (retrying an unreachable Hub) fails on the timeout."""
    return run_alignkit(*args, env=env, timeout=timeout)[0]


def test_offline_the_push_command_fails_at_once_with_one_line(sft_lora):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": FAKE_TOKEN}
    done = run_cli("push", str(sft_lora), "me/x", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "HF_HUB_OFFLINE=1" in done.stderr


def test_without_a_token_the_push_command_says_how_to_log_in(sft_lora, tmp_path):
    env = {k: v for k, v in os.environ.items() if "TOKEN" not in k and not k.startswith("HF_OIDC")}
    env.update(HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path))  # no stored login either
    done = run_cli("push", str(sft_lora), "me/x", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "No Hub token was found" in done.stderr and "hf auth login" in done.stderr and "HF_TOKEN" in done.stderr


def test_push_to_hub_offline_fails_before_anything_is_trained(tiny_base, sft_messages_file, tmp_path):
    args = stage_args(tiny_base, sft_messages_file, tmp_path / "run", "--push_to_hub", "true")
    with pytest.raises(hub.HubError, match="push_to_hub is set, but HF_HUB_OFFLINE=1 keeps alignkit off the Hub.*alignkit push"):
        parse_args(STAGE_ARGS["sft"], args)
    assert not (tmp_path / "run").exists()


def test_push_to_hub_without_a_token_fails_before_anything_is_trained(tiny_base, sft_messages_file, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(hub, "get_token", lambda: None)  # no HF_TOKEN, no stored login
    args = stage_args(tiny_base, sft_messages_file, tmp_path / "run", "--push_to_hub", "true")
    with pytest.raises(hub.HubError, match="push_to_hub is set, but no Hub token was found.*hf auth login.*HF_TOKEN"):
        parse_args(STAGE_ARGS["sft"], args)
    assert not (tmp_path / "run").exists()


def test_push_to_hub_in_a_stage_config_pushes_the_saved_output_with_alignkit_not_the_trainer(
    tiny_base, sft_messages_file, tmp_path, online
):
    out = tmp_path / "run"
    trainer = run_stage("sft", *stage_args(tiny_base, sft_messages_file, out, *LORA, "--push_to_hub", "true",
                                           "--hub_model_id", "me/tiny-sft", "--hub_private_repo", "false",
                                           "--hub_token", "hf_FAKEconfigtoken0987654321zyx"))
    # The Trainer's own push was off: with HF_HUB_OFFLINE=1 still set for it, its repo creation at init would fail.
    assert trainer.args.push_to_hub is False and trainer.args.hub_token is None
    assert online.repos == [{"repo_id": "me/tiny-sft", "token": "hf_FAKEconfigtoken0987654321zyx", "private": False,
                             "exist_ok": True}]
    assert online.commits[0]["files"] == sorted(ADAPTER | TOKENIZER | CARD_AND_RECORD)
    assert 'from_pretrained("me/tiny-sft")' in (out / "README.md").read_text()
    saved = yaml.safe_load((out / CONFIG_FILE_NAME).read_text())
    assert saved["push_to_hub"] is True and saved["hub_model_id"] == "me/tiny-sft" and "hub_token" not in saved


# ------------------------------------------------------------------------------------------------------ merge


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


BATCH = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 2], [11, 12, 13, 14, 15, 2]])}


def test_a_merged_lora_adapter_gives_the_logits_of_base_plus_adapter(sft_lora, tiny_base, tmp_path, online):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export.merge(sft_lora, tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    plain = logits(base, BATCH)
    expected = logits(PeftModel.from_pretrained(base, sft_lora), BATCH)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert (expected - plain).abs().max() > 1e-3, "the adapter must change the logits for this test to mean anything"
    assert torch.allclose(logits(merged, BATCH), expected, atol=1e-5)
    assert {"model.safetensors", "config.json", "chat_template.jinja", "tokenizer.json"} <= files_in(out)
    assert "adapter_config.json" not in files_in(out) and not list(out.glob("*.bin"))
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(sft_lora).chat_template
    # The merged folder is a finished run: pushable, and a later stage's lineage still finds the original base.
    assert json.loads((out / "alignkit_run.json").read_text())["merged_from"] == str(sft_lora)
    assert training.lineage(str(out), None)["base_model"] == str(tiny_base)
    hub.push_output(out, "me/merged")
    assert online.commits[0]["files"] == sorted(FULL | TOKENIZER | CARD_AND_RECORD)


def test_a_merged_reward_adapter_keeps_its_trained_score_head(reward_lora, tiny_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = export.merge(reward_lora, tmp_path / "merged_rm")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    expected = logits(PeftModel.from_pretrained(base, reward_lora), BATCH)
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    assert merged.config.num_labels == 1 and expected.shape == (2, 1)
    assert torch.allclose(logits(merged, BATCH), expected, atol=1e-5)
    assert merged.config.pad_token_id == AutoTokenizer.from_pretrained(out).pad_token_id is not None


def test_merge_refuses_an_output_dir_holding_a_run_and_leaves_it_untouched(sft_lora, sft_full):
    before = {p: p.stat().st_mtime_ns for p in sft_full.rglob("*")}
    with pytest.raises(OutputDirError, match="already holds a finished run"):
        export.merge(sft_lora, sft_full)
    assert {p: p.stat().st_mtime_ns for p in sft_full.rglob("*")} == before


def test_merge_of_a_full_model_says_there_is_no_adapter(sft_full, tmp_path):
    with pytest.raises(ModelError, match="holds a full model, so there is no adapter to merge"):
        export.merge(sft_full, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merging_an_adapter_whose_local_base_moved_names_the_missing_base(sft_lora, tmp_path, capsys):
    moved = tmp_path / "adapter"
    moved.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(sft_lora / name, moved / name)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "old_place" / "base")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["merge", str(moved), "--output_dir", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"is an adapter on {tmp_path / 'old_place' / 'base'}, which is no longer there" in err
    assert "Repo id must be in the form" not in err and not (tmp_path / "merged").exists()


def test_a_qlora_adapter_merges_into_the_full_precision_base(tiny_base, sft_messages_file, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "qlora"
    run_stage("sft", *stage_args(tiny_base, sft_messages_file, run, *LORA, "--load_in_4bit", "true"))
    out = export.merge(run, tmp_path / "merged")
    assert "trained on a 4-bit base; it is merged into the full-precision base" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_base)  # full precision, as merge loads it
    assert torch.allclose(logits(merged, BATCH), logits(PeftModel.from_pretrained(base, run), BATCH), atol=1e-5)


def test_an_adapter_on_a_base_stored_in_4_bit_is_merged_into_the_dequantised_base(sft_lora, tiny_base, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base4 = tmp_path / "base_4bit"  # like the Hub's "*-bnb-4bit" bases: only quantised weights exist
    AutoModelForCausalLM.from_pretrained(tiny_base, quantization_config=BitsAndBytesConfig(load_in_4bit=True)).save_pretrained(base4)
    adapter = tmp_path / "adapter"
    shutil.copytree(sft_lora, adapter, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base4)}))

    out = export.merge(adapter, tmp_path / "merged")
    assert "stored quantised; it is dequantised to full precision before merging" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    expected = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base4).dequantize(), adapter), BATCH)
    assert torch.allclose(logits(merged, BATCH), expected, atol=1e-5)
    full_precision = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter), BATCH)
    assert not torch.allclose(expected, full_precision, atol=1e-3)  # it really is the 4-bit base's weights


# ---------------------------------------------------------------------------------- adapters name their base


@pytest.fixture
def hub_cached_base(tiny_base, tmp_path, monkeypatch):
    """tiny_base as the Hub model `alignkit-test/tiny` in a local Hub cache (offline loads resolve it there)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub_cache"
    repo = cache / "models--alignkit-test--tiny"
    shutil.copytree(tiny_base, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return "alignkit-test/tiny"


def test_adapters_on_a_hub_model_name_it_by_hub_id_through_later_stages(hub_cached_base, sft_messages_file, preference_file, tmp_path):
    sft = tmp_path / "sft"
    run_stage("sft", *stage_args(hub_cached_base, sft_messages_file, sft, *LORA))
    assert json.loads((sft / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_cached_base
    # DPO continuing that adapter: its adapter is again on the Hub base, not on the SFT folder.
    dpo = tmp_path / "dpo"
    run_stage("dpo", *stage_args(sft, preference_file, dpo, "--use_peft", "true"))
    assert json.loads((dpo / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_cached_base
    assert json.loads((dpo / "alignkit_run.json").read_text())["lineage"]["base_model"] == hub_cached_base
    merged = export.merge(dpo, tmp_path / "merged")
    assert (merged / "model.safetensors").is_file()


# ------------------------------------------------------------------------------ merge: the refusal, followed


def test_merge_refusing_an_output_dir_suggests_a_flag_that_works_as_written(sft_lora, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    target = tmp_path / "target"
    shutil.copytree(sft_lora, target, ignore=shutil.ignore_patterns("checkpoint-*"))  # a finished adapter run
    with pytest.raises(SystemExit) as exit_:
        cli.main(["merge", str(sft_lora), "--output_dir", str(target)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err == (
        f"alignkit: error: output_dir {target} already holds a finished run. Pass `--overwrite_output_dir true` to "
        "replace it, or choose another output_dir."
    )
    assert (target / "adapter_config.json").is_file()  # untouched
    suggested = err.split("`")[1].split()  # ["--overwrite_output_dir", "true"], as the stage commands take it
    cli.main(["merge", str(sft_lora), "--output_dir", str(target), *suggested])
    # The run it replaced is gone whole: no adapter file of it is left to make the folder look like an adapter.
    assert "adapter_config.json" not in files_in(target) and (target / "model.safetensors").is_file()
    assert json.loads((target / "alignkit_run.json").read_text())["merged_from"] == str(sft_lora)
    AutoModelForCausalLM.from_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no .previous or .merging left
    with pytest.raises(SystemExit):  # `false` means false
        cli.main(["merge", str(sft_lora), "--output_dir", str(target), "--overwrite_output_dir", "false"])
    cli.main(["merge", str(sft_lora), "--output_dir", str(target), "--overwrite_output_dir"])  # the bare flag still works
