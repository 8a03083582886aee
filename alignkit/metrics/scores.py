"""The computations behind alignkit's measurements, on plain numbers, each written once.

alignkit's own code (the reward stage's record, `alignkit eval`, the pipeline report) and the `evaluate` metric
modules in the folders beside this file (`alignkit.metrics.load(name)`) call these functions, so a number means
the same wherever it is reported. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence


def _pairs(name: str, a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name} compares pairs: got {len(a)} and {len(b)} scores.")
    if len(a) == 0:
        raise ValueError(f"{name} needs at least one pair of scores.")


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """How often a reward model scores a pair's chosen answer above its rejected one (a tie counts as a miss)."""
    _pairs("pairwise_accuracy", chosen, rejected)
    return sum(1 for c, r in zip(chosen, rejected) if c > r) / len(chosen)


def mean_margin(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """The mean of chosen score - rejected score over pairs."""
    _pairs("mean_margin", chosen, rejected)
    return sum(float(c) - float(r) for c, r in zip(chosen, rejected)) / len(chosen)


def win_rate(scores: Sequence[float], other: Sequence[float]) -> float:
    """How often `scores[i]` beats `other[i]`: 1 for higher, 0.5 for equal, 0 for lower, averaged over pairs."""
    _pairs("win_rate", scores, other)
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, other)) / len(scores)


def kl_summary(per_token: Sequence[Sequence[float]]) -> dict[str, float]:
    """
    Summarise per-token KL values, one list per answer (the KL at each of its tokens):

    - `kl_per_token`: the mean over every token of every answer (longer answers weigh more), 0.0 without tokens;
    - `kl_per_sequence`: the mean over answers of each answer's total KL;
    - `num_tokens`: how many tokens were summed.
    """
    sums = [sum(float(v) for v in answer) for answer in per_token]
    tokens = sum(len(answer) for answer in per_token)
    return {
        "kl_per_token": sum(sums) / tokens if tokens else 0.0,
        "kl_per_sequence": sum(sums) / len(sums) if sums else 0.0,
        "num_tokens": tokens,
    }
