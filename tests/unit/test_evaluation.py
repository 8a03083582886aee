"""Evaluation of a policy against its reference: reward scores, win rate, per-token KL, and `alignkit eval`."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import ModelConfig

from alignkit import evaluation
from alignkit.cli import main as cli_main
from alignkit.errors import DataError, ModelError
from alignkit.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    """The tiny base's tokenizer with alignkit's chat template (pad <pad> = 1, eos </s> = 2)."""
    return load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))


@pytest.fixture(scope="module")
def reference_dir(tiny_base, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("reference")
    AutoModelForCausalLM.from_pretrained(tiny_base).save_pretrained(path)
    tokenizer.save_pretrained(path)  # with the template, as a stage output saves it
    return path


@pytest.fixture(scope="module")
def policy_dir(tiny_base, tokenizer, tmp_path_factory):
    """The reference with one layer's weights perturbed."""
    path = tmp_path_factory.mktemp("policy")
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.model.layers[0].parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_seqcls(tiny_base, seed=0):
    torch.manual_seed(seed)  # the base is a causal LM: its score head is freshly initialised
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    return model.eval()


@pytest.fixture(scope="module")
def reward_dir(tiny_base, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("reward")
    model = make_seqcls(tiny_base)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lora_reward(tiny_base, tokenizer, tmp_path_factory):
    """(in-memory LoRA SEQ_CLS reward model, its saved adapter folder); LoRA and head moved off their init."""
    from peft import LoraConfig, get_peft_model

    path = tmp_path_factory.mktemp("lora_reward")
    model = make_seqcls(tiny_base, seed=3)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # lora_A/B and the score head (modules_to_save)
                p.add_(0.5 * torch.randn_like(p))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model.eval(), path


@pytest.fixture(scope="module")
def heldout_rows(world):
    return [
        {"prompt": [{"role": "user", "content": q.text}], "entity": q.entity, "attribute": q.attribute}
        for q in world.heldout_questions()[:6]
    ]


PROMPTS = [[{"role": "user", "content": t}] for t in ("What color is the fox?", "Where does the owl live?", "Hi")]
ANSWERS = ["The fox is red.", "It lives in the hills, far away from the river and the town.", ""]


def test_a_policy_against_itself_wins_half_the_time_with_zero_kl(reference_dir, reward_dir, heldout_rows):
    result = evaluation.evaluate_policy(reference_dir, reference_dir, heldout_rows, reward_dir, max_new_tokens=6, batch_size=4)
    assert result["win_rate"] == 0.5
    assert abs(result["kl_per_token"]) < 1e-6
    assert result["policy"]["reward_mean"] == result["reference"]["reward_mean"]
    assert result["examples"][0]["policy"] == result["examples"][0]["reference"]


def test_sampled_answers_repeat_per_prompt_and_are_seeded(reference_dir, heldout_rows):
    result = evaluation.evaluate_policy(
        reference_dir, reference_dir, heldout_rows[:2], max_new_tokens=4, do_sample=True, temperature=1.5, num_samples=3
    )
    assert result["num_samples"] == 3 and len(result["examples"]) == 2
    assert abs(result["kl_per_token"]) < 1e-6  # same seed, same model: the same samples on both sides
    assert result["win_rate"] is None and result["policy"]["reward_mean"] is None  # no reward model


def test_per_token_kl_on_one_step_equals_the_direct_sum_over_the_vocabulary(reference_dir, policy_dir, tokenizer):
    policy, _ = evaluation.load_for_inference(policy_dir)
    reference, _ = evaluation.load_for_inference(reference_dir)
    prompt = PROMPTS[0]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        p = policy(ids).logits[0, -1].log_softmax(-1)
        q = reference(ids).logits[0, -1].log_softmax(-1)
    expected = sum(p[i].exp().item() * (p[i].item() - q[i].item()) for i in range(p.shape[0]))
    eos = tokenizer.eos_token_id
    assert expected > 0
    assert evaluation.per_token_kl(policy, reference, tokenizer, [prompt], [[eos]]) == pytest.approx(expected, rel=1e-4)
    # An empty text answer renders as just the end-of-turn EOS: the same single step.
    assert evaluation.per_token_kl(policy, reference, tokenizer, [prompt], [""]) == pytest.approx(expected, rel=1e-4)
    # The batch mean weights every token equally and ignores padding, whatever the batch size.
    many = [(PROMPTS[i % 3], ANSWERS[i % 3]) for i in range(5)]
    one_by_one = evaluation.per_token_kl(policy, reference, tokenizer, *zip(*many), batch_size=1)
    assert evaluation.per_token_kl(policy, reference, tokenizer, *zip(*many), batch_size=5) == pytest.approx(one_by_one, rel=1e-4)
    assert evaluation.per_token_kl(reference, reference, tokenizer, *zip(*many)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_a_reward_score_is_the_same_alone_and_inside_a_padded_batch(tiny_base, tokenizer, pad_is_eos):
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    model = make_seqcls(tiny_base)
    model.config.pad_token_id = None  # reward_scores sets it from the tokenizer, as training did
    batch = evaluation.reward_scores(model, tokenizer, PROMPTS, ANSWERS, batch_size=3)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    for prompt, answer, score in zip(PROMPTS, ANSWERS, batch):
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
        assert text.endswith(tokenizer.eos_token)  # scored as trained: the answer's turn closes with EOS
        alone = evaluation.reward_scores(model, tokenizer, [prompt], [answer])[0]
        with torch.no_grad():  # one unpadded sequence, straight through the model
            direct = model(tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]).logits[0, 0].item()
        assert alone == pytest.approx(direct, abs=1e-5)
        assert score == pytest.approx(alone, abs=1e-5)
    assert len(set(batch)) == 3


def test_a_lora_reward_adapter_reloads_by_path_to_the_same_scores(lora_reward, tokenizer):
    model, path = lora_reward
    assert json.loads((path / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    loaded, loaded_tokenizer = evaluation.load_reward_model(path)
    expected = evaluation.reward_scores(model, tokenizer, PROMPTS, ANSWERS)
    assert evaluation.reward_scores(loaded, loaded_tokenizer, PROMPTS, ANSWERS) == pytest.approx(expected, abs=1e-5)


def test_a_full_reward_model_folder_loads_and_a_language_model_folder_is_refused(reward_dir, reference_dir):
    model, tokenizer = evaluation.load_reward_model(reward_dir)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(ModelError, match="no reward model"):
        evaluation.load_reward_model(reference_dir)
    with pytest.raises(ModelError, match="not a language model"):
        evaluation.load_for_inference(reward_dir)


def test_win_rate_counts_wins_ties_as_half_and_losses_as_zero():
    assert evaluation.win_rate([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 4.0]) == 0.5
    assert evaluation.win_rate([1.0, 1.0, 1.0], [0.0, 0.0, 1.0]) == pytest.approx(5 / 6)
    assert evaluation.win_rate([0.0], [1.0]) == 0.0
    with pytest.raises(ValueError):
        evaluation.win_rate([1.0], [1.0, 2.0])


def test_prompts_come_from_strings_conversations_or_messages():
    user = [{"role": "user", "content": "Hi"}]
    assert evaluation.prompt_conversation("Hi") == user
    assert evaluation.prompt_conversation({"prompt": "Hi"}) == user
    assert evaluation.prompt_conversation({"prompt": user}) == user
    messages = user + [{"role": "assistant", "content": "Hello."}]
    assert evaluation.prompt_conversation({"messages": messages}) == user
    with pytest.raises(DataError):
        evaluation.prompt_conversation({"text": "Hi"})


def test_a_reference_with_another_vocabulary_is_refused(policy_dir, tiny_base, tokenizer, tmp_path):
    AutoModelForCausalLM.from_pretrained(tiny_base).save_pretrained(tmp_path)
    other = load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))
    other.add_tokens(["<extra>"])
    other.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="different vocabularies"):
        evaluation.evaluate_policy(policy_dir, tmp_path, PROMPTS, max_new_tokens=2)


