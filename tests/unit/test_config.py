"""Recipe configs: every shipped YAML parses strictly, mistakes are one-line `ConfigError`s, saved configs re-parse."""

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from alignkit.config import (
    CONFIG_FILE_NAME,
    STAGE_ARGS,
    PretrainConfig,
    has_accelerator,
    parse_args,
    resolved_config,
    save_config,
)
from alignkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


def _recipe_yamls() -> list[Path]:
    # recipes/accelerate/ holds Accelerate launcher configs and pipeline.yaml files chain stages (tests/pipeline).
    return sorted(
        p for p in RECIPES.rglob("*.yaml")
        if p.relative_to(RECIPES).parts[0] != "accelerate" and "stages" not in yaml.safe_load(p.read_text(encoding="utf-8"))
    )


def _stage_of(path: Path) -> str:
    """recipes/<folder>/<stage>.yaml, or recipes/<model>/<stage>/<variant>.yaml."""
    return path.stem if path.stem in STAGE_ARGS else path.parent.name


def _parse(stage: str, tmp_path: Path, text: str, *cli: str) -> tuple:
    config = tmp_path / "recipe.yaml"
    config.write_text(text, encoding="utf-8")
    return parse_args(STAGE_ARGS[stage], ["--config", str(config), *cli])


def _config_error(stage: str, args: list[str]) -> str:
    """The message of the ConfigError that parsing `args` raises; it is always a single line."""
    with pytest.raises(ConfigError) as excinfo:
        parse_args(STAGE_ARGS[stage], args)
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def _fields(*configs) -> dict:
    return {f.name: getattr(c, f.name) for c in configs for f in dataclasses.fields(c) if not f.name.endswith("_token")}


# ------------------------------------------------------------------------------------------ shipped recipes
def test_the_recipes_folder_has_yamls_to_check():
    assert _recipe_yamls(), f"no recipe YAML found under {RECIPES}"


@pytest.mark.parametrize("path", _recipe_yamls(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_yaml_parses_strictly_into_its_stages_dataclasses(path):
    stage = _stage_of(path)
    assert stage in STAGE_ARGS, f"{path} is for stage {stage!r}, which has no dataclasses in STAGE_ARGS"
    parsed = parse_args(STAGE_ARGS[stage], ["--config", str(path)])
    assert [type(c) for c in parsed] == list(STAGE_ARGS[stage])
    # Every key landed on a field (strict parsing guarantees it; this guards against a silent pop of keys).
    values = _fields(*parsed)
    for key in yaml.safe_load(path.read_text(encoding="utf-8")).keys() - {"env"}:
        assert key in values, f"{path}: '{key}' is not a field of {stage}'s dataclasses"


# ----------------------------------------------------------------------------------- values and overrides
def test_yaml_values_are_converted_to_their_fields_types(tmp_path):
    # PyYAML reads `1e-4` (no dot) as a string; the field's type makes it a float.
    script, training, model = _parse(
        "sft", tmp_path, "learning_rate: 1e-4\nmax_length: 256\nuse_peft: true\nlora_target_modules: [q_proj, v_proj]\n"
    )
    assert isinstance(training.learning_rate, float) and training.learning_rate == 0.0001
    assert training.max_length == 256
    assert model.use_peft is True
    assert model.lora_target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("flag", [["--learning_rate", "0.5"], ["--learning_rate=0.5"]], ids=["space", "equals"])
def test_command_line_flags_override_the_yaml_and_leave_other_keys_alone(tmp_path, flag):
    _, training, _ = _parse("sft", tmp_path, "learning_rate: 1e-4\nmax_length: 256\n", *flag)
    assert training.learning_rate == 0.5
    assert training.max_length == 256


def test_flags_alone_configure_a_run_without_a_yaml(tmp_path):
    _, training, model = parse_args(
        STAGE_ARGS["sft"],
        ["--output_dir", str(tmp_path), "--model_name_or_path", "some/model", "--num_train_epochs", "2"],
    )
    assert training.output_dir == str(tmp_path)
    assert training.num_train_epochs == 2.0
    assert model.model_name_or_path == "some/model"


def test_an_empty_yaml_gives_the_dataclass_defaults(tmp_path):
    script, training, _ = _parse("sft", tmp_path, "# nothing set yet\n")
    assert script.eval_split_size == 0.05
    assert training.learning_rate == 2e-5


# ---------------------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("learning_rat", "learning_rate"),
        ("per_device_train_batchsize", "per_device_train_batch_size"),
        ("lora_alhpa", "lora_alpha"),
    ],
)
def test_a_misspelt_yaml_key_fails_naming_the_key_and_the_closest_valid_one(tmp_path, key, suggestion):
    config = tmp_path / "recipe.yaml"
    config.write_text(f"output_dir: out\n{key}: 1\n", encoding="utf-8")
    message = _config_error("sft", ["--config", str(config)])
    assert str(config) in message
    assert f"unknown key '{key}'" in message
    assert f"did you mean '{suggestion}'" in message


