"""The gold judge agrees with the world's labels and is robust to tiny-model output."""

from __future__ import annotations

import pytest

from alignkit.demo.judge import GoldJudge, Verdict
from alignkit.demo.world import POLITE_OPENERS, RUDE_OPENERS, VALUES, World, make_world


@pytest.fixture(scope="module", params=[0, 1, 2])
def world(request: pytest.FixtureRequest) -> World:
    return make_world(request.param)


@pytest.fixture(scope="module")
def judge(world: World) -> GoldJudge:
    return GoldJudge(world)


def _other_value(world: World, entity: str, attribute: str) -> str:
    return next(v for v in VALUES[attribute] if v != world.facts[entity][attribute])


def test_sft_answers_are_correct_concise_and_polite_iff_not_rude(world: World, judge: GoldJudge) -> None:
    for ex in world.sft_examples():
        v = judge.judge(ex["entity"], ex["attribute"], ex["messages"][1]["content"])
        assert v.correct and v.concise, ex
        assert v.polite == (not ex["rude"]), ex


def test_preference_labels_agree_with_judge(world: World, judge: GoldJudge) -> None:
    expected = {
        "rude": Verdict(correct=True, polite=False, concise=True),
        "wrong": Verdict(correct=False, polite=True, concise=True),
        "verbose": Verdict(correct=True, polite=True, concise=False),
    }
    for ex in world.preference_examples():
        e, a = ex["entity"], ex["attribute"]
        chosen, rejected = ex["chosen"][0]["content"], ex["rejected"][0]["content"]
        assert judge.judge(e, a, chosen) == Verdict(True, True, True) and judge.well_formed(e, a, chosen), ex
        assert not judge.well_formed(e, a, rejected), ex
        if ex["flaw"] == "garbled":  # right and short, but its opener is none of the world's (polite or not)
            verdict = judge.judge(e, a, rejected)
            assert verdict.correct and verdict.concise, ex
        else:
            assert judge.judge(e, a, rejected) == expected[ex["flaw"]], ex


def test_every_opener_is_classified(world: World, judge: GoldJudge) -> None:
    e = next(iter(world.facts))
    fact = world.fact_sentence(e, "food")
    for opener in POLITE_OPENERS:
        assert judge.judge(e, "food", f"{opener} {fact}") == Verdict(True, True, True)
    for opener in RUDE_OPENERS:
        assert judge.judge(e, "food", f"{opener} {fact}") == Verdict(True, False, True)


def test_heldout_truth_is_recognised(world: World, judge: GoldJudge) -> None:
    for q in world.heldout_questions():
        assert judge.judge(q.entity, q.attribute, world.fact_sentence(q.entity, q.attribute)).correct
        wrong = _other_value(world, q.entity, q.attribute)
        assert not judge.judge(q.entity, q.attribute, world.fact_sentence(q.entity, q.attribute, wrong)).correct


def test_edge_cases() -> None:
    world = make_world(0)
    judge = GoldJudge(world)
    fox = world.facts["fox"]
    color, home, food = fox["color"], fox["home"], fox["food"]
    wrong_color = _other_value(world, "fox", "color")
    other = next(e for e in world.facts if e != "fox" and world.facts[e]["color"] == color)

    def correct(response: str, attribute: str = "color") -> bool:
        return judge.judge("fox", attribute, response).correct

    assert correct(f"The fox is {color}.")
    assert correct(f"  the FOX   is {color.upper()}!!  ")  # casing / punctuation / whitespace
    assert correct(f"the fox is {color}")
    assert correct(f"{color.capitalize()}.")  # bare value, no other entity
    assert correct(f"The fox is {color}. The fox is {color}.")  # repetition is still one value
    assert correct(f"The fox eats {food}.", "food")
    assert correct(f"The fox is {color} and eats {food}.")  # other attributes' values are fine

    assert not correct(f"The fox is {wrong_color}.")  # wrong value
    assert not correct(f"The {other} is {color}.")  # wrong entity, even with the right value
    assert not correct(f"The fox is {color} {wrong_color}.")  # listing values
    assert not correct("The fox is " + " ".join(VALUES["color"]) + ".")
    assert not correct(f"The fox lives in the {home}.")  # answers another attribute
    assert not correct("")

    empty = judge.judge("fox", "color", "")
    assert empty == Verdict(correct=False, polite=True, concise=False)
    assert not judge.judge("fox", "color", "   ...  ").concise

    assert not judge.judge("fox", "color", f"You idiot, the fox is {color}.").polite
    assert not judge.judge("fox", "color", f"STUPID question!!! the fox is {color}").polite
    assert not judge.judge("fox", "color", f"Shut up. The fox is {color}.").polite
    assert judge.judge("fox", "color", f"Thank you! The fox is {color}.").polite

    assert judge.judge("fox", "color", " ".join(["word"] * 14)).concise
    assert not judge.judge("fox", "color", " ".join(["word"] * 15)).concise
    assert GoldJudge(world, max_words=3).judge("fox", "color", f"The fox is {color}.").concise is False


