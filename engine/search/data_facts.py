"""The data facts a search is planned with: the task, the rows that train, the rows held out (by the
spec, and in the trials, which evaluate on at most EVAL_ROWS of them)."""

from __future__ import annotations

from dataclasses import dataclass

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.spec import RunSpec

# Held-out rows a trial evaluates on, at most: enough to rank trials, few enough to evaluate at every rung.
EVAL_ROWS = {"classification": 512, "causal_lm": 128}


@dataclass(frozen=True)
class DataFacts:
    task: str
    train_rows: int
    eval_rows: int
    trial_eval_rows: int
    trial_eval_split: float | None  # None: the trials use the spec's own held-out rows


def describe_data(spec: RunSpec) -> DataFacts:
    """The task, and how many rows train and are held out (by the spec, and in the trials)."""
    from adapter_studio.engine.data.examples import held_out_count
    from adapter_studio.engine.data.prepare import survey_data
    from adapter_studio.engine.defaults import task_for

    data = spec.data
    survey = survey_data(data, data.path, limit=data.max_rows)
    task = task_for(spec, survey.format)
    if data.eval_path:
        held = survey_data(data, data.eval_path, survey.format).count
        return DataFacts(task, survey.count, held, held, None)
    held = held_out_count(survey.count, data.eval_split)
    if held == 0:
        raise UserError(
            "the automatic search compares trials on held-out rows, and this data holds none out",
            where="data.eval_split",
            fix="leave data.eval_split empty or set it above 0, or give data.eval_path",
        )
    cap = EVAL_ROWS[task]
    if held <= cap:
        return DataFacts(task, survey.count - held, held, held, None)
    return DataFacts(task, survey.count - held, held, cap, cap / survey.count)
