"""Method sweep: several methods trained one after another on the same model, data, budget and seed,
then one table of quality against cost (the comparison the LLM-Adapters paper makes, on your data).

Every method runs as a normal run (its own folder in the runs folder, in the history like any other)
named `<sweep>-<method>`; the sweep itself is `<runs>/sweeps/<sweep>/sweep.json` (the plan and each
method's run folder) with `sweep.csv` beside it, rewritten after every run. What is shared: the spec's
model, data and training settings (steps, batch size, sequence length, seed, evaluation). What is the
method's own: its hyperparameters (defaults fitted to the model) and, unless the spec fixes one, its
recommended learning rate — a soft prompt needs a far higher one than LoRA, and one shared rate would
rank the methods by how well it suits each.

The automatic search (engine.search) writes its trials as a sweep of kind `auto`: one entry per trial
(several may share a method), labelled, with its outcome (pruned, stopped) and the final run of the winner.
Every row carries the learning rate, batch size and target layers its run used, read from its spec.yaml,
and the tuned model's scores from the run's newest evaluation, if any (engine.evaluation.ranking: the
table can be ranked by any of them, and `evaluate_sweep` evaluates the runs a ranking needs).
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from adapter_studio.engine import durable
from adapter_studio.engine.defaults import resolve_objective
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.evaluation.ranking import EVALUATION_COLUMNS, EVALUATION_METRICS, evaluation_columns
from adapter_studio.engine.events import Emit, Started
from adapter_studio.engine.spec import RunSpec, as_tag

SWEEPS = "sweeps"
PLAN_FILE = "sweep.json"
CSV_FILE = "sweep.csv"
DEFAULT_BATCH = 4
COLUMNS = ("method", "status", "trainable_params", "trainable_share", "adapter_bytes", "peak_memory_bytes",
           "train_seconds", "tokens_per_s", "final_loss", "final_eval_loss", "best_eval_loss", "accuracy",
           "exact_match", "run_dir", "error", "trial", "learning_rate", "batch_size", "targets", "note",
           *EVALUATION_COLUMNS)  # fmt: skip
QUALITY = ("final_eval_loss", "best_eval_loss", "accuracy", "exact_match", "final_loss",
           *(m.name for m in EVALUATION_METRICS))  # fmt: skip  # every one a ranking metric
# The runs of a sweep share one process: a CPU has no per-run peak to reset (measured: lora 510 MiB first,
# 551 MiB after adapter_h), the first run also pays the warm-up.
PEAK_NOTE = ("peak mem: a GPU's peak of each run; on a CPU the process's memory, which keeps what the sweep's "
             "earlier runs left — the first run's time includes warming up")  # fmt: skip
COSTS = ("trainable_params", "adapter_bytes", "peak_memory_bytes", "train_seconds")


@dataclass
class SweepEntry:
    method: str
    run_dir: str | None = None  # set when the run starts
    refused: str | None = None  # why this method cannot work on this model (not run)
    trainable_params: int | None = None  # from the estimate (exact), before training
    trainable_share: float | None = None
    adapter_bytes: int | None = None  # what an adapter export writes
    label: str | None = None  # the automatic search's name for it ("trial 3", "winner")
    outcome: str | None = None  # overrides the run's status in the table (an automatic search's "pruned")
    note: str | None = None


@dataclass
class SweepPlan:
    name: str
    folder: Path
    spec: dict[str, Any]  # the shared spec (method of the first entry)
    entries: list[SweepEntry] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    kind: str = "methods"  # or "auto": written by the automatic search
    best_run_dir: str | None = None  # the automatic search's winner, trained fully

    def spec_for(self, entry: SweepEntry) -> RunSpec:
        """The run spec of one method: the shared spec with this method's defaults and run name."""
        from adapter_studio.engine.methods import METHODS

        data = json.loads(json.dumps(self.spec))
        data["method"] = METHODS[entry.method]().model_dump(mode="json")
        data["name"] = f"{self.name}-{entry.method}"
        return RunSpec.model_validate(data)

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {"name": self.name, "created": self.created, "spec": self.spec, "kind": self.kind,
                   "best_run_dir": self.best_run_dir, "entries": [asdict(e) for e in self.entries]}
        durable.write_text(self.folder / PLAN_FILE, json.dumps(payload, indent=1))
        durable.write_text(self.folder / CSV_FILE, rows_to_csv(sweep_rows(self)))


