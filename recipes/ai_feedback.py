"""Constitutional AI's feedback stage: a model labels which of two sampled answers better follows a principle.

    alignkit ai_feedback --config recipes/demo/ai_feedback.yaml

The policy (`model_name_or_path`) samples two answers per prompt; the feedback model (`feedback_model_path`, by default
the policy) is asked a sampled principle's comparison question with the answers as (A) and (B), in both orders, and
its next-token probabilities of "A" vs "B" give p(first answer better) = (p_AB + (1 - p_BA)) / 2. Nothing is trained:
the output is `<output_dir>/preference/train.jsonl` (prompt, chosen, rejected, `label` = p(chosen better), `margin` =
its log-odds, which TRL's RewardTrainer adds to its loss, `principle`), which the reward and DPO stages read as it is.
DPO has no per-example weight in TRL 1.16, so it uses the pairs and ignores the label. With `judge` and
`judge_prompts`, pairs sampled for those prompts (`judge_samples` each, not in the output) measure how often the labels
agree with the judge: `gold_agreement` on the pairs the output would keep (label >= min_confidence),
`gold_agreement_all` on all of them, `gold_coverage` the share of them kept.
"""

import dataclasses
import json
import random
from pathlib import Path

from accelerate import PartialState
from alignkit import __version__, cai, data, models, outputs
from alignkit.cli import run_recipe
from alignkit.config import ScriptArguments, has_accelerator, save_config
from alignkit.errors import DataError
from alignkit.evaluation import judges, load_prompts, prompt_conversation, vllm_generation
from alignkit.evaluation.generation import generate, on_shares
from alignkit.training import lineage

from transformers import set_seed
from trl import ModelConfig

DATA_DIR = "preference"


def main(script_args: ScriptArguments, args: cai.AIFeedbackConfig, model_args: ModelConfig) -> dict:
    # No TrainingArguments here to set Accelerate up: without an accelerator, `cpu=True` is what makes the processes of
    # `accelerate launch` one gloo group (as alignkit's `use_cpu` default does for training stages), so they share out
    # the prompts and only the main one takes the output folder.
    PartialState(cpu=not has_accelerator())
    # Check the prompts, the constitution, the judge and the output folder before loading any weights.
    prompts = data.load_data(dataclasses.replace(script_args, eval_split_size=0), "prompts")["train"]
    constitution = cai.stage_constitution(args)
    judge = judges.load_judge(args.judge) if args.judge else None
    # Each judge prompt `judge_samples` times: a pair sampled for each (sampled after the output's, which they leave as is).
    judge_rows = [row for row in load_prompts(args.judge_prompts) for _ in range(args.judge_samples)] if args.judge_prompts else []
    outputs.prepare_output_dir(args.output_dir, script_args.overwrite_output_dir)
    if script_args.overwrite_output_dir:
        outputs.set_aside(args.output_dir)  # kept whole in <output_dir>.previous until this run has finished
    try:
        record = _label(script_args, args, model_args, prompts, constitution, judge, judge_rows)
    except BaseException as error:
        outputs.restore_previous(args.output_dir, error)
        raise
    finally:
        outputs.release_output_dir(args.output_dir)
    outputs.drop_previous(args.output_dir)
    return record


