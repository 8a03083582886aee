"""Model cards written from real (tiny) stage outputs: metadata, lineage, metrics, usage, and nothing local."""

import json
import re
import shutil

import pytest
import yaml
from conftest import FAST, run_stage, write_jsonl
from huggingface_hub import ModelCard

from alignkit.modelcard import SKIPPED_METRICS, write_model_card

FAKE_TOKEN = "hf_" + "FakeTokenForTheModelCardTest1234"


@pytest.fixture(scope="module")
def stages(tiny_base, sft_messages_file, world, tmp_path_factory):
    """A full SFT on the tiny base, then a LoRA reward model and a LoRA DPO policy on the SFT output, each 2 steps,
    trained with a token in the environment (as a user logged in to the Hub would be)."""
    root = tmp_path_factory.mktemp("cards")
    rows = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples()[:48]]
    preference = write_jsonl(root / "data" / "preference.jsonl", rows)
    lora = ["--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", FAKE_TOKEN)
        common = [*FAST, "--max_steps", "2"]
        run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
                  "--output_dir", str(root / "sft"), *common)
        run_stage("reward", "--model_name_or_path", str(root / "sft"), "--dataset_name", str(preference),
                  "--output_dir", str(root / "reward"), *common, *lora, "--lora_target_modules", "all-linear")
        run_stage("dpo", "--model_name_or_path", str(root / "sft"), "--dataset_name", str(preference),
                  "--output_dir", str(root / "dpo"), *common, *lora, "--lora_target_modules", "q_proj", "v_proj")
    return root


def card_parts(path):
    """(YAML metadata, Markdown body) of a README.md, read the way the Hub reads it."""
    card = ModelCard.load(path)
    return card.data.to_dict(), card.text


def table(body: str, heading: str) -> dict[str, str]:
    section = body.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\S+) \| (\S+) \|$", section, re.M))
    rows.pop("metric", None), rows.pop("---", None)  # the header rows
    return rows


def test_every_stage_run_writes_a_hub_card_in_place_of_the_placeholder(stages):
    for stage in ("sft", "reward", "dpo"):
        text = (stages / stage / "README.md").read_text()
        assert text.startswith("---\n") and "Model Card for Model ID" not in text, stage
        meta, body = card_parts(stages / stage / "README.md")
        assert meta["tags"][:3] == ["alignkit", "trl", stage]
        assert body.startswith(f"\n# {stage}\n")


def test_metadata_parses_and_names_library_pipeline_and_adapter_tags(stages):
    expected = {
        "sft": ("transformers", "text-generation"),
        "reward": ("peft", "text-classification"),
        "dpo": ("peft", "text-generation"),
    }
    for stage, (library, pipeline_tag) in expected.items():
        meta = yaml.safe_load((stages / stage / "README.md").read_text().split("---\n")[1])
        assert meta["library_name"] == library and meta["pipeline_tag"] == pipeline_tag, stage
        assert ("lora" in meta["tags"]) == (library == "peft"), stage
        # The base and the data are local folders here, so the metadata (Hub ids only) names neither.
        assert "base_model" not in meta and "datasets" not in meta, stage


def test_no_absolute_path_or_token_appears_in_any_card(stages):
    for stage in ("sft", "reward", "dpo"):
        text = (stages / stage / "README.md").read_text()
        assert str(stages) not in text and str(stages.parent) not in text, stage
        assert "/tmp" not in text and FAKE_TOKEN not in text, stage


