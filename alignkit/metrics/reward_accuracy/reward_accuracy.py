"""Reward accuracy: how often a reward model scores the chosen answer of a preference pair above the rejected one."""

import datasets
import evaluate

from alignkit.metrics.scores import mean_margin, pairwise_accuracy

_DESCRIPTION = """
The pairwise accuracy of a reward model on preference pairs: the fraction of pairs whose chosen answer gets a
higher score than its rejected answer (a tie counts as a miss), and the mean margin (chosen score - rejected score).
It is the `accuracy` and `margin` that alignkit's reward stage records (`reward_stats` in `alignkit_run.json`).
"""

_KWARGS_DESCRIPTION = """
Args:
    chosen_scores (`list` of `float`): the reward model's score of each pair's chosen answer.
    rejected_scores (`list` of `float`): its score of the same pair's rejected answer.
Returns:
    accuracy (`float`): the fraction of pairs with chosen score > rejected score, in [0, 1].
    margin (`float`): the mean of chosen score - rejected score.
Examples:
    >>> metric = evaluate.load("alignkit/reward_accuracy")  # or alignkit.metrics.load("reward_accuracy")
    >>> metric.compute(chosen_scores=[2.0, 0.5, 1.0], rejected_scores=[1.0, 0.5, 3.0])
    {'accuracy': 0.3333333333333333, 'margin': -0.3333333333333333}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RewardAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"chosen_scores": datasets.Value("float64"), "rejected_scores": datasets.Value("float64")}),
        )

    def _compute(self, chosen_scores, rejected_scores):
        return {"accuracy": pairwise_accuracy(chosen_scores, rejected_scores), "margin": mean_margin(chosen_scores, rejected_scores)}
