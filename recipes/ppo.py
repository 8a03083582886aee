"""RLHF with PPO, on alignkit's own trainer (TRL removed its PPOTrainer after 1.12.0).

    accelerate launch recipes/ppo.py --config recipes/demo/ppo.yaml
    alignkit ppo --config recipes/demo/ppo.yaml

The policy and the reference start from the SFT stage's output (`model_name_or_path`); `reward_model_path` is
the reward stage's output, and the value model starts from it. With `use_peft` the policy, the value model and
(when it is an adapter on the same base) the reward model are adapters on one copy of the base weights, and the
reference is the policy with its adapter disabled. Prompts come from a `prompt` column or conversations.
"""

from alignkit import data, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments
from alignkit.ppo import PPOConfig, PPOTrainer, load_ppo_models

from transformers import set_seed
from trl import ModelConfig, get_peft_config, get_quantization_config


def main(script_args: ScriptArguments, training_args: PPOConfig, model_args: ModelConfig) -> PPOTrainer:
    # Check the prompts and the output folder before loading any weights.
    dataset = data.load_data(script_args, "prompts", seed=training_args.seed)
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, training_args.chat_template_path)
    set_seed(training_args.seed)  # new adapters start from random weights
    ppo_models = load_ppo_models(
        model_args.model_name_or_path,
        training_args.reward_model_path,
        use_peft=model_args.use_peft,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        dtype=model_args.dtype,
        trust_remote_code=training_args.trust_remote_code,
        value_path=training_args.value_model_path,
    )
    # Scores are normalised with the reward stage's own statistics unless the config sets them.
    if training_args.reward_mean is None and ppo_models.reward_stats:
        training_args.reward_mean = ppo_models.reward_stats["mean"]
        training_args.reward_std = ppo_models.reward_stats["std"]

    trainer = PPOTrainer(training_args, ppo_models, tokenizer, dataset["train"])
    training.train_and_save(trainer, "ppo", script_args, training_args, model_args)
    return trainer


if __name__ == "__main__":
    run_recipe("ppo", main=main)
