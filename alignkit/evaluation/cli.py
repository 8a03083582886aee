"""`alignkit eval`: a policy against a reference on a prompts file; writes `<policy>/eval.json` and prints a table.

    alignkit eval --policy DIR --reference DIR [--reward_model DIR] --prompts FILE.jsonl [--judge module:function]
                  [--max_new_tokens 64] [--batch_size 32] [--do_sample --temperature 1.0 --num_samples 1]
                  [--seed 0] [--output_file DIR/eval.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit.evaluation.compare import evaluate_policy, format_report
from alignkit.evaluation.generation import load_prompts
from alignkit.evaluation.judges import load_judge


def main(argv: list[str] | None = None) -> dict:
    """`alignkit eval`: parse the flags, evaluate, write the JSON report, print the table."""
    parser = argparse.ArgumentParser(prog="alignkit eval", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the policy's stage output folder (full model or adapter)")
    parser.add_argument("--reference", required=True, help="the reference's stage output folder, e.g. the SFT stage")
    parser.add_argument("--reward_model", help="a reward stage's output folder; without it no rewards or win rate")
    parser.add_argument("--prompts", required=True, help="a JSONL file with a `prompt` (or `messages`) column")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--do_sample", action="store_true", help="sample answers instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--num_samples", type=int, default=1, help="answers per prompt and model (with --do_sample)")
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed")
    parser.add_argument("--output_file", help="where to write the JSON report (default: <policy>/eval.json)")
    parser.add_argument("--judge", metavar="MODULE:FUNCTION",
                        help="a judge plug-in rating each answer, e.g. alignkit.demo.judge:gold_judge for the demo's prompts")
    opts = parser.parse_args(argv)

    rows = load_prompts(opts.prompts)
    judge = load_judge(opts.judge) if opts.judge else None
    result = evaluate_policy(
        opts.policy, opts.reference, rows, opts.reward_model,
        max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size, judge=judge, do_sample=opts.do_sample,
        temperature=opts.temperature, num_samples=opts.num_samples, seed=opts.seed,
    )
    result["prompts_file"] = str(opts.prompts)
    output_file = Path(opts.output_file) if opts.output_file else Path(opts.policy) / "eval.json"
    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(format_report(result))
    print(f"report: {output_file}")
    return result
