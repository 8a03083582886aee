"""The GRPO recipe wired to the stages before it: an SFT output as policy, the reward stage's output as reward.

Also the helpers test_rloo.py shares (RLOO is configured and checked the same way).
"""

import json
import sys

import pytest
import torch
from conftest import FAST, run_stage

from alignkit import models, rewards

LENGTH_REWARD = '''
def length(completions, **kwargs):
    """A reward of a tenth per character of the answer (TRL's conversational completions: lists of turns)."""
    return [len(c[0]["content"]) / 10 for c in completions]
'''
WEIGHTS = (1.0, 0.5)  # the reward model's, then the length reward's


@pytest.fixture(scope="module")
def online_stages(tiny_base, sft_messages_file, preference_file, tmp_path_factory):
    """An SFT LoRA adapter and a reward LoRA adapter on it (a few steps each), the prompts, a length reward."""
    root = tmp_path_factory.mktemp("online")
    run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
              "--output_dir", str(root / "sft"), *FAST, "--use_peft", "true", "--max_steps", "2",
              "--learning_rate", "1e-2")
    run_stage("reward", "--model_name_or_path", str(root / "sft"), "--dataset_name", str(preference_file),
              "--output_dir", str(root / "reward"), *FAST, "--use_peft", "true", "--max_steps", "2",
              "--max_length", "64")
    (root / "online_length_reward.py").write_text(LENGTH_REWARD)
    sys.path.insert(0, str(root))
    yield root, preference_file
    sys.path.remove(str(root))


def online_args(model, root, prefs, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model), "--reward_model_path", str(root / "reward"),
            "--dataset_name", str(prefs), "--output_dir", str(out), "--eval_split_size", "0", "--use_peft", "true",
            "--reward_funcs", "online_length_reward:length", "--reward_weights", *map(str, WEIGHTS),
            "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
            "--max_steps", "2", "--learning_rate", "1e-2", "--disable_tqdm", "true", "--report_to", "none",
            "--save_strategy", "no", "--logging_steps", "1", "--seed", "0", "--activation_checkpointing", "false",
            *extra]


@pytest.fixture
def scorer_calls(monkeypatch):
    """Every call TRL makes to the reward model's scorer: its prompts, completions and the scores it returned."""
    calls = []
    original = rewards.RewardScorer.__call__

    def recording(self, prompts, completions, **kwargs):
        scores = original(self, prompts, completions, **kwargs)
        calls.append({"prompts": prompts, "completions": completions, "scores": scores})
        return scores

    monkeypatch.setattr(rewards.RewardScorer, "__call__", recording)
    return calls


def base_weights_unchanged(model, base_path) -> int:
    """Every base weight of the LoRA policy is bit-identical to the stored base's; returns how many were compared."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path).state_dict()
    compared = 0
    for name, tensor in model.named_parameters():
        if "lora_" in name:
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(tensor.detach(), base[key]), name
        compared += 1
    return compared


def check_online_run(trainer, stage, out, calls, tiny_base, start_adapter: dict | None):
    """What every GRPO/RLOO test asks of a finished run."""
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert [h["step"] for h in logged] == [1, 2] and len(calls) == 2  # one generation, one scoring per step
    for h, call in zip(logged, calls):
        # The reward TRL used is the scorer's, in its weighted sum with the length reward.
        from online_length_reward import length

        rm, extra = torch.tensor(call["scores"]), torch.tensor(length(call["completions"]))
        assert h["rewards/reward_model/mean"] == pytest.approx(rm.mean().item(), abs=1e-5)
        assert h["reward"] == pytest.approx((WEIGHTS[0] * rm + WEIGHTS[1] * extra).mean().item(), abs=1e-5)
        # ... the reward model's score of the generated answers in its training format (normalised).
        fresh = rewards.RewardScorer(trainer.args.reward_model_path, normalize=True)
        assert call["scores"] == pytest.approx(fresh.score(call["prompts"], call["completions"]), abs=1e-5)
    # The reference is the starting policy: no KL before the first update.
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-6) and "kl" in logged[1]
    # The LoRA weights trained, the base did not.
    trained = {n.replace(".default", ""): p.detach() for n, p in trainer.model.named_parameters() if ".default." in n}
    if start_adapter is None:  # a new adapter: LoRA B starts at zero
        assert any(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)
    else:
        assert trained.keys() == {f"base_model.model.{k.removeprefix('base_model.model.')}" for k in start_adapter}
        assert any(not torch.equal(trained[k], v) for k, v in start_adapter.items())
    assert base_weights_unchanged(trainer.model, tiny_base) > 10
    # The output is a finished run whose adapter reloads on the original base.
    record = json.loads((out / "alignkit_run.json").read_text())
    assert record["stage"] == stage and record["lineage"]["base_model"] == str(tiny_base)
    assert models.adapter_base(out) == str(tiny_base)
    reloaded, _ = models.load_for_inference(out)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-5)
    return record


def test_grpo_continues_an_sft_adapter_against_the_reward_model(online_stages, scorer_calls, tiny_base, tmp_path):
    from safetensors.torch import load_file

    root, prefs = online_stages
    out = tmp_path / "grpo"
    trainer = run_stage("grpo", *online_args(root / "sft", root, prefs, out))
    start = load_file(root / "sft" / "adapter_model.safetensors")
    record = check_online_run(trainer, "grpo", out, scorer_calls, tiny_base, start)
    assert record["lineage"]["parent_stage"] == "sft"
    assert trainer.args.beta == 0.04 and trainer.args.disable_dropout  # alignkit's defaults



def test_full_mode_on_an_sft_adapter_is_refused_before_its_base_becomes_the_reference(online_stages, tmp_path):
    from alignkit.errors import ConfigError

    root, prefs = online_stages
    with pytest.raises(ConfigError, match="without use_peft its reference model .* would be its base"):
        run_stage("grpo", *online_args(root / "sft", root, prefs, tmp_path / "grpo", "--use_peft", "false"))
    assert not (tmp_path / "grpo").exists()


def test_the_memory_estimate_counts_the_frozen_reward_model_and_a_full_reference_copy(online_stages, tiny_base, tmp_path):
    from alignkit.config import STAGE_ARGS, parse_args
    from alignkit.memory import estimate

    root, _ = online_stages
    common = ["--model_name_or_path", str(tiny_base), "--reward_model_path", str(root / "reward"),
              "--output_dir", str(tmp_path), "--num_generations", "2", "--per_device_train_batch_size", "4"]

    def weights(*extra) -> int:
        _, training_args, model_args = parse_args(STAGE_ARGS["grpo"], [*common, *extra])
        return estimate("grpo", model_args, training_args).weights

    policy = sum(p.numel() * p.element_size() for p in models.load_model(
        __import__("trl").ModelConfig(model_name_or_path=str(tiny_base))).parameters())
    reward_model, _ = models.load_reward_model(root / "reward")
    reward = sum(p.numel() * p.element_size() for p in reward_model.parameters())
    assert weights("--use_peft", "true") == policy + reward  # the reference is the disabled adapter: no copy
    assert weights() == 2 * policy + reward  # full mode: a frozen copy of the model is the reference
    assert weights("--beta", "0") == policy + reward  # no KL, no reference
