"""The evaluation's report in the run folder: `evaluations/<time>/report.md` (the table, the bar chart,
forgetting, the rows that changed most, the settings), `chart.svg` and `results.json` beside it.
"""

from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine import durable
from adapter_studio.engine.evaluation.classes import ClassScores
from adapter_studio.engine.evaluation.metrics import METRIC_TITLES
from adapter_studio.engine.evaluation.pairs import PAIR_METRICS

if TYPE_CHECKING:
    from adapter_studio.engine.evaluation.run_eval import EvaluationResult

COLUMN_TITLES = {"base": "base", "tuned": "tuned", "in_context": "in-context", "features": "features"}
COLOURS = {"base": "#9e9e9e", "tuned": "#1e88e5", "in_context": "#fb8c00", "features": "#43a047"}
ROWS_SHOWN = 20
MATRIX_LABELS = 12  # a confusion matrix of more labels is unreadable in a report: its commonest mix-ups instead


def columns_of(metrics: dict[str, dict[str, float]]) -> list[str]:
    """The columns that have scores, in the table's order."""
    return [c for c in ("base", "in_context", "features", "tuned") if metrics.get(c)]


def metric_names(metrics: dict[str, dict[str, float]]) -> list[str]:
    return list(next((v for v in metrics.values() if v), {}))


def write_evaluation(result: EvaluationResult) -> Path:
    """Write report.md, chart.svg and results.json into a new folder of the run's `evaluations/`."""
    folder = result.run_dir / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while folder.exists():  # two evaluations in one second keep apart
        n += 1
        folder = folder.with_name(f"{folder.name.split('_')[0]}_{n}")
    folder.mkdir(parents=True)
    (folder / "chart.svg").write_text(bar_chart_svg(result.metrics), encoding="utf-8")
    report = folder / "report.md"
    result.report = report
    durable.write_text(folder / "results.json", json.dumps(result.to_json(), indent=1))
    durable.write_text(report, markdown(result))
    return report


def bar_chart_svg(metrics: dict[str, dict[str, float]], width: int = 640, height: int = 260) -> str:
    """Grouped bars: one group per metric, one bar per model, every score from 0 to 1."""
    columns, names = columns_of(metrics), metric_names(metrics)
    left, bottom, top = 40, 40, 30
    plot_h = height - bottom - top
    group = (width - left - 10) / max(len(names), 1)
    bar = group * 0.8 / max(len(columns), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']  # fmt: skip
    for tick in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.1f}</text>')  # fmt: skip
    for g, name in enumerate(names):
        x0 = left + g * group + group * 0.1
        for b, column in enumerate(columns):
            value = max(0.0, min(1.0, metrics[column].get(name, 0.0)))
            h = plot_h * value
            parts.append(f'<rect x="{x0 + b * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar * 0.9:.1f}" '
                         f'height="{h:.1f}" fill="{COLOURS[column]}"><title>{COLUMN_TITLES[column]} {escape(name)} '
                         f'{value:.3f}</title></rect>')  # fmt: skip
        parts.append(f'<text x="{x0 + group * 0.4:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                     f"{escape(METRIC_TITLES.get(name, name))}</text>")  # fmt: skip
    for i, column in enumerate(columns):
        x = left + i * 110
        parts.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{COLOURS[column]}"/>'
                     f'<text x="{x + 16}" y="18">{COLUMN_TITLES[column]}</text>')  # fmt: skip
    return "\n".join([*parts, "</svg>"]) + "\n"


