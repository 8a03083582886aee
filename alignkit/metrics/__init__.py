"""alignkit's measurements: what a trained reward model records (`reward_stats`), the computations every
measurement shares (`scores`), and the same measurements as `evaluate` metric modules.

Each metric is a folder beside this file, `<name>/<name>.py` with its card (`README.md`), as the Hugging Face Hub
keeps metric Spaces; it loads offline by path, and its `_compute` calls the function in `scores` (or the demo's
gold judge) that alignkit itself uses:

    import evaluate
    from alignkit import metrics

    win_rate = evaluate.load(str(metrics.path("win_rate")))   # or metrics.load("win_rate")
    win_rate.compute(scores=[1.0, 0.2], other_scores=[0.5, 0.2])   # {'win_rate': 0.75}
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent
# The metric modules shipped in this package, by folder name.
NAMES: tuple[str, ...] = ("reward_accuracy", "win_rate", "kl_per_token", "gold_judge")


def names() -> tuple[str, ...]:
    return NAMES


def path(name: str) -> Path:
    """The folder of alignkit's `evaluate` metric `name` (give it to `evaluate.load` as a string)."""
    if name not in NAMES:
        raise ValueError(f"alignkit has no metric '{name}'; it has {', '.join(NAMES)}.")
    return FOLDER / name


def load(name: str, **kwargs):
    """`evaluate.load` of alignkit's metric `name` from its folder: no Hub, no network."""
    import evaluate

    return evaluate.load(str(path(name)), **kwargs)


def __getattr__(name: str):
    # `metrics.reward_stats` without importing torch for `metrics.path` or the metric modules.
    if name == "reward_stats":
        from alignkit.metrics.reward import reward_stats

        return reward_stats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
