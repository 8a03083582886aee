"""The `alignkit` command.

    alignkit <stage> --config <yaml> [--key value ...]    run one stage's recipe (pretrain, sft, reward, dpo, ppo)
    alignkit demo [--output_dir outputs/demo] [--seed 0]   the offline demo, every stage on a tiny model
    alignkit eval --policy DIR --reference DIR [--reward_model DIR] --prompts FILE.jsonl
                                                           a policy against its reference: rewards, win rate, KL

`--debug` anywhere shows the full traceback of an error instead of its one-line message.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from alignkit.errors import AlignkitError

STAGES = ("pretrain", "sft", "reward", "dpo", "ppo")


def _fail(error: AlignkitError) -> None:
    print(f"alignkit: error: {error}", file=sys.stderr)
    sys.exit(2)


def run_recipe(stage: str, args: list[str] | None = None, main: Callable | None = None):
    """
    Parse a stage's config strictly and run its recipe's `main` (by default `alignkit.recipes.<stage>.main`,
    imported after the quick checks), reporting user errors in a line, not a traceback.
    """
    from alignkit import preflight

    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        preflight.check(stage, args)  # typos and bad data fail before the ML stack's ~5 s import
        from alignkit.config import STAGE_ARGS, parse_args

        main = main or importlib.import_module(f"alignkit.recipes.{stage}").main
        return main(*parse_args(STAGE_ARGS[stage], args))
    except AlignkitError as e:
        if debug:
            raise
        _fail(e)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    command, rest = argv[0], argv[1:]
    if command in STAGES:
        run_recipe(command, rest)
    elif command == "demo":
        from alignkit.demo.run import main as demo_main

        try:
            demo_main(rest)
        except AlignkitError as e:
            _fail(e)
    elif command == "eval":
        debug = "--debug" in rest
        rest = [a for a in rest if a != "--debug"]
        try:
            from alignkit.evaluation import main as eval_main

            eval_main(rest)
        except AlignkitError as e:
            if debug:
                raise
            _fail(e)
    else:
        print(f"alignkit: unknown command '{command}'; expected one of {', '.join(STAGES + ('demo', 'eval'))}.", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
