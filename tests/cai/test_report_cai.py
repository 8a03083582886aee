"""The pipeline report shows AI feedback's agreement with the judge, and never takes that stage for a reward model."""

from alignkit import report
from alignkit.outputs import finish_run
from alignkit.pipeline import load_pipeline


def test_the_report_row_of_ai_feedback_carries_its_gold_agreement_and_the_table_shows_it(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"base_model: m\noutput_dir: {tmp_path / 'out'}\nstages:\n"
                    "  sft: {recipe: sft, model: base}\n"
                    "  ai_feedback: {recipe: ai_feedback, model: sft}\n"
                    "  dpo: {recipe: dpo, model: sft}\n")
    pipeline = load_pipeline(path)
    out = pipeline.stage_dir("ai_feedback")
    out.mkdir(parents=True)
    finish_run(out, {"stage": "ai_feedback", "metrics": {"kept": 10}, "report": {"gold_agreement": 0.93, "gold_pairs": 40}})
    row = report.stage_row(pipeline, pipeline.stages["ai_feedback"], "start", 1.0, report.Evaluator())
    assert row["gold_agreement"] == 0.93 and row["gold_pairs"] == 40 and "judged" not in row
    assert report.reward_model_for(pipeline, pipeline.stages["dpo"]) is None  # a data set scores no answers
    table = report.format_table({"stages": {"ai_feedback": row}, "judge_columns": {}, "wall_seconds": 1.0})
    assert "AI agree" in table.splitlines()[0] and "0.93" in table.splitlines()[1]
