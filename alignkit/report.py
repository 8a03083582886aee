"""A pipeline's report: what each stage did to the model, side by side.

After each stage `alignkit run` writes, in the pipeline's `output_dir`:

- `report.json`: `stages.<name>` per stage — its recipe, input (`from`), status, the metrics its run recorded,
  and its evaluation: perplexity before/after for pretraining, pairwise accuracy for a reward model; for every
  policy, the judge's rates (the demo: `gold_correctness`, `gold_politeness`, `gold_concision`, `gold_well_formed`)
  on the same held-out prompts, its reward model score (`rm_score`), the reward model's win rate over the stage it started
  from (`rm_win_rate_vs_previous`) and the per-token KL to it (`kl_to_previous`; `..._sft` too when that stage
  is an SFT stage), a few example answers; PPO adds its score (`reward`) and `kl` per update; with an audit reward
  model (`evaluation.audit_reward_model`), its score of the answers (`audit_rm_score`; per update: `audit_reward`)
  and `overoptimised` (`overoptimisation_of`: the numbers in `overoptimisation` when true); `tracking`: where
  the stage's run logged (`report_to`), as [tracker, TensorBoard folder relative to the report or URL] pairs;
- `report.md`: the same as Markdown — the table, example answers from every stage side by side, the figures, and
  the stages with links to their tracking runs;
- `figures/<stage>.png`: the stage's training curves from its `trainer_state.json`.

Policies are measured with `alignkit.evaluation` (the same generation, judge, reward scoring and KL as
`alignkit eval`). A stage whose run and inputs are unchanged since the last report keeps its evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit import evaluation, tracking
from alignkit.errors import ConfigError
from alignkit.evaluation.judges import judge_columns, load_judge
from alignkit.outputs import RUN_FILE_NAME, read_run, read_saved_config
from alignkit.pipeline import Pipeline, Stage
from alignkit.rewards import describe_overoptimisation, overoptimisation
from alignkit.stages import AUDIT_REWARD, STAGES

JSON_FILE = "report.json"
MARKDOWN_FILE = "report.md"
FIGURES_DIR = "figures"
ONLINE_FIGURE = "online.png"  # the online methods' reward and KL per update, overlaid
STATUS = {"skip": "skipped", "resume": "resumed", "start": "trained", "rerun": "trained"}
# The names the series a stage logs per update (`Stage.series`) get in its report row.
SERIES_NAMES = {"score": "reward", "kl": "kl", "audit_score": "audit_reward", AUDIT_REWARD: "audit_reward"}
# Legend labels of the curves that are not plain log keys: the optimised and the audit reward model side by side.
CURVE_LABELS = {"audit_score": "audit RM", AUDIT_REWARD: "audit RM"}


# ------------------------------------------------------------------------------------------------ evaluating


@dataclass
class Evaluator:
    """The pipeline's `evaluation:` — held-out prompt rows, an optional judge, generation settings."""

    prompts_file: str | None = None
    rows: list[dict] = field(default_factory=list)
    judge: Callable | None = None
    judge_name: str | None = None
    judge_columns: dict[str, str] = field(default_factory=dict)  # the judge's short table headers
    max_new_tokens: int = 64
    batch_size: int = 32
    num_examples: int = 3
    fingerprint: str = ""

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> Evaluator:
        settings = pipeline.evaluation
        if "prompts" not in settings:  # nothing to evaluate on (an audit reward model alone is logged in training)
            return cls()
        prompts = pipeline.substitute(str(settings["prompts"]))
        judge_name = settings.get("judge")
        try:
            judge = load_judge(judge_name) if judge_name else None
        except ConfigError as e:
            raise pipeline.error(None, f"evaluation.{e}".rstrip("."), "See alignkit.evaluation.judges") from None
        evaluator = cls(
            prompts_file=prompts,
            rows=evaluation.load_prompts(prompts),
            judge=judge,
            judge_name=judge_name,
            judge_columns=judge_columns(judge),
            max_new_tokens=settings.get("max_new_tokens", 64),
            batch_size=settings.get("batch_size", 32),
            num_examples=settings.get("num_examples", 3),
        )
        settings_text = json.dumps([judge_name, evaluator.max_new_tokens, evaluator.num_examples])
        evaluator.fingerprint = _digest(Path(prompts).read_bytes(), settings_text.encode())
        return evaluator


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _run_text(stage_dir: Path | None) -> bytes:
    path = stage_dir / RUN_FILE_NAME if stage_dir is not None else None
    return path.read_bytes() if path is not None and path.is_file() else b""


