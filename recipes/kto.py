"""Kahneman-Tversky optimisation (KTO) with TRL's KTOTrainer, starting from the SFT stage's output.

    accelerate launch recipes/kto.py --config recipes/demo/kto.yaml
    alignkit kto --config recipes/demo/kto.yaml

KTO learns from answers labelled desirable or undesirable one at a time, not from pairs: each preference pair becomes
two rows (chosen: desirable, rejected: undesirable; TRL's `unpair_preference_dataset`). The reference is the SFT
model, as for DPO: with LoRA the policy with its adapter disabled (or TRL's frozen copy of an SFT adapter it
continues). `beta`, `desirable_weight` and `undesirable_weight` pass through to TRL.
"""

from alignkit import data, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments

from trl import KTOConfig, KTOTrainer, ModelConfig
from trl.data_utils import unpair_preference_dataset


def main(script_args: ScriptArguments, training_args: KTOConfig, model_args: ModelConfig) -> KTOTrainer:
    # Check the data and the output folder before loading any weights.
    dataset = data.load_data(script_args, "preference", seed=training_args.seed)
    # prompt, completion, label; shuffled, since unpairing puts every desirable row before every undesirable one.
    dataset = {split: unpair_preference_dataset(rows).shuffle(seed=training_args.seed) for split, rows in dataset.items()}
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, getattr(training_args, "chat_template_path", None))
    model = models.load_model(
        model_args, training_args.trust_remote_code, gradient_checkpointing=training_args.gradient_checkpointing,
        tokenizer=tokenizer,
    )
    models.check_vocab(model, tokenizer, model_args.model_name_or_path)

    trainer = KTOTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("test"),
        processing_class=tokenizer,
        peft_config=models.new_peft_config(model, model_args),
    )
    data.check_kept(len(dataset["train"]), len(trainer.train_dataset), "training rows", training_args.max_length)
    training.train_and_save(trainer, "kto", script_args, training_args, model_args)
    return trainer


if __name__ == "__main__":
    run_recipe("kto", main=main)
