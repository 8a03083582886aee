"""alignkit's one adapter to TRL internals (`alignkit.trl_internals`): if a TRL upgrade changes what it relies on,
these tests fail here, naming the private method, instead of `alignkit check` breaking for users."""

import inspect

import pytest
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from alignkit import trl_internals
from alignkit.models import load_tokenizer

# The private methods and the parameters alignkit passes them positionally, in order.
PINNED = {
    SFTTrainer._prepare_dataset: ["self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"],
    DPOTrainer._prepare_dataset: ["self", "dataset", "processing_class", "args", "dataset_name"],
    RewardTrainer._prepare_dataset: ["self", "dataset", "processing_class", "args", "dataset_name"],
}


@pytest.mark.parametrize("method", PINNED, ids=lambda m: m.__qualname__)
def test_the_private_trl_methods_alignkit_calls_keep_their_signatures(method):
    assert list(inspect.signature(method).parameters)[: len(PINNED[method])] == PINNED[method], (
        f"TRL changed {method.__qualname__}; update alignkit/trl_internals.py to match."
    )


def test_sft_rows_are_tokenised_with_completion_only_labels(tiny_base, tmp_path):
    tokenizer = load_tokenizer(type("Args", (), {"model_name_or_path": str(tiny_base), "model_revision": None})())
    rows = Dataset.from_list([{"prompt": "The fox is", "completion": " red."}])
    args = SFTConfig(output_dir=str(tmp_path), max_length=64, bf16=False, use_cpu=True, report_to="none")
    [row] = trl_internals.prepare_sft(rows, tokenizer, args, completion_only_loss=True)
    prompt = tokenizer("The fox is", add_special_tokens=False)["input_ids"]
    assert row["input_ids"][: len(prompt)] == prompt and row["input_ids"][-1] == tokenizer.eos_token_id
    # The prompt's tokens are masked out of the loss; the completion's, its EOS included, are trained.
    assert row["labels"] == [-100] * len(prompt) + row["input_ids"][len(prompt) :]


def test_preference_rows_are_tokenised_for_dpo_and_the_reward_model(tiny_base, tmp_path):
    tokenizer = load_tokenizer(type("Args", (), {"model_name_or_path": str(tiny_base), "model_revision": None})())
    rows = Dataset.from_list([{"prompt": "The fox is", "chosen": " red.", "rejected": " blue, I think."}])
    dpo = trl_internals.prepare_dpo(rows, tokenizer, DPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True))[0]
    assert dpo["prompt_ids"] and len(dpo["rejected_ids"]) > len(dpo["chosen_ids"])
    reward = trl_internals.prepare_reward(rows, tokenizer, RewardConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True))[0]
    assert reward["chosen_ids"][-1] == tokenizer.eos_token_id and len(reward["rejected_ids"]) > len(reward["chosen_ids"])