def test_alignkit_eval_writes_the_report_and_prints_a_table(
    policy_dir, reference_dir, lora_reward, heldout_rows, tmp_path, capsys
):
    prompts = tmp_path / "heldout_prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in heldout_rows))
    out = tmp_path / "eval.json"
    cli_main([
        "eval", "--policy", str(policy_dir), "--reference", str(reference_dir), "--reward_model", str(lora_reward[1]),
        "--prompts", str(prompts), "--max_new_tokens", "6", "--batch_size", "4", "--output_file", str(out),
        "--judge", "alignkit.demo.judge:gold_judge",
    ])
    report = json.loads(out.read_text())
    assert report["kl_per_token"] > 0
    assert 0.0 <= report["win_rate"] <= 1.0 and report["num_prompts"] == len(heldout_rows)
    for side in ("policy", "reference"):
        assert set(report[side]) == {
            "path", "reward_mean", "answer_tokens_mean", "gold_correctness", "gold_politeness", "gold_concision",
            "gold_well_formed",
        }
    assert len(report["examples"]) == 3 and {"policy", "reference", "policy_reward"} <= set(report["examples"][0])
    printed = capsys.readouterr().out
    assert "win rate" in printed and "KL per token" in printed and "gold_correctness" in printed


def test_alignkit_eval_with_a_missing_policy_or_bad_prompts_fails_in_one_line(reference_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n')
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "--policy", str(tmp_path / "nope"), "--reference", str(reference_dir), "--prompts", str(prompts)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignkit: error: No policy at") and "\n" not in err
    prompts.write_text('{"prompt": "Hi"}\n{"text": 3}\n')
    with pytest.raises(SystemExit):
        cli_main(["eval", "--policy", str(reference_dir), "--reference", str(reference_dir), "--prompts", str(prompts)])
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignkit: error:") and "p.jsonl:2" in err and "\n" not in err


def test_the_kl_per_token_metric_on_per_token_values_is_per_token_kl(reference_dir, policy_dir, tokenizer):
    import evaluate

    from alignkit import metrics

    policy, _ = evaluation.load_for_inference(policy_dir)
    reference, _ = evaluation.load_for_inference(reference_dir)
    many = [(PROMPTS[i % 3], ANSWERS[i % 3]) for i in range(5)]
    values = evaluation.per_token_kl_values(policy, reference, tokenizer, *zip(*many), batch_size=2)
    assert [len(v) for v in values] == [len(evaluation.measures.answer_ids(tokenizer, p, a)[1]) for p, a in many]
    metric = evaluate.load(str(metrics.path("kl_per_token")), keep_in_memory=True)
    result = metric.compute(kl=values)
    assert result["kl_per_token"] == evaluation.per_token_kl(policy, reference, tokenizer, *zip(*many), batch_size=2)
    assert result["kl_per_token"] > 0 and result["num_tokens"] == sum(map(len, values))