def _cell(text: str, limit: int = 80) -> str:
    flat = " ".join(str(text).split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return flat.replace("|", "\\|") or "∅"


def metrics_table(metrics: dict[str, dict[str, float]]) -> list[str]:
    columns = columns_of(metrics)
    lines = ["| metric | " + " | ".join(COLUMN_TITLES[c] for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]  # fmt: skip
    for name in metric_names(metrics):
        lines.append(f"| {METRIC_TITLES.get(name, name)} | "
                     + " | ".join(f"{metrics[c][name]:.3f}" for c in columns) + " |")  # fmt: skip
    return lines


def markdown(result: EvaluationResult) -> str:
    """The report: what was evaluated, the table and chart, forgetting, the rows that changed, the settings."""
    s = result.settings
    answered = result.rows[0]["answers"] if result.rows else {}
    columns = [c for c in ("base", "in_context", "features", "tuned") if c in answered]
    lines: list[str] = [
        f"# Evaluation of {result.run_dir.name}", "",
        f"- checkpoint: `{result.checkpoint}`", f"- rows: {len(result.rows)} from {result.data}",
        f"- task: {result.task}" + (f"; answer extracted with `{s.extract}`" if s.extract else ""),
        *(f"- {COLUMN_TITLES.get(k, k)}: {v}" for k, v in result.baselines.items()), "",
        "## Scores", "", "All scores are fractions from 0 to 1 (chrF and BLEU: sacrebleu's score / 100).", "",
        *metrics_table(result.metrics), "", "![scores](chart.svg)", "",
    ]  # fmt: skip
    if result.forgetting is not None:
        f = result.forgetting
        lines += ["## Forgetting", "",
                  f"Loss on the answers of {f.pairs} general instructions (resources/general): base {f.loss_base:.3f}, "
                  f"tuned {f.loss_tuned:.3f}, **ratio {f.ratio:.3f}** (1.0: nothing forgotten; above 1: general "
                  "answers became less likely).", "", "| instruction | base | tuned |", "|---|---|---|",
                  *(f"| {_cell(a['instruction'], 50)} | {_cell(a['base'])} | {_cell(a['tuned'])} |"
                    for a in f.answers),
                  ""]  # fmt: skip
    if result.pairs is not None:
        p = result.pairs
        lines += ["## Preference pairs", "",
                  f"{p.pairs} held-out pairs scored" + (f" ({p.skipped} left out: an answer starts past max_length)"
                                                        if p.skipped else "") + ". Shares of the pairs:", "",
                  "| | base | tuned |", "|---|---:|---:|",
                  *(f"| {title} | {'—' if k == 'reward_accuracy' else f'{p.base[k]:.3f}'} | {p.tuned[k]:.3f} |"
                    for k, title in PAIR_METRICS.items()),  # the base's rewards are its own: none to count
                  f"| mean log-probability margin (chosen − rejected) | {p.margin_base:+.2f} | {p.margin_tuned:+.2f} |",
                  ""]  # fmt: skip
    if result.classes is not None:
        lines += class_tables(result.classes)
    regressed = [r for r in result.rows if r["regression"]]
    changed = [r for r in result.rows if r["change"] != 0][:ROWS_SHOWN]
    lines += [f"## Rows that changed most ({sum(r['change'] != 0 for r in result.rows)} changed, "
              f"{len(regressed)} regressions: base right, tuned wrong)", ""]  # fmt: skip
    if changed:
        lines += ["| row | input | expected | " + " | ".join(COLUMN_TITLES[c] for c in columns) + " | change |",
                  "|---|---|---|" + "---|" * len(columns) + "---:|"]  # fmt: skip
        lines += [f"| {_cell(Path(r['where']).name, 40)} | {_cell(r['input'], 60)} | {_cell(r['expected'], 40)} | "
                  + " | ".join(_cell(r["answers"][c], 40) for c in columns) + f" | {r['change']:+.2f} |"
                  for r in changed]  # fmt: skip
    else:
        lines.append("No row scored differently after tuning.")
    lines += ["", "## Settings", "", *(f"- {k}: {v}" for k, v in _settings(result).items())]
    if result.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in result.notes)]
    return "\n".join(lines) + "\n"


def class_tables(c: ClassScores) -> list[str]:
    """The report's per-class table and the tuned model's confusion matrix (or, for many labels, its mix-ups)."""
    title = COLUMN_TITLES.get(c.baseline, c.baseline) if c.baseline else None
    extra = f" | F1 {title}" if title else ""
    lines = ["## Per class", "", "The tuned model's scores on each label's held-out rows"
             + (f", and the F1 of the {title} baseline" if title else "") + ".", "",
             f"| class | rows | precision | recall | F1{extra} |",
             "|---|---:|---:|---:|---:|" + ("---:|" if c.baseline else "")]  # fmt: skip
    for label in c.expected_labels():
        s = c.per_class[label]
        beside = f" | {c.baseline_f1[label]:.3f}" if c.baseline else ""
        lines.append(f"| {_cell(label, 40)} | {s['rows']} | {s['precision']:.3f} | {s['recall']:.3f} | "
                     f"{s['f1']:.3f}{beside} |")  # fmt: skip
    lines += [""]
    if len(c.labels) <= MATRIX_LABELS:
        lines += ["Confusion matrix of the tuned model: rows are the expected class, columns the class it chose.", "",
                  "| expected ↓ chosen → | " + " | ".join(_cell(label, 20) for label in c.labels) + " |",
                  "|---|" + "---:|" * len(c.labels),
                  *(f"| {_cell(label, 20)} | " + " | ".join(str(n) for n in row) + " |"
                    for label, row in zip(c.expected_labels(), c.confusion, strict=False)),
                  ""]  # fmt: skip
    else:
        mixed = c.confusions(ROWS_SHOWN)
        lines += [f"The tuned model's commonest mix-ups ({len(c.labels)} classes):", "",
                  "| expected | chosen | rows |", "|---|---|---:|",
                  *(f"| {_cell(e, 40)} | {_cell(p, 40)} | {n} |" for e, p, n in mixed), ""] if mixed else [
                  "The tuned model put every row in its expected class.", ""]  # fmt: skip
    return lines


def _settings(result: EvaluationResult) -> dict[str, Any]:
    s = result.settings
    return {
        "data": s.data or "held-out rows", "checkpoint": s.checkpoint, "in-context examples": s.in_context,
        "answer extraction": f"`{s.extract}`" if s.extract else "none", "row limit": s.limit,
        "batch size": s.batch_size,
        "max new tokens": s.max_new_tokens or "longest expected answer + 8", "decoding": "greedy, KV cache",
        "precision": result.precision,
        "seconds": ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()),
    }  # fmt: skip
