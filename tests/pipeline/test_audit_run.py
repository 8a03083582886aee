"""The audit reward model end to end (Gao et al.'s over-optimisation check): PPO against a deliberately flawed reward
model (trained on pairs whose "chosen" answer is the bad one) is flagged, because a sound audit reward model, trained
on other pairs and never optimised against, scores its answers lower and lower; PPO against a sound one is not."""

import contextlib
import io
import json

import pytest
import yaml
from conftest import FAST, run_stage, write_jsonl

from alignkit import report
from alignkit.outputs import read_run
from alignkit.ppo import PPOStoppedError
from alignkit.rewards import overoptimisation
from alignkit.runner import run_pipeline

QUICK = dict(zip((k[2:] for k in FAST[::2]), FAST[1::2]))
UPDATES = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory, world, sft_messages_file):
    root = tmp_path_factory.mktemp("audit_data")
    pairs = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples()[:240]]
    swapped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]

    def pair_folder(name, rows):  # a test split of its own: the reward stage records its score statistics on it
        write_jsonl(root / name / "train.jsonl", rows[:64])
        write_jsonl(root / name / "test.jsonl", rows[64:80])
        return str(root / name)

    return {
        "sft": str(sft_messages_file),
        "flawed": pair_folder("flawed", swapped[:80]),  # prefers the rude, wrong or long-winded answer
        "sound": pair_folder("sound", pairs[80:160]),
        "audit": pair_folder("audit", pairs[160:240]),  # disjoint from both
        "heldout": str(write_jsonl(root / "heldout.jsonl", [
            {"prompt": [{"role": "user", "content": q.text}]} for q in world.heldout_questions()[:12]])),
    }


def reward_stage(dataset):
    return {"recipe": "reward", "model": "sft", "args": {**QUICK, "dataset_name": dataset, "max_steps": 40,
                                                         "learning_rate": 1e-3}}


def ppo_stage(reward_model, prompts):
    return {"recipe": "ppo", "model": "sft", "reward_model": reward_model, "args": {
        "dataset_name": prompts, "use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": "all-linear",
        "num_updates": UPDATES, "per_device_train_batch_size": 16, "gradient_accumulation_steps": 2,
        "max_new_tokens": 10, "learning_rate": 1e-3, "lr_scheduler_type": "constant", "kl_coef": 0.02,
        "report_to": "none", "save_strategy": "no", "seed": 0, "logging_steps": 1, "disable_tqdm": True}}


@pytest.fixture(scope="module")
def run(tiny_base, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_run")
    pipeline = {
        "base_model": str(tiny_base),
        "output_dir": str(root / "out"),
        "evaluation": {"prompts": data["heldout"], "max_new_tokens": 8, "audit_reward_model": "reward_audit"},
        "stages": {
            "sft": {"recipe": "sft", "model": "base", "args": {**QUICK, "dataset_name": data["sft"], "max_steps": 40,
                                                               "learning_rate": 3e-3}},
            "reward_flawed": reward_stage(data["flawed"]),
            "reward_sound": reward_stage(data["sound"]),
            "reward_audit": reward_stage(data["audit"]),
            "ppo_flawed": ppo_stage("reward_flawed", data["sound"]),
            "ppo_sound": ppo_stage("reward_sound", data["sound"]),
        },
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        result = run_pipeline(path)
    return result, root / "out", printed.getvalue()


def test_ppo_against_a_flawed_reward_model_is_flagged_by_the_audit_reward_model(run):
    result, out, printed = run
    stages = result["stages"]
    # The set-up: each reward model learned its own pairs (the flawed one's held-out pairs are swapped too).
    assert stages["reward_flawed"]["eval_accuracy"] > 0.5 and stages["reward_audit"]["eval_accuracy"] > 0.5
    flawed = stages["ppo_flawed"]
    history = json.loads((out / "ppo_flawed" / "trainer_state.json").read_text())["log_history"]
    assert flawed["audit_reward"] == [h["audit_score"] for h in history] and len(history) == UPDATES
    assert flawed["overoptimised"] is True
    found = flawed["overoptimisation"]
    print("ppo_flawed:", found, "score", flawed["reward"], "audit", flawed["audit_reward"])
    assert found["optimised_end"] > found["optimised_start"] and found["audit_end"] < found["audit_best"]
    # The run said so, in one line naming both reward models' numbers, and the report and table carry it.
    warning = next(line for line in printed.splitlines() if "over-optimisation" in line)
    assert warning.startswith("[alignkit run] warning: ppo_flawed: over-optimisation:")
    assert f"{found['optimised_end']:.2f}" in warning and f"{found['audit_end']:.2f}" in warning
    assert json.loads((out / "report.json").read_text())["stages"]["ppo_flawed"]["overoptimised"] is True
    assert "warning: ppo_flawed: over-optimisation" in report.format_table(result)
    assert "ppo_flawed: over-optimisation" in (out / "report.md").read_text()


def test_ppo_against_a_sound_reward_model_is_not_flagged(run):
    result, _, printed = run
    assert "ppo_sound: over-optimisation" not in printed
    sound = result["stages"]["ppo_sound"]
    print("ppo_sound: score", sound["reward"], "audit", sound["audit_reward"])
    assert sound["overoptimised"] is False and "overoptimisation" not in sound
    assert len(sound["audit_reward"]) == UPDATES


def test_every_policy_row_shows_both_reward_models_scores(run):
    result, out, _ = run
    stages = result["stages"]
    for name in ("sft", "ppo_flawed", "ppo_sound"):
        assert isinstance(stages[name]["rm_score"], float) and isinstance(stages[name]["audit_rm_score"], float)
    # SFT ran before the audit reward model existed: its score is the one a later stage's evaluation gave it.
    assert stages["sft"]["audit_rm_score"] == stages["ppo_flawed"]["previous_audit_rm_score"]
    assert stages["sft"]["audit_rm_score_from"] == "ppo_flawed"
    table = report.format_table(result).splitlines()
    assert "RM score" in table[0] and "audit RM" in table[0]
    assert "| audit RM |" in (out / "report.md").read_text()
    assert (out / "figures" / "ppo_flawed.png").is_file()


def test_stop_on_overoptimisation_stops_ppo_at_the_first_update_the_rule_fires(run, data, tmp_path):
    result, out, _ = run
    # The same run as ppo_flawed (same seed, deterministic on CPU), now told to stop: it stops where the rule, checked
    # from update 8 on, first fires on its log.
    std = [read_run(out / name)["reward_stats"]["std"] for name in ("reward_flawed", "reward_audit")]
    score, audit = result["stages"]["ppo_flawed"]["reward"], result["stages"]["ppo_flawed"]["audit_reward"]
    first = next(n for n in range(8, UPDATES + 1) if overoptimisation(score[:n], audit[:n], scales=tuple(std)))
    args = ppo_stage("reward_flawed", data["sound"])["args"]
    flags = [f"--{k}={v}" for k, v in args.items()]
    with pytest.raises(PPOStoppedError, match=rf"PPO stopped at update {first}: over-optimisation: the optimised"):
        run_stage("ppo", *flags, "--model_name_or_path", str(out / "sft"), "--reward_model_path", str(out / "reward_flawed"),
                  "--audit_reward_model_path", str(out / "reward_audit"), "--stop_on_overoptimisation", "true",
                  "--output_dir", str(tmp_path / "ppo"))
