"""The best_of_n recipe: n sampled answers per prompt, the reward model's favourite kept, SFT on the kept ones."""

import json

import pytest
import torch
from conftest import FAST, run_stage
from datasets import load_dataset
from trl import ModelConfig

from alignkit import best_of_n, models, rewards
from alignkit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def bon_stages(tiny_base, sft_messages_file, preference_file, tmp_path_factory):
    """A full SFT model that has learnt to end its answers (EOS) and a reward LoRA adapter on it."""
    root = tmp_path_factory.mktemp("best_of_n")
    run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
              "--output_dir", str(root / "sft"), *FAST, "--max_steps", "40", "--learning_rate", "1e-2")
    run_stage("reward", "--model_name_or_path", str(root / "sft"), "--dataset_name", str(preference_file),
              "--output_dir", str(root / "reward"), *FAST, "--use_peft", "true", "--max_steps", "24",
              "--learning_rate", "3e-3", "--max_length", "64")
    return root, preference_file


def bon_args(root, prefs, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(root / "sft"), "--reward_model_path", str(root / "reward"),
            "--dataset_name", str(prefs), "--eval_split_size", "0", "--output_dir", str(out), *FAST,
            "--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj", "--num_generations", "4",
            "--max_completion_length", "16", "--max_steps", "3", "--learning_rate", "3e-3", *extra]


def kept_rows(out, iteration=1) -> list[dict]:
    return [json.loads(line) for line in best_of_n.kept_path(out, iteration).read_text().splitlines()]


def test_select_keeps_each_prompts_highest_scoring_finished_answer():
    prompts = ["a", [{"role": "user", "content": "b"}], "c"]
    answers = [[" x", " y", " z"], ["p", "q", "r"], [" u", " v", " w"]]
    scores = [[0.1, 0.9, 0.5], [2.0, 1.0, 3.0], [-1.0, -2.0, -0.5]]
    finished = [[True, True, True], [True, True, False], [False, False, False]]
    kept = best_of_n.select(prompts, answers, scores, finished, threshold=None)
    # "c" has no answer that ended with EOS; "b"'s top score was cut off, so its best finished answer is kept.
    assert [(r["prompt"], r["completion"], r["score"], r["best"]) for r in kept] == [
        ("a", " y", 0.9, 1), (prompts[1], [{"role": "assistant", "content": "p"}], 2.0, 0)]
    assert kept[1]["candidate_scores"] == scores[1] and kept[1]["candidates"] == answers[1]
    # A threshold drops prompts whose best is below it, and only those.
    assert [r["prompt"] for r in best_of_n.select(prompts, answers, scores, finished, threshold=1.0)] == [prompts[1]]


def test_the_stage_trains_on_each_prompts_best_answer_and_keeps_them_in_its_output(bon_stages, tmp_path):
    root, prefs = bon_stages
    out = tmp_path / "bon"
    trainer = run_stage("best_of_n", *bon_args(root, prefs, out))
    rows = kept_rows(out)
    prompts = best_of_n.unique_prompts(load_dataset("json", data_files=str(prefs))["train"])
    assert rows and len(rows) <= len(prompts)
    assert [r["prompt"] for r in rows] == [p for p in prompts if p in [r["prompt"] for r in rows]]  # once, in order
    fresh = rewards.RewardScorer(root / "reward", normalize=True)
    for row in rows:
        finished = [s for s, done in zip(row["candidate_scores"], row["finished"]) if done]
        assert row["score"] == max(finished) == row["candidate_scores"][row["best"]]
        assert row["completion"][0]["content"] == row["candidates"][row["best"]]
    # The scores are the reward model's, in its training format, normalised with its recorded statistics.
    sample = rows[:4]
    assert [r["score"] for r in sample] == pytest.approx(
        fresh.score([r["prompt"] for r in sample], [r["completion"][0]["content"] for r in sample]), abs=1e-5)
    # SFT trained on exactly these prompt/completion pairs, the loss on the kept answers only.
    first = trainer.train_dataset[0]
    kept_ids = [label for label in first["labels"] if label != -100]
    assert trainer.processing_class.decode(kept_ids).startswith(rows[0]["completion"][0]["content"])
    assert len(trainer.train_dataset) == len(rows) and trainer.state.global_step == 3
    record = json.loads((out / "alignkit_run.json").read_text())
    assert record["stage"] == "best_of_n" and record["best_of_n"][0]["kept"] == len(rows)
    assert json.loads((out / "best_of_n" / "stats.json").read_text()) == record["best_of_n"]
    assert models.adapter_base(out) == str(root / "sft")


