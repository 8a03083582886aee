"""The report's side-by-side figure of the online methods: drawn for two or more, never left stale."""

from alignkit.report import format_markdown, plot_online


def _row(recipe, rewards, kls, audit=None):
    return {"recipe": recipe, "from": "sft", "reward_model": "reward", "status": "trained", "train_seconds": 1.0,
            "reward": rewards, "kl": kls, **({"audit_reward": audit} if audit else {})}


def test_the_online_methods_are_overlaid_in_one_figure_only_when_there_are_two_or_more(tmp_path):
    from PIL import Image

    target = tmp_path / "figures" / "online.png"
    sft = {"recipe": "sft", "from": "pretrain", "reward_model": None, "status": "trained", "train_seconds": 1.0}
    stages = {"sft": sft, "ppo": _row("ppo", [0.1, 0.5, 0.9], [0.0, 0.02, 0.04], audit=[0.2, 0.4, 0.5]),
              "grpo": _row("grpo", [0.0, 0.3, 0.6, 0.8, 1.0], [0.0, 0.1, 0.2, 0.2, 0.3])}
    assert plot_online(stages, target) and Image.open(target).size[0] > 300
    report = {"pipeline": "p.yaml", "output_dir": "out", "wall_seconds": 1.0, "stages": stages,
              "online_figure": "figures/online.png"}
    assert "![reward and KL per update](figures/online.png)" in format_markdown(report)

    del stages["grpo"]  # one online method left: nothing to compare it with, and no stale figure either
    assert not plot_online(stages, target) and not target.exists()
