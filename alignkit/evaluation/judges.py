"""Judges: plug-ins that rate one answer to one prompt row without a model of alignkit's (a rule, a gold label).

A judge is named in a pipeline file (`evaluation.judge: module:function`) or given to `alignkit eval --judge`;
the function takes no arguments and returns the judge: `judge(row, answer) -> {metric name: bool or number}`.
It may carry a `columns` attribute mapping its metric names to short table headers. The demo's gold judge is
`alignkit.demo.judge:gold_judge`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alignkit.errors import ConfigError

# A judge rates one answer to one prompt row: {"metric name": True/False or a number}; rates are averaged.
Judge = Callable[[Any, str], Mapping[str, float]]


def load_judge(spec: str) -> Judge:
    """The judge that `spec` (`module:function`) makes."""
    module, colon, name = str(spec).partition(":")
    if not colon or not module or not name:
        raise ConfigError(f"judge '{spec}' is not `module:function`; write e.g. `alignkit.demo.judge:gold_judge`.")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"judge {spec} cannot be imported ({e}); fix the `module:function` name.") from None
    return factory()


def judge_columns(judge: Judge | None) -> dict[str, str]:
    """Short table headers for the judge's metrics (its `columns` attribute), by metric name."""
    return dict(getattr(judge, "columns", None) or {})


def judge_rates(judge: Judge, rows: Sequence[Any], answers: Sequence[str]) -> dict[str, float]:
    verdicts = [judge(row, answer) for row, answer in zip(rows, answers)]
    keys = list(dict.fromkeys(k for v in verdicts for k in v))
    return {k: sum(float(v.get(k, 0.0)) for v in verdicts) / len(verdicts) for k in keys}
