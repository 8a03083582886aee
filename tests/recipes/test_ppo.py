"""The PPO recipe wired to the stages before it: SFT output as policy, reward stage output as reward model."""

import json

import pytest
from conftest import FAST, run_stage, write_jsonl


@pytest.fixture(scope="module")
def stages(tiny_base, sft_messages_file, preference_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_stages")
    run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
              "--output_dir", str(root / "sft"), *FAST, "--max_steps", "4", "--learning_rate", "3e-3")
    prefs = preference_file
    run_stage("reward", "--model_name_or_path", str(root / "sft"), "--dataset_name", str(prefs),
              "--output_dir", str(root / "reward"), *FAST, "--use_peft", "true", "--max_steps", "4", "--max_length", "64")
    return root, prefs


def test_ppo_recipe_trains_a_policy_adapter_from_the_sft_and_reward_stages(stages, tmp_path):
    root, prefs = stages
    # Conversations work as prompts too: the turns before the last assistant turn.
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": p["prompt"] + p["chosen"]}
                                                       for p in map(json.loads, prefs.read_text().splitlines())])
    out = tmp_path / "ppo"
    trainer = run_stage("ppo", "--model_name_or_path", str(root / "sft"), "--reward_model_path", str(root / "reward"),
                        "--dataset_name", str(prompts), "--output_dir", str(out), "--use_peft", "true",
                        "--num_updates", "2", "--per_device_train_batch_size", "8", "--max_new_tokens", "8",
                        "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no", "--seed", "0")
    stats = json.loads((root / "reward" / "alignkit_run.json").read_text())["reward_stats"]
    assert trainer.args.reward_mean == stats["mean"] and trainer.args.reward_std == stats["std"]
    assert len(trainer.log_history) == 2 and all(h["kl"] == h["kl"] for h in trainer.log_history)  # no NaN
    assert (out / "adapter_model.safetensors").is_file() and (out / "value").is_dir()
    record = json.loads((out / "alignkit_run.json").read_text())
    assert record["stage"] == "ppo" and record["lineage"]["parent_stage"] == "sft"