def _history(stage_dir: Path) -> list[dict]:
    path = stage_dir / "trainer_state.json"
    return json.loads(path.read_text(encoding="utf-8"))["log_history"] if path.is_file() else []


def reward_model_for(pipeline: Pipeline, stage: Stage) -> str | None:
    """The reward stage that scores a policy's answers: its own `reward_model`, else the last reward stage before it."""
    own = stage.inputs.get("reward_model")
    if own in pipeline.stages:
        return own
    names = list(pipeline.stages)
    earlier = [n for n in names[: names.index(stage.name)]
               if pipeline.stages[n].spec.is_reward_model and n != pipeline.audit_stage]
    return earlier[-1] if earlier else None


def audit_reward_model_for(pipeline: Pipeline, stage: Stage) -> str | None:
    """The audit reward stage (`evaluation.audit_reward_model`) when it runs before `stage`, else None."""
    audit, names = pipeline.audit_stage, list(pipeline.stages)
    return audit if audit in pipeline.stages and names.index(audit) < names.index(stage.name) else None


def _score_std(pipeline: Pipeline, reward_stage: str | None) -> float:
    """The std of a reward stage's scores on its held-out pairs (its raw scores' scale), 1.0 when not recorded."""
    stats = (read_run(pipeline.stage_dir(reward_stage)) or {}).get("reward_stats") or {} if reward_stage else {}
    return float(stats.get("std") or 1.0)


def overoptimisation_of(pipeline: Pipeline, stage: Stage, row: Mapping) -> tuple[bool, dict | None]:
    """
    `alignkit.rewards.overoptimisation` for a policy's row, on the two kinds of evidence there may be: its per-update
    log (online RL: the optimised reward model's score against the audit one's, on its training prompts) and the
    held-out prompts, from the stage it started from to it (`previous_rm_score` -> `rm_score` against the audit
    scores). Either finding flags the stage: a policy can drift on one set of prompts and not the other. Raw scores
    are compared in units of each reward model's score std; GRPO/RLOO log normalised ones (`normalize_reward`, the
    default). Returns (whether there was anything to check, the first finding or None).
    """
    audit = audit_reward_model_for(pipeline, stage)
    if audit is None:
        return False, None
    scales = (_score_std(pipeline, reward_model_for(pipeline, stage)), _score_std(pipeline, audit))
    checked, findings = False, []
    if row.get("audit_reward"):
        logged_scales = scales
        if stage.recipe in ("grpo", "rloo") and (read_saved_config(pipeline.stage_dir(stage.name)) or {}).get(
                "normalize_reward", True):
            logged_scales = (1.0, 1.0)
        checked = True
        findings.append((overoptimisation(row.get("reward") or [], row["audit_reward"], scales=logged_scales), "updates"))
    pairs = [row.get(k) for k in ("previous_rm_score", "rm_score", "previous_audit_rm_score", "audit_rm_score")]
    if all(v is not None for v in pairs):
        checked = True
        findings.append((overoptimisation(pairs[:2], pairs[2:], scales=scales), "held-out prompts"))
    found = next(({**f, "over": over} for f, over in findings if f), None)
    return checked, found


