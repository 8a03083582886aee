"""Per-token KL: the mean KL divergence from a policy to its reference over the tokens of the policy's answers."""

import datasets
import evaluate

from alignkit.metrics.scores import kl_summary

_DESCRIPTION = """
Summarises per-token KL(policy || reference) values, one list per answer: the KL at each of the answer's tokens
(`alignkit.evaluation.per_token_kl_values` computes them from the two models). `kl_per_token` is the mean over every
token of every answer — the `kl_per_token` of `alignkit eval` and the report's `kl_to_...` — and `kl_per_sequence`
the mean over answers of each answer's total KL.
"""

_KWARGS_DESCRIPTION = """
Args:
    kl (`list` of `list` of `float`): for each answer, the KL (in nats) at each of its tokens.
Returns:
    kl_per_token (`float`): the mean over all tokens (0.0 when there are none).
    kl_per_sequence (`float`): the mean over answers of the answer's summed KL.
    num_tokens (`int`): how many tokens were averaged.
Examples:
    >>> metric = evaluate.load("alignkit/kl_per_token")  # or alignkit.metrics.load("kl_per_token")
    >>> metric.compute(kl=[[0.5, 0.25], [0.75]])
    {'kl_per_token': 0.5, 'kl_per_sequence': 0.75, 'num_tokens': 3}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KLPerToken(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"kl": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, kl):
        return kl_summary(kl)
