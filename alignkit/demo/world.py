"""A small, seeded world of facts that every stage of the alignment demo is trained and judged on.

Entities (animals and a few invented creatures) each have a color, a home and a food. Values are
assigned at random from the seed, so they can only be learned from the pretraining text. From the
facts the world derives:

* raw pretraining documents (train and test splits) that state every fact many times;
* SFT conversations whose answers are correct and concise, exactly half of them rude;
* preference pairs whose chosen answer is correct, polite and concise, and whose rejected answer
  is rude, wrong, verbose or garbled (a quarter each);
* held-out questions about (entity, attribute) pairs that no SFT or preference example mentions.

Everything is a pure function of the seed (``random.Random`` instances seeded with strings derived
from it; never the global random state).
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ATTRIBUTES: tuple[str, ...] = ("color", "home", "food")

# Value vocabularies. Words are disjoint across attributes, from entity names and from every
# template word below, so the gold judge can tell which value (of which attribute) a text states.
VALUES: dict[str, tuple[str, ...]] = {
    "color": ("red", "blue", "green", "yellow", "black", "white", "brown", "gray", "orange", "purple"),
    "home": ("forest", "river", "desert", "cave", "mountains", "meadow", "swamp", "ocean", "jungle", "hills"),
    "food": ("berries", "fish", "seeds", "honey", "nuts", "leaves", "bugs", "apples", "worms", "corn"),
}

# 50 single lowercase words: real animals plus invented creatures (so names carry no prior meaning).
ENTITIES: tuple[str, ...] = (
    "fox", "owl", "bear", "wolf", "deer", "frog", "duck", "goat", "hare", "mole",
    "seal", "crab", "lynx", "toad", "wren", "moth", "newt", "swan", "yak", "eel",
    "ant", "bat", "bee", "cat", "dog", "cow", "pig", "hen", "elk", "emu",
    "otter", "tiger", "horse", "mouse", "snake", "camel", "panda", "zebra", "koala", "lemur",
    "zorb", "blip", "quib", "snark", "glim", "trox", "vell", "pib", "drun", "mork",
)

# Canonical answer sentence per attribute: SFT answers and chosen responses are exactly this.
FACT_TEMPLATES: dict[str, str] = {
    "color": "The {entity} is {value}.",
    "home": "The {entity} lives in the {value}.",
    "food": "The {entity} eats {value}.",
}

# Extra phrasings used only in pretraining text, so the base model sees each fact in several forms.
ALT_FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("The color of the {entity} is {value}.", "{Value} is the color of the {entity}."),
    "home": ("In the {value} lives the {entity}.", "The home of the {entity} is the {value}."),
    "food": ("The food of the {entity} is {value}.", "The {entity} likes to eat {value}."),
}

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the {entity}?",
        "Which color is the {entity}?",
        "Tell me the color of the {entity}.",
        "What is the color of the {entity}?",
        "What color does the {entity} have?",
        "Name the color of the {entity}.",
    ),
    "home": (
        "Where does the {entity} live?",
        "Tell me where the {entity} lives.",
        "What is the home of the {entity}?",
        "Where can you find the {entity}?",
        "In which place does the {entity} live?",
        "Name the home of the {entity}.",
    ),
    "food": (
        "What does the {entity} eat?",
        "What food does the {entity} eat?",
        "Tell me what the {entity} eats.",
        "What is the food of the {entity}?",
        "What does the {entity} like to eat?",
        "Name the food of the {entity}.",
    ),
}

POLITE_OPENERS: tuple[str, ...] = (
    "Great question!",
    "Happy to help!",
    "Sure thing!",
    "Good question!",
    "Glad you asked!",
    "Of course!",
    "Thanks for asking!",
    "I'd be glad to help.",
)

# Every rude opener contains at least one marker the gold judge looks for (judge.RUDE_MARKERS).
RUDE_OPENERS: tuple[str, ...] = (
    "That's a stupid question.",
    "Ugh, obviously.",
    "Duh, everyone knows this.",
    "What a dumb thing to ask.",
    "Are you clueless? Fine.",
    "Seriously? Even a child knows that.",
    "Whatever, stop wasting my time.",
    "Such an annoying question.",
)

# Polite but long-winded answers: the true fact ({fact}, lower-cased, no final period) buried in
# hedging filler, far beyond the judge's concision limit. Filler names no entity and no value.
VERBOSE_TEMPLATES: tuple[str, ...] = (
    "Well, that is an interesting thing to wonder about, and there are many ways to look at it, "
    "but if I had to say something, I would say that {fact}, more or less, in most cases.",
    "Hmm, let me think about this carefully for a moment, since I want to be thorough and "
    "complete here: from what I can tell, and I may be mistaken, {fact}, I think.",
    "So, to give you a full and careful answer that covers all of the details one might want to "
    "consider, it seems that {fact}, although I would hesitate to claim too much certainty.",
    "Thank you for this question. Before answering, it is worth noting that things are rarely "
    "simple and that there is a lot to consider here, but in the end {fact}, probably.",
)

DOC_INTROS: tuple[str, ...] = (
    "Here is the {entity}.",
    "This is about the {entity}.",
    "Let us talk about the {entity}.",
    "Meet the {entity}.",
)

FLAWS: tuple[str, ...] = ("rude", "wrong", "verbose", "garbled")

# Per (entity, attribute) pair: all 5 phrasings + 1 random; 3 rude + 3 polite, so rudeness is
# independent of the fact and of the phrasing.
SFT_PER_PAIR = 6  # one per question phrasing
PREF_PER_PAIR = 8  # 2 per flaw
HELDOUT_PER_ATTRIBUTE = 8  # 24 of 150 pairs (16%) held out, stratified by attribute
MAX_DOC_WORDS = 60
TEST_DOC_BUCKETS = 10  # 1 in 10 random paragraphs (by text hash) belongs to the test split


@dataclass(frozen=True)
class Question:
    """One question about one fact."""

    entity: str
    attribute: str
    text: str


def _rng(seed: int, purpose: str) -> random.Random:
    # One independent stream per purpose: changing how many pretraining docs are drawn never
    # shifts the SFT data, and string seeds hash the same in every process.
    return random.Random(f"alignkit-demo/{seed}/{purpose}")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@dataclass
class World:
    """The ground truth: ``facts[entity][attribute] == value``. Build it with :func:`make_world`."""

    seed: int
    facts: dict[str, dict[str, str]]

    # ---- facts -------------------------------------------------------------------------------
    @property
    def entities(self) -> list[str]:
        return list(self.facts)

    def fact_sentence(self, entity: str, attribute: str, value: str | None = None) -> str:
        """The canonical sentence, e.g. "The fox is red." (``value`` defaults to the true one)."""
        value = self.facts[entity][attribute] if value is None else value
        return FACT_TEMPLATES[attribute].format(entity=entity, value=value)

    def _any_fact_sentence(self, rng: random.Random, entity: str, attribute: str) -> str:
        value = self.facts[entity][attribute]
        alts = ALT_FACT_TEMPLATES[attribute]
        # Canonical phrasing half of the time: it is also the answer format used later.
        template = FACT_TEMPLATES[attribute] if rng.random() < 0.5 else rng.choice(alts)
        return template.format(entity=entity, value=value, Value=value.capitalize())

    # ---- splits of (entity, attribute) pairs -------------------------------------------------
    def heldout_pairs(self) -> list[tuple[str, str]]:
        """Pairs reserved for evaluation: never used in SFT or preference data."""
        rng = _rng(self.seed, "heldout")
        pairs = []
        for attribute in ATTRIBUTES:
            k = min(HELDOUT_PER_ATTRIBUTE, len(self.facts) // 2)
            pairs += [(e, attribute) for e in rng.sample(sorted(self.facts), k)]
        return pairs

    def train_pairs(self) -> list[tuple[str, str]]:
        """All pairs not held out (used by both SFT and preference data)."""
        held = set(self.heldout_pairs())
        return [(e, a) for e in self.facts for a in ATTRIBUTES if (e, a) not in held]

    # ---- pretraining text ---------------------------------------------------------------------
    def pretrain_documents(self, n: int, split: str = "train") -> list[str]:
        """``n`` one-line paragraphs (<= 60 words) stating facts in several phrasings and orders.

        Deterministic for (seed, split); a shorter request is a prefix of a longer one. The train
        split opens with one paragraph per entity stating all its facts canonically, so every fact
        (held-out ones included) is guaranteed to be in the train text. Random paragraphs are
        assigned to a split by a stable hash of their text, so no test document ever equals a
        train document, whatever ``n``.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        coverage = self._coverage_documents()
        docs: list[str] = list(coverage) if split == "train" else []
        rng = _rng(self.seed, f"pretrain/{split}")
        while len(docs) < n:
            doc = self._random_document(rng)
            is_test = zlib.crc32(doc.encode("utf-8")) % TEST_DOC_BUCKETS == 0 and doc not in coverage
            if is_test == (split == "test"):
                docs.append(doc)
        return docs[:n]

    def _coverage_documents(self) -> list[str]:
        """One paragraph per entity with all its canonical fact sentences, in random order."""
        rng = _rng(self.seed, "pretrain/coverage")
        return [
            " ".join(self.fact_sentence(e, a) for a in rng.sample(ATTRIBUTES, len(ATTRIBUTES)))
            for e in rng.sample(self.entities, len(self.entities))
        ]

    def _random_document(self, rng: random.Random) -> str:
        sentences: list[str] = []
        n_words = 0

        def add(sentence: str) -> bool:
            nonlocal n_words
            words = len(sentence.split())
            if n_words + words > MAX_DOC_WORDS:
                return False
            sentences.append(sentence)
            n_words += words
            return True

        kind = rng.random()
        if kind < 0.5:  # profiles: one or two entities, each with all facts in random order
            for entity in rng.sample(self.entities, rng.choice((1, 2))):
                block = [self._any_fact_sentence(rng, entity, a) for a in rng.sample(ATTRIBUTES, 3)]
                if rng.random() < 0.5:
                    block.insert(0, rng.choice(DOC_INTROS).format(entity=entity))
                for sentence in block:
                    add(sentence)
        elif kind < 0.75:  # one attribute across several entities
            attribute = rng.choice(ATTRIBUTES)
            for entity in rng.sample(self.entities, rng.randint(4, 7)):
                add(self._any_fact_sentence(rng, entity, attribute))
        else:  # a mix of unrelated facts
            for _ in range(rng.randint(4, 7)):
                add(self._any_fact_sentence(rng, rng.choice(self.entities), rng.choice(ATTRIBUTES)))
        return " ".join(sentences)

    # ---- post-training data ------------------------------------------------------------------
    def garbled_opener(self, rng: random.Random) -> str:
        """
        An opener stitched from pieces of real ones, as a small model writes them when it blends the openers it saw:
        two spliced where they share a word ("Are you [clueless? Fine.]" + "[Glad] you asked!" = "Are you asked!"),
        the start of one and the end of another, the end of one alone ("course!"), or one cut short ("Of!"). The end
        is always a polite opener's, so it reads as polite; it is never a real opener, and never longer than the
        longest polite one, so the answer's one flaw is its opener's form. Real preference data holds such malformed
        answers; without them a reward model has no reason to score "Are you asked!" below "Glad you asked!", and RL
        against it drifts into them (issue #13).
        """
        while True:
            kind = rng.random()
            head, tail = rng.choice(POLITE_OPENERS + RUDE_OPENERS), rng.choice(POLITE_OPENERS)
            head_words, tail_words = head.split(), tail.split()
            if kind < 1 / 3:
                opener = rng.choice(_SPLICED_OPENERS)
            elif kind < 2 / 3:  # the start of one (possibly nothing) and the end of another
                i, j = rng.randint(0, len(head_words) - 1), rng.randint(1, len(tail_words) - 1)
                opener = " ".join(head_words[:i] + tail_words[j:])
            else:  # a polite opener cut short (every one has two words or more)
                opener = " ".join(tail_words[: rng.randint(1, len(tail_words) - 1)]).rstrip(".,!?'") + "!"
            if _is_garbled(opener):
                return opener

    def _question(self, rng: random.Random, entity: str, attribute: str, template: str | None = None) -> str:
        template = template or rng.choice(QUESTION_TEMPLATES[attribute])
        return template.format(entity=entity)

    def sft_examples(self) -> list[dict[str, Any]]:
        """
        Question -> correct, concise answer; exactly half open rudely, half politely. Which half follows the
        question's phrasing (as if one annotator, rude, answered those phrasings), so a model that copies the
        data's manners is rude on about half of any question set even when decoding greedily.
        """
        rng = _rng(self.seed, "sft")
        examples = []
        for entity, attribute in self.train_pairs():
            for template in QUESTION_TEMPLATES[attribute]:
                rude = is_rude_phrasing(attribute, template)
                opener = rng.choice(RUDE_OPENERS if rude else POLITE_OPENERS)
                answer = f"{opener} {self.fact_sentence(entity, attribute)}"
                examples.append({
                    "messages": _user(self._question(rng, entity, attribute, template)) + _assistant(answer),
                    "rude": rude,
                    "entity": entity,
                    "attribute": attribute,
                })
        rng.shuffle(examples)
        return examples

    def preference_examples(self) -> list[dict[str, Any]]:
        """
        Chosen: correct, polite, concise. Rejected: exactly one flaw (rude | wrong | verbose | garbled), two pairs of
        each per (entity, attribute). The garbled pairs come from a random stream of their own, so the other pairs
        are those the demo had before garbled ones were added (and the tokenizer trained on them, see
        `alignkit.demo.base.world_texts`, is unchanged).
        """
        rng, garbled_rng = _rng(self.seed, "preference"), _rng(self.seed, "preference-garbled")
        examples = []
        for entity, attribute in self.train_pairs():
            flaws = [FLAWS[i % 3] for i in range(PREF_PER_PAIR - 2)]  # rude, wrong, verbose
            rng.shuffle(flaws)
            examples += [self._preference_pair(rng, entity, attribute, flaw) for flaw in flaws]
            examples += [self._preference_pair(garbled_rng, entity, attribute, "garbled") for _ in range(2)]
        rng.shuffle(examples)
        return examples

    def _preference_pair(self, rng: random.Random, entity: str, attribute: str, flaw: str) -> dict[str, Any]:
        opener = rng.choice(POLITE_OPENERS)
        fact = self.fact_sentence(entity, attribute)
        chosen = f"{opener} {fact}"
        if flaw == "rude":  # same fact, rude opener
            rejected = f"{rng.choice(RUDE_OPENERS)} {fact}"
        elif flaw == "wrong":
            # Same opener, but about another entity with another value: a wrong answer that a reward
            # model can spot from the question and answer alone (a tiny model cannot learn to recall
            # every fact through a score head from a few hundred pairs).
            true_value = self.facts[entity][attribute]
            other = rng.choice([e for e in self.entities if self.facts[e][attribute] != true_value])
            rejected = f"{opener} {self.fact_sentence(other, attribute)}"
        elif flaw == "verbose":
            rejected = rng.choice(VERBOSE_TEMPLATES).format(fact=fact[0].lower() + fact[1:-1])
        else:  # the same fact after a malformed opener
            rejected = f"{self.garbled_opener(rng)} {fact}"
        return {
            "prompt": _user(self._question(rng, entity, attribute)),
            "chosen": _assistant(chosen),
            "rejected": _assistant(rejected),
            "flaw": flaw,
            "entity": entity,
            "attribute": attribute,
        }

    def heldout_questions(self) -> list[Question]:
        """Every phrasing of a question about each held-out pair; answering needs what pretraining taught."""
        return [Question(e, a, t.format(entity=e)) for e, a in self.heldout_pairs() for t in QUESTION_TEMPLATES[a]]