def stage_row(pipeline: Pipeline, stage: Stage, action: str, seconds: float | None, evaluator: Evaluator,
              cached: Mapping | None = None) -> dict:
    """A stage's row of the report; the cached row's evaluation when the stage and its inputs are unchanged."""
    spec = stage.spec
    out = pipeline.stage_dir(stage.name)
    previous = pipeline.previous(stage)
    evaluated = bool(evaluator.rows) and spec.is_policy and stage.evaluate  # its answers to the held-out prompts
    reward_model = reward_model_for(pipeline, stage) if evaluated else None
    audit = audit_reward_model_for(pipeline, stage) if spec.is_policy else None
    key = _digest(
        stage.recipe.encode(), _run_text(out), evaluator.fingerprint.encode(),
        *(name.encode() + _run_text(pipeline.stage_dir(name)) for name in (previous, reward_model) if name),
        *((b"audit:" + audit.encode() + _run_text(pipeline.stage_dir(audit)),) if audit else ()),
        *((b"evaluate: false",) if not stage.evaluate else ()),
    )
    status = {"status": STATUS[action], "train_seconds": seconds if seconds is not None else (cached or {}).get("train_seconds")}
    if cached is not None and cached.get("evaluation_key") == key and "judged" in cached:
        return _flag_overoptimisation(pipeline, stage, {**cached, **status})  # the rule may be newer than the row

    record = read_run(out) or {}
    row: dict[str, Any] = {
        "recipe": stage.recipe,
        "from": stage.inputs.get("model"),
        "reward_model": reward_model,
        **({"audit_reward_model": audit} if audit else {}),
        "output_dir": str(out),
        **status,
        "metrics": record.get("metrics", {}),
        # Each tracking run (`report_to`): a TensorBoard folder relative to the report, or a URL.
        "tracking": [list(link) for link in tracking.links(record.get("tracking"), out, Path(pipeline.output_dir))],
    }
    history = _history(out)
    if spec.data_format == "pretrain":  # raw text: perplexity before and after says what was learned
        losses = [h for h in history if "eval_loss" in h]
        if losses and losses[0]["step"] == 0:  # `eval_on_start`: the model before training
            row["perplexity_before"] = math.exp(min(losses[0]["eval_loss"], 50.0))
        if "perplexity" in row["metrics"]:
            row["perplexity_after"] = row["metrics"]["perplexity"]
    row.update(record.get("report", {}))  # what a stage asks the report to show (AI feedback: gold_agreement)
    if not spec.is_policy and "reward_stats" in record:
        stats = record["reward_stats"]  # exact pairwise accuracy on the held-out pairs
        row.update(eval_accuracy=stats["accuracy"], eval_margin=stats["margin"], prefers_longer=stats["prefers_longer"])
    if evaluated:
        previous_dir = pipeline.stage_dir(previous) if previous else None
        rm_dir = pipeline.stage_dir(reward_model) if reward_model else None
        audit_dir = pipeline.stage_dir(audit) if audit else None
        row.update(evaluate(out, previous_dir, rm_dir, evaluator, audit_dir))
        if previous and pipeline.stages[previous].recipe == "sft":  # the demo's names: against the SFT model
            row.update(kl_to_sft=row["kl_to_previous"], rm_win_rate_vs_sft=row["rm_win_rate_vs_previous"],
                       sft_rm_score=row["previous_rm_score"])
    for logged in spec.series:  # per update (online RL): the reward model's score rises while KL stays bounded
        if logged not in CURVE_LABELS or any(logged in h for h in history):  # no empty audit series without one
            row[SERIES_NAMES.get(logged, logged)] = [h[logged] for h in history if logged in h]
    row["evaluation_key"] = key
    return _flag_overoptimisation(pipeline, stage, row)


def _flag_overoptimisation(pipeline: Pipeline, stage: Stage, row: dict) -> dict:
    """`overoptimised` (and the finding, `overoptimisation`) in a policy's row; absent when there was nothing to
    compare (no audit reward model, no prompts, no log)."""
    row.pop("overoptimised", None), row.pop("overoptimisation", None)
    checked, found = overoptimisation_of(pipeline, stage, row) if stage.spec.is_policy else (False, None)
    if checked:
        row["overoptimised"] = found is not None
        if found:
            row["overoptimisation"] = found
    return row


