"""The only place alignkit calls TRL internals: the trainers' private dataset preparation, for `alignkit check`'s
preview (it tokenises rows exactly as training will, without building a trainer and loading a model).

TRL has no public API for it. `tests/unit/test_trl_internals.py` pins the signatures and attributes used here and
fails loudly when a TRL upgrade changes them; fix this module, nothing else.
"""

from __future__ import annotations

from types import SimpleNamespace

from datasets import Dataset
from trl import DPOTrainer, RewardTrainer, SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers


def prepare_sft(rows: Dataset, tokenizer, args, completion_only_loss: bool) -> Dataset:
    """`rows` tokenised by `SFTTrainer._prepare_dataset` with `args` (an `SFTConfig`), labels masked as in training."""
    # The attributes SFTTrainer.__init__ sets for its `_prepare_dataset`, computed the same way.
    host = SimpleNamespace(
        _tokenizer=tokenizer,
        chat_template=get_training_chat_template(tokenizer)
        if args.assistant_only_loss and not has_generation_markers(tokenizer.chat_template) else None,
        completion_only_loss=completion_only_loss,
    )
    return SFTTrainer._prepare_dataset(host, rows, tokenizer, args, False, None, "check")


def prepare_dpo(rows: Dataset, tokenizer, args) -> Dataset:
    """`rows` (preference pairs) tokenised by `DPOTrainer._prepare_dataset`: prompt, chosen and rejected ids."""
    return DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), rows, tokenizer, args, "check")


def prepare_reward(rows: Dataset, tokenizer, args, name: str = "check") -> Dataset:
    """`rows` (preference pairs) tokenised by `RewardTrainer._prepare_dataset`: chosen and rejected ids."""
    return RewardTrainer._prepare_dataset(None, rows, tokenizer, args, name)
