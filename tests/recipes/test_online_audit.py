"""GRPO and RLOO with an audit reward model: TRL scores every completion with it and logs it, at weight 0."""

import pytest
import torch
import yaml
from conftest import run_stage
from test_grpo import WEIGHTS, online_args, online_stages, scorer_calls  # noqa: F401


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_the_audit_reward_model_is_logged_per_step_and_never_optimised(stage, online_stages, scorer_calls, tmp_path):
    root, prefs = online_stages
    out = tmp_path / stage
    # The audit reward model is the optimised one here, so its log must equal the optimised one's, step by step.
    trainer = run_stage(stage, *online_args(root / "sft", root, prefs, out, "--audit_reward_model_path", str(root / "reward")))
    from online_length_reward import length

    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logged) == 2 and len(scorer_calls) == 4  # per step: the reward model, then the audit one
    for h, (optimised, audit) in zip(logged, zip(scorer_calls[::2], scorer_calls[1::2])):
        assert audit["completions"] == optimised["completions"]  # the very completions the policy is trained on
        assert h["rewards/audit_reward_model/mean"] == pytest.approx(h["rewards/reward_model/mean"], abs=1e-5)
        # Weight 0: the reward TRL optimises is the reward model's and the length reward's alone.
        rm, extra = torch.tensor(optimised["scores"]), torch.tensor(length(optimised["completions"]))
        assert h["reward"] == pytest.approx((WEIGHTS[0] * rm + WEIGHTS[1] * extra).mean().item(), abs=1e-5)
    # The saved config keeps the user's weights (it parses again), with the audit reward model's folder.
    saved = yaml.safe_load((out / "alignkit_config.yaml").read_text())
    assert saved["reward_weights"] == list(WEIGHTS) and saved["audit_reward_model_path"] == str(root / "reward")