def evaluate(policy: Path, previous: Path | None, reward_model: Path | None, evaluator: Evaluator,
             audit_reward_model: Path | None = None) -> dict:
    """
    A policy's answers to the held-out prompts: judge rates, RM score (and the audit reward model's), and against
    `previous` win rate and KL.
    """
    settings = dict(max_new_tokens=evaluator.max_new_tokens, batch_size=evaluator.batch_size)
    if previous is not None:
        result = evaluation.evaluate_policy(
            policy, previous, evaluator.rows, reward_model, audit_reward_model=audit_reward_model,
            judge=evaluator.judge, num_examples=evaluator.num_examples, **settings,
        )
        mine, theirs = result["policy"], result["reference"]
        row = {k: v for k, v in mine.items() if k not in ("path", "reward_mean", "answer_tokens_mean", "audit_reward_mean")}
        row["judged"] = list(row)  # the judge's metrics: the table's judge columns
        row.update(
            rm_score=mine["reward_mean"],
            previous_rm_score=theirs["reward_mean"],
            rm_win_rate_vs_previous=result["win_rate"],
            kl_to_previous=result["kl_per_token"],
            answer_tokens_mean=mine["answer_tokens_mean"],
            **({"audit_rm_score": mine["audit_reward_mean"], "previous_audit_rm_score": theirs["audit_reward_mean"]}
               if audit_reward_model is not None else {}),
            examples=[
                {"question": ex["prompt"][-1]["content"], "answer": ex["policy"], "previous_answer": ex["reference"]}
                for ex in result["examples"]
            ],
        )
        return row
    # Nothing earlier to compare with (a stage trained from the base): its answers alone.
    model, tokenizer = evaluation.load_for_inference(policy)
    conversations = [evaluation.prompt_conversation(r) for r in evaluator.rows]
    answers = evaluation.generate(model, tokenizer, conversations, settings["max_new_tokens"], settings["batch_size"])
    row = evaluation.judge_rates(evaluator.judge, evaluator.rows, answers) if evaluator.judge else {}
    row["judged"] = list(row)
    row["rm_score"] = None
    for key, folder in (("rm_score", reward_model), ("audit_rm_score", audit_reward_model)):
        if folder is not None:
            rm, rm_tokenizer = evaluation.load_reward_model(folder)
            scores = evaluation.reward_scores(rm, rm_tokenizer, conversations, answers, settings["batch_size"])
            row[key] = sum(scores) / len(scores)
    row["examples"] = [
        {"question": c[-1]["content"], "answer": a} for c, a in zip(conversations[: evaluator.num_examples], answers)
    ]
    return row


# ------------------------------------------------------------------------------------------------- writing


def load_rows(output_dir: str | Path) -> dict[str, dict]:
    """The stage rows of the report an earlier run left in `output_dir` (empty when there is none)."""
    path = Path(output_dir) / JSON_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("stages", {}))
    except (json.JSONDecodeError, AttributeError):
        return {}  # a damaged report is rebuilt


def _fill_rm_scores(stages: dict[str, dict]) -> None:
    """A policy evaluated before a reward model (or the audit one) existed gets the score a later stage's evaluation
    gave it."""
    for key, earlier in (("rm_score", "previous_rm_score"), ("audit_rm_score", "previous_audit_rm_score")):
        for name, row in stages.items():
            if not STAGES[row["recipe"]].is_policy or (row.get(key) is not None and f"{key}_from" not in row):
                continue
            later = [(n, r) for n, r in stages.items() if r.get("from") == name and r.get(earlier) is not None]
            if later:
                row[key], row[f"{key}_from"] = later[0][1][earlier], later[0][0]


