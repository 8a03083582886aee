"""The RLOO recipe: a new LoRA adapter on a full model, against the reward stage's model (helpers: test_grpo.py)."""

from conftest import run_stage
from test_grpo import base_weights_unchanged, check_online_run, online_args, online_stages, scorer_calls  # noqa: F401


def test_rloo_trains_a_new_adapter_whose_disabled_self_is_the_reference(online_stages, scorer_calls, tiny_base, tmp_path):
    root, prefs = online_stages
    out = tmp_path / "rloo"
    trainer = run_stage("rloo", *online_args(tiny_base, root, prefs, out))
    assert list(trainer.model.peft_config) == ["default"] and trainer.ref_model is None  # one base, no copies
    record = check_online_run(trainer, "rloo", out, scorer_calls, tiny_base, start_adapter=None)
    assert record["lineage"]["parent_stage"] is None
    assert trainer.args.beta == 0.05 and trainer.args.disable_dropout
