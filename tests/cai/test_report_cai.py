"""The pipeline report shows AI feedback's agreement with the judge, and never takes that stage for a reward model."""

from alignkit import report
from alignkit.outputs import finish_run
from alignkit.pipeline import load_pipeline


def test_the_report_row_of_ai_feedback_carries_its_gold_agreement_and_the_table_shows_it_beside_all_pairs(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"base_model: m\noutput_dir: {tmp_path / 'out'}\nstages:\n"
                    "  sft: {recipe: sft, model: base}\n"
                    "  ai_feedback: {recipe: ai_feedback, model: sft}\n"
                    "  dpo: {recipe: dpo, model: sft}\n")
    pipeline = load_pipeline(path)
    out = pipeline.stage_dir("ai_feedback")
    out.mkdir(parents=True)
    finish_run(out, {"stage": "ai_feedback", "metrics": {"kept": 10}, "report": {"gold_agreement": 0.93, "gold_pairs": 40,
                                                                          "gold_agreement_all": 0.71}})
    row = report.stage_row(pipeline, pipeline.stages["ai_feedback"], "start", 1.0, report.Evaluator())
    assert row["gold_agreement"] == 0.93 and row["gold_pairs"] == 40 and "judged" not in row
    assert report.reward_model_for(pipeline, pipeline.stages["dpo"]) is None  # a data set scores no answers
    table = report.format_table({"stages": {"ai_feedback": row}, "judge_columns": {}, "wall_seconds": 1.0})
    header, line = table.splitlines()[:2]
    # Beside the kept labels' agreement, all labels': a feedback model sure of few pairs cannot hide the rest.
    assert header.endswith("AI agree  AI all") and line.split()[-2:] == ["0.93", "0.71"]


def test_a_stage_reading_an_earlier_stages_data_by_path_reruns_when_that_stage_does(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"base_model: m\noutput_dir: {tmp_path / 'out'}\nstages:\n"
                    "  sft: {recipe: sft, model: base}\n"
                    "  ai_feedback: {recipe: ai_feedback, model: sft}\n"
                    "  reward: {recipe: reward, model: sft, args: {dataset_name: '${output_dir}/ai_feedback/preference'}}\n")
    pipeline = load_pipeline(path)
    assert pipeline.input_stages(pipeline.stages["reward"]) == ["sft", "ai_feedback"]
    for name in ("sft", "ai_feedback", "reward"):
        pipeline.stage_dir(name).mkdir(parents=True)
        finish_run(pipeline.stage_dir(name), {"stage": name, "metrics": {}})
        pipeline.record_trained(pipeline.stages[name])
    assert pipeline.plan() == {"sft": "skip", "ai_feedback": "skip", "reward": "skip"}
    finish_run(pipeline.stage_dir("ai_feedback"), {"stage": "ai_feedback", "metrics": {"kept": 1}})  # labelled again
    assert pipeline.plan() == {"sft": "skip", "ai_feedback": "skip", "reward": "rerun"}
    assert pipeline.why["reward"] == "its input ai_feedback was trained again after it"


def test_a_pipeline_names_the_feedback_model_by_stage_and_only_ai_feedback_takes_one(tmp_path):
    import pytest

    from alignkit.errors import ConfigError

    path = tmp_path / "p.yaml"
    path.write_text(f"base_model: m\noutput_dir: {tmp_path / 'out'}\nstages:\n"
                    "  sft: {recipe: sft, model: base}\n"
                    "  ai_feedback: {recipe: ai_feedback, model: sft, feedback_model: sft}\n")
    pipeline = load_pipeline(path).validate()
    assert pipeline.settings(pipeline.stages["ai_feedback"])["feedback_model_path"] == str(tmp_path / "out" / "sft")
    path.write_text("base_model: m\nstages:\n  sft: {recipe: sft, model: base, feedback_model: base}\n")
    with pytest.raises(ConfigError, match="a sft stage takes no feedback_model"):
        load_pipeline(path).validate()

