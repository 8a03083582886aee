"""Direct preference optimisation with TRL's DPOTrainer, starting from the SFT stage's output.

    accelerate launch recipes/dpo.py --config recipes/demo/dpo.yaml
    alignkit dpo --config recipes/demo/dpo.yaml

The reference is the SFT model. With LoRA there is one copy of the base weights: on a full SFT model the
reference is the policy with its new adapter disabled; on an SFT adapter, training continues that adapter and
TRL keeps a frozen copy of it as the reference. `loss_type` and `beta` pass through to TRL.
"""

from alignkit import data, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments

from trl import DPOConfig, DPOTrainer, ModelConfig


def main(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> DPOTrainer:
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

    trainer = DPOTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("test"),
        processing_class=tokenizer,
        peft_config=models.new_peft_config(model, model_args),
    )
    data.check_kept(len(dataset["train"]), len(trainer.train_dataset), "training pairs", training_args.max_length)
    training.train_and_save(trainer, "dpo", script_args, training_args, model_args)
    return trainer


if __name__ == "__main__":
    run_recipe("dpo", main=main)