def write_report(
    pipeline: Pipeline, rows: Mapping[str, dict], wall_seconds: float, judge_columns: Mapping[str, str] | None = None
) -> dict:
    """
    Write report.json, report.md and the figures for the stages in `rows`; returns the report. `judge_columns` are
    the judge's short table headers by metric name (`judges.judge_columns`).
    """
    out = Path(pipeline.output_dir)
    stages = {name: dict(rows[name]) for name in pipeline.stages if name in rows}
    _fill_rm_scores(stages)
    for name, figure in write_figures(pipeline, stages).items():
        stages[name]["figure"] = figure
    online = plot_online(stages, out / FIGURES_DIR / ONLINE_FIGURE)
    report = {
        "pipeline": str(pipeline.path),
        "output_dir": str(out),
        "setup": dict(pipeline.variables),
        "evaluation": {k: pipeline.substitute(v) for k, v in pipeline.evaluation.items()},
        "judge_columns": dict(judge_columns or {}),
        "stages": stages,
        **({"online_figure": f"{FIGURES_DIR}/{ONLINE_FIGURE}"} if online else {}),
        "wall_seconds": round(wall_seconds, 1),
    }
    (out / JSON_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / MARKDOWN_FILE).write_text(format_markdown(report), encoding="utf-8")
    return report


def write_figures(pipeline: Pipeline, stages: Mapping[str, dict]) -> dict[str, str]:
    """`figures/<stage>.png` for every stage with a training log, redrawn only when the log is newer."""
    figures = {}
    for name, row in stages.items():
        state = pipeline.stage_dir(name) / "trainer_state.json"
        if not state.is_file():
            continue
        target = Path(pipeline.output_dir) / FIGURES_DIR / f"{name}.png"
        stale = not target.is_file() or target.stat().st_mtime < state.stat().st_mtime
        if stale and not plot_curves(name, row["recipe"], _history(state.parent), target):
            continue
        figures[name] = f"{FIGURES_DIR}/{name}.png"
    return figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, target: Path) -> None:
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    plt.close(fig)


def plot_curves(name: str, recipe: str, history: list[dict], target: Path) -> bool:
    """Draw the stage's training curves (one panel per quantity) into `target`; False when nothing was logged."""
    spec = STAGES[recipe]
    panels = [(title, [k for k in keys if any(k in h for h in history)]) for title, keys in spec.curves]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return False
    plt = _pyplot()

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    x_label = spec.curve_x
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(h.get("step", h.get("update")), h[key]) for h in history if key in h]
            ax.plot(*zip(*points), marker="o" if len(points) < 4 else None, markersize=3, label=CURVE_LABELS.get(key, key))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x_label, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)  # the values themselves, not "+6.674" and offsets
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(f"{name} ({recipe})", fontsize=11)
    _save(plt, fig, target)
    return True