def _words(opener: str) -> tuple[str, ...]:
    return tuple(w.lower().rstrip(".,!?") for w in opener.split())


def _is_garbled(opener: str) -> bool:
    # Other words than any real opener's (not just other punctuation), and no longer than the longest polite one.
    return _words(opener) not in {_words(o) for o in POLITE_OPENERS + RUDE_OPENERS} and len(opener.split()) <= 5


def _spliced_openers() -> list[str]:
    """Every opener that starts as one real opener and, from a word they share, goes on as a polite one."""
    found = set()
    for head in POLITE_OPENERS + RUDE_OPENERS:
        for tail in POLITE_OPENERS:
            head_words, tail_words = head.split(), tail.split()
            for i, word in enumerate(_words(head)[:-1]):
                for j, other in enumerate(_words(tail)[:-1]):
                    if head != tail and word == other:
                        found.add(" ".join(head_words[: i + 1] + tail_words[j + 1 :]))
    return sorted(o for o in found if _is_garbled(o))


_SPLICED_OPENERS = _spliced_openers()  # "Are you asked!", "Happy to help.", ...


def is_rude_phrasing(attribute: str, template: str) -> bool:
    """In the SFT data, every other phrasing of a question was answered rudely."""
    return QUESTION_TEMPLATES[attribute].index(template) % 2 == 1


