"""
Kill a real `alignkit <stage>` process with SIGKILL once it has saved a checkpoint, leave a half-written checkpoint
after it (as a kill during a save does), resume with `--resume_from_checkpoint true`, and get the run an
uninterrupted one gets: the same loss (and every other logged number) at every step, bit-identical weights, and the
same run-level figures (`train_loss` and the rest) in `all_results.json`, `alignkit_run.json` and the model card.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, run_stage, write_jsonl
from safetensors.torch import load_file

from alignkit import outputs

SAVE_STEPS = 2
COMMON = ["--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--save_strategy", "steps",
          "--save_steps", str(SAVE_STEPS), "--logging_steps", "1", "--per_device_train_batch_size", "8",
          "--use_peft", "true", "--learning_rate", "5e-3"]
# Differ between an interrupted run and an uninterrupted one: wall-clock time, and TRL SFT's `num_tokens`, a running
# total that TRL keeps outside the checkpoint (`_total_train_tokens`), so it counts from 0 again after a resume.
NOT_RESTORED = ("runtime", "per_second", "time", "num_tokens")


@pytest.fixture(scope="module")
def inputs(tiny_base, sft_messages_file, world, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_inputs")
    examples = world.preference_examples()[:48]
    prefs = write_jsonl(root / "prefs.jsonl", [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in examples])
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": ex["prompt"]} for ex in examples])
    return {"base": tiny_base, "sft_data": sft_messages_file, "prefs": prefs, "prompts": prompts, "root": root}


@pytest.fixture(scope="module")
def ppo_stages(inputs):
    """The SFT and reward outputs PPO starts from (trained in-process: only PPO itself is killed)."""
    root = inputs["root"]
    fast = ["--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--seed", "0"]
    run_stage("sft", "--model_name_or_path", str(inputs["base"]), "--dataset_name", str(inputs["sft_data"]),
              "--output_dir", str(root / "sft"), *fast, "--use_peft", "true", "--max_steps", "2",
              "--eval_split_size", "0")
    run_stage("reward", "--model_name_or_path", str(root / "sft"), "--dataset_name", str(inputs["prefs"]),
              "--output_dir", str(root / "reward"), *fast, "--use_peft", "true", "--max_steps", "2",
              "--max_length", "64", "--eval_split_size", "0")
    return root / "sft", root / "reward"


def stage_args(stage, inputs, ppo_stages, out):
    if stage == "ppo":
        sft, reward = ppo_stages
        return ["--model_name_or_path", str(sft), "--reward_model_path", str(reward),
                "--dataset_name", str(inputs["prompts"]), "--output_dir", str(out), *COMMON,
                "--num_updates", "6", "--max_new_tokens", "8"]
    data = inputs["sft_data"] if stage == "sft" else inputs["prefs"]
    # 12 steps of 8 rows: more than one pass over the data, so resuming must also restore the data order.
    return ["--model_name_or_path", str(inputs["base"]), "--dataset_name", str(data), "--output_dir", str(out),
            *COMMON, "--max_steps", "12", "--eval_split_size", "0", "--max_length", "64"]


def start(stage, args, log):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "alignkit", stage, *args], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def kill_after_first_checkpoint(proc, out, log, timeout=120):
    deadline = time.time() + timeout
    while not outputs.complete_checkpoints(out):
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / outputs.RUN_FILE_NAME).exists(), "killed too late: the run had finished"


def leave_half_written_checkpoint(out):
    """What a kill during a save leaves: the next checkpoint's folder, its weights cut short, no trainer_state.json."""
    latest = outputs.complete_checkpoints(out)[-1]
    partial = out / f"checkpoint-{int(latest.name.split('-')[1]) + SAVE_STEPS}"
    partial.mkdir(exist_ok=True)
    (partial / "trainer_state.json").unlink(missing_ok=True)
    (partial / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    return latest, partial


def step_logs(out):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [{k: v for k, v in h.items() if not any(t in k for t in NOT_RESTORED)} for h in history
            if "loss" in h or "policy_loss" in h]  # per-step entries, not the end-of-run summary


def run_metrics(out):
    """The run-level figures, as `all_results.json`, `alignkit_run.json` and the model card report them."""
    results = json.loads((out / "all_results.json").read_text())
    assert json.loads((out / outputs.RUN_FILE_NAME).read_text())["metrics"] == results
    card = (out / "README.md").read_text()
    table = card[card.index("## Training metrics"):].split("\n## ")[0]
    restored = {k: v for k, v in results.items() if not any(t in k for t in NOT_RESTORED)}
    return restored, table, results


def seconds_before_resuming(checkpoint):
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if "stateful_callbacks" in state:  # the HF Trainer's checkpoints
        return state["stateful_callbacks"]["RunTotals"]["attributes"]["train_seconds"]
    return state["train_seconds"]  # alignkit's PPO trainer's


def final_weights(out):
    return {str(p.relative_to(out)): load_file(p) for p in sorted(out.rglob("*.safetensors"))
            if not p.relative_to(out).parts[0].startswith("checkpoint-")}


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "ppo"])
def test_a_run_killed_mid_training_resumes_to_the_same_losses_and_weights(stage, inputs, tmp_path, request):
    ppo_stages = request.getfixturevalue("ppo_stages") if stage == "ppo" else None
    # The uninterrupted run and the one to kill run side by side, each in a fresh process as a user runs them.
    reference, reference_log = tmp_path / "uninterrupted", tmp_path / "uninterrupted.txt"
    uninterrupted = start(stage, stage_args(stage, inputs, ppo_stages, reference), reference_log)
    out, log = tmp_path / "killed", tmp_path / "log.txt"
    kill_after_first_checkpoint(start(stage, stage_args(stage, inputs, ppo_stages, out), log), out, log)
    latest, partial = leave_half_written_checkpoint(out)
    stamp = (latest / "trainer_state.json").stat().st_mtime_ns

    resumed = start(stage, [*stage_args(stage, inputs, ppo_stages, out), "--resume_from_checkpoint", "true"], log)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert f"Removing {partial}" in log.read_text()  # the half-written checkpoint was not resumed from
    # It continued from the checkpoint rather than starting over (which would have written that checkpoint again).
    assert (latest / "trainer_state.json").stat().st_mtime_ns == stamp
    assert uninterrupted.wait(timeout=300) == 0, reference_log.read_text()[-3000:]

    expected, got = step_logs(reference), step_logs(out)
    assert len(got) == len(expected) >= 6
    assert got == expected  # every logged number at every step, exactly
    want, have = final_weights(reference), final_weights(out)
    assert want.keys() == have.keys() and want
    for name, tensors in want.items():
        assert tensors.keys() == have[name].keys()
        for key, tensor in tensors.items():
            assert torch.equal(have[name][key], tensor), f"{name}: {key} differs after resuming"
    assert json.loads((out / outputs.RUN_FILE_NAME).read_text())["stage"] == stage

    # The run's figures are the whole run's, not those of the steps after the resume: the same train_loss (the mean
    # over every step, to the last bit), epoch and the rest; the time spent before the kill counts in train_runtime.
    (want, want_card, _), (have, have_card, resumed_results) = run_metrics(reference), run_metrics(out)
    assert have == want and have
    assert ("train_loss" in have) == (stage != "ppo")  # PPO reports its own losses, the last update's
    assert have_card == want_card and "| train_loss |" in have_card or stage == "ppo"
    assert resumed_results["train_runtime"] > seconds_before_resuming(latest) > 0
    if stage != "ppo":  # the end-of-run summary in the log history says the same
        summary = json.loads((out / "trainer_state.json").read_text())["log_history"][-1]
        assert summary["train_loss"] == have["train_loss"]
