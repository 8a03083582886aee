"""Constitutional AI's supervised stage: the policy critiques and revises its own answers, then learns the revisions.

    alignkit critique_revise --config recipes/demo/critique_revise.yaml
    accelerate launch recipes/critique_revise.py --config recipes/qwen2.5-0.5b/cai/critique_revise.yaml

For each prompt the model answers; for `num_revisions` rounds a sampled principle of the `constitution` asks it to
critique that answer and then to revise it, as further chat turns. The final revisions are the SFT targets
(prompt -> revision, trained as the SFT recipe trains prompt/completion data). Every answer, critique and revision is
kept in `<output_dir>/critique_revise.jsonl` for inspection.
"""

import json
import random
from pathlib import Path

from alignkit import cai, data, models, outputs
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments
from alignkit.errors import DataError
from alignkit.evaluation.generation import on_shares, prompt_conversation
from alignkit.recipes import sft

from datasets import Dataset, DatasetDict
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import ModelConfig

RECORDS_FILE = "critique_revise.jsonl"


def main(script_args: ScriptArguments, training_args: cai.CritiqueReviseConfig, model_args: ModelConfig):
    # Check the prompts, the constitution and the output folder before loading any weights.
    prompts = data.load_data(script_args, "prompts", seed=training_args.seed)
    constitution = cai.stage_constitution(training_args)
    outputs.prepare_output_dir(
        training_args.output_dir, script_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )

    tokenizer = models.load_tokenizer(model_args, training_args.trust_remote_code, training_args.chat_template_path)
    model = models.load_model(
        model_args, training_args.trust_remote_code, gradient_checkpointing=training_args.gradient_checkpointing,
        tokenizer=tokenizer,
    )
    models.check_vocab(model, tokenizer, model_args.model_name_or_path)

    # Answer, critique and revise every prompt with the model as it is now, each process its share; a resumed run
    # reads the records its checkpoint kept instead, so it goes on training on the same revisions.
    records = _records_to_resume(training_args)
    if records is None:
        seed = training_args.seed + training_args.process_index  # each process its own samples, when do_sample
        set_seed(seed)
        rng = random.Random(seed)  # the principles
        # `training_args.device` sets Accelerate up as the Trainer will (use_cpu: one gloo group on CPU) before sharing out.
        with cai.answerer(model, tokenizer, training_args, model_args, do_sample=training_args.do_sample, seed=seed,
                          device=training_args.device) as answer:
            revise = lambda share: cai.critique_and_revise(answer, share, constitution, training_args.num_revisions, rng)
            records = {split: on_shares(revise, [prompt_conversation(p) for p in rows["prompt"]])
                       for split, rows in prompts.items()}

    # SFT on prompt -> final revision; an empty revision teaches nothing and is left out.
    pairs = {split: [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["revision"]}]}
                     for r in rows if r["revision"]] for split, rows in records.items()}
    if not pairs["train"]:
        raise DataError(f"every revision of the {len(records['train'])} prompts was empty; raise max_new_tokens or "
                        "check that the model answers with its chat template.")
    dataset = DatasetDict({split: Dataset.from_list(rows) for split, rows in pairs.items() if rows})

    def write_records(folder) -> None:
        with Path(folder, RECORDS_FILE).open("w", encoding="utf-8") as f:
            for split, rows in records.items():
                f.writelines(json.dumps({"split": split, **r}, ensure_ascii=False) + "\n" for r in rows)

    def keep_records(trainer) -> dict:  # written with the weights, so an overwritten run's records go with it
        write_records(training_args.output_dir)
        return {"critique_revise": {"records": RECORDS_FILE, "prompts": sum(map(len, records.values())),
                                    "trained_on": sum(map(len, pairs.values())), "constitution": constitution.path}}

    class KeepRecordsInCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_records(Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))

    return sft.train(model, tokenizer, dataset, script_args, training_args, model_args, stage="critique_revise",
                     extra=keep_records, callbacks=[KeepRecordsInCheckpoints()])


def _records_to_resume(training_args) -> dict[str, list[dict]] | None:
    """The records kept in the checkpoint a resumed run starts from (None when it starts afresh or kept none)."""
    if outputs.resume_arg(training_args.resume_from_checkpoint) is None:
        return None
    checkpoint = outputs.resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    path = Path(checkpoint, RECORDS_FILE)
    if not path.is_file():
        return None
    records: dict[str, list[dict]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        records.setdefault(row.pop("split"), []).append(row)
    return records

if __name__ == "__main__":
    run_recipe("critique_revise", main=main)
