"""Constitutions: the written principles that Constitutional AI (Bai et al., 2022) critiques, revises and compares by.

A constitution is a YAML file:

```yaml
principles:                      # at least one; a stage samples one per critique round / comparison
  - id: polite                   # a short name, unique in the file, recorded with every example it shaped
    critique: Point out anything rude or dismissive in your last answer.        # asked after the answer
    revision: Rewrite your answer so that it is polite and keeps every fact.    # asked after the critique
    comparison: Which answer is more polite?                                     # asked of the feedback model
examples:                        # optional few-shot turns shown before each critique (any number)
  - principle: polite
    prompt: What color is the sky?
    answer: Obviously, it is blue.
    critique: The answer calls the question obvious, which is dismissive.
    revision: Good question! The sky is blue.
feedback_template: ...           # optional: how a comparison is asked, with {question} {answer_a} {answer_b} {comparison}
```

A `feedback_template` may also hold `{reference}`: the feedback model then answers the question itself first, and its
answer is shown beside the two it compares (reference-guided judging, Zheng et al., 2023), for principles such as
correctness that a model judges better against its own answer. It needs {question} or {reference} (or both).

`load_constitution("default")` (or any name of a file in `alignkit/constitutions/`) loads a shipped one. Every
mistake is a `ConfigError` naming the file, the line and the principle or field, and how to fix it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path

import yaml

from alignkit.configfile import closest_hint, load_yaml
from alignkit.errors import ConfigError

SHIPPED = Path(__file__).with_name("constitutions")

# Asked of the feedback model; the answer's first token, "A" or "B", is the label.
DEFAULT_FEEDBACK_TEMPLATE = (
    "Question: {question}\n(A) {answer_a}\n(B) {answer_b}\n{comparison} Answer with A or B."
)
TEMPLATE_FIELDS = ("question", "answer_a", "answer_b", "comparison", "reference")
REQUIRED_TEMPLATE_FIELDS = ("answer_a", "answer_b", "comparison")


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str
    revision: str
    comparison: str


@dataclass(frozen=True)
class Example:
    """A worked critique and revision, shown to the model as earlier turns of the conversation."""

    principle: str
    prompt: str
    answer: str
    critique: str
    revision: str

    def turns(self, constitution: Constitution) -> list[dict[str, str]]:
        principle = constitution.principle(self.principle)
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.answer},
            {"role": "user", "content": principle.critique},
            {"role": "assistant", "content": self.critique},
            {"role": "user", "content": principle.revision},
            {"role": "assistant", "content": self.revision},
        ]


@dataclass(frozen=True)
class Constitution:
    path: str
    principles: tuple[Principle, ...]
    examples: tuple[Example, ...] = ()
    feedback_template: str = DEFAULT_FEEDBACK_TEMPLATE

    def principle(self, principle_id: str) -> Principle:
        return next(p for p in self.principles if p.id == principle_id)

    def sample(self, rng: random.Random) -> Principle:
        return rng.choice(self.principles)

    def few_shot_turns(self) -> list[dict[str, str]]:
        return [turn for example in self.examples for turn in example.turns(self)]

    def restricted_to(self, ids: Sequence[str] | None) -> Constitution:
        """The constitution with only the principles `ids` (and their examples); all of it when `ids` is None."""
        if ids is None:
            return self
        known = [p.id for p in self.principles]
        for principle_id in ids:
            if principle_id not in known:
                raise ConfigError(f"`principles` names '{principle_id}'{closest_hint(principle_id, known)}, which "
                                  f"{self.path} does not hold; use some of {', '.join(known)}.")
        return replace(self, principles=tuple(p for p in self.principles if p.id in ids),
                       examples=tuple(e for e in self.examples if e.principle in ids))

    @cached_property  # asked for every comparison; the template does not change
    def uses_reference(self) -> bool:
        """Whether a comparison shows the feedback model's own answer (`{reference}` in the feedback template)."""
        return "reference" in template_fields(self.feedback_template)

    def comparison_prompt(self, principle: Principle, question: str, answer_a: str, answer_b: str,
                          reference: str | None = None) -> str:
        if self.uses_reference and reference is None:
            raise ValueError("this constitution's feedback template shows a reference answer; pass `reference`.")
        return self.feedback_template.format(question=question, answer_a=answer_a, answer_b=answer_b,
                                             comparison=principle.comparison, reference=reference)


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def constitution_path(name_or_path: str | Path) -> Path:
    """A shipped constitution's file by name (`default`), else the path as given."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and (SHIPPED / f"{name_or_path}.yaml").is_file():
        return SHIPPED / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"constitution {name_or_path} not found: give a YAML file's path or a shipped name "
                          f"({', '.join(shipped_names())}).")
    return path


def _lines(path: Path) -> dict[tuple, int]:
    """The line (1-based) where each mapping key and list item starts, by its path (`("principles", 0, "id")`)."""
    lines: dict[tuple, int] = {}

    def walk(node, at: tuple) -> None:
        lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*at, key.value)] = key.start_mark.line + 1
                walk(value, (*at, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*at, i))

    root = yaml.compose(path.read_text(encoding="utf-8"))
    if root is not None:
        walk(root, ())
    return lines


def _record(cls, raw, where: str, line: int, known: dict[str, str]):
    """`cls` from the mapping `raw`: every field a non-empty string, no key missing or unknown."""
    names = [f.name for f in fields(cls)]
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} (line {line}) must be a mapping with {', '.join(names)}; got {type(raw).__name__}.")
    for key in raw:
        if key not in names:
            raise ConfigError(f"{where} (line {line}): unknown key '{key}'{closest_hint(str(key), names)}; "
                              f"use {', '.join(names)}.")
    for name in names:
        value = raw.get(name)
        if value is None:
            raise ConfigError(f"{where} (line {line}): missing `{name}`; add `{name}: {known[name]}`.")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} (line {line}): `{name}` must be non-empty text, got {value!r}; "
                              f"write e.g. `{name}: {known[name]}`.")
    return cls(**{name: raw[name].strip() for name in names})


PRINCIPLE_HINTS = {"id": "polite", "critique": "<a request to criticise the last answer>",
                   "revision": "<a request to rewrite it>", "comparison": "<which answer is better, and why?>"}
EXAMPLE_HINTS = {"principle": "<a principle's id>", "prompt": "<a question>", "answer": "<a flawed answer>",
                 "critique": "<its critique>", "revision": "<the rewritten answer>"}


def load_constitution(name_or_path: str | Path = "default") -> Constitution:
    """Read and check a constitution (a shipped name or a YAML path); see the module docstring for the format."""
    path = constitution_path(name_or_path)
    raw = load_yaml(str(path))
    lines = _lines(path)
    line = lambda *at: lines.get(at, 1)
    for key in raw:
        if key not in ("principles", "examples", "feedback_template"):
            raise ConfigError(f"{path} (line {line(key)}): unknown key '{key}'"
                              f"{closest_hint(str(key), ('principles', 'examples', 'feedback_template'))}; "
                              "use principles, examples and feedback_template.")
    items = raw.get("principles")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path} (line {line('principles') if 'principles' in raw else 1}): no principles; add "
                          "`principles:` with at least one `- {id, critique, revision, comparison}`.")
    principles = []
    for i, item in enumerate(items):
        name = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else f"#{i + 1}"
        principle = _record(Principle, item, f"{path}: principle {name}", line("principles", i), PRINCIPLE_HINTS)
        if principle.id in {p.id for p in principles}:
            raise ConfigError(f"{path} (line {line('principles', i)}): principle id '{principle.id}' is used twice; "
                              "give each principle its own id.")
        principles.append(principle)
    ids = [p.id for p in principles]

    examples = []
    items = raw.get("examples") or []
    if not isinstance(items, list):
        raise ConfigError(f"{path} (line {line('examples')}): `examples` must be a list of "
                          "`- {principle, prompt, answer, critique, revision}`.")
    for i, item in enumerate(items):
        example = _record(Example, item, f"{path}: example {i + 1}", line("examples", i), EXAMPLE_HINTS)
        if example.principle not in ids:
            raise ConfigError(f"{path} (line {line('examples', i)}): example {i + 1} names principle "
                              f"'{example.principle}'{closest_hint(example.principle, ids)}, which is not in the file; "
                              f"use one of {', '.join(ids)}.")
        examples.append(example)

    template = raw.get("feedback_template", DEFAULT_FEEDBACK_TEMPLATE)
    if not isinstance(template, str):
        raise ConfigError(f"{path} (line {line('feedback_template')}): `feedback_template` must be text.")
    used = template_fields(template)
    missing = set(REQUIRED_TEMPLATE_FIELDS) - used or ({"question"} if not used & {"question", "reference"} else set())
    extra = used - set(TEMPLATE_FIELDS)
    if missing or extra:
        problem = f"lacks {{{'}, {'.join(sorted(missing))}}}" if missing else f"has unknown {{{'}, {'.join(sorted(extra))}}}"
        raise ConfigError(f"{path} (line {line('feedback_template')}): `feedback_template` {problem}; it must hold "
                          "{answer_a}, {answer_b}, {comparison}, and {question} or {reference} (the feedback model's own "
                          "answer) or both.")
    return Constitution(str(path), tuple(principles), tuple(examples), template)