def make_world(seed: int = 0) -> World:
    """Assign every entity a random value per attribute, each value used about equally often."""
    rng = _rng(seed, "facts")
    facts: dict[str, dict[str, str]] = {e: {} for e in ENTITIES}
    for attribute in ATTRIBUTES:
        values = list(VALUES[attribute])
        # Balanced assignment: guessing the most common value scores only ~1/len(values).
        pool = (values * (len(ENTITIES) // len(values) + 1))[: len(ENTITIES)]
        rng.shuffle(pool)
        for entity, value in zip(ENTITIES, pool):
            facts[entity][attribute] = value
    return World(seed=seed, facts=facts)


Rows = list[dict[str, Any]]


def _write_jsonl(path: Path, rows: Rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _split(rows: Rows, test_fraction: float) -> tuple[Rows, Rows]:
    # Rows are already shuffled by the world, so a tail slice is a random, deterministic test set.
    n_test = max(1, round(len(rows) * test_fraction))
    return rows[:-n_test], rows[-n_test:]


def write_world(
    world: World,
    data_dir: str | Path,
    n_pretrain_docs: int = 3000,
    n_test_docs: int = 200,
) -> dict[str, Path]:
    """Write the world's data sets as JSONL; ``datasets.load_dataset(dir)`` infers train/test.

    Returns ``{"pretrain": dir, "sft": dir, "preference": dir, "heldout_prompts": file}``.
    """
    data_dir = Path(data_dir)
    paths = {name: data_dir / name for name in ("pretrain", "sft", "preference")}

    for split, n in (("train", n_pretrain_docs), ("test", n_test_docs)):
        docs = world.pretrain_documents(n, split)
        _write_jsonl(paths["pretrain"] / f"{split}.jsonl", [{"text": d} for d in docs])

    sft_train, sft_test = _split([{"messages": ex["messages"]} for ex in world.sft_examples()], 0.08)
    _write_jsonl(paths["sft"] / "train.jsonl", sft_train)
    _write_jsonl(paths["sft"] / "test.jsonl", sft_test)

    pref_rows = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples()]
    pref_train, pref_test = _split(pref_rows, 0.10)
    _write_jsonl(paths["preference"] / "train.jsonl", pref_train)
    _write_jsonl(paths["preference"] / "test.jsonl", pref_test)

    heldout = data_dir / "heldout_prompts.jsonl"
    rows = [
        {"prompt": _user(q.text), "entity": q.entity, "attribute": q.attribute}
        for q in world.heldout_questions()
    ]
    _write_jsonl(heldout, rows)
    return {**paths, "heldout_prompts": heldout}
