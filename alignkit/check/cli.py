"""`alignkit check`: validate a stage config or a pipeline without training, listing every problem at once.

    alignkit check <stage-config.yaml> [--stage sft|...] [--key value ...]
    alignkit check <pipeline.yaml> [--from STAGE] [--set KEY=VALUE ...] [--output_dir DIR]
    alignkit check [...] --accelerate_config <accelerate.yaml>

For each stage it checks, with the same code the run uses: the config's keys and values (`config.parse_args`,
strict), the data set (`data.load_data`: reachable, in the stage's format), the model (folder or adapter and its
base, its config, `trust_remote_code`), the tokenizer and its chat template, for PPO that the reward (and value)
model uses the policy's tokenizer, that `output_dir` holds no earlier run (`outputs.prepare_output_dir`'s rule,
without its side effects), the memory estimate (`alignkit.memory`, when installed), and it previews the first
rows as TRL's trainer tokenises them, trained tokens «in guillemets», counting the rows `max_length` would drop.

The stage is `--stage`, else the file's name or folder (`sft.yaml`, `recipes/<model>/dpo/lora.yaml`), else the
one stage whose keys fit the config (`reward_model_path` is PPO's, `beta` DPO's ...); a file with `stages:` is a
pipeline. In a pipeline, stages `alignkit run` would skip are only parsed, and a model an earlier stage has not
produced yet is checked through the model it starts from (its tokenizer and chat template).

Nothing is written: no output folder, no temporary config (reading a local data file fills the `datasets` cache as
any load does; a Hub data set is streamed, not downloaded). Exits 0 when all is well, 1 with every problem listed,
2 for a usage error.
"""

from __future__ import annotations

import sys
from typing import Any

from alignkit import stages
from alignkit.check.findings import Report
from alignkit.check.pipeline import check_pipeline
from alignkit.check.stage import check_accelerate_config, check_stage, infer_stage
from alignkit.configfile import cli_values, load_yaml
from alignkit.errors import ConfigError


def _split_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """check's own options (path, --stage, --accelerate_config, --set, --output_dir) and the stage overrides."""
    opts: dict[str, Any] = {"path": None, "stage": None, "accelerate_config": None, "set": [], "output_dir": None, "from": None}
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, eq, val = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key in ("stage", "accelerate_config", "set", "from") or (key == "config" and opts["path"] is None):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"--{key} needs a value.")
                i, val = i + 1, argv[i + 1]
            if key == "set":
                opts["set"].append(val)
            else:
                opts["path" if key == "config" else key] = val
        elif not arg.startswith("--") and opts["path"] is None and not rest:
            opts["path"] = arg
        else:
            rest.append(arg)
        i += 1
    return opts, rest


def run_check(argv: list[str]) -> Report:
    """Everything `alignkit check argv` checks, as a report (nothing printed)."""
    opts, rest = _split_argv(argv)
    report = Report()
    if opts["path"] is None and opts["accelerate_config"] is None:
        raise ConfigError("alignkit check needs a stage config or pipeline YAML (or --accelerate_config FILE).")
    if opts["accelerate_config"] is not None:
        problems = check_accelerate_config(opts["accelerate_config"])
        report.problems += problems
        if not problems:
            report.add("accelerate", f"{opts['accelerate_config']}: fits this machine")
    path = opts["path"]
    if path is None:
        return report
    try:
        config = load_yaml(path)
    except ConfigError as e:
        report.problem(e)
        return report
    if "stages" in config:
        output_dir = cli_values(rest).get("output_dir") or opts["output_dir"]
        unknown = [a for a in rest if a.startswith("--") and not a.startswith("--output_dir")]
        if unknown:
            report.problem(f"{unknown[0]}: a pipeline takes --set STAGE.KEY=VALUE (or --set KEY=VALUE) overrides.")
        check_pipeline(path, opts["set"], output_dir, report, opts["from"])
        return report
    if opts["set"]:
        report.problem(f"--set is for pipeline files; {path} is a stage config: pass --key value instead.")
    stage = opts["stage"]
    if stage is not None and stage not in stages.STAGES:
        raise ConfigError(f"--stage {stage}: expected one of {', '.join(stages.names())}.")
    try:
        stage = stage or infer_stage(path, config)
    except ConfigError as e:
        report.problem(e)
        return report
    report.lines.append(f"stage {stage}: {path}")
    check_stage(stage, config, rest, path, report)
    return report


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    report = run_check(argv)
    print("\n".join(["alignkit check", *report.lines]))
    if report.problems:
        count = len(report.problems)
        print(f"alignkit check: {count} problem{'s' * (count != 1)}:", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        sys.exit(1)
    print("alignkit check: no problems found.")