def plan_sweep(spec: RunSpec, methods: list[str], name: str | None = None) -> SweepPlan:
    """Check each method against the model (refusals are kept with their reason) and write the plan."""
    from adapter_studio.engine.estimate.table import estimate_table
    from adapter_studio.engine.methods import METHODS, method_hint

    if not methods:
        raise UserError("a sweep needs at least one method", where="methods", fix="e.g. lora,ia3,prompt_tuning")
    methods = [m if m in METHODS else as_tag(m) for m in methods]  # LoRA, LoRA+ as a spec takes them
    unknown = [m for m in methods if m not in METHODS]
    if unknown:  # the near names ("lroa": the 50 names listed said nothing of the typo)
        raise UserError(f"unknown method {', '.join(unknown)}", where="methods", fix=method_hint(unknown))
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise UserError(f"{', '.join(twice)} {'is' if len(twice) == 1 else 'are'} listed twice", where="methods",
                        fix="list each method once")  # fmt: skip
    shared = resolve_objective(spec).spec.model_copy(deep=True)  # the plan names it: each entry trains with it
    training = shared.training
    updates: dict[str, Any] = {"batch_size": training.batch_size or DEFAULT_BATCH, "devices": 1}
    shared = shared.model_copy(update={"training": training.model_copy(update=updates)})
    name = name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(shared.output_dir).expanduser() / SWEEPS / name
    if (folder / PLAN_FILE).exists():
        raise UserError(f"a sweep named {name} exists already", where=str(folder), fix="pick another name")
    overrides = [f"training.batch_size={updates['batch_size']}", f"model.dtype={shared.model.dtype}",
                 f"model.quantization={shared.model.quantization}"]
    if shared.data.max_length:
        overrides.append(f"data.max_length={shared.data.max_length}")
    estimates = {r["method"]: r for r in estimate_table(shared.model.source, ",".join(methods), overrides)}
    no_tasks = _no_task_column(shared) if any(METHODS[m].routes_by_task for m in methods) else None
    plan = SweepPlan(name=name, folder=folder, spec=shared.model_dump(mode="json"))
    for method in methods:
        row = estimates.get(method, {})
        refused = row.get("error") or (no_tasks if METHODS[method].routes_by_task else None)
        plan.entries.append(SweepEntry(
            method=method, refused=refused, trainable_params=row.get("trainable_params"),
            trainable_share=row.get("trainable_share"), adapter_bytes=row.get("adapter_bytes"),
        ))
    plan.save()
    return plan


def _no_task_column(spec: RunSpec) -> str | None:
    """Why a method that routes by task (Poly) cannot train on the sweep's data, or None where it can (or
    the data cannot be read here: the run then says why)."""
    from adapter_studio.engine.data.examples import survey_data
    from adapter_studio.engine.methods.poly import NO_TASKS

    try:
        survey = survey_data(spec.data, spec.data.path, limit=200)
    except UserError:
        return None
    return None if survey.tasks else f"the data has no task column to route by: {NO_TASKS}"


