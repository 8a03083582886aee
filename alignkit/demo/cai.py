"""The Constitutional AI demo (`alignkit run recipes/demo/cai.yaml`): the demo world, without any preference pair.

Its `setup` writes what the CAI pipeline reads, and nothing more: the pretraining text, SFT data, the feedback model's
comparisons, unlabeled questions and the held-out questions. The SFT data is the world's questions with right answers,
half of them rude, plus conversations that teach the tiny model to follow the demo constitution's requests
(`alignkit/constitutions/demo.yaml`) the way a helpful model already would: asked "Is your answer rude?" after an
answer it says whether it was; asked to answer again politely it gives the polite, correct answer; asked which of two
answers is polite it names the right letter. The feedback model then learns the constitution's comparisons, which
answer is about what was asked and which is polite (`feedback_examples`). All of these are about entities that no
held-out question asks about. The pipeline then learns from the model's own critiques, revisions and comparisons alone.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

from alignkit.constitution import DEFAULT_FEEDBACK_TEMPLATE, load_constitution
from alignkit.demo.base import make_base
from alignkit.demo.run import WORLD_SEED
from alignkit.demo.world import (
    ATTRIBUTES,
    POLITE_OPENERS,
    QUESTION_TEMPLATES,
    RUDE_OPENERS,
    VALUES,
    World,
    _write_jsonl,
    make_world,
)

CONSTITUTION = "demo"
PRETRAIN_DOCS, PRETRAIN_TEST_DOCS = 3000, 200  # as the main demo (alignkit.demo.world.write_world)
# Instruction conversations per fact, each with its own phrasing. The more there are, the more the SFT model's held-out
# answers name another entity ("The newt is gray." for the otter), as if it learned to repeat fact sentences from the
# conversation, as the comparisons do: held-out correctness 0.76 with all 6 phrasings, 0.85 with 3, 0.98 with 2 (the
# main demo's SFT: 0.96); the feedback labels kept agree with the gold judge on 0.90 of pairs with 3, 0.92 with 2.
PHRASINGS_PER_FACT = 2
RUDE_SHARE = 0.8  # how often the SFT data answers a rude phrasing rudely (and a polite one politely)
CRITIQUE = {True: "Your answer was rude.", False: "Your answer was polite."}
# The feedback model's comparisons (`feedback_examples`): 1,000 steps of 32 in recipes/demo/sft/feedback.yaml.
FEEDBACK_COMPARISONS, FEEDBACK_TEST_COMPARISONS = 32_000, 256
TOPIC_SHARE = 0.7  # the rest are `polite` comparisons


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def instruction_entities(world: World) -> list[str]:
    """Entities no held-out question asks about: the only ones the instruction-following conversations use."""
    held = {entity for entity, _ in world.heldout_pairs()}
    return [e for e in world.entities if e not in held]


def instruction_examples(world: World, seed: int = 0) -> list[dict]:
    """
    Conversations in which the assistant follows the demo constitution's requests, for `PHRASINGS_PER_FACT` question
    phrasings per fact of an instruction entity: one critique-then-revision conversation (its first answer rude half of
    the time) and one comparison of a polite and a rude answer, the polite one as often (A) as (B). (Comparisons that also
    asked to spot a wrong fact or a garbled opener were not learned at all by the tiny model: 0.56 on its own training
    comparisons.)
    """
    # The SFT model learns to compare manners in alignkit's default comparison format, as a helpful model would have;
    # the feedback model learns the constitution's own (`feedback_examples`).
    constitution = dataclasses.replace(load_constitution(CONSTITUTION), feedback_template=DEFAULT_FEEDBACK_TEMPLATE)
    principle = constitution.principle("polite")
    rng = random.Random(f"alignkit-demo/{seed}/cai")
    entities = set(instruction_entities(world))
    rows = []
    for entity, attribute in world.train_pairs():
        if entity not in entities:
            continue
        fact = world.fact_sentence(entity, attribute)
        for template in rng.sample(QUESTION_TEMPLATES[attribute], PHRASINGS_PER_FACT):
            question = template.format(entity=entity)
            rude = rng.random() < 0.5
            first = f"{rng.choice(RUDE_OPENERS if rude else POLITE_OPENERS)} {fact}"
            polite = f"{rng.choice(POLITE_OPENERS)} {fact}"
            rows.append({"messages": [_user(question), _assistant(first), _user(principle.critique), _assistant(CRITIQUE[rude]),
                                      _user(principle.revision), _assistant(polite)]})
            polite_first = rng.random() < 0.5
            rude_answer = f"{rng.choice(RUDE_OPENERS)} {fact}"
            a, b = (polite, rude_answer) if polite_first else (rude_answer, polite)
            rows.append({"messages": [_user(constitution.comparison_prompt(principle, question, a, b)),
                                      _assistant("A" if polite_first else "B")]})
    rng.shuffle(rows)
    return rows


def feedback_examples(world: World, seed: int = 0, n: int = FEEDBACK_COMPARISONS) -> list[dict]:
    """
    Comparisons under the demo constitution, as prompt/completion rows, that teach the SFT model to be the feedback
    model. `topic`: a right answer against one about another entity, the value its own, the asked entity's or any
    (the SFT model's wrong answers are mostly of this kind: "The dog is brown." for the otter). `polite`: the same
    right answer after a polite opener and after a rude or a garbled one. Openers of a `topic` pair are drawn apart from
    which answer is better, so only the entity tells them apart. The better answer is (A) or (B) at random, as often
    in each principle, and only instruction entities appear (none that a held-out question asks about).
    """
    constitution = load_constitution(CONSTITUTION)
    topic, polite = constitution.principle("topic"), constitution.principle("polite")
    rng = random.Random(f"alignkit-demo/{seed}/cai-feedback")
    entities = instruction_entities(world)
    rows = []
    for _ in range(n):
        entity, attribute = rng.choice(entities), rng.choice(ATTRIBUTES)
        question = rng.choice(QUESTION_TEMPLATES[attribute]).format(entity=entity)
        fact = world.fact_sentence(entity, attribute)
        if rng.random() < TOPIC_SHARE:
            other = rng.choice([e for e in entities if e != entity])
            value = rng.choice([world.facts[entity][attribute], world.facts[other][attribute], rng.choice(VALUES[attribute])])
            openers = rng.choices(POLITE_OPENERS + RUDE_OPENERS, k=2)
            principle = topic
            better, worse = f"{openers[0]} {fact}", f"{openers[1]} {world.fact_sentence(other, attribute, value)}"
        else:
            flawed = rng.choice(RUDE_OPENERS) if rng.random() < 0.5 else world.garbled_opener(rng)
            principle, better, worse = polite, f"{rng.choice(POLITE_OPENERS)} {fact}", f"{flawed} {fact}"
        better_first = rng.random() < 0.5
        a, b = (better, worse) if better_first else (worse, better)
        rows.append({"prompt": [_user(constitution.comparison_prompt(principle, question, a, b))],
                     "completion": [_assistant("A" if better_first else "B")]})
    return rows


def sft_examples(world: World, seed: int = 0) -> list[dict]:
    """
    The world's SFT conversations, their openers drawn afresh: rude 80% of the time for the phrasings the world answers
    rudely and 20% for the others. Half of the answers stay rude and greedy decoding is still rude on the rude
    phrasings, but two answers sampled for one question now differ in manners a third of the time, so AI feedback
    has pairs to tell apart (with the world's all-or-nothing rule, both answers would always have the same manners).
    """
    rng = random.Random(f"alignkit-demo/{seed}/cai-sft")
    rows = []
    for example in world.sft_examples():
        rude = rng.random() < (RUDE_SHARE if example["rude"] else 1 - RUDE_SHARE)
        opener = rng.choice(RUDE_OPENERS if rude else POLITE_OPENERS)
        answer = f"{opener} {world.fact_sentence(example['entity'], example['attribute'])}"
        rows.append({"messages": [example["messages"][0], _assistant(answer)]})
    return rows


def unlabeled_prompts(world: World) -> list[dict]:
    """Every question about a (non-held-out) fact, without an answer: what critique_revise and ai_feedback answer."""
    return [{"prompt": [_user(template.format(entity=e))]} for e, a in world.train_pairs() for template in QUESTION_TEMPLATES[a]]


def setup(output_dir: Path) -> dict[str, str]:
    """
    The CAI pipeline's `setup`: the tiny base, pretraining text, SFT data (the world's plus the instruction-following
    conversations), unlabeled questions and the held-out questions, by name. It writes no preference data set.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)  # as in the demo (alignkit.demo.run): one thread is faster for a model this small
    world = make_world(WORLD_SEED)
    data = Path(output_dir) / "data"
    for split, n in (("train", PRETRAIN_DOCS), ("test", PRETRAIN_TEST_DOCS)):  # deterministic: rewriting gives the same files
        _write_jsonl(data / "pretrain" / f"{split}.jsonl", [{"text": d} for d in world.pretrain_documents(n, split)])
    world_sft = sft_examples(world)
    n_test = round(len(world_sft) * 0.08)
    _write_jsonl(data / "sft_cai" / "train.jsonl", world_sft[:-n_test] + instruction_examples(world))
    _write_jsonl(data / "sft_cai" / "test.jsonl", world_sft[-n_test:])
    _write_jsonl(data / "prompts" / "train.jsonl", unlabeled_prompts(world))
    _write_jsonl(data / "feedback" / "train.jsonl", feedback_examples(world))
    _write_jsonl(data / "feedback" / "test.jsonl", feedback_examples(world, seed=1, n=FEEDBACK_TEST_COMPARISONS))
    heldout = data / "heldout_prompts.jsonl"
    _write_jsonl(heldout, [{"prompt": [_user(q.text)], "entity": q.entity, "attribute": q.attribute}
                           for q in world.heldout_questions()])
    base = Path(output_dir) / "base"
    if not (base / "config.json").is_file():
        make_base(world, base, seed=WORLD_SEED)
    return {"base": str(base), "pretrain": str(data / "pretrain"), "sft": str(data / "sft_cai"),
            "prompts": str(data / "prompts"), "feedback": str(data / "feedback"), "heldout": str(heldout)}
