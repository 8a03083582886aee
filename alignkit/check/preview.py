"""The first rows of a stage's data as its trainer tokenises them, trained tokens «marked», and what `max_length`
drops. The trainers' own dataset preparation runs through `alignkit.trl_internals`."""

from __future__ import annotations

import copy

from datasets import Dataset
from trl.chat_template_utils import has_generation_markers
from trl.data_utils import is_conversational

from alignkit import data, trl_internals
from alignkit.check.findings import Report
from alignkit.errors import AlignkitError
from alignkit.stages import Stage

PREVIEW_ROWS = 2
# Rows tokenised to count what `max_length` drops; more would make a check of a large data set slow.
COUNT_ROWS = 5000
PREVIEW_CHARS = 600


def _mark(tokenizer, ids: list[int], trained: list[bool]) -> str:
    """Decode `ids`, wrapping each run of trained tokens in «...»."""
    text, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            piece = tokenizer.decode(ids[start:i])
            text.append(f"«{piece}»" if trained[start] else piece)
            start = i
    out = "".join(text).replace("\n", "\\n")
    return out if len(out) <= PREVIEW_CHARS else out[: PREVIEW_CHARS - 3] + "..."


def preview(spec: Stage, train, tokenizer, script_args, training_args, name: str, report: Report, of_source: bool = False) -> None:
    """Tokenise the first rows with the trainer's own dataset preparation; show them and count dropped rows.
    `of_source`: `train` is one data set of a mixture, and the lines name it (`name`)."""
    rows = Dataset.from_list(train.select(range(min(len(train), COUNT_ROWS))).to_list())  # in memory: no cache files
    of = f"{len(rows)}" + (f" (the first {COUNT_ROWS})" if len(train) > COUNT_ROWS else "")
    args = copy.copy(training_args)
    args.dataset_num_proc, args.shuffle_dataset = None, False
    try:
        if spec.preview == "sft":
            shown, kept, loss = _preview_sft(spec, rows, tokenizer, args)
            what = "training rows"
        elif spec.preview == "dpo":
            shown, kept, loss = _preview_dpo(rows, tokenizer, args)
            what = "training pairs"
        elif spec.preview == "reward":
            if script_args.prompt_truncation == "left" and args.max_length:  # as the recipe does
                rows = data.tokenize_reward_pairs(rows, tokenizer, args, "check")
            shown, kept, loss = _preview_reward(rows, tokenizer, args)
            what = "training pairs"
        else:
            shown, kept = _preview_prompts(rows, tokenizer, args), len(rows)
            loss, what = "the policy's own answers, scored by the reward model", "prompts"
    except AlignkitError as e:
        report.problem(e)
        return
    except Exception as e:  # a chat template or tokenizer that cannot render these rows fails the run the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        report.problem(f"{name}: the tokenizer/chat template cannot render the rows ({type(e).__name__}: {first}).")
        return
    max_length = getattr(args, "max_length", None)
    if kept == 0:
        try:
            data.check_kept(len(rows), kept, what, max_length)
        except AlignkitError as e:
            report.problem(f"{name}: {e}" + (f" (checked the first {COUNT_ROWS})" if len(train) > COUNT_ROWS else ""))
    elif kept < len(rows):
        where = f"{name}: " if of_source else ""
        report.add("max_length", f"{where}{len(rows) - kept} of {of} {what} are longer than max_length={max_length} and will be dropped")
    report.add("loss on", loss)
    if not shown:
        return
    per_row = max(1, len(shown) // max(1, min(PREVIEW_ROWS, kept)))
    report.add("preview", (f"{name}: " if of_source else "") + "the first rows as the trainer tokenises them; trained tokens «like this»")
    for i, (label, line) in enumerate(shown):
        report.add(f"row {i // per_row + 1}", f"{label}: {line}" if label else line)


def _preview_sft(spec: Stage, rows, tokenizer, args) -> tuple[list, int, str]:
    first = rows[0]
    # As recipes/sft.py: conversations learn from assistant turns when the template marks them.
    if spec.data_format == "sft" and "messages" in first and has_generation_markers(tokenizer.chat_template):
        args.assistant_only_loss = True
    completion_only = ("prompt" in first and "completion" in first) if args.completion_only_loss is None else args.completion_only_loss
    prepared = trl_internals.prepare_sft(rows, tokenizer, args, completion_only)
    kept = len(prepared) if not args.packing else len(rows)  # packing splits long rows instead of dropping them
    shown = [
        ("", _mark(tokenizer, row["input_ids"], [label != -100 for label in row["labels"]]))
        for row in prepared.select(range(min(PREVIEW_ROWS, len(prepared))))
    ]
    if args.assistant_only_loss:
        loss = "the assistant's turns only"
    elif completion_only and "prompt" in first:
        loss = "the completions only"
    elif "messages" in first:
        loss = ("every token, questions included: the chat template marks no assistant turns "
                "({% generation %}); use one that does, or prompt/completion data, to train on answers only")
    else:
        loss = "every token" + (" (completion_only_loss does nothing on text data)" if args.completion_only_loss else "")
    return shown, kept, loss


def _preview_dpo(rows, tokenizer, args) -> tuple[list, int, str]:
    prepared = trl_internals.prepare_dpo(rows, tokenizer, args)
    shown = []
    for row in prepared.select(range(min(PREVIEW_ROWS, len(prepared)))):
        prompt = row["prompt_ids"]
        for side in ("chosen", "rejected"):
            ids = prompt + row[f"{side}_ids"]
            shown.append((side, _mark(tokenizer, ids, [i >= len(prompt) for i in range(len(ids))])))
    return shown, len(prepared), "the chosen and rejected answers (log-probabilities against the reference)"


def _preview_reward(rows, tokenizer, args) -> tuple[list, int, str]:
    prepared = trl_internals.prepare_reward(rows, tokenizer, args)
    shown = []
    for row in prepared.select(range(min(PREVIEW_ROWS, len(prepared)))):
        for side in ("chosen", "rejected"):  # the whole sequence is read; its score is taken at the last token
            ids = row[f"{side}_ids"]
            shown.append((f"{side} (scored at its last token)", _mark(tokenizer, ids, [False] * (len(ids) - 1) + [True])))
    return shown, len(prepared), "the score at each answer's last token (chosen above rejected)"


def _preview_prompts(rows, tokenizer, args) -> list:
    shown = []
    for row in rows.select(range(min(PREVIEW_ROWS, len(rows)))):
        prompt = row["prompt"]
        if is_conversational(row):
            prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        limit = getattr(args, "max_prompt_length", None)
        cut = f" [{len(ids) - limit} tokens cut from the left]" if limit and len(ids) > limit else ""
        shown.append(("prompt", _mark(tokenizer, ids, [False] * len(ids)) + "«...the policy's answer»" + cut))
    return shown

