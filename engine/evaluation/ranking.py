"""Ranking runs by any metric: the training's own (held-out loss, accuracy and exact match from its
evaluations during training) or an evaluation's (the tuned model's scores in the run's newest saved
evaluation, and forgetting). The sweep's table, its CLI and window, and the automatic search's choice of
winner read the same catalogue, so a metric means the same thing everywhere.

An evaluation metric needs the run evaluated (engine.evaluation.run_eval); `evaluate_for_ranking` does
that for the runs that have no usable evaluation yet — on the run's own held-out rows and best checkpoint,
so every run of a sweep is scored on the same rows.

The approaches that train nothing rank beside them (`baseline_rows`): the base model, the in-context
baseline (k training rows in the prompt) for generation and the feature-based one (logistic regression on
frozen features) for classification, read from an evaluation of one of the runs (the base model and the
training rows are the same for every run of a sweep, so one evaluation scores them for all).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.evaluation.metrics import CLASS_METRICS, METRIC_TITLES, TEXT_METRICS

HELD_OUT = "held-out rows of the run"  # EvaluationResult.data when no other file was given


@dataclass(frozen=True)
class Metric:
    name: str  # the sweep table's column
    title: str
    higher_is_better: bool
    evaluated: bool  # comes from a saved evaluation, not from training's own events


TRAINING_METRICS = (
    Metric("best_eval_loss", "best held-out loss", False, False),
    Metric("final_eval_loss", "final held-out loss", False, False),
    Metric("accuracy", "accuracy during training", True, False),
    Metric("exact_match", "exact match during training", True, False),
    Metric("final_loss", "final training loss", False, False),
)
EVALUATION_METRICS = (
    *(Metric(f"tuned_{n}", f"{METRIC_TITLES[n]} (evaluation)", True, True) for n in (*TEXT_METRICS, *CLASS_METRICS)),
    Metric("forgetting", "forgetting (loss ratio on general questions)", False, True),
)
METRICS = {m.name: m for m in (*TRAINING_METRICS, *EVALUATION_METRICS)}
EVALUATION_COLUMNS = (*(m.name for m in EVALUATION_METRICS), "report")


def metric(name: str) -> Metric:
    """The metric called `name` (a sweep column), or a UserError that lists them."""
    key = name.strip().replace("-", "_")
    if key in METRICS:
        return METRICS[key]
    if f"tuned_{key}" in METRICS:  # `exact_match` would be training's; `rouge_l` can only be an evaluation's
        return METRICS[f"tuned_{key}"]
    raise UserError(f"unknown metric '{name}'", where="--rank-by", fix=f"pick one of {', '.join(METRICS)}")


def evaluation_columns(run_dir: str | Path) -> dict[str, Any]:
    """The tuned model's scores, forgetting and the report's path from the run's newest evaluation
    (empty when it has none)."""
    result = _newest(run_dir)
    return {} if result is None else _columns(result)


def _newest(run_dir: str | Path) -> Any:
    """The run's newest evaluation that reads (run_eval.latest_evaluation), or None."""
    from adapter_studio.engine.evaluation.run_eval import latest_evaluation

    if not Path(run_dir, "evaluations").is_dir():  # most runs: no file to read
        return None
    return latest_evaluation(run_dir)


def _columns(result: Any) -> dict[str, Any]:
    columns: dict[str, Any] = {f"tuned_{k}": v for k, v in result.metrics.get("tuned", {}).items()}
    columns["forgetting"] = result.forgetting.ratio if result.forgetting is not None else None
    columns["report"] = str(result.report) if result.report else None
    return {k: v for k, v in columns.items() if k in EVALUATION_COLUMNS}


def rank(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The rows best first by the metric; rows without it keep their order after the others."""
    m = metric(name)
    scored = [r for r in rows if isinstance(r.get(m.name), (int, float))]
    unscored = [r for r in rows if not isinstance(r.get(m.name), (int, float))]
    return sorted(scored, key=lambda r: r[m.name], reverse=m.higher_is_better) + unscored


def needs_evaluation(run_dir: str | Path, name: str) -> bool:
    """Whether ranking this run by the metric needs a (new) evaluation: it has none on its own held-out
    rows, or none with the metric (forgetting is optional in an evaluation)."""
    m = metric(name)
    if not m.evaluated:
        return False
    result = _newest(run_dir)
    return result is None or result.data != HELD_OUT or _columns(result).get(m.name) is None


BASELINES = {  # evaluation column -> the sweep row's method
    "base": "base model (no training)",
    "in_context": "in-context (no training)",
    "features": "feature-based (no training)",
}
IN_CONTEXT_K = 4  # training rows in the in-context baseline's prompt (the Evaluate page's default)


def baseline_rows(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per no-training approach, from the first of the runs whose newest evaluation on its held-out
    rows scored the in-context or feature-based baseline; none when no run has one."""
    for run_dir in run_dirs:
        result = _newest(run_dir)
        if result is None or result.data != HELD_OUT or not (result.metrics.get("in_context") or
                                                              result.metrics.get("features")):  # fmt: skip
            continue
        return [
            {"method": method, "status": "baseline", "trainable_params": 0, "trainable_share": 0.0,
             "adapter_bytes": 0, "train_seconds": 0.0, "note": result.baselines.get(column),
             "report": str(result.report) if result.report else None,
             **{f"tuned_{k}": v for k, v in result.metrics[column].items()}}
            for column, method in BASELINES.items() if result.metrics.get(column)
        ]  # fmt: skip
    return []


def evaluate_for_ranking(
    run_dirs: list[str | Path],
    name: str,
    say: Any = None,
    stop: threading.Event | None = None,
    limit: int | None = None,
    *,
    baselines: bool = False,
) -> list[Path]:
    """Evaluate the completed runs that need it for ranking by `name` (tuned against base; the in-context
    baseline is the same for every run, so it is scored once: in the first evaluation, and only with
    `baselines` when no run has it yet), one after another. Returns the runs evaluated. `say(message)`
    hears about each; a failed evaluation is said and skipped."""
    from adapter_studio.engine.evaluation.run_eval import EvalSettings, EvaluationStopped, evaluate_run
    from adapter_studio.engine.runs import summarize_run

    tell = say or (lambda message: None)
    m = metric(name)
    done: list[Path] = []
    for run_dir in map(Path, run_dirs):
        if stop is not None and stop.is_set():
            break
        if summarize_run(run_dir).status != "completed" or not needs_evaluation(run_dir, m.name):
            continue
        tell(f"evaluating {run_dir.name} to rank by {m.title}")
        k = IN_CONTEXT_K if baselines and not baseline_rows(run_dirs) else 0
        settings = EvalSettings(in_context=k, forgetting=m.name == "forgetting", **({"limit": limit} if limit else {}))
        try:
            evaluate_run(run_dir, settings, stop=stop)
        except EvaluationStopped:
            break
        except UserError as e:
            tell(f"{run_dir.name} could not be evaluated: {e}")
            continue
        done.append(run_dir)
    return done
