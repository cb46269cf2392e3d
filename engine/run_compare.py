"""Comparing finished runs: the spec fields that differ, and each run's curves read from its events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from adapter_studio.engine.events import Eval, Metrics, Started, iter_events
from adapter_studio.engine.file_memo import FileMemo

Curve = tuple[list[float], list[float]]

# Curves taken from `metrics` events (field name = curve name); eval curves come from `eval` events.
METRIC_CURVES = ("loss", "lr", "grad_norm", "tokens_per_s", "memory_bytes", "memory_reserved_bytes",
                 "memory_peak_bytes")  # fmt: skip
EVAL_CURVES = ("eval_loss", "accuracy", "exact_match")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as `{"a.b.c": value}`; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def read_spec_fields(run_dir: Path) -> dict[str, Any]:
    """The run's `spec.yaml` flattened to dotted fields; an unreadable or missing spec gives `{}`."""
    try:
        data = yaml.safe_load((Path(run_dir) / "spec.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return flatten(data) if isinstance(data, dict) else {}


def spec_diff(run_a: Path, run_b: Path) -> list[tuple[str, Any, Any]]:
    """`(dotted_field, value_a, value_b)` for every spec field that differs, in spec order.

    A field only one spec has (another method's hyperparameters) shows `None` on the other side, and
    counts as unset: a field one spec lacks and the other leaves empty is not a difference.
    """
    a, b = read_spec_fields(run_a), read_spec_fields(run_b)
    keys = list(a) + [k for k in b if k not in a]
    return [(key, a.get(key), b.get(key)) for key in keys if a.get(key) != b.get(key)]


_CURVES: FileMemo[dict[str, Curve]] = FileMemo(limit=256)


def curves(run_dir: Path) -> dict[str, Curve]:
    """Per-step curves of a run (`loss`, `eval_loss`, `memory_bytes`, ...), only those with points; read again
    only once its log has changed. Not to be changed by the caller: the next call may hand out the same.

    A resumed run repeats the steps after its last checkpoint; the later values replace the earlier
    ones, so each curve is what the finished model actually went through.
    """
    log = Path(run_dir) / "events.jsonl"
    return _CURVES.get(log.resolve(), [log], lambda: _read_curves(log))


def _read_curves(log: Path) -> dict[str, Curve]:
    points: dict[str, dict[int, float]] = {}
    for event in iter_events(log):
        if isinstance(event, Started) and event.resumed_from_step:
            for series in points.values():
                for step in [s for s in series if s > event.resumed_from_step]:
                    del series[step]
        elif isinstance(event, Metrics | Eval):
            names = METRIC_CURVES if isinstance(event, Metrics) else EVAL_CURVES
            for name in names:
                value = getattr(event, name)
                if value is not None:
                    points.setdefault(name, {})[event.step] = float(value)
    out: dict[str, Curve] = {}
    for name, series in points.items():
        steps = sorted(series)
        out[name] = ([float(s) for s in steps], [series[s] for s in steps])
    return out
