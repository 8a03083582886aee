"""The finished marker comes last: `alignkit_run.json` is put in place after everything the output promises (weights,
config, results, the model card made from the record), so whatever moment a run is killed at, a folder marked finished
is complete. Checked by looking at the folder at the very moment the marker is renamed into place."""

import json
import os
from pathlib import Path

import pytest
from conftest import FAST, run_stage

from alignkit import modelcard, outputs


def test_what_is_written_from_the_record_sees_it_before_it_lands(tmp_path):
    record = {"stage": "sft", "metrics": {"train_loss": 1.5}}
    seen = []

    def write_card():
        seen.append((outputs.read_run(tmp_path), (tmp_path / outputs.RUN_FILE_NAME).exists()))

    outputs.finish_run(tmp_path, record, [write_card])
    assert seen == [(record, False)]
    assert json.loads((tmp_path / outputs.RUN_FILE_NAME).read_text()) == record == outputs.read_run(tmp_path)


def test_a_failure_before_the_marker_leaves_the_run_unfinished(tmp_path):
    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        outputs.finish_run(tmp_path, {"stage": "sft"}, [fail])
    assert outputs.read_run(tmp_path) is None and list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError):  # a record JSON cannot hold fails before anything is written
        outputs.finish_run(tmp_path, {"stage": object()}, [lambda: pytest.fail("written before the record was checked")])
    assert list(tmp_path.iterdir()) == []


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_marker_is_put_in_place_last_after_the_card_made_from_it(tiny_base, sft_messages_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    at_marker = []
    replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        if Path(dst).name == outputs.RUN_FILE_NAME:
            at_marker.append(snapshot(out))  # the folder an instant before it is marked finished
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording_replace)
    run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
              "--output_dir", str(out), *FAST, "--max_steps", "2", "--use_peft", "true", "--eval_split_size", "0")
    monkeypatch.undo()

    assert len(at_marker) == 1
    before, after = at_marker[0], snapshot(out)
    assert outputs.RUN_FILE_NAME not in before
    # Everything was there already, and nothing was written after the marker: the finished folder is the folder as
    # it stood, with the record renamed from its temporary name to the marker.
    record_text = before.pop(f".{outputs.RUN_FILE_NAME}.tmp")
    assert after.pop(outputs.RUN_FILE_NAME) == record_text
    assert after == before
    for promised in ("adapter_model.safetensors", "tokenizer.json", "all_results.json", "alignkit_config.yaml",
                     "trainer_state.json", "README.md"):
        assert promised in before
    card = before["README.md"].decode()
    record = json.loads(record_text)
    assert "## Lineage" in card and "## Training metrics" in card  # alignkit's card, not the trainer's placeholder
    assert f"| train_loss | {record['metrics']['train_loss']:.4g} |" in card
    # The card of a finished output is still made from its record on disk, to the same bytes.
    modelcard.write_model_card(out)
    assert (out / "README.md").read_text() == card
