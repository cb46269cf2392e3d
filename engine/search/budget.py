"""The search's clock: reading a budget ("20m"), timing runs from their events, and sizing the rungs.

Successive halving compares trials after `first` training examples, keeps the best 1/factor of them
for `first * factor` examples, and so on `count` times; a trial that survives every rung trains
`first * factor**count` examples. Hyperband hedges that bet: each trial falls in one of `count + 1`
brackets, and bracket b compares its trials first at rung b, so a method that starts slowly but ends
best (full fine-tuning of a classifier, say) is not always cut at the first rung. The sizes are picked
so that about eight trials fit the search's share of the budget, measured on this machine by a short
probe run.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from dataclasses import dataclass
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Checkpoint, Eval, Event, Metrics, Stage, Started

MIN_BUDGET_S = 10.0
MAX_BUDGET_S = 7 * 24 * 3600.0
BUDGET_FORMS = "a number with a unit: 90s, 20m, 1h, 1h30m or 1.5h"
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(sec|min|hr|s|m|h)")
# The search's share of the budget: ~60 %, more when the winner's full run is known to be short.
SEARCH_SHARE = 0.6
MAX_SEARCH_SHARE = 0.85


def parse_budget(text: str) -> float:
    """Seconds in a budget such as `90s`, `20m`, `1h` or `1h30m`; a UserError that shows the forms."""
    cleaned = text.strip().lower()
    if not re.fullmatch(rf"(\s*{_PART.pattern})+", cleaned):
        hint = " (a bare number is ambiguous: say 90s or 20m)" if re.fullmatch(r"\d+(\.\d+)?", cleaned) else ""
        raise UserError(f"'{text}' is not a budget{hint}", where="--budget", fix=f"write it as {BUDGET_FORMS}")
    seconds = sum(float(p.group(1)) * _UNITS[p.group(2)] for p in _PART.finditer(cleaned))
    if seconds < MIN_BUDGET_S:
        raise UserError(
            f"a budget of {seconds:g} s leaves no time to train",
            where="--budget",
            fix=f"give at least {MIN_BUDGET_S:.0f}s",
        )
    if seconds > MAX_BUDGET_S:
        raise UserError(f"a budget of {text} is more than a week", where="--budget", fix="give at most 168h")
    return seconds


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@dataclass(frozen=True)
class RunTiming:
    """What one run cost, read off its events: starting (loading, tokenising), a step, an evaluation, a save."""

    overhead_s: float
    step_s: float
    eval_s: float
    save_s: float
    steps: int

    @classmethod
    def from_events(cls, events: list[Event]) -> RunTiming:
        first = events[0].time if events else 0.0
        started = next((e.time for e in events if isinstance(e, Started)), first)
        elapsed = [e.elapsed_s for e in events if isinstance(e, Metrics)]
        deltas = [b - a for a, b in itertools.pairwise(elapsed)]
        # The first steps pay for warming up (allocations, kernel choice): leave them out when there are more.
        step_s = statistics.median(deltas[2:] or deltas) if deltas else (elapsed[0] if elapsed else 0.0)
        return cls(
            overhead_s=max(0.0, started - first),
            step_s=step_s,
            eval_s=_mean_span(events, "evaluating", Eval),
            save_s=_mean_span(events, "saving", Checkpoint),
            steps=len(elapsed),
        )


def _mean_span(events: list[Event], stage: str, until: type[Event]) -> float:
    """Mean seconds from a `stage` event to the next event of type `until`."""
    spans, begun = [], None
    for event in events:
        if isinstance(event, Stage) and event.stage == stage:
            begun = event.time
        elif isinstance(event, until) and begun is not None:
            spans.append(event.time - begun)
            begun = None
    return statistics.mean(spans) if spans else 0.0


@dataclass(frozen=True)
class Rungs:
    """The pruner's schedule in training examples (optuna's min_resource, reduction_factor and
    max_resource = `full`); `hyperband` False is plain successive halving (every trial in bracket 0)."""

    first: int
    factor: int = 3
    count: int = 2
    hyperband: bool = True

    def pruner(self) -> Any:
        import optuna

        if self.hyperband and self.count > 0:
            return optuna.pruners.HyperbandPruner(
                min_resource=self.first, max_resource=self.full, reduction_factor=self.factor)
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.first, reduction_factor=self.factor, min_early_stopping_rate=0)

    @property
    def full(self) -> int:
        """Examples a trial that survives every rung trains."""
        return self.first * self.factor**self.count


def bracket_shares(factor: int, count: int) -> list[float]:
    """The share of trials in each Hyperband bracket, as optuna allots them (most in the eager bracket 0)."""
    brackets = count + 1
    weights = [math.ceil(brackets * factor ** (brackets - 1 - b) / (brackets - b)) for b in range(brackets)]
    return [w / sum(weights) for w in weights]


def expected_segments(factor: int, count: int, trials: int, *, hyperband: bool = True) -> float:
    """Stretches of `first` examples (each followed by an evaluation) that `trials` trials train in all:
    the first runs to the end (nothing to compare with); a later one in bracket b trains to rung b
    unjudged, then reaches each further rung with chance 1/factor per rung."""

    def after_first(b: int) -> float:
        return factor**b + sum((factor**k - factor ** (k - 1)) * factor ** -(k - b) for k in range(b + 1, count + 1))

    shares = bracket_shares(factor, count) if hyperband else [1.0] + [0.0] * count
    later = sum(share * after_first(b) for b, share in enumerate(shares))
    return factor**count + (trials - 1) * later


def plan_rungs(
    search_s: float,
    *,
    overhead_s: float,
    example_s: float,
    eval_s: float,
    final_examples: int,
    quantum: int,
    factor: int = 3,
    hyperband: bool = True,
) -> Rungs | None:
    """The rungs that let about eight trials (fewer on a tight budget) fit `search_s` seconds; None when
    not even three trials of two steps each at the largest batch size would.

    `example_s` is the training time per example, `eval_s` one evaluation, `overhead_s` a run's start;
    no trial trains more than the final run will (`final_examples`); `first` is a multiple of `quantum`
    (every batch size tried divides it, so the rungs fall on steps)."""
    for count, trials in ((2, 8), (1, 8), (1, 5), (1, 3)):
        segment = (search_s - trials * overhead_s) / expected_segments(factor, count, trials, hyperband=hyperband)
        first = (segment - eval_s) / max(example_s, 1e-9)
        first = min(first, final_examples / factor**count)
        first = math.floor(first / quantum) * quantum
        if first >= 2 * quantum:
            return Rungs(int(first), factor, count, hyperband)
    return None  # not even three short trials fit: no search


def search_seconds(budget_s: float, final_estimate_s: float) -> float:
    """The search's share: ~60 % of the budget, up to 85 % when the winner's full run needs little."""
    return min(MAX_SEARCH_SHARE * budget_s, max(SEARCH_SHARE * budget_s, budget_s - 1.5 * final_estimate_s))