def test_an_unknown_yaml_key_with_no_close_match_names_no_suggestion(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("zzqx_wibble: 1\n", encoding="utf-8")
    message = _config_error("sft", ["--config", str(config)])
    assert "'zzqx_wibble'" in message
    assert "did you mean" not in message


def test_a_key_of_another_stage_is_unknown_to_this_one(tmp_path):
    # `beta` is a preference-training field; an SFT recipe must not accept (and silently ignore) it.
    config = tmp_path / "recipe.yaml"
    config.write_text("beta: 0.1\n", encoding="utf-8")
    assert "unknown key 'beta'" in _config_error("sft", ["--config", str(config)])


@pytest.mark.parametrize("flag", [["--learning_rat", "0.1"], ["--learning_rat=0.1"]], ids=["space", "equals"])
def test_a_misspelt_command_line_flag_fails_naming_the_closest_valid_one(flag):
    message = _config_error("sft", flag)
    assert "'--learning_rat'" in message
    assert "did you mean 'learning_rate'" in message


def test_an_unknown_command_line_flag_with_no_close_match_names_no_suggestion():
    message = _config_error("pretrain", ["--zzqx_wibble", "1"])
    assert "'--zzqx_wibble'" in message
    assert "did you mean" not in message


# ----------------------------------------------------------------------------------- bad values and files
def test_a_value_of_the_wrong_type_in_the_yaml_is_a_one_line_error_naming_the_field(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("max_length: abc\n", encoding="utf-8")
    message = _config_error("sft", ["--config", str(config)])
    assert "max_length" in message and "'abc'" in message


def test_a_value_of_the_wrong_type_on_the_command_line_is_a_one_line_error_naming_the_field():
    message = _config_error("sft", ["--max_length", "abc"])
    assert "max_length" in message and "'abc'" in message


def test_a_dataclass_rejecting_a_combination_is_a_one_line_config_error_not_a_value_error(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("bf16: true\nfp16: true\n", encoding="utf-8")
    message = _config_error("sft", ["--config", str(config)])
    assert str(config) in message and "fp16" in message and "bf16" in message


def test_a_negative_eval_split_size_is_rejected(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("eval_split_size: -1\n", encoding="utf-8")
    assert "eval_split_size must be >= 0" in _config_error("sft", ["--config", str(config)])


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("output_dir: out\nmax_length: 128\nlearning_rate: 1e-4: oops\nseed: 0\n", encoding="utf-8")
    message = _config_error("sft", ["--config", str(config)])
    assert str(config) in message
    assert "line 3" in message and "not valid YAML" in message


def test_a_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    message = _config_error("sft", ["--config", str(missing)])
    assert "not found" in message and str(missing) in message


def test_config_without_a_path_asks_for_one():
    assert "needs a path" in _config_error("sft", ["--config"])


def test_a_yaml_that_is_a_list_not_a_mapping_is_rejected(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("- learning_rate: 1e-4\n- max_length: 128\n", encoding="utf-8")
    message = _config_error("sft", ["--config", str(config)])
    assert str(config) in message and "mapping" in message and "list" in message


# ------------------------------------------------------------------------------------------ device defaults
@pytest.mark.skipif(has_accelerator(), reason="checks the defaults chosen on a machine without an accelerator")
def test_without_an_accelerator_bf16_defaults_off_and_use_cpu_on(tmp_path):
    from alignkit import stages

    for stage in STAGE_ARGS:
        if stages.get(stage).output == "data":  # writes a data set, trains nothing: no precision to choose
            continue
        _, training, _ = _parse(stage, tmp_path, "seed: 3\n")
        assert training.bf16 is False, stage
        assert training.use_cpu is True, stage


@pytest.mark.skipif(has_accelerator(), reason="checks the defaults chosen on a machine without an accelerator")
def test_explicit_bf16_and_use_cpu_in_the_yaml_are_kept(tmp_path):
    # Kept as written: TrainingArguments accepts bf16 on a CPU (it runs there, slowly), so there is no error.
    _, training, _ = _parse("sft", tmp_path, "bf16: true\n")
    assert training.bf16 is True
    _, training, _ = _parse("sft", tmp_path, "use_cpu: false\n")
    assert training.use_cpu is False


def test_explicit_fp16_is_not_combined_with_a_bf16_default(tmp_path):
    _, training, _ = _parse("sft", tmp_path, "fp16: true\n")
    assert training.fp16 is True and training.bf16 is False


# ------------------------------------------------------------------------------------------------ pretrain
def test_pretrain_packs_with_bfd_split_by_default_unlike_sft(tmp_path):
    _, pretrain, _ = parse_args(STAGE_ARGS["pretrain"], ["--output_dir", str(tmp_path)])
    assert isinstance(pretrain, PretrainConfig)
    assert pretrain.packing is True and pretrain.packing_strategy == "bfd_split"
    _, sft, _ = parse_args(STAGE_ARGS["sft"], ["--output_dir", str(tmp_path)])
    assert sft.packing is False


def test_pretrain_packing_can_be_turned_off_in_the_yaml(tmp_path):
    _, training, _ = _parse("pretrain", tmp_path, "packing: false\npacking_strategy: wrapped\n")
    assert training.packing is False and training.packing_strategy == "wrapped"


# ------------------------------------------------------------------------------------------- saved config
@pytest.mark.parametrize("path", _recipe_yamls(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_a_saved_recipe_config_reparses_strictly_into_equal_values(path, tmp_path):
    stage = _stage_of(path)
    parsed = parse_args(STAGE_ARGS[stage], ["--config", str(path)])
    saved = save_config(tmp_path, *parsed)
    assert saved == tmp_path / CONFIG_FILE_NAME
    assert _fields(*parse_args(STAGE_ARGS[stage], ["--config", str(saved)])) == _fields(*parsed)


def test_a_saved_config_round_trips_lists_mappings_and_enums_and_never_writes_tokens(tmp_path):
    parsed = _parse(
        "sft",
        tmp_path,
        "use_peft: true\nlora_target_modules: [q_proj, v_proj]\nlr_scheduler_type: cosine\n"
        "lr_scheduler_kwargs: {min_lr: 1.0e-5}\neval_split_size: 3\nreport_to: none\nhub_token: hf_FAKESECRET123\n",
    )
    from alignkit.hub import config_token  # the token is kept off the args the Trainer pickles

    assert parsed[1].hub_token is None and config_token(parsed[1].output_dir) == "hf_FAKESECRET123"
    out = tmp_path / "run"
    out.mkdir()
    saved = save_config(out, *parsed)
    text = saved.read_text(encoding="utf-8")
    assert "hf_FAKESECRET123" not in text
    assert not [key for key in yaml.safe_load(text) if key.endswith("_token")]
    reparsed = parse_args(STAGE_ARGS["sft"], ["--config", str(saved)])
    assert reparsed[1].hub_token is None
    assert _fields(*reparsed) == _fields(*parsed)


def test_the_resolved_config_holds_only_values_that_differ_from_the_defaults(tmp_path):
    _, training, model = _parse("sft", tmp_path, "seed: 42\nlearning_rate: 0.5\nmodel_name_or_path: some/model\n")
    resolved = resolved_config(training, model)
    assert resolved["learning_rate"] == 0.5 and resolved["model_name_or_path"] == "some/model"
    assert "seed" not in resolved  # 42 is the default
    assert "max_length" not in resolved


# ----------------------------------------------------------------------------------------------- env block
def test_the_yaml_env_block_is_exported_and_is_not_a_config_key(tmp_path, monkeypatch):
    # setenv then delenv: the variable is unset now, and monkeypatch removes it again after the test.
    monkeypatch.setenv("ALIGNKIT_TEST_VAR", "x")
    monkeypatch.delenv("ALIGNKIT_TEST_VAR")
    _, training, _ = _parse("sft", tmp_path, "max_length: 64\nenv:\n  ALIGNKIT_TEST_VAR: 3\n")
    assert os.environ["ALIGNKIT_TEST_VAR"] == "3"
    assert training.max_length == 64


def test_an_env_block_that_is_not_a_mapping_is_rejected(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("env: [A, B]\n", encoding="utf-8")
    message = _config_error("sft", ["--config", str(config)])
    assert "`env`" in message and "mapping" in message


def test_qlora_without_bitsandbytes_installed_is_one_line_saying_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    args = ["--model_name_or_path", "m", "--dataset_name", "d.jsonl", "--output_dir", str(tmp_path / "out"),
            "--use_peft", "true", "--load_in_4bit", "true"]
    with pytest.raises(ConfigError, match="load_in_4bit/load_in_8bit needs bitsandbytes, which alignkit installs"):
        parse_args(STAGE_ARGS["sft"], args)
    monkeypatch.undo()
    assert parse_args(STAGE_ARGS["sft"], args)[2].load_in_4bit  # installed with alignkit: QLoRA needs nothing more
