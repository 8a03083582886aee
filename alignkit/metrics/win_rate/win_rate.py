"""Win rate: how often one model's answers score above another's on the same prompts (ties count half)."""

import datasets
import evaluate

from alignkit.metrics.scores import win_rate

_DESCRIPTION = """
The win rate of a policy over a reference: for each prompt, 1 when the policy's answer scores higher than the
reference's answer to the same prompt, 0.5 when the scores are equal and 0 when lower, averaged over prompts. The
scores are usually a reward model's; it is the `win_rate` of `alignkit eval` and the report's `rm_win_rate_vs_...`.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores (`list` of `float`): the score of the policy's answer to each prompt.
    other_scores (`list` of `float`): the score of the reference's answer to the same prompt.
Returns:
    win_rate (`float`): in [0, 1]; 0.5 means neither side is preferred.
Examples:
    >>> metric = evaluate.load("alignkit/win_rate")  # or alignkit.metrics.load("win_rate")
    >>> metric.compute(scores=[1.0, 0.2, 0.0], other_scores=[0.5, 0.2, 1.0])
    {'win_rate': 0.5}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"scores": datasets.Value("float64"), "other_scores": datasets.Value("float64")}),
        )

    def _compute(self, scores, other_scores):
        return {"win_rate": win_rate(scores, other_scores)}
