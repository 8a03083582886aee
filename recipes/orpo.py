"""Odds-ratio preference optimisation (ORPO) with TRL's ORPOTrainer (experimental in TRL), from the SFT stage's output.

    accelerate launch recipes/orpo.py --config recipes/demo/orpo.yaml
    alignkit orpo --config recipes/demo/orpo.yaml

ORPO needs no reference model: its loss is the SFT loss on the chosen answer plus `beta` times the log odds ratio
of chosen over rejected (`beta` is the paper's lambda). With LoRA, training continues an SFT adapter or adds one.
"""

from alignkit import data, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments
from alignkit.experimental import ORPOConfig, ORPOTrainer

from trl import ModelConfig


def main(script_args: ScriptArguments, training_args: ORPOConfig, model_args: ModelConfig) -> ORPOTrainer:
    # Check the data and the output folder before loading any weights.
    dataset = data.load_data(script_args, "preference", seed=training_args.seed)
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, getattr(training_args, "chat_template_path", None))
    model = models.load_model(
        model_args, training_args.trust_remote_code, gradient_checkpointing=training_args.gradient_checkpointing,
        tokenizer=tokenizer,
    )
    models.check_vocab(model, tokenizer, model_args.model_name_or_path)

    trainer = ORPOTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("test"),
        processing_class=tokenizer,
        peft_config=models.new_peft_config(model, model_args),
    )
    data.check_kept(len(dataset["train"]), len(trainer.train_dataset), "training pairs", training_args.max_length)
    training.train_and_save(trainer, "orpo", script_args, training_args, model_args)
    return trainer


if __name__ == "__main__":
    run_recipe("orpo", main=main)
