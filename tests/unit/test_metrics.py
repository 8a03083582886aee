"""alignkit's measurements as `evaluate` metric modules: each loads offline from its folder, gives the hand-computed
value, and agrees with the alignkit function it wraps; `alignkit.metrics` keeps `reward_stats` and imports light."""

import os
import random
import socket
import subprocess
import sys

import pytest
import yaml

os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")  # read when `evaluate` is first imported

from alignkit import metrics  # noqa: E402
from alignkit.demo.judge import GoldJudge, gold_judge  # noqa: E402
from alignkit.demo.world import make_world  # noqa: E402
from alignkit.evaluation.judges import judge_rates  # noqa: E402
from alignkit.evaluation.measures import win_rate  # noqa: E402
from alignkit.metrics.scores import kl_summary, mean_margin, pairwise_accuracy  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def load(no_network, tmp_path):
    return lambda name: metrics.load(name, cache_dir=str(tmp_path / "evaluate"))


def test_reward_accuracy_counts_pairs_whose_chosen_score_is_higher_and_ties_as_misses(load):
    metric = load("reward_accuracy")
    result = metric.compute(chosen_scores=[2.0, 0.5, 1.0, 3.0], rejected_scores=[1.0, 0.5, 3.0, -1.0])
    assert result == {"accuracy": 0.5, "margin": pytest.approx((1.0 + 0.0 - 2.0 + 4.0) / 4)}
    rng = random.Random(0)
    chosen, rejected = [rng.gauss(0, 1) for _ in range(50)], [rng.gauss(0, 1) for _ in range(50)]
    assert metric.compute(chosen_scores=chosen, rejected_scores=rejected) == {
        "accuracy": pairwise_accuracy(chosen, rejected), "margin": mean_margin(chosen, rejected)
    }


def test_win_rate_metric_is_alignkits_win_rate(load):
    metric = load("win_rate")
    assert metric.compute(scores=[1.0, 0.2, 0.0, 5.0], other_scores=[0.5, 0.2, 1.0, 4.0]) == {"win_rate": 2.5 / 4}
    rng = random.Random(1)
    ours = [rng.choice([0.0, 0.5, 1.0]) for _ in range(40)]
    theirs = [rng.choice([0.0, 0.5, 1.0]) for _ in range(40)]  # many ties
    assert metric.compute(scores=ours, other_scores=theirs) == {"win_rate": win_rate(ours, theirs)}
    with pytest.raises(ValueError, match="Mismatch in the number"):  # evaluate checks that before alignkit would
        metric.compute(scores=[1.0], other_scores=[])


def test_kl_per_token_weights_every_token_equally_and_takes_batches(load):
    metric = load("kl_per_token")
    values = [[0.5, 0.25], [0.75], []]
    assert metric.compute(kl=values) == {"kl_per_token": 1.5 / 3, "kl_per_sequence": 1.5 / 3, "num_tokens": 3}
    metric.add_batch(kl=values[:1])
    metric.add_batch(kl=values[1:])
    assert metric.compute() == kl_summary(values)
    assert metric.compute(kl=[[], []])["kl_per_token"] == 0.0  # no tokens, as `per_token_kl` says


def test_gold_judge_metric_gives_the_gold_judges_rates(load, world):
    fox = world.facts["fox"]
    other = next(v for v in ("red", "blue") if v != fox["color"])
    entity = ["fox", "fox", "fox", "fox"]
    attribute = ["color", "color", "home", "color"]
    answer = [
        f"The fox is {fox['color']}.",  # correct, polite, concise
        f"Ugh, obviously. The fox is {fox['color']}.",  # rude
        f"The fox lives in the {fox['home']}, " + "and that is all there is to say about it " * 3,  # long
        f"The fox is {other}.",  # wrong
    ]
    result = load("gold_judge").compute(entity=entity, attribute=attribute, answer=answer)
    assert result == {"gold_correctness": 0.75, "gold_politeness": 0.75, "gold_concision": 0.75, "gold_well_formed": 0.0}
    items = list(zip(entity, attribute, answer))
    assert result == GoldJudge(make_world(0)).rates(items)
    judge = gold_judge(0)  # the pipeline's judge plug-in agrees too
    assert result == judge_rates(judge, [{"entity": e, "attribute": a} for e, a, _ in items], answer)
    assert load("gold_judge").compute(entity=entity, attribute=attribute, answer=answer, max_words=100)["gold_concision"] == 1.0


def test_every_metric_folder_is_a_hub_metric_space(no_network):
    for name in metrics.names():
        folder = metrics.path(name)
        assert (folder / f"{name}.py").is_file() and (folder / "requirements.txt").is_file()
        text = (folder / "README.md").read_text(encoding="utf-8")
        card = yaml.safe_load(text.split("---")[1])
        assert card["sdk"] == "gradio" and (folder / card["app_file"]).is_file()
        assert {"evaluate", "metric"} <= set(card["tags"]) and card["description"]
        assert "## How to Use" in text and "### Output Values" in text
    with pytest.raises(ValueError, match="no metric 'accuracy'"):
        metrics.path("accuracy")


def test_metrics_keeps_reward_stats_and_imports_without_the_ml_stack():
    from alignkit.metrics.reward import reward_stats

    assert metrics.reward_stats is reward_stats
    code = "import sys, alignkit.metrics, alignkit.metrics.scores; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
