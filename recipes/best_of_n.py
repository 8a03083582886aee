"""Best-of-n (rejection sampling): sample n answers per prompt, keep the reward model's favourite, SFT on those.

    accelerate launch recipes/best_of_n.py --config recipes/demo/best_of_n.yaml
    alignkit best_of_n --config recipes/demo/best_of_n.yaml

Each of `iterations` rounds samples `num_generations` answers to every prompt from the policy trained so far, scores
them with the reward stage's model (`reward_model_path`, in its training format), keeps each prompt's best finished
answer (at least `score_threshold`, if set) and fine-tunes on the kept prompt/completion pairs with TRL's SFTTrainer
(with `use_peft`, one LoRA adapter that every round continues). The kept rows, with every candidate and its score,
are written to `<output_dir>/best_of_n/iteration-<k>.jsonl`. Prompts come from a `prompt` column or conversations;
a test split is not used (measure the policy with `alignkit eval`). A resume continues the last round's SFT from its
checkpoint, on the rows that round kept; earlier rounds save no checkpoints.
"""

import copy

from alignkit import best_of_n, data, models, outputs, training
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments

from transformers.trainer_utils import SaveStrategy
from trl import ModelConfig, SFTTrainer


def main(script_args: ScriptArguments, training_args: best_of_n.BestOfNConfig, model_args: ModelConfig) -> SFTTrainer:
    # Check the prompts and the output folder before loading any weights.
    prompts = best_of_n.unique_prompts(data.load_data(script_args, "prompts", seed=training_args.seed)["train"])
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )
    last, resume = training_args.iterations, outputs.resume_arg(training_args.resume_from_checkpoint)
    # A resume needs no sampling: the checkpoint holds the earlier rounds' training, the output the last round's rows.
    scorer = None if resume else best_of_n.load_scorer(training_args, training_args.device)

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, training_args.chat_template_path)
    model = models.load_model(
        model_args, training_args.trust_remote_code, gradient_checkpointing=training_args.gradient_checkpointing,
        tokenizer=tokenizer,
    )
    models.check_vocab(model, tokenizer, model_args.model_name_or_path)
    model = models.to_process_device(model, training_args.device)  # the first round samples before any Trainer moves it
    peft_config = models.new_peft_config(model, model_args)

    kept, stats = {}, []
    if resume:
        kept[last], stats = best_of_n.read_kept(training_args.output_dir, last)
    for iteration in [last] if resume else range(1, last + 1):
        if iteration not in kept:
            kept[iteration], round_stats = best_of_n.sample_best(model, tokenizer, scorer, prompts, training_args, iteration)
            stats.append(round_stats)
        args = training_args
        if iteration < last:  # earlier rounds save nothing: the last round's checkpoints are the ones to resume from
            args = copy.copy(training_args)
            args.save_strategy = SaveStrategy.NO
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=best_of_n.training_rows(kept[iteration]),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        data.check_kept(len(kept[iteration]), len(trainer.train_dataset), "kept answers", training_args.max_length)
        model, peft_config = trainer.model, None  # the next round samples from, and trains, this policy
        if iteration < last:
            trainer.train()

    trainer.add_callback(best_of_n.WriteKept(kept, stats))
    training.train_and_save(trainer, "best_of_n", script_args, training_args, model_args,
                            extra=lambda _: {"best_of_n": stats})
    return trainer


if __name__ == "__main__":
    run_recipe("best_of_n", main=main)
