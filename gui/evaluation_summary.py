"""A run's latest saved evaluation as the Runs page shows it: a headline for the table and a panel with
the scores, forgetting and an Open report button.

Reading is cached per run on the newest results.json's name, size and time, so a refresh of many runs
re-reads only what changed; a run without an `evaluations` folder costs one directory check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path

from adapter_studio.engine.evaluation.metrics import METRIC_TITLES
from adapter_studio.engine.evaluation.report import COLUMN_TITLES, columns_of, metric_names
from PySide6.QtWidgets import QHBoxLayout, QPushButton, QTextBrowser, QVBoxLayout, QWidget

FOLDER_TIME = "%Y%m%d-%H%M%S"  # how report.write_evaluation names each evaluation's folder


@dataclass(frozen=True)
class EvaluationSummary:
    """What the Runs page shows of an evaluation (the per-row answers stay on disk: many runs, little memory)."""

    metrics: dict[str, dict[str, float]]
    forgetting: float | None  # tuned / base loss on general instructions; None when not checked
    checkpoint: str
    task: str
    data: str
    rows: int
    report: Path
    when: str
    count: int  # evaluations saved in the run folder, this one the newest that reads
    classes: str | None = None  # for answers that are classes: the weakest class and the commonest mix-ups
    pairs_ranked: dict[str, float] | None = None  # a preference run: the held-out pairs each model ranks right
    pairs: str | None = None  # ... and the sentence that says the pair scores (engine.evaluation.pairs.summary)

    def first_score(self, column: str) -> float | None:
        """A model's score on the task's first metric (exact match, or accuracy; a preference run's: the
        held-out pairs it ranks right, what it was trained to change), if it was scored."""
        if self.pairs_ranked is not None:
            return self.pairs_ranked.get(column)
        names = metric_names(self.metrics)
        value = (self.metrics.get(column) or {}).get(names[0]) if names else None
        return None if value is None else float(value)

    @property
    def headline(self) -> tuple[str, float] | None:
        """The tuned model's first metric, as text and as the number the table sorts by."""
        value = self.first_score("tuned")
        if value is None:
            return None
        name = "pairs ranked right" if self.pairs_ranked is not None else metric_names(self.metrics)[0]
        return f"{METRIC_TITLES.get(name, name)} {value:.3f}", value


def _saved(run_dir: Path) -> list[Path]:
    """The run's results.json files, newest first (the order latest_evaluation reads them in)."""
    folder = run_dir / "evaluations"
    return sorted(folder.glob("*/results.json"), reverse=True) if folder.is_dir() else []


def _when(folder: Path) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.strptime(folder.name.split("_")[0], FOLDER_TIME))
    except ValueError:  # a folder named by hand says when in its own words, if at all
        return folder.name


class EvaluationSummaries:
    """The latest evaluation of each run, read once and again only when its newest results.json changes."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple[str, int, int, int], EvaluationSummary | None]] = {}

    def of(self, run_dir: Path) -> EvaluationSummary | None:
        saved = _saved(run_dir)
        if not saved:
            self._cache.pop(run_dir, None)
            return None
        try:
            stat = saved[0].stat()
        except OSError:
            return None
        key = (saved[0].parent.name, stat.st_mtime_ns, stat.st_size, len(saved))
        cached = self._cache.get(run_dir)
        if cached is not None and cached[0] == key:
            return cached[1]
        summary = _read(run_dir, len(saved))
        self._cache[run_dir] = (key, summary)
        return summary


def _read(run_dir: Path, count: int) -> EvaluationSummary | None:
    # Deferred: the evaluation package pulls in the data modules, and most windows open on runs never evaluated.
    from adapter_studio.engine.evaluation import pairs, run_eval
    from adapter_studio.engine.evaluation.classes import summary

    result = run_eval.latest_evaluation(run_dir)
    if result is None or result.report is None:
        return None
    p = result.pairs
    return EvaluationSummary(
        metrics=result.metrics, forgetting=None if result.forgetting is None else result.forgetting.ratio,
        checkpoint=result.checkpoint, task=result.task, data=result.data, rows=len(result.rows),
        report=result.report, when=_when(result.report.parent), count=count,
        classes=None if result.classes is None else summary(result.classes),
        pairs_ranked=None if p is None else {"base": p.base["prefers_chosen"], "tuned": p.tuned["prefers_chosen"]},
        pairs=None if p is None else pairs.summary(p).replace("->", "→"),
    )  # fmt: skip


def summary_html(summary: EvaluationSummary) -> str:
    """The heading line, the metric table (one column per model that was scored) and forgetting."""
    columns = columns_of(summary.metrics)
    head = "".join(f"<th align='right'>{COLUMN_TITLES[c]}</th>" for c in columns)
    body = "".join(
        f"<tr><td>{escape(METRIC_TITLES.get(name, name))}</td>"
        + "".join(f"<td align='right'>{summary.metrics[c][name]:.3f}</td>" for c in columns)
        + "</tr>"
        for name in metric_names(summary.metrics)
    )
    forgetting = (
        "forgetting not checked"
        if summary.forgetting is None
        else f"forgetting ratio <b>{summary.forgetting:.3f}</b> (1.0: nothing forgotten; above 1: worse on general "
        "instructions)"
    )
    several = f" · newest of {summary.count} evaluations" if summary.count > 1 else ""
    return (
        f"<b>Evaluated</b> {summary.when}{several} · checkpoint {escape(summary.checkpoint)} · "
        f"{summary.rows} rows of {escape(summary.data)}"
        f"<table cellspacing='0' cellpadding='3'><tr><th align='left'>metric</th>{head}</tr>{body}</table>"
        + (f"{escape(summary.pairs)}<br>" if summary.pairs else "")
        + f"{forgetting}" + (f"<br>{escape(summary.classes)}" if summary.classes else "")
    )


class EvaluationPanel(QWidget):
    """The selected run's latest evaluation, and a button that opens its report."""

    def __init__(self, open_path: Callable[[Path], None]) -> None:
        super().__init__()
        self.open_path = open_path
        self.summary: EvaluationSummary | None = None
        self.text = QTextBrowser()
        self.text.setObjectName("runEvaluation")
        self.open_button = QPushButton("Open report")
        self.open_button.setObjectName("openRunReport")
        self.open_button.setToolTip("Open the evaluation's report.md (table, chart, rows that changed, settings)")
        self.open_button.clicked.connect(self.open_report)
        buttons = QHBoxLayout()
        buttons.addStretch()
        buttons.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.text, 1)
        layout.addLayout(buttons)
        self.show_summary(None, selected=False)

    def show_summary(self, summary: EvaluationSummary | None, *, selected: bool = True) -> None:
        self.summary = summary
        if summary is not None:
            self.text.setHtml(summary_html(summary))
        else:
            hint = "No evaluation yet: score the run on the Evaluate page." if selected else ""
            self.text.setHtml(f"<span style='color:gray'>{hint}</span>")
        self.open_button.setEnabled(summary is not None and summary.report.is_file())

    def open_report(self) -> None:
        if self.summary is not None:
            self.open_path(self.summary.report)