def _label(script_args, args, model_args, prompts, constitution, judge, judge_rows) -> dict:
    tokenizer = models.load_tokenizer(model_args, args.trust_remote_code, args.chat_template_path)
    # With vLLM sampling the answers, the policy's transformers weights are needed only to compare them.
    sampled_by_vllm = vllm_generation.wants_vllm(args.use_vllm)
    policy = None
    if not (sampled_by_vllm and args.feedback_model_path):
        policy = models.to_process_device(models.load_model(model_args, args.trust_remote_code, tokenizer=tokenizer).eval())
    if args.feedback_model_path:
        feedback_args = dataclasses.replace(model_args, model_name_or_path=args.feedback_model_path, use_peft=False)
        feedback_tokenizer = models.load_tokenizer(feedback_args, args.trust_remote_code)
        feedback = models.load_model(feedback_args, args.trust_remote_code, tokenizer=feedback_tokenizer).eval()
        feedback = models.to_process_device(feedback)
    else:
        feedback, feedback_tokenizer = policy, tokenizer
    cai.choice_token_ids(feedback_tokenizer)  # "A" and "B" must be told apart before any answer is sampled

    # Each process samples and labels its share of the prompts, from a seed of its own (the same with one process).
    process = PartialState().process_index
    set_seed(args.seed + process)  # the sampled answers
    rng = random.Random(args.seed + process)  # the principles

    def label(conversations):
        """Two sampled answers per prompt and (p(first better), principles) for each pair."""
        def label_share(share):
            pairs = list(zip(answer(share), answer(share)))
            references = None
            if constitution.uses_reference:  # the feedback model answers first, greedily, to judge against its answer
                references = generate(feedback, feedback_tokenizer, share, args.max_new_tokens, args.generation_batch_size)
            choose = lambda c: cai.first_choice_probabilities(feedback, feedback_tokenizer, c, args.generation_batch_size)
            labels = cai.feedback_labels(choose, share, pairs, constitution, rng, args.principles_per_pair, references)
            return list(zip(pairs, labels))
        labelled = on_shares(label_share, conversations)
        return [pair for pair, _ in labelled], [lab for _, lab in labelled]

    conversations = [prompt_conversation(p) for p in prompts["prompt"]]
    with cai.answerer(policy, tokenizer, args, model_args, do_sample=True, seed=args.seed + process) as answer:
        pairs, labels = label(conversations)
        if judge is not None:  # pairs for prompts the judge can rate, never part of the output
            held_pairs, held_labels = label([prompt_conversation(r) for r in judge_rows])
    rows = [cai.preference_row(c, a, b, p, principle) for c, (a, b), (p, principle) in zip(conversations, pairs, labels)]
    kept = [r for r in rows if r["chosen"] != r["rejected"] and r["label"] >= args.min_confidence]

    if not kept:
        raise DataError(f"the feedback model could not tell the two answers apart (label >= min_confidence "
                        f"{args.min_confidence}) for any of the {len(rows)} prompts; lower min_confidence, raise temperature "
                        "or check the feedback model's answers to the constitution's comparison questions.")
    report = {"pairs": len(rows), "kept": len(kept), "mean_label": sum(r["label"] for r in kept) / max(1, len(kept))}
    if judge is not None:  # the judge's preference on the held-out pairs
        verdicts = [tuple(judge(row, answer) for answer in pair) for row, pair in zip(judge_rows, held_pairs)]
        gold = [[sum(map(float, v.values())) for v in pair] for pair in verdicts]
        labels = [p for p, _ in held_labels]
        # On the pairs the output would keep (label >= min_confidence), on every pair the judge tells apart, and on
        # those that differ on each of the judge's criteria.
        sure = [i for i, p in enumerate(labels) if max(p, 1 - p) >= args.min_confidence]
        report["gold_agreement"], report["gold_pairs"] = cai.agreement([labels[i] for i in sure], [gold[i] for i in sure])
        report["gold_agreement_all"], report["gold_pairs_all"] = cai.agreement(labels, gold)
        report["judge_pairs"] = len(gold)  # sampled; gold_pairs_all of them the judge tells apart
        report["gold_coverage"] = report["gold_pairs"] / report["gold_pairs_all"] if report["gold_pairs_all"] else None
        report["gold_agreement_by_criterion"] = cai.agreement_by_criterion(labels, verdicts)

    out = Path(args.output_dir)
    record = {
        "stage": "ai_feedback", "alignkit_version": __version__, "model_name_or_path": model_args.model_name_or_path,
        "dataset_name": script_args.dataset_name,
        "lineage": lineage(model_args.model_name_or_path, script_args.dataset_name),
        "feedback_model": args.feedback_model_path or model_args.model_name_or_path, "constitution": constitution.path,
        "data": str(out / DATA_DIR), "metrics": report, "report": report,
    }
    state = PartialState()
    if state.is_main_process:  # every process holds all the rows (`on_shares`); one writes them
        (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
        with (out / DATA_DIR / "train.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        save_config(out, script_args, args, model_args)
        outputs.finish_run(out, record)
    state.wait_for_everyone()
    return record


if __name__ == "__main__":
    run_recipe("ai_feedback", main=main)
