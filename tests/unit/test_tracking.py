"""Tracking: the trackers alignkit's PPO asks Accelerate for, and the pipeline report's links to each stage's run."""

from pathlib import Path
from types import SimpleNamespace

from alignkit import tracking
from alignkit.report import format_markdown


def test_ppo_gets_accelerates_trackers_with_tensorboard_under_output_dir_runs(tmp_path):
    args = SimpleNamespace(report_to=["tensorboard", "wandb", "neptune"], output_dir=str(tmp_path), run_name="sft-v2")
    trackers, kwargs = tracking.accelerate_trackers(args)
    assert [getattr(t, "name", t) for t in trackers] == ["tensorboard", "wandb"]  # neptune: no Accelerate tracker
    assert Path(trackers[0].logging_dir_param) == tmp_path / "runs" and kwargs == {"wandb": {"name": "sft-v2"}}
    assert tracking.accelerate_trackers(SimpleNamespace(report_to=[], output_dir=str(tmp_path))) == ([], {})


def test_links_point_from_the_report_to_each_run(tmp_path):
    runs = [{"tracker": "tensorboard", "logging_dir": "runs/Jan01_host"}, {"tracker": "wandb", "url": "https://wandb.ai/a/b/runs/c"}]
    assert tracking.links(runs, tmp_path / "out" / "sft", tmp_path / "out") == [
        ("tensorboard", "sft/runs/Jan01_host"), ("wandb", "https://wandb.ai/a/b/runs/c")
    ]
    assert tracking.links(None, tmp_path, tmp_path) == []


def _report(**tracking_by_stage):
    stages = {
        name: {"recipe": name, "from": None, "reward_model": None, "status": "trained", "train_seconds": 2.0,
               "tracking": tracking_by_stage.get(name, [])}
        for name in ("sft", "dpo")
    }
    return {"pipeline": "p.yaml", "output_dir": "out", "wall_seconds": 4.0, "stages": stages}


def test_the_reports_stage_table_links_the_tracking_runs_only_when_there_are_some():
    text = format_markdown(_report(sft=[["tensorboard", "sft/runs/Jan01 host"]], dpo=[["wandb", "https://wandb.ai/x"]]))
    assert "| stage | recipe | from | reward model | status | training time | tracking |" in text
    assert "| sft | sft |  |  | trained | 2 s | [tensorboard](sft/runs/Jan01%20host) |" in text
    assert "| dpo | dpo |  |  | trained | 2 s | [wandb](https://wandb.ai/x) |" in text
    assert "tracking |" not in format_markdown(_report())
