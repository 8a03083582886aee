"""AI feedback: soft labels from a feedback model's next-token "A"/"B" probabilities, in both orders, and the
preference data set the ai_feedback recipe writes for the reward and DPO stages."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
from conftest import FAST, run_stage, write_jsonl

from alignkit import cai
from alignkit.constitution import load_constitution
from alignkit.evaluation.generation import render

PROMPTS = [[{"role": "user", "content": q}] for q in ("What color is the fox?", "Where does the owl live?")]
PAIRS = [("Good question! The fox is red.", "Duh. The fox is red."),
         ("Ugh. The owl lives in the cave.", "Sure thing! The owl lives in the cave.")]


class LetterModel(torch.nn.Module):
    """A stand-in feedback model: its next-token logits put `pick(text)` ("A" or "B") 4 nats above the other letter."""

    def __init__(self, tokenizer, pick):
        super().__init__()
        self.tokenizer, self.pick = tokenizer, pick
        self.ids = dict(zip("AB", cai.choice_token_ids(tokenizer)))
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # a device to put inputs on

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, len(self.tokenizer))
        for row, ids in enumerate(input_ids):
            logits[row, -1, self.ids[self.pick(self.tokenizer.decode(ids, skip_special_tokens=True))]] = 4.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from trl import ModelConfig

    from alignkit.models import load_tokenizer

    return load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))  # with alignkit's default chat template


def labels_from(model, tokenizer):
    choose = lambda conversations: cai.first_choice_probabilities(model, tokenizer, conversations, batch_size=2)
    return cai.feedback_labels(choose, PROMPTS, PAIRS, load_constitution("default"), random.Random(0))


def test_a_feedback_model_that_always_answers_a_gives_half_labels_after_swapping_positions(tokenizer):
    labels = labels_from(LetterModel(tokenizer, lambda text: "A"), tokenizer)
    assert [p for p, _ in labels] == pytest.approx([0.5, 0.5])


def test_a_feedback_model_that_prefers_polite_content_labels_that_answer_in_both_orders(tokenizer):
    def polite_one(text):  # the letter in front of the answer without a rude word
        after_a, after_b = text.split("(A)")[1].split("(B)")
        return "B" if any(w in after_a for w in ("Duh", "Ugh")) else "A"

    labels = labels_from(LetterModel(tokenizer, polite_one), tokenizer)
    p = torch.sigmoid(torch.tensor(4.0)).item()  # each order alone is this sure
    assert [p_first for p_first, _ in labels] == pytest.approx([p, 1 - p])
    rows = [cai.preference_row(c, a, b, q, principle) for c, (a, b), (q, principle) in zip(PROMPTS, PAIRS, labels)]
    assert [r["chosen"][0]["content"] for r in rows] == [PAIRS[0][0], PAIRS[1][1]]
    assert all(r["label"] == pytest.approx(p) and r["margin"] == pytest.approx(4.0, abs=1e-4) for r in rows)


def test_the_comparison_is_asked_in_the_chat_template_with_both_answers_labelled(tokenizer):
    constitution = load_constitution("default")
    principle = constitution.principle("polite")
    conversation = cai.comparison_conversation(constitution, principle, PROMPTS[0], *PAIRS[0])
    text = render(tokenizer, conversation)
    assert text == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert f"(A) {PAIRS[0][0]}\n(B) {PAIRS[0][1]}" in text and principle.comparison in text


def test_an_ensemble_of_principles_averages_each_principles_label(tokenizer, tmp_path):
    (tmp_path / "c.yaml").write_text("principles:\n"
                                     "  - {id: polite, critique: c, revision: r, comparison: 'Which is polite?'}\n"
                                     "  - {id: short, critique: c, revision: r, comparison: 'Which is short?'}\n")
    constitution = load_constitution(tmp_path / "c.yaml")

    def judge(text):  # sure which answer is polite; no view on which is short (always "A")
        after_a, after_b = text.split("(A)")[1].split("(B)")
        return "B" if "polite" in text and any(w in after_a for w in ("Duh", "Ugh")) else "A"

    model = LetterModel(tokenizer, judge)
    choose = lambda conversations: cai.first_choice_probabilities(model, tokenizer, conversations, batch_size=2)
    labels = cai.feedback_labels(choose, PROMPTS, PAIRS, constitution, random.Random(0), principles_per_pair=2)
    p = torch.sigmoid(torch.tensor(4.0)).item()
    assert [q for q, _ in labels] == pytest.approx([(p + 0.5) / 2, (1 - p + 0.5) / 2])
    assert all(sorted(ids.split("+")) == ["polite", "short"] for _, ids in labels)


def test_more_principles_per_pair_than_the_constitution_holds_is_refused():
    from alignkit.errors import ConfigError

    with pytest.raises(ConfigError, match="between 1 and the constitution's 3 principles, got 4"):
        cai.AIFeedbackConfig(principles_per_pair=4)
    with pytest.raises(ConfigError, match="between 1 and the constitution's 1 principles, got 2"):
        cai.AIFeedbackConfig(principles=["polite"], principles_per_pair=2)
    with pytest.raises(ConfigError, match="`judge_samples` must be at least 1, got 0"):
        cai.AIFeedbackConfig(judge_samples=0)


def test_a_reference_template_compares_each_pair_against_the_feedback_models_own_answer(tokenizer, tmp_path):
    (tmp_path / "c.yaml").write_text("feedback_template: 'Mine: {reference}\\n(A) {answer_a}\\n(B) {answer_b}\\n{comparison}'\n"
                                     "principles:\n  - {id: agrees, critique: c, revision: r, comparison: 'Which agrees?'}\n")
    constitution = load_constitution(tmp_path / "c.yaml")
    pairs = [("The fox is red.", "The fox is blue."), ("The owl lives in the cave.", "The owl lives in the river.")]
    references = ["Sure! The fox is red.", "The owl lives in the river."]

    def agreeing(text):  # the letter of the answer that states Mine's last word
        mine, rest = text.split("Mine: ")[1].split("(A)")
        after_a, after_b = rest.split("(B)")
        word = mine.split()[-1]
        return "A" if word in after_a else "B"

    model = LetterModel(tokenizer, agreeing)
    choose = lambda conversations: cai.first_choice_probabilities(model, tokenizer, conversations, batch_size=2)
    labels = cai.feedback_labels(choose, PROMPTS, pairs, constitution, random.Random(0), references=references)
    p = torch.sigmoid(torch.tensor(4.0)).item()
    assert [q for q, _ in labels] == pytest.approx([p, 1 - p])


def test_the_recipe_asks_the_feedback_model_for_its_own_answer_first_when_the_template_shows_it(tiny_base, tmp_path,
                                                                                              monkeypatch):
    from alignkit.evaluation.generation import generate
    from alignkit.models import load_model

    (tmp_path / "c.yaml").write_text("feedback_template: 'Mine: {reference}\\n(A) {answer_a}\\n(B) {answer_b}\\n{comparison}'\n"
                                     "principles:\n  - {id: agrees, critique: c, revision: r, comparison: 'Which agrees?'}\n")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in PROMPTS])
    seen = []
    labels = cai.feedback_labels
    monkeypatch.setattr(cai, "feedback_labels", lambda *a, **k: seen.append(a[-1]) or labels(*a, **k))
    run_stage("ai_feedback", "--model_name_or_path", str(tiny_base), "--dataset_name", str(prompts),
              "--output_dir", str(tmp_path / "out"), "--constitution", str(tmp_path / "c.yaml"), "--max_new_tokens", "8",
              "--min_confidence", "0.5")
    from trl import ModelConfig

    from alignkit.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))
    model = load_model(ModelConfig(model_name_or_path=str(tiny_base)), tokenizer=tokenizer).eval()
    assert seen == [generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=32)]  # greedy, by the feedback model


def test_agreement_by_criterion_splits_the_pairs_by_what_their_answers_differ_in():
    verdicts = [({"correct": True, "polite": True}, {"correct": True, "polite": False}),  # manners only
                ({"correct": True, "polite": True}, {"correct": False, "polite": True}),  # the fact only
                ({"correct": False, "polite": True}, {"correct": True, "polite": False})]  # both, a tie overall
    by = cai.agreement_by_criterion([0.9, 0.4, 0.7], verdicts)
    assert by == {"polite": {"agreement": 1.0, "pairs": 1}, "correct": {"agreement": 0.0, "pairs": 1}}


def test_agreement_counts_only_pairs_the_judge_tells_apart():
    assert cai.agreement([0.9, 0.2, 0.7, 0.6], [(2, 1), (1, 2), (1, 2), (1, 1)]) == (2 / 3, 3)
    assert cai.agreement([0.9], [(1, 1)]) == (None, 0) and cai.agreement([], []) == (None, 0)


@pytest.fixture(scope="module")
def feedback_run(tiny_base, world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ai_feedback")
    prompts = write_jsonl(tmp / "prompts.jsonl", [{"messages": ex["messages"]} for ex in world.sft_examples()[:24]])
    heldout = write_jsonl(tmp / "heldout.jsonl", [{"prompt": [{"role": "user", "content": q.text}], "entity": q.entity,
                                                   "attribute": q.attribute} for q in world.heldout_questions()[:8]])
    out = tmp / "out"
    record = run_stage("ai_feedback", "--model_name_or_path", str(tiny_base), "--dataset_name", str(prompts),
                       "--output_dir", str(out), "--max_new_tokens", "8", "--seed", "0",
                       "--judge", "alignkit.demo.judge:gold_judge", "--judge_prompts", str(heldout))
    return record, out


def test_the_recipe_writes_preference_pairs_with_labels_and_a_run_record(feedback_run):
    record, out = feedback_run
    rows = [json.loads(line) for line in (out / "preference" / "train.jsonl").read_text().splitlines()]
    assert rows and len(rows) == record["metrics"]["kept"] <= 24
    for row in rows:
        assert row["chosen"] != row["rejected"] and 0.5 <= row["label"] <= 1 and row["margin"] >= 0
        assert row["principle"] in {"harmless", "honest", "polite"} and row["prompt"][-1]["role"] == "user"
    saved = json.loads((out / "alignkit_run.json").read_text())
    report = saved["report"]
    assert saved["stage"] == "ai_feedback" and {"gold_agreement", "gold_agreement_all"} <= set(report)
    assert report["gold_pairs"] <= report["gold_pairs_all"] <= 8
    assert report["gold_coverage"] == (report["gold_pairs"] / report["gold_pairs_all"] if report["gold_pairs_all"] else None)
    by = report["gold_agreement_by_criterion"]
    assert set(by) <= {"gold_correctness", "gold_politeness", "gold_concision", "gold_well_formed"}
    assert all(0 <= v["agreement"] <= 1 and 1 <= v["pairs"] <= report["gold_pairs_all"] for v in by.values())


def test_more_judge_samples_label_more_held_out_pairs_and_leave_the_output_as_it_is(feedback_run, tiny_base, tmp_path):
    record, out = feedback_run
    again = run_stage("ai_feedback", "--model_name_or_path", str(tiny_base), "--dataset_name", str(out.parent / "prompts.jsonl"),
                      "--output_dir", str(tmp_path / "out"), "--max_new_tokens", "8", "--seed", "0", "--judge_samples", "3",
                      "--judge", "alignkit.demo.judge:gold_judge", "--judge_prompts", str(out.parent / "heldout.jsonl"))
    assert record["report"]["judge_pairs"] == 8 and again["report"]["judge_pairs"] == 24
    assert again["report"]["gold_pairs_all"] <= 24
    # The held-out pairs are sampled after the output's: the labels written are the same, byte for byte.
    assert (tmp_path / "out" / "preference" / "train.jsonl").read_bytes() == (out / "preference" / "train.jsonl").read_bytes()


def test_the_reward_stage_reads_the_ai_labels_as_they_are_and_uses_the_margin(feedback_run, tiny_base, tmp_path):
    _, out = feedback_run
    trainer = run_stage("reward", "--model_name_or_path", str(tiny_base), "--dataset_name", str(out / "preference"),
                        "--output_dir", str(tmp_path / "rm"), "--max_steps", "1", "--eval_split_size", "0", *FAST)
    assert "margin" in trainer.train_dataset.column_names
    batch = next(iter(trainer.get_train_dataloader()))
    assert "margin" in batch and (batch["margin"] >= 0).all()


def test_the_dpo_stage_reads_the_ai_labels_as_they_are(feedback_run, tiny_base, tmp_path):
    _, out = feedback_run
    trainer = run_stage("dpo", "--model_name_or_path", str(tiny_base), "--dataset_name", str(out / "preference"),
                        "--output_dir", str(tmp_path / "dpo"), "--max_steps", "1", "--eval_split_size", "0", *FAST)
    assert trainer.state.global_step == 1


def test_a_second_run_into_the_same_folder_is_refused_and_leaves_the_labels_untouched(feedback_run, tiny_base):
    from alignkit.errors import OutputDirError

    _, out = feedback_run
    before = (out / "preference" / "train.jsonl").read_bytes()
    with pytest.raises(OutputDirError, match="already holds a finished run.*overwrite_output_dir"):
        run_stage("ai_feedback", "--model_name_or_path", str(tiny_base), "--dataset_name", str(out / "preference"),
                  "--output_dir", str(out))
    assert (out / "preference" / "train.jsonl").read_bytes() == before