def load_sweep(folder: str | Path) -> SweepPlan:
    path = Path(folder) / PLAN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SweepPlan(name=data["name"], folder=Path(folder), spec=data["spec"], created=data.get("created", 0),
                         entries=[SweepEntry(**e) for e in data["entries"]], kind=data.get("kind", "methods"),
                         best_run_dir=data.get("best_run_dir"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the sweep: {e}", where=str(path)) from None


def list_sweeps(output_dir: str | Path) -> list[SweepPlan]:
    """Every sweep under the runs folder, newest first (unreadable ones are skipped)."""
    root = Path(output_dir).expanduser() / SWEEPS
    plans = []
    for folder in sorted(root.glob(f"*/{PLAN_FILE}")) if root.exists() else []:
        try:
            plans.append(load_sweep(folder.parent))
        except UserError:
            continue
    return sorted(plans, key=lambda p: p.created, reverse=True)


def sweep_rows(plan: SweepPlan) -> list[dict[str, Any]]:
    """One row per method: what it cost and how well it did, read from its run folder's events; then the
    approaches that train nothing (status `baseline`), once an evaluation of a run has scored them."""
    from adapter_studio.engine.evaluation.ranking import baseline_rows

    rows = [_row(plan, entry) for entry in plan.entries]
    baselines = baseline_rows([e.run_dir for e in plan.entries if e.run_dir])
    return rows + [{**{c: None for c in COLUMNS}, **b} for b in baselines]


def _row(plan: SweepPlan, entry: SweepEntry) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(method=entry.method, trainable_params=entry.trainable_params,
               trainable_share=entry.trainable_share, adapter_bytes=entry.adapter_bytes, run_dir=entry.run_dir,
               trial=entry.label, note=entry.note)
    if entry.refused:
        return {**row, "status": "refused", "error": entry.refused}
    if not entry.run_dir or not Path(entry.run_dir, "events.jsonl").exists():
        return {**row, "status": "pending"}
    from adapter_studio.engine.runs import summarize_run

    summary = summarize_run(Path(entry.run_dir))
    row.update(_settings(Path(entry.run_dir)))
    row.update(evaluation_columns(entry.run_dir))
    if summary.trainable_params is not None:  # what the run reported, over the estimate
        row["trainable_params"] = summary.trainable_params
        row["trainable_share"] = summary.trainable_params / summary.total_params if summary.total_params else None
    return {
        **row,
        "status": entry.outcome if entry.outcome and summary.status != "running" else summary.status,
        "peak_memory_bytes": summary.peak_memory_bytes,
        "train_seconds": summary.train_seconds if summary.train_seconds is not None else summary.duration_s,
        "tokens_per_s": summary.median_tokens_per_s,
        "final_loss": summary.final_loss,
        "final_eval_loss": summary.final_eval_loss,
        "best_eval_loss": summary.best_eval_loss,
        "accuracy": summary.accuracy,
        "exact_match": summary.exact_match,
        "error": summary.error,
    }


def _settings(run_dir: Path) -> dict[str, Any]:
    """The learning rate, batch size and target layers a run used (its spec.yaml holds the filled values)."""
    try:
        data = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    training, method = data.get("training") or {}, data.get("method") or {}
    targets = method.get("target_modules")
    return {"learning_rate": training.get("learning_rate"), "batch_size": training.get("batch_size"),
            "targets": ",".join(targets) if isinstance(targets, list) else None}


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return out.getvalue()


def run_sweep(plan: SweepPlan, emit: Emit | None = None, stop_event: threading.Event | None = None) -> SweepPlan:
    """Train every method of the plan that has not run yet, one after another (headless).

    A stop ends the current run with its checkpoint (status cancelled) and leaves the rest pending;
    running the same plan again continues with them."""
    from adapter_studio.engine.training.run import run

    stop_event = stop_event or threading.Event()
    for entry in plan.entries:
        if entry.refused or entry.run_dir or stop_event.is_set():
            continue
        spec = plan.spec_for(entry)
        started: list[str] = []

        def report(event: Any, entry: SweepEntry = entry, started: list[str] = started) -> None:
            if isinstance(event, Started) and not started:
                started.append(event.run_dir)
                entry.run_dir = event.run_dir
                plan.save()
            if emit is not None:
                emit(event)

        result = run(spec, report, stop_event)
        entry.run_dir = str(result.run_dir)
        plan.save()
    return plan


def evaluate_sweep(plan: SweepPlan, rank_by: str, say: Any = None, stop: threading.Event | None = None) -> None:
    """Evaluate the sweep's completed runs that ranking by `rank_by` needs (engine.evaluation.ranking) and
    the no-training baselines once, and rewrite its table with their scores."""
    from adapter_studio.engine.evaluation.ranking import evaluate_for_ranking

    evaluate_for_ranking([e.run_dir for e in plan.entries if e.run_dir], rank_by, say, stop, baselines=True)
    plan.save()


def format_rows(rows: list[dict[str, Any]], rank_by: str | None = None) -> str:
    """The sweep as an aligned text table (the CLI's output); an automatic search's rows add their trial,
    learning rate and batch size. With `rank_by` (a metric of engine.evaluation.ranking), best first, with
    that metric's column after the others."""
    from adapter_studio.engine.estimate.table import human_bytes, human_count
    from adapter_studio.engine.evaluation.ranking import metric, rank

    ranked = metric(rank_by) if rank_by else None
    if ranked is not None:
        rows = rank(rows, ranked.name)

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def name(r: dict[str, Any]) -> str:
        return f"{r['method']} ({r['trial']})" if r.get("trial") else r["method"]

    def settings(r: dict[str, Any]) -> str:
        if not r.get("trial") or r.get("learning_rate") is None:
            return ""
        return f"  lr {r['learning_rate']:.1e}, batch {r['batch_size']}"

    width = max([17, *(len(name(r)) for r in rows)])
    header = f"{'method':<{width}} {'status':<10} {'trainable':>10} {'adapter':>10} {'peak mem':>10} {'time':>8} " \
             f"{'eval loss':>9} {'acc/EM':>7}" + (f"  {ranked.title}" if ranked else "")
    lines = [header]
    for r in rows:
        quality = r["accuracy"] if r["accuracy"] is not None else r["exact_match"]
        note = r["error"] or r.get("note")
        lines.append(
            f"{name(r):<{width}} {r['status']:<10} "
            f"{human_count(r['trainable_params']) if r['trainable_params'] else '-':>10} "
            f"{human_bytes(r['adapter_bytes']) if r['adapter_bytes'] else '-':>10} "
            f"{human_bytes(r['peak_memory_bytes']) if r['peak_memory_bytes'] else '-':>10} "
            f"{num(r['train_seconds'], '.0f') + ' s' if r['train_seconds'] is not None else '-':>8} "
            f"{num(r['final_eval_loss'], '.4f'):>9} {num(quality, '.3f'):>7}"
            + (f"  {num(r.get(ranked.name), '.4f')}" if ranked else "")
            + settings(r) + (f"  ({note})" if note else "")
        )
    if sum(1 for r in rows if r["peak_memory_bytes"]) > 1:
        lines.append(PEAK_NOTE)
    return "\n".join(lines)
