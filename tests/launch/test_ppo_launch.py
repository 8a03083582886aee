"""
PPO under `accelerate launch` with 2 CPU processes: each rank samples its own prompts, every batch statistic spans
both ranks, both ranks end with the same weights, and the outputs are written once.

This file is also the launched script (`__main__` below): it runs the PPO recipe as `alignkit ppo` does, then
every rank saves its trainable weights (tests/launch/rank_dump.py) and what it computed locally — each update's
rollout tensors and the log — so the test can recompute the all-rank statistics from both ranks' data.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.launch

PROCESSES, BATCH, MINI_BATCHES, UPDATES = 2, 4, 2, 2
LOCAL_BATCH = BATCH * MINI_BATCHES  # prompts each rank samples per update
TARGET_KL, KL_HORIZON, KL_COEF = 0.01, 100, 0.2


@pytest.fixture(scope="module")
def ppo_launch(tiny_base, sft_messages_file, world, tmp_path_factory):
    """SFT and reward stages in-process (a LoRA adapter each), then one 2-process launch of PPO on them."""
    from launch.conftest import accelerate_launch, sft_and_reward_adapters

    root = tmp_path_factory.mktemp("ppo_launch")
    prefs_file = sft_and_reward_adapters(root, tiny_base, sft_messages_file, world)
    args = [
        root / "dump", "--model_name_or_path", root / "sft", "--reward_model_path", root / "reward",
        "--dataset_name", prefs_file, "--eval_split_size", "0", "--output_dir", root / "ppo", "--use_peft", "true",
        "--num_updates", UPDATES, "--per_device_train_batch_size", BATCH, "--num_mini_batches", MINI_BATCHES,
        "--num_ppo_epochs", "2", "--max_new_tokens", "8", "--learning_rate", "1e-3", "--seed", "0",
        "--whiten_rewards", "true", "--adaptive_kl", "true", "--kl_coef", KL_COEF, "--target_kl", TARGET_KL,
        "--kl_horizon", KL_HORIZON, "--save_strategy", "steps", "--save_steps", "1", "--report_to", "none",
        "--logging_steps", "1", "--disable_tqdm", "false",
    ]  # fmt: skip
    result = accelerate_launch(__file__, args, nproc=PROCESSES)
    return root, result.stdout


def _ranks(root: Path) -> tuple[list[dict], list[dict]]:
    from launch.conftest import read_rank_dumps

    weights = read_rank_dumps(root / "dump" / "ppo")
    stats = [torch.load(root / "dump" / "ppo" / f"stats{k}.pt", weights_only=True) for k in range(PROCESSES)]
    return weights, stats


def test_ppo_ranks_cooperate_and_end_with_the_same_policy_and_value(ppo_launch):
    from launch.conftest import assert_ranks_agree

    root, _ = ppo_launch
    weights, stats = _ranks(root)
    assert_ranks_agree(weights, world_size=PROCESSES)
    names = list(weights[0]["weights"])
    assert any(".default." in n for n in names) and any(".value." in n for n in names)  # policy and value adapters
    assert any(n.startswith("value.head") for n in names)
    for update in range(UPDATES):
        # Each rank sampled its own share of the rollout batch.
        mine, theirs = (set(s["rollouts"][update]["indices"]) for s in stats)
        assert len(mine) == len(theirs) == LOCAL_BATCH and not mine & theirs


def test_whitening_and_logged_statistics_span_both_ranks(ppo_launch):
    from alignkit.ppo import core

    root, _ = ppo_launch
    _, stats = _ranks(root)
    assert stats[0]["log_history"] == stats[1]["log_history"] and len(stats[0]["log_history"]) == UPDATES
    kl_ctl = core.KLController(KL_COEF, adaptive=True, target=TARGET_KL, horizon=KL_HORIZON)
    for update in range(UPDATES):
        rollouts = [s["rollouts"][update] for s in stats]
        log = stats[0]["log_history"][update]
        assert all(r["kl_coef"] == pytest.approx(kl_ctl.value, rel=1e-6) for r in rollouts)
        width = max(r["response_mask"].shape[1] for r in rollouts)  # each rank trims to its own longest response

        def both(name):  # the two ranks' (batch, length) tensors as one batch
            return torch.cat([torch.nn.functional.pad(r[name].float(), (0, width - r[name].shape[1])) for r in rollouts])

        mask = both("response_mask")
        # Rewards whitened with both ranks' tokens (scores, KL and the coefficient are per sequence / token).
        scores = torch.cat([r["scores"] for r in rollouts])
        raw_rewards = core.per_token_rewards(scores, both("kl"), mask, kl_ctl.value)
        rewards = core.masked_whiten(raw_rewards, mask, shift_mean=False)
        torch.testing.assert_close(both("rewards"), rewards, atol=1e-5, rtol=1e-5)
        # Advantages: GAE per sequence, then whitened over both ranks' tokens; not over each rank's alone.
        advantages, _ = core.gae(both("rewards"), both("values"), mask, 1.0, 0.95)
        expected = core.masked_whiten(advantages, mask)
        torch.testing.assert_close(both("advantages"), expected, atol=1e-5, rtol=1e-5)
        per_rank = torch.cat([core.masked_whiten(a, m) for a, m in zip(advantages.split(LOCAL_BATCH), mask.split(LOCAL_BATCH))])
        assert (per_rank - expected).abs().max() > 1e-3  # the check above can tell the two apart
        # Logged means are over both ranks' sequences; the KL controller moved on the logged (all-rank) KL.
        kl = both("kl").sum(1)
        assert log["kl"] == pytest.approx(kl.mean().item(), abs=1e-5)
        assert log["score"] == pytest.approx(torch.cat([r["raw_scores"] for r in rollouts]).mean().item(), abs=1e-5)
        assert log["response_length"] == pytest.approx(torch.cat([r["lengths"] for r in rollouts]).float().mean().item())
        assert kl.split(LOCAL_BATCH)[0].mean() != kl.split(LOCAL_BATCH)[1].mean()
        kl_ctl.update(log["kl"], PROCESSES * LOCAL_BATCH)
        assert log["kl_coef"] == pytest.approx(kl_ctl.value, rel=1e-5)
    assert kl_ctl.value != KL_COEF


def test_outputs_and_checkpoints_are_written_once(ppo_launch):
    root, log = ppo_launch
    out = root / "ppo"
    assert (out / "adapter_model.safetensors").is_file() and (out / "value" / "adapter_model.safetensors").is_file()
    assert not [p.name for p in out.rglob("*") if "rank" in p.name and not p.name.startswith("rng_state_")]
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{u}" for u in range(1, UPDATES + 1)], checkpoints
    last = out / checkpoints[-1]
    # One state (optimiser, scheduler, KL controller) for the run, one RNG state per rank.
    assert (last / "ppo_state.pt").is_file()
    assert sorted(p.name for p in last.glob("rng_state_*")) == [f"rng_state_{k}.pt" for k in range(PROCESSES)]
    assert not list(out.glob("tmp-checkpoint-*"))
    # Only the main process prints each update's stats, and the trainer state is one file.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"score"')]
    assert [line["update"] for line in lines] == list(range(1, UPDATES + 1))
    assert json.loads((out / "trainer_state.json").read_text())["update"] == UPDATES


if __name__ == "__main__":  # launched by the fixture: <dump_dir> <alignkit ppo arguments>
    import rank_dump  # tests/launch/rank_dump.py, beside this file

    from alignkit.cli import run_recipe
    from alignkit.ppo import PPOTrainer

    dump_dir, *recipe_args = sys.argv[1:]
    rollouts = []
    make_rollout = PPOTrainer.make_rollout

    def recording(self, indices):
        rollout = make_rollout(self, indices)
        local = {name: value.detach().cpu() for name, value in vars(rollout).items() if value is not None}
        rollouts.append({"indices": list(indices), "kl_coef": self.kl_ctl.value, **local})
        return rollout

    PPOTrainer.make_rollout = recording
    trainer = run_recipe("ppo", recipe_args)
    if trainer is None:  # run_recipe printed a user error
        sys.exit(2)
    rank_dump.dump(trainer, Path(dump_dir) / "ppo")
    record = {"rollouts": rollouts, "log_history": trainer.log_history}
    torch.save(record, Path(dump_dir) / "ppo" / f"stats{trainer.accelerator.process_index}.pt")
