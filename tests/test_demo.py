"""The embedded demo end to end (`make demo` = `alignkit run recipes/demo/pipeline.yaml`): the bar it must meet,
measured by the world's gold judge. One run, reused by every test below."""

import json

import pytest

from alignkit import report as report_module
from alignkit.demo import run


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run.main(["--output_dir", str(out)]), out


ALIGNED = ("dpo", "ppo", "grpo", "rloo", "best_of_n")  # every stage that aligns the SFT model


def record(out, stage):
    return json.loads((out / stage / "alignkit_run.json").read_text())


def test_demo_pretraining_cuts_held_out_perplexity_more_than_fivefold(demo):
    report, out = demo
    pretrain = report["stages"]["pretrain"]
    assert pretrain["perplexity_after"] * 5 <= pretrain["perplexity_before"]
    assert pretrain["perplexity_after"] == record(out, "pretrain")["metrics"]["perplexity"]


def test_demo_sft_answers_held_out_questions_and_copies_the_datas_manners(demo):
    report, out = demo
    pretrain, sft = report["stages"]["pretrain"], report["stages"]["sft"]
    # Before SFT the pretrained model cannot answer in the chat format at all.
    assert pretrain["gold_correctness"] < 0.2
    assert sft["gold_correctness"] >= 0.8
    assert 0.25 <= sft["gold_politeness"] <= 0.75  # half the SFT answers were rude, and the model learned that
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["stages"]["sft"]["gold_correctness"] == sft["gold_correctness"]
    assert all(0 <= on_disk["stages"]["sft"][k] <= 1 for k in ("gold_correctness", "gold_politeness", "gold_concision"))


def test_demo_reward_model_ranks_held_out_pairs(demo):
    report, out = demo
    # Held-out pairs of every flaw; the garbled openers ("Are you asked!" for "Glad you asked!") are the hard ones.
    assert report["stages"]["reward"]["eval_accuracy"] >= 0.85
    assert report["stages"]["reward"]["eval_accuracy"] == record(out, "reward")["reward_stats"]["accuracy"]


def test_demo_dpo_makes_the_model_polite_without_losing_facts(demo):
    report, _ = demo
    sft, dpo = report["stages"]["sft"], report["stages"]["dpo"]
    assert dpo["gold_politeness"] >= 0.9
    assert dpo["gold_correctness"] >= sft["gold_correctness"] - 0.05
    assert dpo["rm_win_rate_vs_sft"] > 0.5  # the reward model prefers the DPO answers
    assert 0 < dpo["kl_to_sft"] < 1.0  # moved away from SFT, but not far


def test_demo_ppo_raises_the_reward_models_score_while_kl_stays_bounded(demo):
    report, out = demo
    sft, ppo = report["stages"]["sft"], report["stages"]["ppo"]
    rewards, kls = ppo["reward"], ppo["kl"]
    assert len(rewards) == len(kls) == 30
    history = json.loads((out / "ppo" / "trainer_state.json").read_text())["log_history"]
    assert rewards == [h["score"] for h in history]  # the report's curve is the trainer's own log
    assert sum(rewards[-10:]) / 10 > sum(rewards[:3]) / 3 + 0.5
    assert max(kls) < 5.0  # nats per response, under the KL penalty
    assert ppo["gold_politeness"] >= 0.9 and ppo["rm_win_rate_vs_sft"] > 0.5
    assert ppo["gold_correctness"] >= sft["gold_correctness"] - 0.05


def test_demo_reports_the_audit_reward_models_score_for_every_policy(demo):
    report, out = demo
    stages = report["stages"]
    # Two reward models on disjoint halves of the pairs, both good.
    assert stages["reward"]["eval_accuracy"] >= 0.85 and stages["reward_audit"]["eval_accuracy"] >= 0.85
    for name in ("sft", *ALIGNED):
        assert isinstance(stages[name]["rm_score"], float) and isinstance(stages[name]["audit_rm_score"], float)
    # The reward model the online stages optimise is sound, so the audit one agrees: both rise over SFT's, nothing flagged.
    for name in ALIGNED:
        assert stages[name]["audit_rm_score"] > stages["sft"]["audit_rm_score"]
        assert stages[name]["overoptimised"] is False
    history = json.loads((out / "ppo" / "trainer_state.json").read_text())["log_history"]
    assert stages["ppo"]["audit_reward"] == [h["audit_score"] for h in history] and len(history) == 30
    assert "audit RM" in report_module.format_table(report).splitlines()[0]


def test_every_aligned_policy_answers_in_the_worlds_own_form_without_losing_facts(demo):
    """Politeness can be had with garbage ("Are you asked!"); well-formed is an opener of the world, then the fact."""
    report, _ = demo
    sft = report["stages"]["sft"]
    for name in ALIGNED:
        row = report["stages"][name]
        assert row["gold_well_formed"] >= 0.9, (name, row["gold_well_formed"])
        assert row["gold_correctness"] >= sft["gold_correctness"] - 0.05, (name, row["gold_correctness"])
        assert 0 < row["kl_to_sft"] < 1.0 and row["train_seconds"] > 0, name


def test_demo_overlays_the_online_methods_in_one_figure(demo):
    report, out = demo
    assert report["online_figure"] == "figures/online.png" and (out / "figures" / "online.png").is_file()
    assert "![reward and KL per update](figures/online.png)" in (out / "report.md").read_text()


def test_demo_writes_the_markdown_report_with_figures_and_example_answers(demo):
    report, out = demo
    markdown = (out / "report.md").read_text()
    for name in report["stages"]:
        assert (out / "figures" / f"{name}.png").is_file() and f"(figures/{name}.png)" in markdown
    example = report["stages"]["sft"]["examples"][0]
    assert f"| sft | {example['answer']} |" in markdown


def test_a_second_demo_run_skips_every_stage_and_reports_the_same(demo, capsys):
    report, out = demo
    capsys.readouterr()
    again = run.main(["--output_dir", str(out)])
    assert all(stage["status"] == "skipped" for stage in again["stages"].values())
    for name in ("sft", "dpo", "ppo"):
        assert again["stages"][name]["gold_correctness"] == report["stages"][name]["gold_correctness"]
    table = report_module.format_table(report).rsplit("\n", 1)[0]  # the same table; only the wall time differs
    assert table in capsys.readouterr().out