def test_lineage_lists_the_base_and_the_parent_stage_with_its_data_and_settings(stages):
    _, body = card_parts(stages / "dpo" / "README.md")
    lineage = body.split("## Lineage\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in lineage.splitlines() if line.strip()]
    assert lines[0] == "1. **base model**: `tiny_base0`"
    assert lines[1].startswith("2. **sft** `sft`: supervised fine-tuning (SFT) on `train.jsonl`;")
    assert "max_steps=2" in lines[1] and "use_peft" not in lines[1]  # the parent was a full fine-tune
    assert lines[2].startswith("3. **dpo** `dpo` (this model): Direct Preference Optimization (DPO) on `preference.jsonl`;")
    assert "lora_r=8" in lines[2] and "lora_target_modules=q_proj, v_proj" in lines[2]


def test_metrics_in_the_card_equal_the_stage_record(stages):
    for stage in ("sft", "reward", "dpo"):
        record = json.loads((stages / stage / "alignkit_run.json").read_text())
        shown = table(card_parts(stages / stage / "README.md")[1], "Training metrics")
        expected = {k: v for k, v in record["metrics"].items() if not any(s in k for s in SKIPPED_METRICS)}
        if stage != "sft":  # exp(eval_loss) is a perplexity only for a language-modelling loss
            assert "perplexity" not in shown and "perplexity" not in record["metrics"]
        assert set(shown) >= set(expected) and expected, stage
        for name, value in expected.items():
            assert float(shown[name]) == pytest.approx(value, rel=1e-3, abs=1e-12), (stage, name)
    stats = json.loads((stages / "reward" / "alignkit_run.json").read_text())["reward_stats"]
    shown = table(card_parts(stages / "reward" / "README.md")[1], "Training metrics")
    assert float(shown["reward_accuracy"]) == pytest.approx(stats["accuracy"], rel=1e-3)


def test_evaluation_table_is_added_when_given(stages, tmp_path):
    out = tmp_path / "dpo"
    shutil.copytree(stages / "dpo", out)
    shutil.copytree(stages / "sft", tmp_path / "sft")
    # A pipeline report's row for the stage: numbers, and labels, examples and curves that are no table rows.
    evaluation = {"gold_correctness": 0.8125, "kl_to_sft": 0.0421, "rm_win_rate_vs_sft": None, "status": "trained",
                  "output_dir": str(out), "examples": [{"prompt": "Q", "answer": "A"}], "reward": [0.1, 0.2],
                  "metrics": {"train_loss": 1.0}, "train_seconds": 12.5}
    assert "## Evaluation" not in card_parts(out / "README.md")[1]
    write_model_card(out, evaluation=evaluation)
    shown = table(card_parts(out / "README.md")[1], "Evaluation")
    assert shown == {"gold_correctness": "0.8125", "kl_to_sft": "0.0421"}
    assert str(tmp_path) not in (out / "README.md").read_text()


def test_usage_shows_how_to_load_each_kind(stages):
    sft, reward, dpo = (card_parts(stages / s / "README.md")[1] for s in ("sft", "reward", "dpo"))
    assert 'AutoModelForCausalLM.from_pretrained("sft")' in sft and "peft" not in sft.split("## How to use")[1]
    assert 'AutoPeftModelForCausalLM.from_pretrained("dpo")' in dpo
    assert 'AutoModelForSequenceClassification.from_pretrained("sft", num_labels=1)' in reward
    assert 'PeftModel.from_pretrained(base, "reward")' in reward
    # The adapters sit on a local folder, which a Hub user does not have: the card says what to do.
    assert "`sft`, a local folder" in dpo and "`sft`, a local folder" not in sft


def test_hub_ids_go_into_the_metadata_and_a_moved_parent_is_found_beside_the_stage(stages, tmp_path):
    for stage in ("sft", "dpo"):
        shutil.copytree(stages / stage, tmp_path / stage)
    for stage, dataset in (("sft", "HuggingFaceH4/ultrachat_200k"), ("dpo", "trl-lib/ultrafeedback_binarized")):
        path = tmp_path / stage / "alignkit_run.json"
        record = json.loads(path.read_text())
        record["lineage"].update(base_model="Qwen/Qwen2.5-0.5B", dataset=dataset)
        if stage == "dpo":  # recorded where it was trained, which is gone now
            record["lineage"]["parent"] = "/gone/elsewhere/sft"
        path.write_text(json.dumps(record))
    write_model_card(tmp_path / "dpo")
    meta, body = card_parts(tmp_path / "dpo" / "README.md")
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B"
    assert meta["datasets"] == ["HuggingFaceH4/ultrachat_200k", "trl-lib/ultrafeedback_binarized"]
    assert "2. **sft** `sft`: supervised fine-tuning (SFT) on `HuggingFaceH4/ultrachat_200k`" in body
    assert "/gone" not in body


def test_a_token_that_reached_a_recorded_value_is_redacted(stages, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "sft"
    shutil.copytree(stages / "sft", out)
    record = json.loads((out / "alignkit_run.json").read_text())
    record["lineage"]["dataset"] = f"someone/{FAKE_TOKEN}"  # e.g. pasted into the wrong field
    (out / "alignkit_run.json").write_text(json.dumps(record))
    write_model_card(out)
    text = (out / "README.md").read_text()
    assert FAKE_TOKEN not in text and "someone/<redacted>" in text


def test_a_folder_without_a_finished_run_has_no_card(tmp_path):
    with pytest.raises(FileNotFoundError, match="alignkit_run.json"):
        write_model_card(tmp_path)
