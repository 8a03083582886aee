"""Supervised fine-tuning with TRL's SFTTrainer: LoRA, QLoRA (`load_in_4bit`) or full, by config.

    accelerate launch recipes/sft.py --config recipes/demo/sft.yaml
    alignkit sft --config recipes/demo/sft.yaml

Prompt/completion data trains on the completions only; conversations (`messages`) on the assistant's turns only.
"""

from alignkit import data, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments

from trl import ModelConfig, SFTConfig, SFTTrainer
from trl.chat_template_utils import has_generation_markers


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> SFTTrainer:
    # Check the data and the output folder before loading any weights.
    dataset = data.load_data(script_args, "sft", training_args.dataset_text_field, training_args.seed)
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, getattr(training_args, "chat_template_path", None))
    model = models.load_model(
        model_args, training_args.trust_remote_code, gradient_checkpointing=training_args.gradient_checkpointing,
        tokenizer=tokenizer,
    )
    models.check_vocab(model, tokenizer, model_args.model_name_or_path)
    return train(model, tokenizer, dataset, script_args, training_args, model_args)


def train(model, tokenizer, dataset, script_args, training_args, model_args, stage: str = "sft", extra=None,
          callbacks=None) -> SFTTrainer:
    """SFT of a loaded model on checked data, then the stage's output; shared with `critique_revise`."""
    # Conversations learn from the assistant's turns only, as prompt/completion data learns from completions.
    if "messages" in dataset["train"].column_names and has_generation_markers(tokenizer.chat_template):
        training_args.assistant_only_loss = True

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("test"),
        processing_class=tokenizer,
        peft_config=models.new_peft_config(model, model_args),
        callbacks=callbacks,
    )
    if not training_args.packing:
        data.check_kept(len(dataset["train"]), len(trainer.train_dataset), "training rows", training_args.max_length)
    training.train_and_save(trainer, stage, script_args, training_args, model_args, extra=extra)
    return trainer


if __name__ == "__main__":
    run_recipe("sft", main=main)
