"""The alignkit demo's gold judge: correctness, politeness and concision of answers about the demo world's facts."""

import datasets
import evaluate

from alignkit.demo.judge import DEFAULT_MAX_WORDS, GoldJudge
from alignkit.demo.world import make_world

_DESCRIPTION = """
The gold judge of alignkit's demo world: each answer to a question about an entity's attribute ("Which color is the
otter?") is correct when it states the attribute's true value, no other value of it and no other entity; polite when
it holds none of the rude markers; concise when it has 1 to `max_words` words. No model is involved. The rates are the
report's `gold_correctness`, `gold_politeness` and `gold_concision` (`alignkit.demo.judge.GoldJudge.rates`).
"""

_KWARGS_DESCRIPTION = """
Args:
    entity (`list` of `str`): the entity each question asks about (the demo's held-out prompts' `entity`).
    attribute (`list` of `str`): the attribute asked: `color`, `home` or `food`.
    answer (`list` of `str`): the model's answer.
    world_seed (`int`, *optional*, defaults to 0): the seed of the demo world whose facts are the truth.
    max_words (`int`, *optional*, defaults to 14): the longest answer that counts as concise.
Returns:
    gold_correctness, gold_politeness, gold_concision (`float`): the fraction of answers that are so.
Examples:
    >>> metric = evaluate.load("alignkit/gold_judge")  # or alignkit.metrics.load("gold_judge")
    >>> metric.compute(entity=["fox"], attribute=["color"], answer=["Ugh. The fox is red."])
    {'gold_correctness': 1.0, 'gold_politeness': 0.0, 'gold_concision': 1.0}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GoldJudgeRates(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"entity": datasets.Value("string"), "attribute": datasets.Value("string"), "answer": datasets.Value("string")}
            ),
        )

    def _compute(self, entity, attribute, answer, world_seed=0, max_words=DEFAULT_MAX_WORDS):
        return GoldJudge(make_world(world_seed), max_words).rates(list(zip(entity, attribute, answer)))
