"""The quick checks that run before the ML stack is imported must agree with the full parser."""

import json

import pytest

from alignkit import preflight, stages
from alignkit.config import STAGE_ARGS, valid_keys
from alignkit.errors import ConfigError, DataError


@pytest.mark.parametrize("stage", sorted(STAGE_ARGS))
def test_the_shipped_key_list_matches_the_installed_trl_and_transformers(stage):
    # If this fails after an upgrade, run `python -m alignkit.config` to rewrite alignkit/config_keys.json.
    assert stages.known_keys(stage) == {k for k in valid_keys(STAGE_ARGS[stage]) if "-" not in k}


def test_a_misspelt_key_fails_before_the_stack_is_needed(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rat' \\(did you mean 'learning_rate'\\?\\)"):
        preflight.check("sft", ["--config", str(config)])
    with pytest.raises(ConfigError, match="'--lora_rank'"):
        preflight.check("sft", ["--lora_rank", "8"])
    preflight.check("sft", ["--max-length", "64", "--lora_r=8", "--use_peft"])  # dashes, `=`, bare flags are fine


def test_key_lists_for_other_versions_are_not_trusted(tmp_path, monkeypatch):
    stale = tmp_path / "keys.json"
    stale.write_text(json.dumps({"versions": {"trl": "0.0.1", "transformers": "0.0.1"}, "stages": {"sft": []}}))
    monkeypatch.setattr(stages, "KEYS_FILE", stale)
    assert stages.known_keys("sft") is None
    preflight.check("sft", ["--anything_goes", "1"])  # left to the full parser, which knows the installed keys


def test_local_data_is_checked_before_the_stack_is_needed(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "a", "answer_text": "b"}\n')
    with pytest.raises(DataError, match="has columns \\['answer_text', 'query'\\]"):
        preflight.check("sft", ["--dataset_name", str(data)])
