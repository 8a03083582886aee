"""critique_revise and ai_feedback under `accelerate launch` with 2 CPU processes: the ranks share out the prompts,
and what they generated is gathered into one output, written once."""

import json

import pytest
from conftest import write_jsonl  # tests/conftest.py

from launch.conftest import accelerate_launch

pytestmark = pytest.mark.launch

QUESTIONS = ["What color is the fox?", "Where does the owl live?", "What does the bat eat?", "What color is the yak?",
             "Where does the eel live?"]


def test_ai_feedback_labels_every_prompt_once_across_two_processes(tiny_base, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS])
    out = tmp_path / "out"
    # Before the processes formed one group, each one took itself for the main process and the second was refused
    # the output folder the first had taken.
    accelerate_launch("recipes/ai_feedback.py", ["--model_name_or_path", tiny_base, "--dataset_name", prompts,
                                                 "--output_dir", out, "--max_new_tokens", "6", "--seed", "0"])
    run = json.loads((out / "alignkit_run.json").read_text())
    assert run["metrics"]["pairs"] == len(QUESTIONS)  # 3 prompts on rank 0 and 2 on rank 1, gathered
    rows = [json.loads(line) for line in (out / "preference" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == run["metrics"]["kept"] and all(r["prompt"][0]["content"] in QUESTIONS for r in rows)


def test_critique_revise_gathers_every_prompts_revision_in_order_across_two_processes(tiny_base, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS])
    out = tmp_path / "out"
    accelerate_launch("recipes/critique_revise.py", [
        "--model_name_or_path", tiny_base, "--dataset_name", prompts, "--output_dir", out, "--max_new_tokens", "6",
        "--do_sample", "true", "--eval_split_size", "0", "--max_steps", "1", "--report_to", "none",
        "--save_strategy", "no", "--per_device_train_batch_size", "2", "--seed", "0",
        "--activation_checkpointing", "false"])
    records = [json.loads(line) for line in (out / "critique_revise.jsonl").read_text().splitlines()]
    assert [r["prompt"][0]["content"] for r in records] == QUESTIONS
    assert json.loads((out / "alignkit_run.json").read_text())["critique_revise"]["prompts"] == len(QUESTIONS)
