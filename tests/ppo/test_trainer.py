"""PPOTrainer and load_ppo_models on a tiny model: it learns, counts its steps, shares its base, resumes exactly.

The fixtures live here rather than in a tests/ppo/conftest.py: other test modules import the top-level conftest as
`conftest`, and a second conftest module would shadow it.
"""

import json
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_stage, stored_bytes, write_jsonl
from peft import LoraConfig

from alignkit.errors import AlignkitError, DataError
from alignkit.ppo import PPOConfig, PPOStoppedError, PPOTrainer, core, load_ppo_models
from alignkit.ppo.trainer import Rollout
from alignkit.rewards import RewardScorer

# --- fixtures: a briefly trained "SFT" model, reward models (full and LoRA) on it, chat prompts ----------------------

SFT_STEPS = 40  # ~1.5 s: enough for the tiny model to answer in the world's sentence patterns


@pytest.fixture(scope="module")
def sft_dir(tiny_base, world, tmp_path_factory) -> Path:
    """A full causal-LM folder, as the SFT stage writes it (with alignkit's default chat template)."""
    from transformers import AutoModelForCausalLM

    from alignkit.models import DEFAULT_CHAT_TEMPLATE

    path = tmp_path_factory.mktemp("sft")
    tokenizer = _tokenizer(tiny_base)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE.read_text(encoding="utf-8")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    texts = [tokenizer.apply_chat_template(ex["messages"], tokenize=False) for ex in world.sft_examples()]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(SFT_STEPS):
        batch = [rows[i] for i in torch.randint(len(rows), (32,)).tolist()]
        width = max(map(len, batch))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in batch])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture
def tokenizer(sft_dir):
    return _tokenizer(sft_dir)


