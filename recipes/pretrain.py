"""Continued pretraining on raw text (causal LM loss, packed sequences), or pretraining from scratch.

    accelerate launch recipes/pretrain.py --config recipes/demo/pretrain.yaml
    alignkit pretrain --config recipes/demo/pretrain.yaml

`from_scratch: true` initialises random weights from the base's config instead of loading its weights.
"""

from alignkit import data, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import PretrainConfig, ScriptArguments

from trl import ModelConfig, SFTTrainer


def main(script_args: ScriptArguments, training_args: PretrainConfig, model_args: ModelConfig) -> SFTTrainer:
    # Check the data and the output folder before loading any weights.
    dataset = data.load_data(script_args, "pretrain", training_args.dataset_text_field, training_args.seed)
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, getattr(training_args, "chat_template_path", None))
    model = models.load_model(
        model_args,
        training_args.trust_remote_code,
        from_scratch=script_args.from_scratch,
        gradient_checkpointing=training_args.gradient_checkpointing,
        seed=training_args.seed,
        tokenizer=tokenizer,
    )
    models.check_vocab(model, tokenizer, model_args.model_name_or_path)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("test"),
        processing_class=tokenizer,
        peft_config=models.new_peft_config(model, model_args),
    )
    training.train_and_save(trainer, "pretrain", script_args, training_args, model_args)
    return trainer


if __name__ == "__main__":
    run_recipe("pretrain", main=main)
