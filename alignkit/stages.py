"""The stage registry: everything the rest of alignkit asks about a stage, declared once per stage.

The CLI, pipeline validation, `alignkit check`, preflight, the memory estimate, model cards and the report read
a stage's facts here instead of keeping lists of stage names of their own. Adding a stage is one entry below, one
recipe file (`recipes/<name>.py`, whose `main(script_args, training_args, model_args)` trains it) and its demo
config. This module imports nothing heavy: the config classes are named as `module:Class` strings and resolved
by `alignkit.config.stage_dataclasses`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from alignkit.errors import ConfigError

KEYS_FILE = Path(__file__).with_name("config_keys.json")
SCRIPT_ARGUMENTS = "alignkit.config:ScriptArguments"
MODEL_CONFIG = "trl:ModelConfig"


@dataclass(frozen=True)
class MemoryModel:
    """How `alignkit.memory` sizes a stage's training step."""

    sequences: int = 1  # sequences per example that go through the model together (chosen + rejected: 2)
    lm_head: str | None = "fused"  # TRL's fused LM head + log-softmax ("fused"), full logits ("full"), or none
    reference_adapter_copy: bool = False  # DPO on an SFT adapter: TRL keeps a frozen copy as the reference
    online_rl: bool = False  # rollouts, a value model and a reward model beside the policy (PPO)
    critic_free_rl: bool = False  # sampled completions, a frozen reward model of its own, no value model (GRPO, RLOO)
    best_of_n: bool = False  # an SFT step, with a frozen reward model beside it and sampling between rounds (best_of_n)


@dataclass(frozen=True)
class Stage:
    """One stage of the training pipeline, as every part of alignkit sees it."""

    name: str
    title: str  # what the model card says the model was trained with
    config: str  # the stage's TRL-style config class, `module:Class`
    data_format: str  # `alignkit.data` format: pretrain, sft, preference or prompts
    output: str = "policy"  # "policy" (a causal LM), "reward_model" (a one-output sequence classifier) or "data"
    inputs: tuple[str, ...] = ("model",)  # the models a pipeline stage may name: model, reward_model, value_model
    required: tuple[str, ...] = ()  # config keys the stage cannot run without, beyond the model
    perplexity: bool = False  # eval_loss is a language-model loss, so exp(eval_loss) means something
    curves: tuple[tuple[str, tuple[str, ...]], ...] = ()  # report figure panels: (title, log keys)
    curve_x: str = "step"  # the log's x axis: "step" (Trainer) or "update" (alignkit's PPO)
    series: tuple[str, ...] = ()  # per-update log keys the report keeps as lists (PPO: score, kl, audit_score)
    preview: str = "sft"  # how `alignkit check` shows the first rows: sft, dpo, reward or prompts
    memory: MemoryModel = field(default_factory=MemoryModel)

    @property
    def recipe_module(self) -> str:
        return f"alignkit.recipes.{self.name}"

    @property
    def config_classes(self) -> tuple[str, str, str]:
        """(script arguments, training config, model config) as `module:Class` strings."""
        return (SCRIPT_ARGUMENTS, self.config, MODEL_CONFIG)

    @property
    def is_policy(self) -> bool:
        return self.output == "policy"

    @property
    def is_reward_model(self) -> bool:
        return self.output == "reward_model"

    @property
    def kind(self) -> str:
        """How a pipeline error names this stage's output."""
        return {"policy": "policy", "reward_model": "reward model"}.get(self.output, "data set")


