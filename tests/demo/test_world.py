"""Behaviour of the demo world: determinism, splits, labels and the files it writes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from alignkit.demo.world import (
    ATTRIBUTES,
    POLITE_OPENERS,
    QUESTION_TEMPLATES,
    RUDE_OPENERS,
    VALUES,
    Question,
    World,
    is_rude_phrasing,
    make_world,
    write_world,
)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(0)


def _pairs(examples: list[dict]) -> set[tuple[str, str]]:
    return {(ex["entity"], ex["attribute"]) for ex in examples}


def test_same_seed_gives_identical_world(world: World) -> None:
    again = make_world(0)
    assert again.facts == world.facts
    assert again.sft_examples() == world.sft_examples()
    assert again.preference_examples() == world.preference_examples()
    assert again.heldout_questions() == world.heldout_questions()
    assert again.pretrain_documents(500, "test") == world.pretrain_documents(500, "test")


def test_different_seeds_give_different_facts(world: World) -> None:
    other = make_world(1)
    assert other.facts.keys() == world.facts.keys()
    differing = sum(other.facts[e] != world.facts[e] for e in world.facts)
    assert differing > len(world.facts) // 2
    assert other.heldout_questions() != world.heldout_questions()


def test_facts_use_fixed_vocabularies_and_are_balanced(world: World) -> None:
    assert 40 <= len(world.facts) <= 60
    for entity, attrs in world.facts.items():
        assert entity.isalpha() and entity.islower()
        assert set(attrs) == set(ATTRIBUTES)
    for attribute in ATTRIBUTES:
        counts = Counter(world.facts[e][attribute] for e in world.facts)
        assert set(counts) <= set(VALUES[attribute])
        # balanced: no value can be guessed much better than chance
        assert max(counts.values()) - min(counts.values()) <= 1


def test_fact_sentence(world: World) -> None:
    entity = next(iter(world.facts))
    assert world.fact_sentence(entity, "color") == f"The {entity} is {world.facts[entity]['color']}."
    assert world.fact_sentence(entity, "home", "cave") == f"The {entity} lives in the cave."
    assert world.fact_sentence(entity, "food", "honey") == f"The {entity} eats honey."




def test_heldout_pairs_are_unseen_in_post_training_data(world: World) -> None:
    heldout = {(q.entity, q.attribute) for q in world.heldout_questions()}
    n_pairs = len(world.facts) * len(ATTRIBUTES)
    assert 0.15 <= len(heldout) / n_pairs <= 0.20
    assert {(q.entity, q.attribute) for q in world.heldout_questions()} == heldout  # every phrasing of each
    assert not heldout & _pairs(world.sft_examples())
    assert not heldout & _pairs(world.preference_examples())
    # and no held-out question slips in through the text either
    texts = {ex["messages"][0]["content"] for ex in world.sft_examples()}
    texts |= {ex["prompt"][0]["content"] for ex in world.preference_examples()}
    for entity, attribute in heldout:
        for template in QUESTION_TEMPLATES[attribute]:
            assert template.format(entity=entity) not in texts
    # every non-held-out pair is trained on
    all_pairs = {(e, a) for e in world.facts for a in ATTRIBUTES}
    assert _pairs(world.sft_examples()) == all_pairs - heldout
    assert _pairs(world.preference_examples()) == all_pairs - heldout


def test_every_fact_is_in_pretraining_train_text(world: World) -> None:
    text = "\n".join(world.pretrain_documents(3000, "train"))
    for entity in world.facts:
        for attribute in ATTRIBUTES:
            assert world.fact_sentence(entity, attribute) in text


def test_pretrain_documents_shape_and_splits(world: World) -> None:
    train = world.pretrain_documents(3000, "train")
    test = world.pretrain_documents(200, "test")
    assert len(train) == 3000 and len(test) == 200
    for doc in train + test:
        assert "\n" not in doc and 0 < len(doc.split()) <= 60
    assert not set(train) & set(test)
    assert world.pretrain_documents(100, "train") == train[:100]
    # several phrasings of the same fact appear
    assert any(doc.startswith("In the ") for doc in train)
    assert any(" is the color of the " in doc for doc in train)
    with pytest.raises(ValueError):
        world.pretrain_documents(5, "validation")


def test_sft_examples(world: World) -> None:
    examples = world.sft_examples()
    assert 300 <= len(examples) <= 1000
    assert sum(ex["rude"] for ex in examples) * 2 == len(examples)
    for ex in examples:
        user, assistant = ex["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert ex["entity"] in user["content"]
        assert assistant["content"].endswith(" " + world.fact_sentence(ex["entity"], ex["attribute"]))
    # several phrasings per attribute are used
    for attribute in ATTRIBUTES:
        questions = {ex["messages"][0]["content"].replace(ex["entity"], "X") for ex in examples if ex["attribute"] == attribute}
        assert len(questions) == len(QUESTION_TEMPLATES[attribute])
    openers = Counter(ex["messages"][1]["content"].split(" The ")[0] for ex in examples)
    assert len(openers) >= 10


def test_preference_examples(world: World) -> None:
    examples = world.preference_examples()
    assert 300 <= len(examples) <= 1200
    flaws = Counter(ex["flaw"] for ex in examples)
    assert set(flaws) == {"rude", "wrong", "verbose", "garbled"}
    for count in flaws.values():
        assert abs(count - len(examples) / 4) <= len(examples) * 0.05
    for ex in examples:
        assert [m["role"] for m in ex["prompt"]] == ["user"]
        assert [m["role"] for m in ex["chosen"]] == ["assistant"]
        assert [m["role"] for m in ex["rejected"]] == ["assistant"]
        assert ex["chosen"] != ex["rejected"]


def test_garbled_openers_are_pieces_of_real_ones_and_never_one_of_them(world: World) -> None:
    import random

    rng = random.Random(0)
    garbled = [world.garbled_opener(rng) for _ in range(300)]
    real_words = {w.rstrip(".,!?'") for o in POLITE_OPENERS + RUDE_OPENERS for w in o.split()}
    assert not set(garbled) & set(POLITE_OPENERS + RUDE_OPENERS)
    assert all({w.rstrip(".,!?'") for w in g.split()} <= real_words for g in garbled)
    assert {"Are you asked!", "Of!", "course!"} <= set(garbled)  # the fusions and fragments RL found (issue #13)
    fused = [ex["rejected"][0]["content"] for ex in world.preference_examples() if ex["flaw"] == "garbled"]
    assert len(set(fused)) > len(fused) / 2  # many different ones, not a few memorisable strings


def test_heldout_questions(world: World) -> None:
    for q in world.heldout_questions():
        assert isinstance(q, Question)
        assert q.text in {t.format(entity=q.entity) for t in QUESTION_TEMPLATES[q.attribute]}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_write_world_is_deterministic_and_well_formed(world: World, tmp_path: Path) -> None:
    a = write_world(world, tmp_path / "a", n_pretrain_docs=300, n_test_docs=50)
    write_world(make_world(0), tmp_path / "b", n_pretrain_docs=300, n_test_docs=50)
    assert set(a) == {"pretrain", "sft", "preference", "heldout_prompts"}
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jsonl"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.jsonl"))
    assert files_a == files_b and len(files_a) == 7
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()

    sft_train, sft_test = _read(a["sft"] / "train.jsonl"), _read(a["sft"] / "test.jsonl")
    assert len(sft_train) + len(sft_test) == len(world.sft_examples())
    assert 0.05 <= len(sft_test) / (len(sft_train) + len(sft_test)) <= 0.10
    pref_train, pref_test = _read(a["preference"] / "train.jsonl"), _read(a["preference"] / "test.jsonl")
    assert len(pref_train) + len(pref_test) == len(world.preference_examples())
    assert 0.08 <= len(pref_test) / (len(pref_train) + len(pref_test)) <= 0.12
    heldout = _read(a["heldout_prompts"])
    assert [(r["entity"], r["attribute"], r["prompt"][0]["content"]) for r in heldout] == [
        (q.entity, q.attribute, q.text) for q in world.heldout_questions()
    ]
    assert len(_read(a["pretrain"] / "train.jsonl")) == 300
    assert len(_read(a["pretrain"] / "test.jsonl")) == 50


def test_written_files_load_with_datasets(world: World, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    paths = write_world(world, tmp_path / "data", n_pretrain_docs=200, n_test_docs=20)
    expected = {"pretrain": ["text"], "sft": ["messages"], "preference": ["prompt", "chosen", "rejected"]}
    for name, columns in expected.items():
        ds = datasets.load_dataset(str(paths[name]), cache_dir=str(tmp_path / "cache"))
        assert set(ds) == {"train", "test"}
        for split in ds.values():
            assert sorted(split.column_names) == sorted(columns)
    sft = datasets.load_dataset(str(paths["sft"]), cache_dir=str(tmp_path / "cache"))
    assert sft["train"][0]["messages"][0]["role"] == "user"
    heldout = datasets.load_dataset("json", data_files=str(paths["heldout_prompts"]), cache_dir=str(tmp_path / "cache"))
    assert sorted(heldout["train"].column_names) == ["attribute", "entity", "prompt"]


def test_sft_rudeness_follows_question_phrasing_so_greedy_decoding_shows_it():
    world = make_world(0)
    for ex in world.sft_examples():
        template_rude = is_rude_phrasing(ex["attribute"], _template_of(ex))
        assert ex["rude"] == template_rude
    heldout = world.heldout_questions()
    rude_share = sum(is_rude_phrasing(q.attribute, _template_of_text(q.attribute, q.entity, q.text)) for q in heldout) / len(heldout)
    assert rude_share == 0.5


def _template_of_text(attribute, entity, text):
    return next(t for t in QUESTION_TEMPLATES[attribute] if t.format(entity=entity) == text)


def _template_of(example):
    return _template_of_text(example["attribute"], example["entity"], example["messages"][0]["content"])