@pytest.fixture(scope="module")
def rm_full_dir(sft_dir, tmp_path_factory) -> Path:
    """A full one-label classifier on the SFT model with a hand-set score head."""
    from transformers import AutoModelForSequenceClassification

    path = tmp_path_factory.mktemp("rm_full")
    model = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.score.weight, std=0.3)
    model.save_pretrained(path)
    _tokenizer(sft_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_lora_dir(sft_dir, tmp_path_factory) -> Path:
    """A SEQ_CLS LoRA reward adapter on the SFT folder (score head in modules_to_save), with reward_stats."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    path = tmp_path_factory.mktemp("rm_lora")
    base = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1)
    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["score"])
    model = get_peft_model(base, config)
    torch.manual_seed(2)
    for name, p in model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            torch.nn.init.normal_(p, std=0.3)  # differ from the base, so a wrong adapter shows
    model.save_pretrained(path)
    _tokenizer(sft_dir).save_pretrained(path)
    (path / "alignkit_run.json").write_text(json.dumps({"stage": "reward", "reward_stats": {"mean": 0.5, "std": 2.0}}))
    return path


@pytest.fixture(scope="module")
def sft_adapter_dir(sft_dir, tmp_path_factory) -> Path:
    """An SFT stage that wrote a LoRA adapter (on the SFT folder, standing in for a base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("sft_adapter")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(sft_dir),
        LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    model.save_pretrained(path)
    _tokenizer(sft_dir).save_pretrained(path)
    return path


REWARD_MAX_LENGTH = 48
LONG_HISTORY = [{"role": "user", "content": " ".join(["The fox lives in the hills."] * 8)},
                {"role": "assistant", "content": "Noted."}]  # with a question, far more than REWARD_MAX_LENGTH tokens


@pytest.fixture(scope="module")
def reward_stage_dir(sft_dir, world, tmp_path_factory) -> Path:
    """The reward stage's output (a SEQ_CLS LoRA adapter on the SFT folder), briefly trained with a short max_length."""
    root = tmp_path_factory.mktemp("reward_stage")
    rows = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples()[:16]]
    run_stage("reward", "--model_name_or_path", str(sft_dir), "--dataset_name", str(write_jsonl(root / "train.jsonl", rows)),
              "--output_dir", str(root / "rm"), *FAST, "--eval_split_size", "0", "--use_peft", "true",
              "--lora_target_modules", "all-linear", "--max_length", str(REWARD_MAX_LENGTH), "--max_steps", "2",
              "--learning_rate", "5e-3")
    return root / "rm"


@pytest.fixture(scope="module")
def prompts(world) -> list[dict]:
    """128 chat prompts (a user question each) from the demo world."""
    return [{"prompt": ex["messages"][:1]} for ex in world.sft_examples()[:128]]


LORA = LoraConfig(
    r=8,
    lora_alpha=16,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    task_type="CAUSAL_LM",
)


def ppo_args(output_dir, **overrides) -> PPOConfig:
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        num_updates=2,
        max_new_tokens=10,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return PPOConfig(**{**settings, **overrides})


def lora_models(sft_dir, reward_dir=None, **kwargs):
    torch.manual_seed(0)
    return load_ppo_models(str(sft_dir), reward_dir and str(reward_dir), use_peft=True, peft_config=LORA, **kwargs)


def full_models(sft_dir, reward_dir=None):
    return load_ppo_models(str(sft_dir), reward_dir and str(reward_dir), use_peft=False)


def says(word):
    """A rule-based reward: 1 for a response that contains `word`, else 0."""
    return lambda prompts, responses: [float(word in r.replace(".", " ").split()) for r in responses]


# --- learning ------------------------------------------------------------------------------------------------------


def test_ppo_raises_a_rule_based_reward(sft_dir, tokenizer, prompts, tmp_path):
    # The SFT model says "eats" in ~10% of answers (food questions); PPO should make it the habit.
    args = ppo_args(
        tmp_path, per_device_train_batch_size=16, gradient_accumulation_steps=2, num_updates=20, kl_coef=0.02
    )
    trainer = PPOTrainer(args, lora_models(sft_dir), tokenizer, prompts, reward_fn=says("eats"))
    trainer.train()
    scores = [h["score"] for h in trainer.log_history]
    before, after = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert after > before + 0.3, scores
    assert all(math.isfinite(h["kl"]) for h in trainer.log_history)
    # The fresh LoRA adapter starts as the reference (up to the rounding between cached generation and a forward).
    assert abs(trainer.log_history[0]["kl"]) < 1e-4
    expected = {"score", "kl", "reward", "policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy",
                "explained_variance", "response_length", "eos_rate", "kl_coef", "lr"}  # fmt: skip
    assert expected <= set(trainer.log_history[-1])


def test_an_update_makes_epochs_times_minibatches_optimiser_steps_and_clips_gradients(sft_dir, tokenizer, prompts, tmp_path):
    args = ppo_args(
        tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=2, num_ppo_epochs=3,
        max_grad_norm=1e-3,
    )  # fmt: skip
    trainer = PPOTrainer(args, lora_models(sft_dir), tokenizer, prompts, reward_fn=says("eats"))
    assert trainer.local_batch_size == 4 * 2 * 2
    steps, norms = [], []
    optimizer = trainer.optimizer.optimizer  # the torch optimiser inside Accelerate's wrapper

    def norm(params):
        return torch.cat([p.grad.flatten() for p in params if p.grad is not None]).norm().item()

    optimizer.register_step_pre_hook(lambda *_: norms.append((norm(trainer.policy_params), norm(trainer.value_params))))
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    trainer.train()
    assert len(steps) == trainer.optimizer_steps == 2 * 3 * 2  # updates * num_ppo_epochs * num_mini_batches
    # Each optimiser step saw gradients clipped to max_grad_norm, and they were larger before clipping.
    assert all(p <= 1e-3 * 1.0001 and v <= 1e-3 * 1.0001 for p, v in norms)
    assert all(h["grad_norm"] > 1e-3 for h in trainer.log_history)


# --- models --------------------------------------------------------------------------------------------------------


def test_lora_mode_holds_one_copy_of_the_base_and_full_mode_four(sft_dir, rm_lora_dir, rm_full_dir):
    from transformers import AutoModelForCausalLM

    base = sum(p.numel() * p.element_size() for p in AutoModelForCausalLM.from_pretrained(sft_dir).parameters())
    lora = lora_models(sft_dir, rm_lora_dir)
    assert lora.policy.model is lora.ref.model is lora.value.model is lora.reward.model
    assert base < stored_bytes(*lora.modules()) < 1.2 * base  # one base + three adapters + two heads
    assert stored_bytes(*full_models(sft_dir, rm_full_dir).modules()) > 3.9 * base  # policy, reference, value, reward


def test_lora_roles_compute_what_they_stand_for(sft_dir, rm_lora_dir, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    models = lora_models(sft_dir, rm_lora_dir)
    ids = torch.tensor([tokenizer("The fox eats honey.</s>")["input_ids"]])
    mask, pos = torch.ones_like(ids), torch.arange(ids.shape[1])[None]
    sft_logits = AutoModelForCausalLM.from_pretrained(sft_dir)(input_ids=ids).logits
    torch.testing.assert_close(models.ref(ids, mask, pos), sft_logits)
    torch.testing.assert_close(models.policy(ids, mask, pos), sft_logits)  # LoRA B = 0 at the start
    reward_model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1), rm_lora_dir)
    expected = reward_model(input_ids=ids).logits[0, 0]
    torch.testing.assert_close(models.reward(ids, mask, pos)[0, -1], expected)
    torch.testing.assert_close(models.value(ids, mask, pos)[0, -1], expected)  # the critic starts as the reward model
    # Switching adapters for those forwards left the trainable set as it was.
    assert all(p.requires_grad for p in models.policy_parameters() + models.value_parameters())
    assert not any(p.requires_grad for p in models.reward.head.parameters())
    trainable = {id(p) for p in models.policy_parameters() + models.value_parameters()}
    assert all(id(p) in trainable for p in models.policy.model.parameters() if p.requires_grad)
    assert models.reward_stats == {"mean": 0.5, "std": 2.0}