_LOSS = ("loss", ("loss", "eval_loss"))
# What TRL logs for the zero-weight audit reward function of GRPO/RLOO (`alignkit.rewards.audit_weight`).
AUDIT_REWARD = "rewards/audit_reward_model/mean"

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            name="pretrain",
            title="continued pretraining",
            config="alignkit.config:PretrainConfig",
            data_format="pretrain",
            perplexity=True,
            curves=(_LOSS,),
        ),
        Stage(
            name="sft",
            title="supervised fine-tuning (SFT)",
            config="trl:SFTConfig",
            data_format="sft",
            perplexity=True,
            curves=(_LOSS, ("token accuracy", ("mean_token_accuracy", "eval_mean_token_accuracy"))),
        ),
        Stage(
            name="reward",
            title="reward modelling",
            config="trl:RewardConfig",
            data_format="preference",
            output="reward_model",
            curves=(_LOSS, ("pairwise accuracy", ("accuracy", "eval_accuracy"))),
            preview="reward",
            memory=MemoryModel(sequences=2, lm_head=None),
        ),
        Stage(
            name="dpo",
            title="Direct Preference Optimization (DPO)",
            config="trl:DPOConfig",
            data_format="preference",
            curves=(_LOSS, ("reward accuracy", ("rewards/accuracies", "eval_rewards/accuracies"))),
            preview="dpo",
            memory=MemoryModel(sequences=2, reference_adapter_copy=True),
        ),
        Stage(
            name="ppo",
            title="PPO (RLHF against a reward model)",
            config="alignkit.ppo.config:PPOConfig",
            data_format="prompts",
            inputs=("model", "reward_model", "value_model"),
            required=("reward_model_path",),
            # The audit reward model's score (when one is configured) beside the optimised one's: over-optimisation shows
            # as the two curves parting.
            curves=(("RM score", ("score", "audit_score")), ("KL to reference", ("kl",)), ("entropy", ("entropy",)),
                    ("response length", ("response_length",))),
            curve_x="update",
            series=("score", "kl", "audit_score"),
            preview="prompts",
            memory=MemoryModel(lm_head="full", online_rl=True),
        ),
        Stage(
            name="critique_revise",
            title="Constitutional AI: SFT on the model's own revisions under a constitution",
            config="alignkit.cai:CritiqueReviseConfig",
            data_format="prompts",
            perplexity=True,
            curves=(_LOSS, ("token accuracy", ("mean_token_accuracy", "eval_mean_token_accuracy"))),
            preview="prompts",
        ),
        Stage(
            name="ai_feedback",
            title="Constitutional AI: preference labels from a feedback model (no training)",
            config="alignkit.cai:AIFeedbackConfig",
            data_format="prompts",
            output="data",
            inputs=("model", "feedback_model"),
            preview="prompts",
        ),
        *(
            Stage(
                name=name,
                title=title,
                config=f"alignkit.rewards:{name.upper()}Config",
                data_format="prompts",
                inputs=("model", "reward_model"),
                required=("reward_model_path",),
                curves=(("reward", ("reward", AUDIT_REWARD)), ("KL to reference", ("kl",)),
                        ("completion length", ("completions/mean_length",))),
                series=("reward", "kl", AUDIT_REWARD),
                preview="prompts",
                memory=MemoryModel(critic_free_rl=True),
            )
            for name, title in (("grpo", "GRPO (online RL against a reward model)"),
                                ("rloo", "RLOO (online RL against a reward model)"))
        ),
        Stage(
            name="best_of_n",
            title="best-of-n rejection sampling (SFT on the reward model's favourite answers)",
            config="alignkit.best_of_n:BestOfNConfig",
            data_format="prompts",
            inputs=("model", "reward_model"),
            required=("reward_model_path",),
            curves=(_LOSS, ("token accuracy", ("mean_token_accuracy",))),
            preview="prompts",
            memory=MemoryModel(best_of_n=True),
        ),
        Stage(
            name="kto",
            title="Kahneman-Tversky Optimization (KTO)",
            config="trl:KTOConfig",
            data_format="preference",  # pairs, unpaired by the recipe into desirable and undesirable answers
            curves=(_LOSS, ("reward margin", ("rewards/margins", "eval_rewards/margins"))),
            preview="dpo",
            # Each row's answer and a mismatched one (KTO's KL estimate) go through the model together; TRL computes
            # log-probabilities with a fused LM head, as for DPO.
            memory=MemoryModel(sequences=2, reference_adapter_copy=True),
        ),
        *(
            Stage(
                name=name,
                title=title,
                config=f"alignkit.experimental:{name.upper()}Config",
                data_format="preference",
                curves=(_LOSS, ("reward margin", ("rewards/margins", "eval_rewards/margins"))),
                preview="dpo",
                memory=MemoryModel(sequences=2, lm_head="full"),  # chosen + rejected, their full logits; no reference
            )
            for name, title in (("orpo", "ORPO (odds-ratio preference optimisation; experimental in TRL)"),
                                ("cpo", "CPO / SimPO (reference-free preference optimisation; experimental in TRL)"))
        ),
    )
}

# A pipeline input's role and the config key it sets.
INPUT_KEYS = {"model": "model_name_or_path", "reward_model": "reward_model_path", "value_model": "value_model_path",
              "feedback_model": "feedback_model_path"}


def names() -> tuple[str, ...]:
    return tuple(STAGES)


def get(name: str) -> Stage:
    """The stage called `name`; a `ConfigError` listing the stages when there is none."""
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage '{name}'; expected one of {', '.join(STAGES)}.") from None


def stack_versions() -> dict[str, str]:
    return {"trl": version("trl"), "transformers": version("transformers")}


def known_keys(name: str) -> set[str] | None:
    """
    The valid config keys of stage `name` for the installed stack, read from `config_keys.json` (written by
    `python -m alignkit.config`, a test keeps it in step), or None when that file is for other versions.
    """
    if not KEYS_FILE.is_file():
        return None
    saved = json.loads(KEYS_FILE.read_text())
    if saved["versions"] != stack_versions() or name not in saved["stages"]:
        return None
    return set(saved["stages"][name])
