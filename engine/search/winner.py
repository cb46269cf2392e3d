"""The automatic search's winner: the best held-out loss among the trials that ran to the end, or the best
of them by another metric (`rank_by`, engine.evaluation.ranking) — evaluated first when it is an
evaluation's. Without finished trials, the best loss among those that got furthest (a search stopped
early still names its best guess)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

from adapter_studio.engine.evaluation.ranking import Metric, evaluate_for_ranking, evaluation_columns, rank
from adapter_studio.engine.search.results import METRIC, TrialRecord

LOSSES = ("best_eval_loss", "final_eval_loss")  # what trials are already compared by


def choose_winner(
    trials: list[TrialRecord], rank_by: Metric | None, say: Callable[..., None], stop: threading.Event
) -> TrialRecord | None:
    scored = [r for r in trials if r.metric is not None]
    pool = [r for r in scored if r.status == "completed"] or [
        r for r in scored if r.examples == max((s.examples for s in scored), default=0)
    ]
    by_loss = min(pool, key=lambda r: r.metric or math.inf) if pool else None
    finished = [r for r in pool if r.status == "completed" and r.run_dir]
    if rank_by is None or rank_by.name in LOSSES or not finished:
        return by_loss
    return _ranked(finished, rank_by, say, stop) or by_loss


def _ranked(
    finished: list[TrialRecord], m: Metric, say: Callable[..., None], stop: threading.Event
) -> TrialRecord | None:
    """The best finished trial by `m` (each trial's `score` is set), or None when none has it."""
    from adapter_studio.engine.runs import summarize_run

    if m.evaluated:
        # The no-training baselines are scored once, on the same rows, to stand beside the trials.
        evaluate_for_ranking([str(r.run_dir) for r in finished], m.name, say, stop, baselines=True)
    rows = []
    for record in finished:
        summary = summarize_run(Path(str(record.run_dir)))
        values = {"accuracy": summary.accuracy, "exact_match": summary.exact_match,
                  **evaluation_columns(str(record.run_dir))}  # fmt: skip
        record.score = values.get(m.name)
        rows.append({"record": record, m.name: record.score})
    ranked = [r for r in rank(rows, m.name) if r[m.name] is not None]
    if not ranked:
        say(f"no finished trial has {m.title}: the winner is the best by {METRIC}", level="warning")
        return None
    say(f"ranked by {m.title}: " + ", ".join(f"trial {r['record'].number} {r[m.name]:.4f}" for r in ranked))
    return ranked[0]["record"]
