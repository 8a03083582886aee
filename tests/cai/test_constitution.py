"""Constitution files: the shipped one loads, and every kind of mistake is named with its line and its fix."""

import random

import pytest

from alignkit.constitution import load_constitution, shipped_names
from alignkit.errors import ConfigError

GOOD = """\
principles:
  - id: polite
    critique: Is the answer rude?
    revision: Make it polite.
    comparison: Which answer is more polite?
  - id: honest
    critique: Is anything false?
    revision: Make it true.
    comparison: Which answer is more truthful?
examples:
  - principle: polite
    prompt: What color is the sky?
    answer: Duh, blue.
    critique: It says duh.
    revision: Good question! The sky is blue.
"""


def write(tmp_path, text):
    path = tmp_path / "constitution.yaml"
    path.write_text(text)
    return path


def test_the_default_constitution_ships_with_the_package_and_loads():
    assert "default" in shipped_names()
    constitution = load_constitution("default")
    assert {p.id for p in constitution.principles} == {"harmless", "honest", "polite"}
    assert all(p.critique and p.revision and p.comparison for p in constitution.principles)


def test_a_file_loads_with_its_principles_examples_and_few_shot_turns(tmp_path):
    constitution = load_constitution(write(tmp_path, GOOD))
    assert [p.id for p in constitution.principles] == ["polite", "honest"]
    turns = constitution.few_shot_turns()
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert turns[2]["content"] == "Is the answer rude?" and turns[4]["content"] == "Make it polite."
    assert constitution.sample(random.Random(0)) in constitution.principles
    prompt = constitution.comparison_prompt(constitution.principles[0], "Q?", "one", "two")
    assert "Q?" in prompt and "(A) one" in prompt and "(B) two" in prompt and "more polite" in prompt


@pytest.mark.parametrize(
    "text, message",
    [
        ("principles: []\n", r"line 1\): no principles; add `principles:`"),
        ("rules: []\n", r"line 1\): unknown key 'rules'"),
        ("principles:\n  - id: polite\n    critique: a\n    revision: b\n",
         r"principle polite \(line 2\): missing `comparison`; add `comparison: "),
        ("principles:\n  - id: a\n    critique: a\n    revision: b\n    comparison: c\n"
         "  - id: b\n    critique: a\n    revision: b\n    comparison: c\n    critque: x\n",
         r"principle b \(line 6\): unknown key 'critque' \(did you mean 'critique'\?\)"),
        ("principles:\n  - id: a\n    critique: [a]\n    revision: b\n    comparison: c\n",
         r"principle a \(line 2\): `critique` must be non-empty text, got \['a'\]"),
        ("principles:\n  - just a string\n", r"principle #1 \(line 2\) must be a mapping with id, critique"),
        ("principles:\n  - {id: a, critique: a, revision: b, comparison: c}\n"
         "  - {id: a, critique: a, revision: b, comparison: c}\n", r"line 3\): principle id 'a' is used twice"),
        ("principles:\n  - {id: polite, critique: a, revision: b, comparison: c}\nexamples:\n"
         "  - {principle: polit, prompt: p, answer: a, critique: c, revision: r}\n",
         r"line 4\): example 1 names principle 'polit' \(did you mean 'polite'\?\)"),
        ("principles:\n  - {id: a, critique: a, revision: b, comparison: c}\nfeedback_template: '{question} {answer_a}'\n",
         r"line 3\): `feedback_template` lacks \{answer_b\}, \{comparison\}"),
        ("principles:\n  - {id: a, critique: a, revision: b, comparison: c}\n"
         "feedback_template: '{answer_a} {answer_b} {comparison}'\n",
         r"line 3\): `feedback_template` lacks \{question\}; it must hold .* \{question\} or \{reference\}"),
        ("principles:\n  - {id: a, critique: a, revision: b, comparison: c}\n"
         "feedback_template: '{question} {answer_a} {answer_b} {comparison} {mine}'\n",
         r"line 3\): `feedback_template` has unknown \{mine\}"),
    ],
)
def test_a_bad_constitution_is_refused_naming_the_line_the_principle_and_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_constitution(write(tmp_path, text))


def test_a_missing_constitution_names_the_shipped_ones():
    with pytest.raises(ConfigError, match="not found.*shipped name.*default"):
        load_constitution("no_such_constitution")


def test_a_template_with_a_reference_shows_the_feedback_models_own_answer_and_needs_it(tmp_path):
    constitution = load_constitution(write(tmp_path, "principles:\n  - {id: a, critique: c, revision: r, comparison: 'Which?'}\n"
                                                     "feedback_template: 'Mine: {reference} (A) {answer_a} (B) {answer_b} {comparison}'\n"))
    assert constitution.uses_reference and not load_constitution(write(tmp_path, GOOD)).uses_reference
    principle = constitution.principles[0]
    assert constitution.comparison_prompt(principle, "Q?", "one", "two", reference="mine") == "Mine: mine (A) one (B) two Which?"
    with pytest.raises(ValueError, match="pass `reference`"):
        constitution.comparison_prompt(principle, "Q?", "one", "two")


def test_a_stage_can_use_some_of_the_principles_and_a_wrong_id_is_named_with_the_fix(tmp_path):
    constitution = load_constitution(write(tmp_path, GOOD))
    polite = constitution.restricted_to(["polite"])
    assert [p.id for p in polite.principles] == ["polite"] and len(polite.few_shot_turns()) == 6
    assert {polite.sample(random.Random(seed)).id for seed in range(20)} == {"polite"}
    assert constitution.restricted_to(None) is constitution
    with pytest.raises(ConfigError, match=r"`principles` names 'polit' \(did you mean 'polite'\?\), which .* does not "
                                          r"hold; use some of polite, honest"):
        constitution.restricted_to(["polit"])
