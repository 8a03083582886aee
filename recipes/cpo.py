"""Contrastive preference optimisation (CPO) and SimPO with TRL's CPOTrainer (experimental in TRL), from the SFT stage's output.

    accelerate launch recipes/cpo.py --config recipes/demo/cpo.yaml
    alignkit cpo --config recipes/demo/cpo.yaml

No reference model: `loss_type: sigmoid` is CPO (a DPO-like loss on the policy's own log-probabilities plus
`cpo_alpha` times the SFT loss on the chosen answer); `loss_type: simpo` is SimPO (length-normalised log-probabilities,
a target margin `simpo_gamma`; `cpo_alpha: 0` for the paper's pure SimPO). With LoRA, training continues an SFT
adapter or adds one.
"""

from alignkit import data, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments
from alignkit.experimental import CPOConfig, CPOTrainer

from trl import ModelConfig


def main(script_args: ScriptArguments, training_args: CPOConfig, model_args: ModelConfig) -> CPOTrainer:
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

    trainer = CPOTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("test"),
        processing_class=tokenizer,
        peft_config=models.new_peft_config(model, model_args),
    )
    data.check_kept(len(dataset["train"]), len(trainer.train_dataset), "training pairs", training_args.max_length)
    training.train_and_save(trainer, "cpo", script_args, training_args, model_args)
    return trainer


if __name__ == "__main__":
    run_recipe("cpo", main=main)
