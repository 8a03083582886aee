"""The Constitutional AI demo: its setup and pipeline use no human preference pair, and its instruction data is right."""

import json
import re

import pytest
from conftest import REPO

from alignkit.constitution import load_constitution
from alignkit.demo import cai
from alignkit.demo.judge import GoldJudge
from alignkit.demo.world import POLITE_OPENERS, QUESTION_TEMPLATES, RUDE_OPENERS
from alignkit.pipeline import load_pipeline

PIPELINE = REPO / "recipes" / "demo" / "cai.yaml"


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_cai")
    return out, cai.setup(out)


def test_setup_writes_no_preference_data_at_all(setup_dir):
    out, _ = setup_dir
    files = sorted((out / "data").rglob("*.jsonl"))
    assert files
    for file in files:
        for line in file.read_text().splitlines():
            assert not {"chosen", "rejected"} & set(json.loads(line)), f"{file} holds a preference pair"


def test_the_pipeline_reads_only_setups_data_the_constitution_and_its_own_ai_labels(setup_dir):
    out, variables = setup_dir
    pipeline = load_pipeline(PIPELINE, {"output_dir": str(out)}).validate()
    pipeline.variables = variables
    allowed = {variables["pretrain"], variables["sft"], variables["feedback"], variables["prompts"],
               f"{out}/ai_feedback/preference"}
    read = {name: pipeline.settings(stage)["dataset_name"] for name, stage in pipeline.stages.items()}
    assert set(read.values()) <= allowed, read
    assert read["reward"] == read["dpo"] == f"{out}/ai_feedback/preference"  # preferences come from AI feedback only
    assert {pipeline.settings(s).get("constitution") for s in pipeline.stages.values()} - {None} == {"demo"}


def _asked(world, question: str) -> tuple[str, str]:
    """The (entity, attribute) a world question asks about."""
    entity = next(e for e in world.entities if e in re.findall(r"[a-z]+", question.lower()))
    return entity, next(a for a, ts in QUESTION_TEMPLATES.items() if question in (t.format(entity=entity) for t in ts))

def test_instruction_conversations_avoid_held_out_entities_and_follow_the_constitution(world):
    held = {entity for entity, _ in world.heldout_pairs()}
    assert cai.instruction_entities(world) and not held & set(cai.instruction_entities(world))
    principle = load_constitution("demo").principles[0]
    judge = GoldJudge(world)
    rows = cai.instruction_examples(world)
    critiques = [r["messages"] for r in rows if len(r["messages"]) == 6]
    comparisons = [r["messages"] for r in rows if len(r["messages"]) == 2]
    assert critiques and comparisons and len(critiques) + len(comparisons) == len(rows)
    for turns in critiques:
        assert turns[2]["content"] == principle.critique and turns[4]["content"] == principle.revision
        entity = next(e for e in world.entities if e in re.findall(r"[a-z]+", turns[0]["content"].lower()))
        assert entity not in held
        rude = not judge.judge(entity, "color", turns[1]["content"]).polite  # politeness needs no attribute
        assert turns[3]["content"] == cai.CRITIQUE[rude]
        assert judge.judge(entity, "color", turns[5]["content"]).polite
    letters = [turns[1]["content"] for turns in comparisons]
    assert set(letters) == {"A", "B"} and 0.4 < letters.count("A") / len(letters) < 0.6
    for turns in comparisons:  # the letter names the answer the gold judge rates higher, whatever the flaw
        question, rest = turns[0]["content"].removeprefix("Question: ").split("\n(A) ")
        entity, attribute = _asked(world, question)
        answer_a, answer_b = rest.split("\n(B) ")
        answer_b = answer_b.split("\n")[0]
        score = lambda text: sum(vars(judge.judge(entity, attribute, text)).values()) + judge.well_formed(entity, attribute, text)
        assert score(answer_a) != score(answer_b)
        assert turns[1]["content"] == ("A" if score(answer_a) > score(answer_b) else "B")
        assert judge.judge(entity, attribute, answer_a).polite != judge.judge(entity, attribute, answer_b).polite


def test_the_feedback_models_comparisons_name_the_answer_the_gold_judge_rates_higher(world):
    held = {entity for entity, _ in world.heldout_pairs()}
    constitution = load_constitution("demo")
    asked = {p.comparison: p.id for p in constitution.principles}
    template = re.escape(constitution.feedback_template).replace(r"\{", "{").replace(r"\}", "}")
    pattern = template.format(question="(.*)", answer_a="(.*)", answer_b="(.*)", comparison="(.*)")
    judge = GoldJudge(world)
    letters, openers = {"topic": [], "polite": []}, {"topic": [], "polite": []}
    for row in cai.feedback_examples(world, n=2000):
        question, answer_a, answer_b, comparison = re.fullmatch(pattern, row["prompt"][0]["content"]).groups()
        principle, letter = asked[comparison], row["completion"][0]["content"]
        entity, attribute = _asked(world, question)
        assert entity not in held
        better, worse = (answer_a, answer_b) if letter == "A" else (answer_b, answer_a)
        fact = world.fact_sentence(entity, attribute)
        assert better.endswith(f" {fact}") and judge.judge(entity, attribute, better).correct
        if principle == "topic":  # the worse is about another entity; the openers tell nothing
            assert entity not in re.findall(r"[a-z]+", worse.lower()) and not judge.judge(entity, attribute, worse).correct
            openers[principle] += [better.removesuffix(f" {fact}") in POLITE_OPENERS, worse.split(" The ")[0] in POLITE_OPENERS]
        else:  # the same fact, after a polite opener and after a rude or garbled one
            assert worse.endswith(f" {fact}") and better.removesuffix(f" {fact}") in POLITE_OPENERS
            assert worse.removesuffix(f" {fact}") not in POLITE_OPENERS and not judge.well_formed(entity, attribute, worse)
            openers[principle].append(worse.removesuffix(f" {fact}") in RUDE_OPENERS)
        letters[principle].append(letter)
    assert 0.6 < len(letters["topic"]) / 2000 < 0.8
    for principle, chosen in letters.items():
        assert 0.4 < chosen.count("A") / len(chosen) < 0.6, principle
        assert 0.35 < sum(openers[principle]) / len(openers[principle]) < 0.65, principle  # polite/rude; rude/garbled
