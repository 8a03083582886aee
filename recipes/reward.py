"""Reward model (Bradley-Terry) with TRL's RewardTrainer: LoRA, QLoRA (`load_in_4bit`) or full, by config.

    accelerate launch recipes/reward.py --config recipes/demo/reward.yaml
    alignkit reward --config recipes/demo/reward.yaml

Starts from a causal LM, usually the SFT stage's output, and learns a scalar score head; with LoRA the head is
trained in full and saved with the adapter. The output records the score distribution on the eval split (to
normalise rewards later) and how often the model simply prefers the longer answer.
"""

from alignkit import data, metrics, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments

from transformers import set_seed
from trl import ModelConfig, RewardConfig, RewardTrainer


def main(script_args: ScriptArguments, training_args: RewardConfig, model_args: ModelConfig) -> RewardTrainer:
    # Check the data and the output folder before loading any weights.
    dataset = data.load_data(script_args, "preference", seed=training_args.seed)
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, getattr(training_args, "chat_template_path", None))
    set_seed(training_args.seed)  # the new score head starts from random weights
    model = models.load_model(
        model_args, training_args.trust_remote_code, gradient_checkpointing=training_args.gradient_checkpointing, reward=True,
        tokenizer=tokenizer,
    )
    models.check_vocab(model, tokenizer, model_args.model_name_or_path)
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
    if script_args.prompt_truncation == "left" and training_args.max_length:  # keep long dialogues' latest turns
        dataset = {split: data.tokenize_reward_pairs(rows, tokenizer, training_args, split) for split, rows in dataset.items()}

    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("test"),
        processing_class=tokenizer,
        peft_config=models.new_peft_config(model, model_args, reward=True),
    )
    data.check_kept(len(dataset["train"]), len(trainer.train_dataset), "training pairs", training_args.max_length)
    training.train_and_save(
        trainer, "reward", script_args, training_args, model_args,
        extra=lambda t: {"reward_stats": metrics.reward_stats(t)},
    )
    return trainer


if __name__ == "__main__":
    run_recipe("reward", main=main)
