"""Online RL with TRL's RLOOTrainer against the reward stage's model, starting from the SFT stage's output.

    accelerate launch recipes/rloo.py --config recipes/demo/rloo.yaml
    alignkit rloo --config recipes/demo/rloo.yaml

The policy samples `num_generations` answers to each prompt; each answer's reward is the reward model's score
(`reward_model_path`, scored in its training format by `alignkit.rewards.RewardScorer`, normalised with its
recorded statistics) plus any `reward_funcs`, weighted by `reward_weights`, minus `beta` times its KL to the
reference; its advantage is that reward minus the mean reward of the other answers to the same prompt (REINFORCE
leave-one-out). With `use_peft` the policy is a LoRA adapter on one copy of the base and the reference is the
policy with its adapter disabled; on an SFT adapter, training continues it and TRL keeps a frozen copy of it as
the reference. Prompts come from a `prompt` column or conversations.

With `audit_reward_model_path` (a second reward stage, never optimised against) its score of the same answers is
logged per step as `rewards/audit_reward_model/mean` at weight 0: it falling while `reward` rises is over-optimisation.
"""

from alignkit import data, models, outputs, rewards, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments

from trl import ModelConfig, RLOOTrainer


def main(script_args: ScriptArguments, training_args: rewards.RLOOConfig, model_args: ModelConfig) -> RLOOTrainer:
    # Check the prompts, the output folder and the reward functions before loading any weights.
    dataset = data.load_data(script_args, "prompts", seed=training_args.seed)
    rewards.check_eval_batch(dataset, training_args)
    rewards.check_reference(model_args, training_args)
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )
    reward_funcs = rewards.reward_functions(training_args)

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, training_args.chat_template_path)
    model = models.load_model(
        model_args, training_args.trust_remote_code, gradient_checkpointing=training_args.gradient_checkpointing,
        tokenizer=tokenizer,
    )
    models.check_vocab(model, tokenizer, model_args.model_name_or_path)

    with rewards.audit_weight(training_args):  # an audit reward model is scored and logged, never optimised
        trainer = RLOOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=dataset["train"],
            eval_dataset=dataset.get("test"),
            processing_class=tokenizer,
            peft_config=models.new_peft_config(model, model_args),
        )
    for scorer in reward_funcs:
        if isinstance(scorer, rewards.RewardScorer):
            scorer.to(trainer.accelerator.device)
    training.train_and_save(trainer, "rloo", script_args, training_args, model_args)
    return trainer


if __name__ == "__main__":
    run_recipe("rloo", main=main)
