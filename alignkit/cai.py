"""Constitutional AI (Bai et al., 2022): self-critique and revision, and AI feedback, against a written constitution.

- `critique_revise` (the supervised stage): the policy answers each prompt; then, for `num_revisions` rounds, a
  sampled principle's critique request and revision request are asked as further turns of the same conversation
  (rendered with the model's chat template, after the constitution's few-shot examples); the last revision becomes
  the SFT target for the prompt.
- `ai_feedback`: the policy samples two answers per prompt; a feedback model is asked a principle's comparison
  question with the answers labelled (A) and (B), in both orders, and the probabilities of its next token being
  "A" rather than "B" give a soft label (averaged over the two orders, which cancels a bias for either position).

The recipes (`recipes/critique_revise.py`, `recipes/ai_feedback.py`) wire these to data, models and outputs; their
configs are below.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from alignkit.constitution import Constitution, Principle, load_constitution
from alignkit.errors import ConfigError, ModelError
from alignkit.evaluation import vllm_generation
from alignkit.evaluation.generation import device_of, generate, render

Conversation = list[dict[str, str]]
Generate = Callable[[Sequence[Conversation]], list[str]]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _check_vllm(config) -> None:
    if not 0 < config.vllm_gpu_memory_utilization <= 1:
        raise ConfigError(f"`vllm_gpu_memory_utilization` must be in (0, 1], got {config.vllm_gpu_memory_utilization}.")
    vllm_generation.check_use_vllm(config.use_vllm)


def stage_constitution(config) -> Constitution:
    """
    The constitution a CAI stage's config names, kept to its `principles`. Configs call it as they are read, so that a
    bad file or a principle it does not hold fails before any model loads; the recipes call it for the constitution.
    """
    if config.principles is not None and not config.principles:
        raise ConfigError("`principles` is empty; name some of the constitution's principles, or leave it unset for all.")
    return load_constitution(config.constitution).restricted_to(config.principles)


@dataclass
class CritiqueReviseConfig(SFTConfig):
    """
    `SFTConfig` for the critique-and-revise stage, plus how the revisions are generated.

    Args:
        constitution (`str`, *optional*, defaults to `"default"`):
            A constitution YAML file, or the name of one shipped in `alignkit/constitutions/` (`default`).
        principles (`list[str]`, *optional*):
            Use only these of the constitution's principles (by id); by default all of them.
        num_revisions (`int`, *optional*, defaults to `1`):
            Critique-and-revise rounds per prompt, each with a freshly sampled principle.
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Longest answer, critique or revision generated.
        generation_batch_size (`int`, *optional*, defaults to `32`):
            Conversations generated together (transformers `generate`).
        do_sample (`bool`, *optional*, defaults to `False`):
            Sample answers, critiques and revisions at `temperature` instead of decoding greedily.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature when `do_sample`.
        use_vllm (`bool`, *optional*):
            Generate with vLLM; unset, it is used when installed and a CUDA GPU is there (`pip install "alignkit[vllm]"`).
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.5`):
            The share of the GPU's memory vLLM's engine may take; it is freed before training.
    """

    constitution: str = field(default="default", metadata={"help": "Constitution YAML file or shipped name (default)."})
    principles: list[str] | None = field(default=None, metadata={"help": "Only these principles' ids (default: all)."})
    num_revisions: int = field(default=1, metadata={"help": "Critique-and-revise rounds per prompt."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest answer, critique or revision generated."})
    generation_batch_size: int = field(default=32, metadata={"help": "Conversations generated together."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of decoding greedily."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature when do_sample."})
    use_vllm: bool | None = field(default=None, metadata={"help": "Generate with vLLM (unset: when installed, on a GPU)."})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={"help": "GPU memory share vLLM's engine takes."})

    def __post_init__(self):
        super().__post_init__()
        for key in ("num_revisions", "max_new_tokens", "generation_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"`{key}` must be at least 1, got {getattr(self, key)}.")
        if self.temperature <= 0:
            raise ConfigError(f"`temperature` must be positive, got {self.temperature}; use `do_sample: false` for greedy.")
        _check_vllm(self)
        stage_constitution(self)


@dataclass
class AIFeedbackConfig:
    """
    The AI feedback stage: no training, a preference data set written to `<output_dir>/preference/train.jsonl`.

    Args:
        output_dir (`str`, *optional*, defaults to `"ai_feedback_output"`):
            Where the preference data set and the run record go.
        constitution (`str`, *optional*, defaults to `"default"`):
            A constitution YAML file, or the name of a shipped one; each pair is compared by a sampled principle.
        principles (`list[str]`, *optional*):
            Use only these of the constitution's principles (by id); by default all of them.
        feedback_model_path (`str`, *optional*):
            The causal LM asked to compare the answers (Hub id or folder); by default the policy itself.
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Longest answer sampled.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature of the two answers (they are always sampled: greedy answers would be the same).
        generation_batch_size (`int`, *optional*, defaults to `32`):
            Conversations generated or scored together.
        principles_per_pair (`int`, *optional*, defaults to `1`):
            Principles each pair is compared under, sampled without replacement; the label is their mean. Set it to
            the number of principles to ask every one (an ensemble, as Bai et al. found steadier).
        min_confidence (`float`, *optional*, defaults to `0.5`):
            Keep only pairs whose label (the probability that `chosen` is better) is at least this.
        judge (`str`, *optional*):
            A judge plug-in (`module:function`, as `evaluation.judge`) to measure how often the AI labels agree with it
            on the pairs sampled for `judge_prompts` (`gold_agreement` in the run record and the pipeline report).
        judge_prompts (`str`, *optional*):
            A JSONL prompts file whose rows the judge can rate (e.g. held-out questions); never part of the output.
        judge_samples (`int`, *optional*, defaults to `1`):
            Pairs sampled and labelled for each of `judge_prompts`: more pairs, a steadier agreement measure.
        use_vllm (`bool`, *optional*):
            Sample the answers with vLLM; unset, it is used when installed and a CUDA GPU is there. The comparisons
            are one forward pass each and stay with transformers.
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.5`):
            The share of the GPU's memory vLLM's engine may take (the feedback model shares the GPU with it).
    """

    output_dir: str = field(default="ai_feedback_output", metadata={"help": "Where the preference data set goes."})
    seed: int = field(default=42, metadata={"help": "Seeds the sampled answers and principles."})
    constitution: str = field(default="default", metadata={"help": "Constitution YAML file or shipped name (default)."})
    principles: list[str] | None = field(default=None, metadata={"help": "Only these principles' ids (default: all)."})
    feedback_model_path: str | None = field(default=None, metadata={"help": "Feedback model (default: the policy)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest answer sampled."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the two answers."})
    generation_batch_size: int = field(default=32, metadata={"help": "Conversations generated or scored together."})
    principles_per_pair: int = field(default=1, metadata={"help": "Principles each pair is compared under."})
    min_confidence: float = field(default=0.5, metadata={"help": "Keep pairs whose label is at least this."})
    judge: str | None = field(default=None, metadata={"help": "Judge (module:function) to measure agreement with."})
    judge_prompts: str | None = field(default=None, metadata={"help": "Prompts (JSONL) the judge can rate."})
    judge_samples: int = field(default=1, metadata={"help": "Pairs sampled per judge prompt."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub."})
    chat_template_path: str | None = field(default=None, metadata={"help": "A chat template (.jinja) for the policy."})
    use_vllm: bool | None = field(default=None, metadata={"help": "Generate with vLLM (unset: when installed, on a GPU)."})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={"help": "GPU memory share vLLM's engine takes."})

    def __post_init__(self):
        for key in ("max_new_tokens", "generation_batch_size", "judge_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"`{key}` must be at least 1, got {getattr(self, key)}.")
        if self.temperature <= 0:
            raise ConfigError(f"`temperature` must be positive, got {self.temperature}.")
        if not 0.5 <= self.min_confidence < 1:
            raise ConfigError(f"`min_confidence` must be in [0.5, 1), got {self.min_confidence}.")
        _check_vllm(self)
        if bool(self.judge) != bool(self.judge_prompts):
            raise ConfigError("`judge` and `judge_prompts` go together: set both to measure agreement, or neither.")
        constitution = stage_constitution(self)
        if not 1 <= self.principles_per_pair <= len(constitution.principles):
            raise ConfigError(f"`principles_per_pair` must be between 1 and the constitution's {len(constitution.principles)} "
                              f"principles, got {self.principles_per_pair}.")


# ----------------------------------------------------------------------------------------- critique and revise


@contextmanager
def answerer(model, tokenizer, args, model_args, *, do_sample: bool, seed: int, device=None):
    """
    A stage's `Generate` (conversations -> answers) with `args`' max_new_tokens, temperature and generation_batch_size:
    vLLM's engine when `args.use_vllm` says so (freed on leaving), else transformers `generate` with `model` on
    `device` (by default this process's). `seed` seeds vLLM's sampler; seed torch's for transformers.
    """
    if not vllm_generation.wants_vllm(args.use_vllm):
        from alignkit import models

        model = models.to_process_device(model, device).eval()
        yield lambda conversations: generate(model, tokenizer, conversations, args.max_new_tokens,
                                             args.generation_batch_size, do_sample=do_sample, temperature=args.temperature)
        return
    from accelerate import PartialState

    with vllm_generation.VLLMGenerator(
        model_args.model_name_or_path, tokenizer, max_new_tokens=args.max_new_tokens, do_sample=do_sample,
        temperature=args.temperature, seed=seed, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        dtype=model_args.dtype, revision=model_args.model_revision, trust_remote_code=args.trust_remote_code,
        num_processes=PartialState().num_processes,
    ) as generator:
        yield generator


def critique_and_revise(
    generate: Generate, prompts: Sequence[Conversation], constitution: Constitution, num_revisions: int, rng: random.Random
) -> list[dict]:
    """
    For each prompt: the initial answer, then `num_revisions` rounds of (critique, revision) under a sampled
    principle, all as one conversation after the constitution's few-shot turns. `generate` answers a batch of
    conversations. Returns one record per prompt: prompt, initial_answer, principles, critiques, revisions, revision.
    """
    few_shot = constitution.few_shot_turns()
    answers = generate([list(p) for p in prompts])
    conversations = [[*p, _assistant(a)] for p, a in zip(prompts, answers)]
    records = [{"prompt": list(p), "initial_answer": a, "principles": [], "critiques": [], "revisions": []}
               for p, a in zip(prompts, answers)]
    for _ in range(num_revisions):
        principles = [constitution.sample(rng) for _ in prompts]
        asks = [[*c, _user(p.critique)] for c, p in zip(conversations, principles)]
        critiques = generate([few_shot + a for a in asks])
        asks = [[*a, _assistant(c), _user(p.revision)] for a, c, p in zip(asks, critiques, principles)]
        revisions = generate([few_shot + a for a in asks])
        conversations = [[*a, _assistant(r)] for a, r in zip(asks, revisions)]
        for record, principle, critique, revision in zip(records, principles, critiques, revisions):
            record["principles"].append(principle.id)
            record["critiques"].append(critique)
            record["revisions"].append(revision)
    for record in records:
        record["revision"] = record["revisions"][-1]
    return records


# ----------------------------------------------------------------------------------------------- AI feedback


def choice_token_ids(tokenizer, letters: Sequence[str] = ("A", "B")) -> list[int]:
    """The token each letter starts with, when a model answers with it; distinct, or a `ModelError`."""
    ids = [tokenizer.encode(letter, add_special_tokens=False) for letter in letters]
    if any(not i for i in ids) or len({i[0] for i in ids}) != len(ids):
        raise ModelError(f"the tokenizer cannot tell the answers {', '.join(letters)} apart by their first token "
                         f"({ids}); the feedback model needs a tokenizer that does.")
    return [i[0] for i in ids]


@torch.no_grad()
def first_choice_probabilities(model, tokenizer, conversations: Sequence[Conversation], batch_size: int = 32) -> list[float]:
    """
    For each conversation (rendered with the chat template and the generation prompt), the probability that the
    model's next token is "A" rather than "B": softmax over those two tokens' logits only.
    """
    a, b = choice_token_ids(tokenizer)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the next token's logits are at the end
    probabilities = []
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [render(tokenizer, c) for c in conversations[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device_of(model))
            logits = model(**batch).logits[:, -1, :].float()
            probabilities += torch.softmax(logits[:, [a, b]], dim=-1)[:, 0].tolist()
    finally:
        tokenizer.padding_side = padding_side
    return probabilities


def comparison_conversation(constitution: Constitution, principle: Principle, prompt: Conversation, first: str,
                            second: str, reference: str | None = None) -> Conversation:
    question = "\n".join(turn["content"] for turn in prompt if turn["role"] == "user")
    return [_user(constitution.comparison_prompt(principle, question, first, second, reference))]


def feedback_labels(
    choose: Callable[[Sequence[Conversation]], list[float]], prompts: Sequence[Conversation],
    pairs: Sequence[tuple[str, str]], constitution: Constitution, rng: random.Random, principles_per_pair: int = 1,
    references: Sequence[str] | None = None,
) -> list[tuple[float, str]]:
    """
    (p, principle ids) per pair: p, the probability that the pair's first answer is the better one, averaged over
    both orders, p = (p_AB + (1 - p_BA)) / 2, so a feedback model that always answers "A" gives 0.5. Each pair is
    asked under `principles_per_pair` principles sampled without replacement and p is their mean (Bai et al. ensemble
    principles for steadier labels); the ids are joined with "+". `choose` gives p("A") for a batch of comparison
    conversations; `references`, the feedback model's own answers, are shown where the template has `{reference}`.
    """
    asked = [rng.sample(constitution.principles, principles_per_pair) for _ in prompts]
    references = references if references is not None else [None] * len(prompts)
    flat = [(principle, prompt, pair, ref) for principles, prompt, pair, ref in zip(asked, prompts, pairs, references)
            for principle in principles]
    p_ab = choose([comparison_conversation(constitution, pr, p, x, y, r) for pr, p, (x, y), r in flat])
    p_ba = choose([comparison_conversation(constitution, pr, p, y, x, r) for pr, p, (x, y), r in flat])
    p_first = [(ab + (1 - ba)) / 2 for ab, ba in zip(p_ab, p_ba)]
    k = principles_per_pair
    return [(sum(p_first[i * k : (i + 1) * k]) / k, "+".join(pr.id for pr in principles))
            for i, principles in enumerate(asked)]


def preference_row(prompt: Conversation, first: str, second: str, p_first: float, principle: str) -> dict:
    """A pair as the reward and DPO stages read it; `label` is P(chosen is better), `margin` its log-odds."""
    label = max(p_first, 1 - p_first)
    chosen, rejected = (first, second) if p_first >= 0.5 else (second, first)
    # The reward model's Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected - margin), asks for a gap that grows
    # with the feedback model's confidence; capped so one confident label cannot demand an unbounded gap.
    margin = math.log(min(label, 0.99) / (1 - min(label, 0.99)))
    return {"prompt": list(prompt), "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)],
            "label": round(label, 6), "margin": round(margin, 6), "principle": principle}


def agreement_by_criterion(labels: Sequence[float], verdicts: Sequence[tuple[dict, dict]]) -> dict[str, dict]:
    """
    For each of the judge's criteria, how often the AI's preference matches the judge's over the pairs whose two
    answers differ on that criterion (and on whatever else they differ): what the feedback model can and cannot tell.
    """
    by = {}
    for key in verdicts[0][0] if verdicts else ():
        pairs = [(labels[i], [sum(map(float, v.values())) for v in pair]) for i, pair in enumerate(verdicts)
                 if pair[0][key] != pair[1][key]]
        rate, n = agreement([p for p, _ in pairs], [g for _, g in pairs])
        if n:
            by[key] = {"agreement": rate, "pairs": n}
    return by


def agreement(labels: Sequence[float], gold: Sequence[tuple[float, float]]) -> tuple[float | None, int]:
    """How often the AI's preference (p > 0.5 for the first answer) matches the judge's, over the pairs the judge tells
    apart (its scores of the two answers differ); (agreement, how many such pairs)."""
    decided = [(p, g1 > g2) for p, (g1, g2) in zip(labels, gold) if g1 != g2]
    if not decided:
        return None, 0
    return sum((p > 0.5) == first_better for p, first_better in decided) / len(decided), len(decided)