def test_an_sft_adapter_keeps_training_and_a_frozen_copy_is_the_reference(
    sft_adapter_dir, sft_dir, rm_lora_dir, tokenizer, prompts, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    models = lora_models(sft_adapter_dir, rm_lora_dir)  # the reward adapter sits on the adapter's base: shared
    assert models.policy.model is models.reward.model
    ids = torch.tensor([tokenizer("The fox eats honey.")["input_ids"]])
    mask, pos = torch.ones_like(ids), torch.arange(ids.shape[1])[None]
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft_dir), sft_adapter_dir)(input_ids=ids).logits
    torch.testing.assert_close(models.policy(ids, mask, pos), sft)
    PPOTrainer(ppo_args(tmp_path, num_updates=1), models, tokenizer, prompts).train()
    torch.testing.assert_close(models.ref(ids, mask, pos), sft)
    assert not torch.allclose(models.policy(ids, mask, pos), sft)


def test_full_mode_on_an_sft_adapter_trains_every_policy_weight(sft_adapter_dir, rm_full_dir, tokenizer, prompts, tmp_path):
    # The adapter is merged into its base for full mode; PEFT hands that base back frozen.
    models = full_models(sft_adapter_dir, rm_full_dir)
    policy = models.policy.model
    assert len(models.policy_parameters()) == len(list(policy.parameters()))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    PPOTrainer(ppo_args(tmp_path, num_updates=1, learning_rate=1e-4), models, tokenizer, prompts).train()
    changed = [n for n, p in policy.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2, changed  # the policy itself trained, not only the value model


def test_full_mode_refuses_a_quantised_base(sft_dir):
    from transformers import BitsAndBytesConfig

    with pytest.raises(AlignkitError, match="use_peft"):
        load_ppo_models(str(sft_dir), None, use_peft=False, quantization_config=BitsAndBytesConfig(load_in_4bit=True))


def test_qlora_trains_every_adapter_on_cpu(sft_dir, rm_lora_dir, tokenizer, prompts, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    models = lora_models(sft_dir, rm_lora_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    trainer = PPOTrainer(ppo_args(tmp_path), models, tokenizer, prompts)
    trainer.train()
    assert all(math.isfinite(h["policy_loss"]) for h in trainer.log_history)
    # After rollouts, gradients still reach every adapter through the 4-bit layers (bitsandbytes' CPU inference
    # packing, triggered by an eval-mode forward, would cut them off at every 4-bit linear).
    r = trainer.make_rollout(list(range(8)))
    logits, values = trainer.model(r.input_ids, r.attention_mask, r.position_ids, r.responses.shape[1])
    (logits.float().logsumexp(-1).mean() + values.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.policy_params + trainer.value_params)


# --- rollouts ------------------------------------------------------------------------------------------------------


def test_when_pad_is_eos_the_eos_stays_in_the_loss_and_the_reward_model_reads_it(sft_dir, rm_full_dir, tokenizer, prompts, tmp_path):
    from transformers import AutoModelForSequenceClassification

    tokenizer.pad_token = tokenizer.eos_token
    args = ppo_args(tmp_path, per_device_train_batch_size=16, max_new_tokens=24)
    trainer = PPOTrainer(args, full_models(sft_dir, rm_full_dir), tokenizer, prompts)
    indices = list(range(16))
    r = trainer.make_rollout(indices)
    assert r.stopped.any() and not r.stopped.all()
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm_full_dir, num_labels=1)
    reward_model.config.pad_token_id = None  # one unpadded sequence: score its very last token
    scorer = RewardScorer(rm_full_dir)
    read_at_eos = 0
    for i, n in enumerate(r.lengths.tolist()):
        if r.stopped[i]:
            assert r.responses[i, n - 1] == tokenizer.eos_token_id
        assert r.response_mask[i, :n].all() and not r.response_mask[i, n:].any()  # the EOS is in the loss
        # The reward model reads the answer's text in its training format; one cut off at max_new_tokens as if finished.
        answer = tokenizer.decode(r.responses[i, :n], skip_special_tokens=True)
        assert r.raw_scores[i].item() == pytest.approx(scorer.score([prompts[i]["prompt"]], [answer])[0], abs=1e-5)
        sequence = trainer.prompts[i] + r.responses[i, :n].tolist()
        if r.stopped[i] and scorer.token_ids([prompts[i]["prompt"]], [answer])[0] == sequence:
            # Where the text gives back the sampled tokens, that is the reward model's score at the EOS.
            sequence = torch.tensor([sequence])
            torch.testing.assert_close(r.raw_scores[i], reward_model(input_ids=sequence).logits[0, 0], atol=1e-5, rtol=1e-5)
            read_at_eos += 1
    assert read_at_eos


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_ppo_scores_a_response_as_the_reward_stages_scorer_does(mode, sft_dir, reward_stage_dir, tokenizer, world, tmp_path):
    examples = world.preference_examples()[20:24]
    prompts = [ex["prompt"] for ex in examples] + [LONG_HISTORY + examples[0]["prompt"]]  # the last one must be cut
    answers = [ex["chosen"][0]["content"] for ex in examples] + [examples[1]["rejected"][0]["content"]]
    models = lora_models(sft_dir, reward_stage_dir) if mode == "lora" else full_models(sft_dir, reward_stage_dir)
    trainer = PPOTrainer(ppo_args(tmp_path), models, tokenizer, [{"prompt": p} for p in prompts])
    # Responses as the policy samples them: the answer's tokens, then EOS (and padding after it).
    rows = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
    width = max(map(len, rows))
    responses = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    got = trainer.score_responses(list(range(len(prompts))), responses, lengths)

    scorer = RewardScorer(reward_stage_dir)
    expected = scorer.score(prompts, answers)
    assert scorer.prompts_cut == 1  # the long conversation was cut to the reward stage's max_length
    assert len(set(expected)) == len(expected)  # the pairs score differently, so a mix-up would show
    assert got.tolist() == pytest.approx(expected, abs=1e-4)


def test_scores_are_normalised_clipped_and_penalised_for_a_missing_eos(sft_dir, tokenizer, prompts, tmp_path):
    args = ppo_args(
        tmp_path, per_device_train_batch_size=16, max_new_tokens=6, reward_mean=1.0, reward_std=2.0, reward_clip=0.4,
        missing_eos_penalty=3.0,
    )  # fmt: skip
    trainer = PPOTrainer(args, lora_models(sft_dir), tokenizer, prompts, reward_fn=lambda p, r: [2.0] * len(r))
    r = trainer.make_rollout(list(range(16)))
    assert r.stopped.any() and not r.stopped.all()
    # (2 - 1) / 2 = 0.5, clipped to 0.4, minus 3 where the response never stopped.
    torch.testing.assert_close(r.scores, torch.where(r.stopped, 0.4, 0.4 - 3.0))


def test_the_rollout_keeps_no_vocabulary_sized_tensor(sft_dir, tokenizer, prompts, tmp_path):
    trainer = PPOTrainer(ppo_args(tmp_path), lora_models(sft_dir), tokenizer, prompts, reward_fn=says("eats"))
    r = trainer.make_rollout(list(range(8)))
    vocab = trainer.models.policy.model.config.vocab_size
    for name, value in vars(r).items():
        if value is None:  # no audit reward model here
            continue
        assert value.dim() <= 2 and value.shape[-1] != vocab, name
    assert isinstance(r, Rollout)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_logprobs_recorded_during_generation_equal_a_training_forward(mode, sft_dir, rm_full_dir, tokenizer, prompts, tmp_path):
    # Prompts of different lengths (left padding), responses that stop at different places (right padding), a
    # temperature, and a policy that differs from the reference (after one update).
    models = lora_models(sft_dir) if mode == "lora" else full_models(sft_dir, rm_full_dir)
    args = ppo_args(tmp_path, per_device_train_batch_size=4, temperature=0.7, max_new_tokens=16, num_updates=1)
    trainer = PPOTrainer(args, models, tokenizer, prompts, reward_fn=says("eats") if mode == "lora" else None)
    trainer.train()
    indices = list(range(16, 28))
    assert len({len(trainer.prompts[i]) for i in indices}) > 1
    r = trainer.make_rollout(indices)
    assert 0 < r.stopped.sum() < len(indices) or r.lengths.min() < r.lengths.max()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        logits, _ = policy(r.input_ids, r.attention_mask, r.position_ids, r.responses.shape[1])
        forward = torch.log_softmax(logits.float() / args.temperature, -1).gather(2, r.responses[..., None])[..., 0]
    forward = forward * r.response_mask
    assert r.logprobs.abs().sum() > 1  # real log-probs, not zeros
    torch.testing.assert_close(r.logprobs, forward, atol=2e-5, rtol=0)
    assert (r.logprobs[r.response_mask == 0] == 0).all()


def test_the_sampler_draws_from_the_tempered_policy_and_records_the_drawn_tokens_logprobs():
    from alignkit.ppo.trainer import PolicySampler

    torch.manual_seed(0)
    rows, temperature = 40_000, 0.7
    logits = torch.tensor([0.0, 1.0, 2.0, float("-inf"), -1.0, 0.5]).repeat(rows, 1)  # token 3 is masked out
    sampler = PolicySampler(temperature)
    out = sampler(torch.zeros(rows, 1, dtype=torch.long), logits)
    tokens = out.argmax(-1)  # what greedy generation takes
    assert (out.isfinite().sum(-1) == 1).all()  # one token left to take in every row
    expected = torch.softmax(logits[0] / temperature, -1)
    frequencies = torch.bincount(tokens, minlength=6) / rows
    assert frequencies[3] == 0
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)  # ~4.5 standard errors at the largest p
    recorded = sampler.logprobs()[:, 0]
    torch.testing.assert_close(recorded, torch.log_softmax(logits / temperature, -1)[0][tokens])


FAULTS_OF_A_64_MIB_BLOCK = """
import resource, sys, torch
from alignkit.ppo.trainer import keep_freed_cpu_memory
if sys.argv[1] == "keep":
    assert keep_freed_cpu_memory()
counts = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)  # 64 MiB, written then freed
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(counts[3:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_on_cpu_freed_memory_is_reused_without_new_page_faults():
    # Stock glibc maps each block of 32 MiB or more afresh and the kernel zero-fills every page (16384 faults for
    # 64 MiB); kept, blocks 4 to 6 reuse the memory of the first ones (the heap can take a block or two to settle).
    def faults(mode):
        run = subprocess.run([sys.executable, "-c", FAULTS_OF_A_64_MIB_BLOCK, mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        return int(run.stdout.split()[-1])

    assert faults("stock") > 3 * 10_000
    assert faults("keep") < 1_000


def test_the_trainer_keeps_freed_memory_on_cpu_unless_told_not_to(sft_dir, tokenizer, prompts, tmp_path, monkeypatch):
    import alignkit.ppo.trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_cpu_memory", lambda: calls.append(1))
    for keep in (True, False):
        args = ppo_args(tmp_path, keep_freed_cpu_memory=keep)
        PPOTrainer(args, lora_models(sft_dir), tokenizer, prompts, reward_fn=says("eats"))
    assert calls == [1]


def test_all_padding_columns_are_left_out_of_a_micro_batch():
    from alignkit.ppo.trainer import _used_columns

    # Prompts of lengths 3 and 2 left-padded to 4, responses of 2 and 1 tokens right-padded to 3.
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0]])
    assert _used_columns(mask, response_width=3) == (slice(1, 6), 2)
    assert _used_columns(torch.ones(2, 5, dtype=torch.long), response_width=2) == (slice(0, 5), 2)


def test_prompts_need_a_prompt_column(sft_dir, tokenizer, tmp_path):
    with pytest.raises(DataError, match="'prompt' column"):
        PPOTrainer(ppo_args(tmp_path), lora_models(sft_dir), tokenizer, [{"text": "hi"}], reward_fn=says("eats"))


# --- resume, health, saving ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resuming_reproduces_the_uninterrupted_run(mode, sft_dir, rm_lora_dir, rm_full_dir, tokenizer, prompts, tmp_path):
    def build(output_dir):
        models = lora_models(sft_dir, rm_lora_dir) if mode == "lora" else full_models(sft_dir, rm_full_dir)
        args = ppo_args(
            output_dir, num_updates=3, save_strategy="steps", save_steps=1, adaptive_kl=True, kl_horizon=100,
            lr_scheduler_type="linear", learning_rate=1e-4 if mode == "full" else 1e-3,
        )  # fmt: skip
        return PPOTrainer(args, models, tokenizer, prompts)

    uninterrupted = build(tmp_path / "a")
    uninterrupted.train()
    assert sorted(p.name for p in (tmp_path / "a").glob("*checkpoint-*")) == [f"checkpoint-{i}" for i in (1, 2, 3)]

    # A run that stopped after update 2: resume_from_checkpoint=True picks its latest checkpoint.
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    shutil.copytree(tmp_path / "a" / "checkpoint-1", tmp_path / "b" / "checkpoint-1")
    resumed = build(tmp_path / "b")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.log_history == uninterrupted.log_history  # update 3 included, to the logged precision
    for trained, again in zip(
        uninterrupted.policy_params + uninterrupted.value_params, resumed.policy_params + resumed.value_params
    ):
        assert torch.equal(again, trained)  # bit-identical on CPU
    assert resumed.kl_ctl.value == uninterrupted.kl_ctl.value != 0.05


def test_kl_past_the_limit_stops_the_run_with_a_clear_error(sft_dir, tokenizer, prompts, tmp_path):
    args = ppo_args(tmp_path, num_updates=4, kl_limit=1e-6, save_strategy="steps", save_steps=1)
    trainer = PPOTrainer(args, lora_models(sft_dir), tokenizer, prompts, reward_fn=says("eats"))
    # Update 1 samples from the reference itself (KL 0); the policy it leaves behind has moved.
    with pytest.raises(PPOStoppedError, match=r"PPO stopped at update 2: mean KL \S+ exceeds kl_limit 1e-06; no checkpoint"):
        trainer.train()
    assert not list(tmp_path.glob("*checkpoint-*"))  # the drifted policy after update 1 was never saved


def test_a_nan_score_stops_the_run_and_keeps_the_last_good_checkpoint(sft_dir, tokenizer, prompts, tmp_path):
    calls = []

    def reward_fn(prompts, responses):
        calls.append(1)
        return [math.nan if len(calls) == 4 else 1.0] * len(responses)

    args = ppo_args(tmp_path, num_updates=5, save_strategy="steps", save_steps=1)
    trainer = PPOTrainer(args, lora_models(sft_dir), tokenizer, prompts, reward_fn=reward_fn)
    with pytest.raises(PPOStoppedError) as stopped:
        trainer.train()
    # A checkpoint is written once its policy has produced a healthy rollout: update 3's never did.
    good = tmp_path / "checkpoint-2"
    assert str(stopped.value) == f"PPO stopped at update 4: the mean score is nan; the last good checkpoint is {good}."
    assert sorted(p.name for p in tmp_path.glob("*checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((good / "trainer_state.json").read_text())["update"] == 2


def test_a_nan_loss_stops_the_run_before_an_optimiser_step_uses_it(sft_dir, tokenizer, prompts, tmp_path, monkeypatch):
    trainer = PPOTrainer(
        ppo_args(tmp_path, num_updates=3, save_strategy="steps", save_steps=1),
        lora_models(sft_dir), tokenizer, prompts, reward_fn=says("eats"),
    )  # fmt: skip
    policy_loss = core.policy_loss

    def poisoned(*args, **kwargs):
        loss, clipfrac, approx_kl = policy_loss(*args, **kwargs)
        return (loss * math.nan if trainer.update == 1 else loss), clipfrac, approx_kl

    monkeypatch.setattr(core, "policy_loss", poisoned)
    with pytest.raises(PPOStoppedError, match=r"update 2: the policy gradient norm is nan .*checkpoint-1\."):
        trainer.train()
    assert trainer.optimizer_steps == 4  # update 1's only
    assert all(torch.isfinite(p).all() for p in trainer.policy_params)


def test_without_clipping_a_nan_loss_stops_the_run_before_its_backward_pass(sft_dir, tokenizer, prompts, tmp_path, monkeypatch):
    trainer = PPOTrainer(
        ppo_args(tmp_path, num_updates=3, max_grad_norm=0.0), lora_models(sft_dir), tokenizer, prompts,
        reward_fn=says("eats"),
    )  # fmt: skip
    value_loss = core.value_loss

    def poisoned(*args, **kwargs):
        loss, clipfrac = value_loss(*args, **kwargs)
        return (loss * math.inf if trainer.update == 1 else loss), clipfrac

    monkeypatch.setattr(core, "value_loss", poisoned)
    with pytest.raises(PPOStoppedError, match=r"update 2: the value loss is inf"):
        trainer.train()
    assert trainer.optimizer_steps == 4  # update 1's only
    assert all(torch.isfinite(p).all() for p in trainer.policy_params + trainer.value_params)
    assert "grad_norm" not in trainer.log_history[0]  # nothing measured a gradient norm


def test_saved_policy_and_value_reload_to_the_trained_models(sft_dir, rm_lora_dir, tokenizer, prompts, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer = PPOTrainer(ppo_args(tmp_path / "run", num_updates=1), lora_models(sft_dir, rm_lora_dir), tokenizer, prompts)
    trainer.train()
    out = tmp_path / "out"
    trainer.save_model(str(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    ids = torch.tensor([tokenizer("The fox eats honey.</s>")["input_ids"]])
    mask, pos = torch.ones_like(ids), torch.arange(ids.shape[1])[None]
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft_dir), out)
    torch.testing.assert_close(policy(input_ids=ids).logits, trainer.models.policy(ids, mask, pos))
    # The value model is saved in the reward stage's format, so it can start a later run.
    again = lora_models(sft_dir, rm_lora_dir, value_path=str(out / "value"))
    torch.testing.assert_close(again.value(ids, mask, pos), trainer.models.value(ids, mask, pos))
    assert not torch.allclose(again.value(ids, mask, pos), again.reward(ids, mask, pos))


# --- config --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"kl_estimator": "k2"}, "'k1' or 'k3'"),
        ({"reward_mean": 1.0}, "reward_mean and reward_std together"),
        ({"save_strategy": "epoch"}, "use 'steps'"),
        ({"stop_token": "</s>"}, "stop_token_id"),
        ({"lam": 1.5}, r"lam must be in \[0, 1\]"),
    ],
)
def test_config_rejects_bad_values_saying_how_to_fix_them(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ppo_args(tmp_path, **overrides)


def test_config_defaults(tmp_path):
    args = PPOConfig(output_dir=str(tmp_path), learning_rate=2e-5)
    assert args.value_learning_rate == 2e-5 and not args.bf16
    assert (args.num_ppo_epochs, args.num_mini_batches, args.stop_token, args.kl_estimator) == (4, 1, "eos", "k1")


# --- tracking ------------------------------------------------------------------------------------------------------


def test_report_to_tensorboard_logs_every_updates_score_and_kl_under_output_dir_runs(sft_dir, tokenizer, prompts, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alignkit import tracking

    args = ppo_args(tmp_path, report_to=["tensorboard"], per_device_train_batch_size=4, num_updates=2, logging_steps=1)
    trainer = PPOTrainer(args, lora_models(sft_dir), tokenizer, prompts, reward_fn=says("eats"))
    trainer.train()
    (run,) = tracking.runs(trainer)
    assert run["tracker"] == "tensorboard" and run["logging_dir"].startswith("runs/")  # as the Trainer names its own
    events = EventAccumulator(str(tmp_path / run["logging_dir"]))
    events.Reload()
    for tag in ("score", "kl", "policy_loss"):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([h[tag] for h in trainer.log_history], abs=1e-5)
