"""alignkit.rewards: the reward model's scores of (prompt, answer) pairs are its own training-time scores."""

import json

import pytest
import torch
from conftest import FAST, run_stage, write_jsonl

from alignkit import rewards
from alignkit.errors import ConfigError

MAX_LENGTH = 64
FILLER = " ".join(["The fox lives in the hills."] * 12)  # far more than MAX_LENGTH tokens


def _text(turns) -> str:
    return " ".join(t["content"] for t in turns)


def conversational_rows(world) -> list[dict]:
    rows = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples()[:14]]
    # Two dialogues too long for max_length: their first turns are cut, as the reward recipe cuts them. Training cuts
    # a pair's prompt to fit its longer answer, the scorer to fit the one answer it scores: the chosen answers are
    # the longer ones here, so training cut exactly what the scorer cuts for them.
    for ex in world.preference_examples()[20:22]:
        history = [{"role": "user", "content": FILLER}, {"role": "assistant", "content": "Noted."}]
        rows.append({"prompt": history + ex["prompt"], "chosen": ex["chosen"],
                     "rejected": [{"role": "assistant", "content": "No."}]})
    return rows


def plain_rows(world) -> list[dict]:
    rows = [{"prompt": f"Q: {_text(ex['prompt'])}\nA:", "chosen": " " + _text(ex["chosen"]),
             "rejected": " " + _text(ex["rejected"])} for ex in world.preference_examples()[:14]]
    for ex in world.preference_examples()[20:22]:  # the start of these prompts is cut to fit max_length
        rows.append({"prompt": f"{FILLER}\nQ: {_text(ex['prompt'])}\nA:", "chosen": " " + _text(ex["chosen"]),
                     "rejected": " No."})
    return rows


def train_reward(tiny_base, tmp_path_factory, rows, name):
    root = tmp_path_factory.mktemp(name)
    file = write_jsonl(root / "train.jsonl", rows)
    out = root / "rm"
    trainer = run_stage("reward", "--model_name_or_path", str(tiny_base), "--dataset_name", str(file),
                        "--output_dir", str(out), *FAST, "--eval_split_size", "0", "--use_peft", "true",
                        "--lora_target_modules", "all-linear", "--max_length", str(MAX_LENGTH), "--max_steps", "2",
                        "--learning_rate", "5e-3")
    assert len(trainer.train_dataset) == len(rows)  # nothing dropped: row i is the file's row i
    return trainer, out, rows


@pytest.fixture(scope="module")
def conversational_rm(tiny_base, tmp_path_factory, world):
    return train_reward(tiny_base, tmp_path_factory, conversational_rows(world), "rm_conv")


@pytest.fixture(scope="module")
def plain_rm(tiny_base, tmp_path_factory, world):
    return train_reward(tiny_base, tmp_path_factory, plain_rows(world), "rm_plain")


@torch.no_grad()
def trainer_scores(trainer) -> tuple[list[float], list[float]]:
    """The reward trainer's own scores of its training pairs: its tokenised rows, its collator, its model."""
    trainer.model.eval()
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows)
    scores = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].tolist()
    return scores[: len(rows)], scores[len(rows) :]