def test_a_score_threshold_drops_the_prompts_whose_best_answer_is_below_it(bon_stages, tmp_path):
    root, prefs = bon_stages
    run_stage("best_of_n", *bon_args(root, prefs, tmp_path / "all", "--max_steps", "1"))
    scores = sorted(r["score"] for r in kept_rows(tmp_path / "all"))
    threshold = scores[len(scores) // 2]  # the same seed samples the same answers: about half stay
    run_stage("best_of_n", *bon_args(root, prefs, tmp_path / "half", "--max_steps", "1", "--score_threshold", str(threshold)))
    kept = kept_rows(tmp_path / "half")
    assert [r["score"] for r in kept] == [s for s in (r["score"] for r in kept_rows(tmp_path / "all")) if s >= threshold]
    assert 0 < len(kept) < len(scores)
    with pytest.raises(DataError, match=r"kept no answer: .* no prompt's best of them scored at least score_threshold=100.0; "
                                        r"raise max_completion_length or lower score_threshold"):
        run_stage("best_of_n", *bon_args(root, prefs, tmp_path / "none", "--score_threshold", "100"))


def test_each_iteration_samples_from_the_policy_trained_so_far_and_its_mean_score_rises(bon_stages, tmp_path):
    root, prefs = bon_stages
    out = tmp_path / "bon2"
    trainer = run_stage("best_of_n", *bon_args(root, prefs, out, "--iterations", "2", "--max_steps", "30",
                                               "--num_generations", "8"))
    stats = json.loads((out / "alignkit_run.json").read_text())["best_of_n"]
    assert [s["iteration"] for s in stats] == [1, 2] and kept_rows(out, 1) != kept_rows(out, 2)
    # The policy's mean reward-model score over all its samples, before the stage and after it, on the same prompts.
    args = trainer.args
    scorer = best_of_n.load_scorer(args, "cpu")
    prompts = best_of_n.unique_prompts(load_dataset("json", data_files=str(prefs))["train"])
    start = models.load_model(ModelConfig(model_name_or_path=str(root / "sft")))

    def mean_score(model) -> float:
        torch.manual_seed(1)
        answers, _ = best_of_n.sample(model, trainer.processing_class, prompts, args)
        flat = [a for group in answers for a in group]
        return sum(scorer.score([p for p in prompts for _ in range(args.num_generations)], flat)) / len(flat)

    before, after = mean_score(start), mean_score(trainer.model)
    assert after > before + 0.2, (before, after)
    assert stats[1]["mean_score"] > stats[0]["mean_score"]  # round 2 sampled from the policy round 1 trained


@pytest.mark.parametrize("extra, message", [
    (["--num_generations", "1"], "num_generations must be at least 2"),
    (["--iterations", "0"], "iterations must be at least 1"),
    (["--temperature", "0"], "temperature must be positive"),
    (["--reward_model_path", ""], "reward_model_path is not set: give the reward stage's output folder"),
])
def test_bad_settings_fail_before_anything_is_written(bon_stages, tmp_path, extra, message):
    root, prefs = bon_stages
    with pytest.raises(ConfigError, match=message):
        run_stage("best_of_n", *bon_args(root, prefs, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_resume_continues_the_last_rounds_sft_on_the_rows_it_kept_without_sampling_again(bon_stages, tmp_path, monkeypatch):
    root, prefs = bon_stages
    out = tmp_path / "bon"
    first = run_stage("best_of_n", *bon_args(root, prefs, out, "--iterations", "2", "--save_strategy", "steps",
                                             "--save_steps", "2", "--max_steps", "4"))
    kept, record = kept_rows(out, 2), json.loads((out / "alignkit_run.json").read_text())
    (out / "checkpoint-4").rename(out / "gone")  # as if the run had stopped after step 2 of the last round
    (out / "alignkit_run.json").unlink()

    def no_sampling(*args, **kwargs):
        raise AssertionError("a resume sampled again")

    monkeypatch.setattr(best_of_n, "sample", no_sampling)
    resumed = run_stage("best_of_n", *bon_args(root, prefs, out, "--iterations", "2", "--save_strategy", "steps",
                                               "--save_steps", "2", "--max_steps", "4", "--resume_from_checkpoint", "true"))
    assert resumed.state.global_step == 4 and kept_rows(out, 2) == kept
    assert json.loads((out / "alignkit_run.json").read_text())["best_of_n"] == record["best_of_n"]
    weights = lambda trainer: {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}  # noqa: E731
    assert all(torch.equal(p, weights(first)[n]) for n, p in weights(resumed).items())