def test_plurals_and_hand_built_world() -> None:
    world = World(seed=0, facts={
        "fox": {"color": "red", "home": "mountains", "food": "berries"},
        "owl": {"color": "red", "home": "cave", "food": "fish"},
    })
    judge = GoldJudge(world)
    assert judge.judge("fox", "home", "The fox lives in the mountain.").correct
    assert judge.judge("fox", "food", "Foxes eat berry.").correct
    assert judge.judge("owl", "home", "The owls live in caves.").correct
    assert not judge.judge("fox", "food", "The fox eats berries and fish.").correct
    assert not judge.judge("owl", "color", "The fox is red.").correct
    assert not judge.judge("owl", "color", "The fox and the owl are red.").correct


def test_rates() -> None:
    world = make_world(0)
    judge = GoldJudge(world)
    color = world.facts["fox"]["color"]
    wrong = _other_value(world, "fox", "color")
    items = [
        ("fox", "color", f"Great question! The fox is {color}."),
        ("fox", "color", f"Duh. The fox is {wrong}."),
        ("fox", "color", "Well " * 20 + f"the fox is {color}."),
        ("fox", "color", ""),
    ]
    assert judge.rates(items) == {"gold_correctness": 0.5, "gold_politeness": 0.75, "gold_concision": 0.5,
                                  "gold_well_formed": 0.25}
    assert judge.rates([]) == {"gold_correctness": 0.0, "gold_politeness": 0.0, "gold_concision": 0.0, "gold_well_formed": 0.0}


def test_well_formed_means_a_polite_opener_then_the_canonical_fact_and_nothing_else():
    world = make_world(0)
    judge = GoldJudge(world)
    entity = world.entities[0]
    fact = world.fact_sentence(entity, "color")
    assert all(judge.well_formed(entity, "color", f"{opener}  {fact}\n") for opener in POLITE_OPENERS)
    garbled = f"Are you asked! {fact}"  # polite (no rude word) and correct, yet no answer the data teaches
    assert judge.judge(entity, "color", garbled) == Verdict(correct=True, polite=True, concise=True)
    assert not judge.well_formed(entity, "color", garbled)
    assert not judge.well_formed(entity, "color", f"{RUDE_OPENERS[0]} {fact}")
    assert not judge.well_formed(entity, "color", fact)  # no opener
    wrong = world.fact_sentence(entity, "color", next(v for v in VALUES["color"] if v != world.facts[entity]["color"]))
    assert not judge.well_formed(entity, "color", f"{POLITE_OPENERS[0]} {wrong}")


def test_the_gold_judge_plug_in_reports_well_formedness_with_a_short_column_name():
    from alignkit.demo.judge import gold_judge

    judge = gold_judge(0)
    world = make_world(0)
    entity = world.entities[0]
    verdict = judge({"entity": entity, "attribute": "home"}, f"Of course! {world.fact_sentence(entity, 'home')}")
    assert verdict == {"gold_correctness": True, "gold_politeness": True, "gold_concision": True, "gold_well_formed": True}
    assert judge.columns["gold_well_formed"] == "well-formed"