@pytest.mark.parametrize("fixture", ["conversational_rm", "plain_rm"])
def test_the_scorer_reads_and_scores_pairs_exactly_as_the_reward_trainer_did(fixture, request):
    trainer, out, rows = request.getfixturevalue(fixture)
    scorer = rewards.RewardScorer(out, batch_size=5)  # batches of other shapes than training's: padding must not matter
    prompts = [r["prompt"] for r in rows]
    chosen, rejected = [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    # The token ids, long prompts cut from the left included, are the trainer's own.
    assert scorer.token_ids(prompts, chosen) == [list(r["chosen_ids"]) for r in trainer.train_dataset]
    assert scorer.prompts_cut == 2 and all(len(r["chosen_ids"]) <= MAX_LENGTH for r in trainer.train_dataset)
    short = len(rows) - 2  # the rejected answers of the long rows fit with more of their prompts
    assert scorer.token_ids(prompts, rejected)[:short] == [list(r["rejected_ids"]) for r in trainer.train_dataset][:short]
    expected_chosen, expected_rejected = trainer_scores(trainer)
    assert scorer.score(prompts, chosen) == pytest.approx(expected_chosen, abs=1e-5)
    assert scorer.score(prompts[:short], rejected[:short]) == pytest.approx(expected_rejected[:short], abs=1e-5)


def test_a_too_long_prompt_keeps_its_end(plain_rm, conversational_rm):
    for _, out, rows in (plain_rm, conversational_rm):
        scorer = rewards.RewardScorer(out)
        row = rows[-1]
        ids = scorer.token_ids([row["prompt"]], [row["chosen"]])[0]
        text = scorer.tokenizer.decode(ids)
        assert len(ids) <= MAX_LENGTH and FILLER not in text
        question = _text(row["prompt"][-1:]) if isinstance(row["prompt"], list) else row["prompt"].split("\n")[-2]
        assert question in text and text.rstrip().endswith(scorer.tokenizer.eos_token)


def test_trl_reward_function_interface_and_normalisation(conversational_rm):
    _, out, rows = conversational_rm
    stats = json.loads((out / "alignkit_run.json").read_text())["reward_stats"]
    scorer = rewards.RewardScorer(out)
    prompts, answers = [r["prompt"] for r in rows[:4]], [r["chosen"] for r in rows[:4]]
    raw = scorer.score(prompts, answers)
    # TRL passes conversational completions as lists of turns, plus the data's columns and its own arguments.
    assert scorer(prompts=prompts, completions=answers, completion_ids=[[1, 2]] * 4, trainer_state=None) == raw
    assert scorer.score(prompts, [a[0]["content"] for a in answers]) == raw  # a text answer to a conversation
    normalised = rewards.RewardScorer(out, normalize=True).score(prompts, answers)
    assert normalised == pytest.approx([(s - stats["mean"]) / stats["std"] for s in raw], abs=1e-6)
    # A completion cut off without EOS (per TRL's completion_ids) is penalised when asked.
    eos = scorer.tokenizer.eos_token_id
    scorer.missing_eos_penalty = 1.0
    penalised = scorer(prompts=prompts, completions=answers, completion_ids=[[5, eos], [5, 6], [eos], [5]])
    assert penalised == pytest.approx([raw[0], raw[1] - 1, raw[2], raw[3] - 1])


def test_trl_default_text_scoring_differs_from_training(plain_rm):
    """What GRPO/RLOO would score without the scorer: prompt + completion, no EOS, no special tokens."""
    trainer, out, rows = plain_rm
    scorer = rewards.RewardScorer(out)
    row = rows[0]
    tokenizer = scorer.tokenizer
    no_eos = tokenizer(row["prompt"] + row["chosen"], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        trl_default = scorer.model(**no_eos).logits[0, 0].item()
    ours = scorer.score([row["prompt"]], [row["chosen"]])[0]
    assert ours == pytest.approx(trainer_scores(trainer)[0][0], abs=1e-5) and abs(ours - trl_default) > 1e-3


def test_reward_functions_are_imported_by_name_before_any_model_loads(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def brevity(prompts, completions, **kw):\n    return [0.0] * len(prompts)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert rewards.load_function("my_rewards:brevity").__name__ == "brevity"
    with pytest.raises(ConfigError, match="not `module:function`"):
        rewards.load_function("my_rewards.brevity")
    with pytest.raises(ConfigError, match="cannot be imported"):
        rewards.load_function("my_rewards:length")
    args = rewards.GRPOConfig(output_dir=str(tmp_path / "o"), bf16=False, use_cpu=True, num_generations=2,
                              per_device_train_batch_size=2, reward_funcs=["my_rewards:nope"], reward_model_path="missing")
    with pytest.raises(ConfigError, match="my_rewards:nope cannot be imported"):
        rewards.reward_functions(args)
    with pytest.raises(ValueError, match="reward_weights has 1 weights for 2 rewards"):
        rewards.GRPOConfig(output_dir=str(tmp_path / "o"), bf16=False, use_cpu=True, num_generations=2,
                           per_device_train_batch_size=2, reward_funcs=["my_rewards:brevity"], reward_weights=[1.0])