def plot_online(stages: Mapping[str, dict], target: Path) -> bool:
    """
    The online methods (PPO, GRPO, RLOO: the stages with a per-update reward series) side by side in `target`: the
    reward each optimised and its KL to the reference, over the fraction of its training done (their updates differ
    in size); the audit reward model's reward dashed in the same colour. False (and no file) with fewer than two.
    """
    online = {name: row for name, row in stages.items() if len(row.get("reward") or []) > 1 and row.get("kl")}
    if len(online) < 2:
        target.unlink(missing_ok=True)  # no stale figure of an earlier run
        return False
    plt = _pyplot()

    fig, (reward_ax, kl_ax) = plt.subplots(1, 2, figsize=(8, 3))
    progress = lambda values: [(i + 1) / len(values) for i in range(len(values))]  # noqa: E731
    for name, row in online.items():
        (line,) = reward_ax.plot(progress(row["reward"]), row["reward"], label=f"{name} ({row['recipe']})")
        if row.get("audit_reward"):
            reward_ax.plot(progress(row["audit_reward"]), row["audit_reward"], linestyle="--", color=line.get_color(),
                           label=f"{name}: audit RM")
        kl_ax.plot(progress(row["kl"]), row["kl"], color=line.get_color(), label=name)
    reward_ax.set_title("reward (as each method logs it)", fontsize=10)
    kl_ax.set_title("KL to reference", fontsize=10)
    for ax in (reward_ax, kl_ax):
        ax.set_xlabel("fraction of training", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    _save(plt, fig, target)
    return True


# ------------------------------------------------------------------------------------------------ the table


def _number(value, digits: int = 2) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return f"{0.0 if abs(value) < 0.5 * 10**-digits else value:.{digits}f}"  # never "-0.00"


def _perplexity(row: dict) -> str | None:
    if row.get("perplexity_after") is None:
        return None
    before = row.get("perplexity_before")
    return f"{before:.0f} -> {row['perplexity_after']:.2f}" if before is not None else f"{row['perplexity_after']:.2f}"


def columns(report: Mapping) -> list[tuple[str, Callable[[dict], str | None]]]:
    """The table's columns that hold a value for at least one stage: (header, cell of a row)."""
    stages, headers = report["stages"], report.get("judge_columns") or {}
    judged = list(dict.fromkeys(k for r in stages.values() for k in r.get("judged", ())))
    candidates = [
        ("from", lambda r: r.get("from")),
        ("perplexity", _perplexity),
        ("RM acc", lambda r: _number(r.get("eval_accuracy"))),
        # AI feedback's labels against the judge: those the output keeps, and all of them (a feedback model that kept
        # only the pairs it is sure of could agree on few pairs and abstain on the rest; this shows it)
        ("AI agree", lambda r: _number(r.get("gold_agreement"))),
        ("AI all", lambda r: _number(r.get("gold_agreement_all"))),
        *((headers.get(k, k), lambda r, k=k: _number(r.get(k))) for k in judged),
        ("RM score", lambda r: _number(r.get("rm_score"))),
        ("audit RM", lambda r: _number(r.get("audit_rm_score"))),
        ("RM win", lambda r: _number(r.get("rm_win_rate_vs_previous"))),
        ("KL", lambda r: _number(r.get("kl_to_previous"))),
    ]
    return [(h, cell) for h, cell in candidates if any(cell(r) is not None for r in stages.values())]


def format_table(report: Mapping) -> str:
    """The compact terminal table: a row per stage, one example answer per policy, the wall time."""
    stages = report["stages"]
    cols = columns(report)
    cells = {name: [cell(row) or "" for _, cell in cols] for name, row in stages.items()}
    name_width = max([len("stage"), *map(len, stages)]) + 2
    widths = [max([len(h), *(len(c[i]) for c in cells.values())]) + 2 for i, (h, _) in enumerate(cols)]
    lines = [f"{'stage':<{name_width}}" + "".join(f"{h:>{w}}" for (h, _), w in zip(cols, widths))]
    lines += [f"{name:<{name_width}}" + "".join(f"{c:>{w}}" for c, w in zip(row, widths)) for name, row in cells.items()]
    # One question, answered by every stage: the one whose answers differ most, where the stages' effects show.
    answers = {name: {ex["question"]: ex["answer"] for ex in row.get("examples", [])} for name, row in stages.items()}
    questions = list(dict.fromkeys(q for by_question in answers.values() for q in by_question))
    if questions:
        question = max(questions, key=lambda q: len({a[q] for a in answers.values() if q in a}))
        for name, by_question in answers.items():
            if question in by_question:
                answer = by_question[question]
                answer = answer if len(answer) <= 80 else answer[:79] + "…"  # report.md has it whole
                lines.append(f"{name:<{name_width}}Q: {question}  A: {answer}")
    if any(r.get("rm_win_rate_vs_previous") is not None or r.get("kl_to_previous") is not None for r in stages.values()):
        lines.append("RM win, KL: the reward model's win rate over, and the per-token KL to, the stage in `from`")
    if any(r.get("audit_rm_score") is not None for r in stages.values()):
        lines.append("audit RM: the score of a second reward model, trained apart and never optimised against")
    lines += overoptimisation_warnings(report)
    lines.append(f"total {report['wall_seconds']:.0f} s")
    return "\n".join(lines)


def overoptimisation_warnings(report: Mapping) -> list[str]:
    """One warning line per stage whose row is flagged `overoptimised`, naming both reward models' numbers."""
    return [f"warning: {name}: {describe_overoptimisation(row['overoptimisation'])} (over its {row['overoptimisation']['over']})"
            for name, row in report["stages"].items() if row.get("overoptimised") and row.get("overoptimisation")]


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_markdown(report: Mapping) -> str:
    """report.md: the table, example answers from every stage side by side, the training curves, the lineage."""
    stages = report["stages"]
    cols = columns(report)
    evaluation = report.get("evaluation") or {}
    lines = [
        f"# Pipeline report: `{report['pipeline']}`",
        "",
        f"{len(stages)} stages, written to `{report['output_dir']}`; this run took {report['wall_seconds']:.0f} s.",
        "",
        "## Evaluation",
        "",
    ]
    if evaluation:
        judge = f", judged by `{evaluation['judge']}`" if evaluation.get("judge") else ""
        lines += [
            f"Every policy answers the same held-out prompts (`{evaluation['prompts']}`, greedy, at most "
            f"{evaluation.get('max_new_tokens', 64)} new tokens){judge}. *RM score*: the mean score the reward model "
            "gives the answers; *RM win*: how often it prefers them to the answers of the stage in *from*; *KL*: "
            "the mean per-token KL divergence from that stage, in nats."
            + (f" *audit RM*: the mean score of `{evaluation['audit_reward_model']}`, a second reward model trained "
               "apart and never optimised against: when RM score rises while it falls, the policy is exploiting the "
               "first one (over-optimisation)." if evaluation.get("audit_reward_model") else ""),
            "",
        ]
    lines.append("| stage | " + " | ".join(h for h, _ in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for name, row in stages.items():
        lines.append(f"| {name} | " + " | ".join(_md(cell(row) or "") for _, cell in cols) + " |")
    warnings = overoptimisation_warnings(report)
    if warnings:
        lines += ["", *(f"**{_md(w)}**" for w in warnings)]

    questions = list(dict.fromkeys(ex["question"] for r in stages.values() for ex in r.get("examples", [])))
    if questions:
        lines += ["", "## Example answers", ""]
        for question in questions:
            lines += [f"**{_md(question)}**", "", "| stage | answer |", "|---|---|"]
            for name, row in stages.items():
                for ex in row.get("examples", []):
                    if ex["question"] == question:
                        lines.append(f"| {name} | {_md(ex['answer']) or '*(empty)*'} |")
            lines.append("")

    if report.get("online_figure"):
        lines += ["## Online methods side by side", "", f"![reward and KL per update]({report['online_figure']})", ""]
    figures = [(name, row["figure"]) for name, row in stages.items() if row.get("figure")]
    if figures:
        lines += ["## Training curves", ""]
        for name, figure in figures:
            lines += [f"### {name}", "", f"![{name} training curves]({figure})", ""]

    tracked = any(row.get("tracking") for row in stages.values())  # a column only when some stage logged somewhere
    header = "| stage | recipe | from | reward model | status | training time |" + (" tracking |" if tracked else "")
    lines += ["## Stages", "", header, "|---|---|---|---|---|---|" + ("---|" if tracked else "")]
    for name, row in stages.items():
        seconds = f"{row['train_seconds']:.0f} s" if row.get("train_seconds") is not None else ""
        runs = ", ".join(f"[{label}]({target.replace(' ', '%20')})" for label, target in row.get("tracking") or [])
        lines.append(
            f"| {name} | {row['recipe']} | {_md(row.get('from') or '')} | {_md(row.get('reward_model') or '')} | "
            f"{row['status']} | {seconds} |" + (f" {runs} |" if tracked else "")
        )
    return "\n".join(lines) + "\n"
