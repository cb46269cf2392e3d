"""The automatic search: `run_auto_search(spec, budget_s, emit, stop_event)`.

1. A short probe run measures this machine: seconds per step, per evaluation and to start a run.
2. optuna samples settings (engine.search.space) with a seeded TPE sampler; each trial is a real run
   (its own folder in the history) that evaluates on the held-out split at every rung, and optuna's
   Hyperband pruner (successive halving in brackets that start judging at different rungs) stops the
   losers there: a pruned trial is stopped through its run's stop event, so it ends `cancelled` with a
   checkpoint, and is marked `pruned` in the search's table. Trials go on while the search's time lasts
   (`max_trials` caps them only when given).
3. When the search's share of the budget is spent (~60 %, engine.search.budget), the winner — the best
   held-out loss among the trials that ran to the end — trains again from the start, for the spec's own
   steps or epochs when they fit the time left and for what fits otherwise; evaluating and saving
   together, so the engine keeps its best checkpoint (`checkpoints/best`) by held-out loss.

With `rank_by` (a metric of engine.evaluation.ranking: exact match, ROUGE-L, macro-F1, …), the winner is
the best trial that ran to the end by that metric instead: those trials are evaluated on their held-out
rows (tuned against base) before the winner's full run; pruning still compares held-out losses.

The held-out metric is `eval_loss` for every task: on a held-out split of a few hundred rows it ranks
trials more steadily than accuracy (which moves in steps of one row), and it is what the engine's best
checkpoint is chosen by. Accuracy is recorded beside it. Trials evaluate on at most EVAL_ROWS held-out
rows: a smaller share of the same seeded split, so they are a subset of the final run's held-out rows.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

from adapter_studio.engine import defaults, durable
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.evaluation.ranking import baseline_rows
from adapter_studio.engine.events import Emit, Eval, Event, Started
from adapter_studio.engine.search.budget import (
    SEARCH_SHARE,
    Rungs,
    RunTiming,
    format_seconds,
    plan_rungs,
    search_seconds,
)
from adapter_studio.engine.search.data_facts import describe_data
from adapter_studio.engine.search.results import MARKER, METRIC, SearchLog, SearchResult, TrialRecord
from adapter_studio.engine.search.space import CHOICES, SearchSpace, Settings, space_for, spec_with
from adapter_studio.engine.search.winner import choose_winner
from adapter_studio.engine.spec import RunSpec
from adapter_studio.engine.training.checkpoints import remove_checkpoints, weights_bytes
from adapter_studio.engine.training.sweep import DEFAULT_BATCH, PLAN_FILE, SWEEPS, SweepEntry, SweepPlan

PROBE_STEPS = 6
METHOD_COST = 1.3  # the probe trains LoRA on attention; the other choices cost up to about this much more
FINAL_EVALS = 5
HEDGE = "; Hyperband brackets start judging at each rung in turn"


class TrialFailed(Exception):
    """A trial's run failed (optuna records it as FAIL and the search goes on)."""


class AutoSearch:
    """One search's state while it runs; `execute` is the recipe (module docstring)."""

    def __init__(self, spec: RunSpec, budget_s: float, emit: Emit | None, stop: threading.Event, *, name: str | None,
                 space: SearchSpace | None, rungs: Rungs | None, max_trials: int | None,
                 rank_by: str | None = None) -> None:
        from adapter_studio.engine.evaluation.ranking import metric

        self.spec, self.budget_s, self.emit, self.stop = spec, budget_s, emit, stop
        self.rank_by = metric(rank_by) if rank_by else None  # an unknown name fails before anything runs
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.search_deadline = self.start + SEARCH_SHARE * budget_s
        self.name = name or f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
        self.space, self.rungs, self.max_trials = space, rungs, max_trials
        self.trials: list[TrialRecord] = []
        self.timings: dict[int, RunTiming] = {}
        self.min_trial_s = 0.0  # the cheapest trial (start, first rung, one evaluation): none starts without it
        self.failed_in_a_row = 0
        self.probe: tuple[Settings, RunTiming] | None = None
        self.skip_search = False  # too little time to compare settings: the first baseline trains instead

    def say(self, message: str, level: str = "info") -> None:
        if self.emit is not None:
            self.emit(SearchLog(level=level, message=message))

    # --- the recipe ------------------------------------------------------------------------------
    def execute(self) -> SearchResult:
        from adapter_studio.engine.models.loading import summarize_model

        fitted = defaults.resolve_objective(self.spec)  # every trial, and a resumed search's plan, train with it
        spec = self.spec = fitted.spec
        for line in defaults.explain(spec, fitted.reasons):
            self.say(line)
        self.facts = describe_data(spec)
        summary = summarize_model(spec.model.source)
        self.info = summary.info
        self.space = self.space or space_for(spec, self.facts.task, summary.params)
        folder = Path(spec.output_dir).expanduser() / SWEEPS / self.name
        if (folder / PLAN_FILE).exists():
            raise UserError(
                f"a search or sweep named {self.name} exists already", where=str(folder), fix="pick another name"
            )
        training = {"devices": 1, "eval_samples": 0, "tensorboard": spec.training.tensorboard}
        self.final_base = spec.model_copy(update={"training": spec.training.model_copy(update=training)})
        data = spec.data.model_copy(update={"eval_split": self.facts.trial_eval_split or spec.data.eval_split})
        # Trials: no early stopping or compiling of their own (the pruner decides, and their steps are few).
        trial_training = {**training, "early_stopping_patience": None, "compile": "off"}
        self.trial_base = spec.model_copy(update={
            "data": data, "training": spec.training.model_copy(update=trial_training)})  # fmt: skip
        self.plan = SweepPlan(name=self.name, folder=folder, spec=self.final_base.model_dump(mode="json"), kind="auto")
        self.plan.save()
        self.examples_per_step = spec.training.gradient_accumulation
        self.final_examples = self._final_examples()
        self.say(f"automatic search {self.name}: {', '.join(CHOICES[c].label for c in self.space.choices)}; "
                 f"batch {'/'.join(map(str, self.space.batch_sizes))}; held-out metric {METRIC} on "
                 f"{self.facts.trial_eval_rows} rows; budget {format_seconds(self.budget_s)}")
        if self.rungs is None and not self._probe():
            return self._result()
        winner = None
        if not self.skip_search:
            self._search()
            winner = self._winner()
        best_dir: Path | None = Path(winner.run_dir) if winner and winner.run_dir else None
        if winner is not None and not self.stop.is_set():
            timing = self.timings[winner.number]
            why = f"trial {winner.number}'s settings"
            best_dir = self._train_final(winner.settings, timing.step_s, timing, why) or best_dir
        elif self.skip_search and self.probe is not None and not self.stop.is_set():
            settings, timing = self.space.baselines[0] if self.space.baselines else self.probe[0], self.probe[1]
            # The probe measured LoRA on attention at its batch size: scale to this batch and method.
            step_s = timing.step_s * settings.batch_size / self.probe[0].batch_size * METHOD_COST
            best_dir = self._train_final(settings, step_s, timing, "the baseline (no time to search)")
        self.plan.best_run_dir = str(best_dir) if best_dir else None
        self.plan.save()
        self._free_disk(best_dir)
        return self._result(winner, best_dir)

    def _final_examples(self) -> int:
        t = self.spec.training
        if t.max_steps:
            return t.max_steps * (t.batch_size or DEFAULT_BATCH) * t.gradient_accumulation
        passes = t.epochs if t.epochs is not None else defaults.epochs(self.facts.train_rows).value
        return max(1, math.ceil(passes * self.facts.train_rows))

    def _probe(self) -> bool:
        """Measure a few steps and an evaluation, then size the rungs; False when stopped meanwhile."""
        assert self.space is not None
        batches = self.space.batch_sizes
        settings = Settings("lora_attention", self.space.baseline_rate("lora_attention"), batches[len(batches) // 2])
        probe = spec_with(self.trial_base, settings, self.info, f"{self.name}-probe", max_steps=PROBE_STEPS,
                          eval_every=PROBE_STEPS, save_every=PROBE_STEPS)
        probe = probe.model_copy(update={"output_dir": str(self.plan.folder / "probe")})
        self.say(f"probe: {PROBE_STEPS} steps of {settings.describe()} to measure this machine")
        events, result = self._run(probe, threading.Event(), self.deadline)
        if result.status == "failed":
            raise UserError(f"the probe run failed: {result.error}", where=str(result.run_dir))
        if result.status != "completed":
            return False
        timing = RunTiming.from_events(events)
        example_s = timing.step_s / (settings.batch_size * self.examples_per_step) * METHOD_COST
        eval_full = timing.eval_s * self.facts.eval_rows / self.facts.trial_eval_rows
        final_estimate = timing.overhead_s + self.final_examples * example_s + FINAL_EVALS * eval_full
        self.search_deadline = self.start + search_seconds(self.budget_s, final_estimate)
        left = self.search_deadline - time.monotonic()
        quantum = math.lcm(*batches) * self.examples_per_step
        rungs = plan_rungs(left, overhead_s=timing.overhead_s, example_s=example_s, eval_s=timing.eval_s,
                           final_examples=self.final_examples, quantum=quantum)
        self.probe = (settings, timing)
        if rungs is None:
            self.skip_search = True
            trial_s = timing.overhead_s + 2 * quantum * example_s + timing.eval_s
            self.say(f"a short trial takes about {format_seconds(trial_s)} on this machine and the search has "
                     f"{format_seconds(left)}: too little to compare settings, so the first baseline trains with "
                     "all the time left", level="warning")
            return True
        self.rungs = rungs
        self.min_trial_s = timing.overhead_s + rungs.first * example_s + timing.eval_s
        rungs = [self.rungs.first * self.rungs.factor**k for k in range(self.rungs.count + 1)]
        self.say(f"probe: {timing.step_s:.2f} s a step of {settings.batch_size}, {timing.eval_s:.1f} s an "
                 f"evaluation, {timing.overhead_s:.1f} s to start a run; searching for {format_seconds(left)} "
                 f"with trials compared at {', '.join(map(str, rungs))} training examples "
                 f"(the best 1/{self.rungs.factor} go on{HEDGE if self.rungs.hyperband else ''})")
        return True

    def _search(self) -> None:
        import optuna

        assert self.rungs is not None and self.space is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search reports trials itself
        # Hyperband puts each trial in a bracket by a hash of the study's name and the trial's number: the
        # search's own name keeps that the same from one run of the same search to the next.
        sampler = optuna.samplers.TPESampler(seed=self.spec.training.seed, n_startup_trials=4)
        study = optuna.create_study(study_name=self.name, direction="minimize", sampler=sampler,
                                    pruner=self.rungs.pruner())  # fmt: skip
        for settings in self.space.baselines:
            study.enqueue_trial(self.space.params_of(settings))

        def enough(study: Any, _trial: Any) -> None:
            if self.stop.is_set() or time.monotonic() + self.min_trial_s > self.search_deadline:
                study.stop()
            elif self.failed_in_a_row >= 3:
                self.say("three trials in a row failed: the search stops here", level="warning")
                study.stop()

        left = self.search_deadline - time.monotonic()
        if left > 0 and not self.stop.is_set():
            study.optimize(self._objective, n_trials=self.max_trials, timeout=left, catch=(TrialFailed,),
                           callbacks=[enough])

    def _objective(self, trial: Any) -> float:
        import optuna

        assert self.rungs is not None and self.space is not None
        settings = self.space.suggest(trial)
        record = TrialRecord(trial.number + 1, settings)
        self.trials.append(record)
        per_step = settings.batch_size * self.examples_per_step
        steps = max(1, self.rungs.full // per_step)
        spec = spec_with(self.trial_base, settings, self.info, f"{self.name}-trial{record.number:02d}", max_steps=steps,
                         eval_every=max(1, self.rungs.first // per_step), save_every=steps)
        self.say(f"trial {record.number}: {settings.describe()}, up to {self.rungs.full} examples ({steps} steps)")
        entry = SweepEntry(method=CHOICES[settings.choice].method, label=f"trial {record.number}")
        stop = threading.Event()

        def watch(event: Event) -> None:
            if isinstance(event, Started):
                record.run_dir = entry.run_dir = event.run_dir
                self.plan.entries.append(entry)
                self.plan.save()
            elif isinstance(event, Eval):
                record.examples = event.step * per_step
                record.metric = min(record.metric or math.inf, event.eval_loss)
                record.accuracy = event.accuracy
                trial.report(event.eval_loss, record.examples)
                # At the last rung the trial is done: optuna would judge it for a rung that does not exist.
                if record.status == "running" and record.examples < self.rungs.full and trial.should_prune():
                    record.status = "pruned"
                    stop.set()
            if not stop.is_set() and (self.stop.is_set() or time.monotonic() > self.search_deadline):
                record.status = "stopped"
                stop.set()

        events, result = self._run(spec, stop, self.search_deadline, watch)
        self.timings[record.number] = RunTiming.from_events(events)
        if result.status == "failed":
            record.status, record.error = "failed", result.error
        elif result.status == "completed" and record.metric is not None:
            record.status = "completed"
        elif record.status == "running":
            record.status = "stopped"
        self.failed_in_a_row = self.failed_in_a_row + 1 if record.status == "failed" else 0
        self._record(record, entry, str(result.run_dir))
        if record.status == "completed":
            return float(record.metric)  # type: ignore[arg-type]
        if record.status == "failed":
            raise TrialFailed(record.error or "failed")
        raise optuna.TrialPruned()

    def _run(self, spec: RunSpec, stop: threading.Event, deadline: float, watch: Any = None) -> tuple[list[Event], Any]:
        """One engine run; its events are kept, watched and passed on; a person's stop or the deadline stops it."""
        from adapter_studio.engine.training.run import run

        events: list[Event] = []

        def report(event: Event) -> None:
            events.append(event)
            if watch is not None:
                watch(event)
            elif self.stop.is_set() or time.monotonic() > deadline:
                stop.set()
            if self.emit is not None:
                self.emit(event)

        return events, run(spec, report, stop)

    def _record(self, record: TrialRecord, entry: SweepEntry, run_dir: str) -> None:
        """Mark the trial in the search's table and in its own run folder, and say how it ended."""
        record.run_dir = entry.run_dir = run_dir
        if not any(e is entry for e in self.plan.entries):  # failed before it started
            self.plan.entries.append(entry)
        metric = f"{METRIC} {record.metric:.4f}" if record.metric is not None else f"no {METRIC}"
        accuracy = f", accuracy {record.accuracy:.3f}" if record.accuracy is not None else ""
        how = {"completed": "completed", "pruned": "pruned", "failed": "failed",
               "stopped": "stopped by you" if self.stop.is_set() else "stopped: the search's time is up"}
        entry.outcome = None if record.status == "completed" else record.status
        entry.adapter_bytes = weights_bytes(Path(run_dir))  # before its checkpoints go
        entry.note = f"{how[record.status]} at {record.examples} examples"
        entry.note += f": {record.error}" if record.error else ""
        self.plan.save()
        marker = {"search": self.name, "sweep_dir": str(self.plan.folder), **record.to_json(self.info)}
        if Path(run_dir).is_dir():
            durable.write_text(Path(run_dir) / MARKER, json.dumps(marker, indent=1))
            if record.status == "pruned":  # never the result: its checkpoints go now, not after the search
                remove_checkpoints(Path(run_dir))
        self.say(f"trial {record.number} {how[record.status]} at {record.examples} examples: {metric}{accuracy}",
                 level="warning" if record.status == "failed" else "info")

    def _winner(self) -> TrialRecord | None:
        return choose_winner(self.trials, self.rank_by, self.say, self.stop)

    def _train_final(self, settings: Settings, step_s: float, timing: RunTiming, why: str) -> Path | None:
        """Train `settings` from the start for the spec's length, or what fits the time left (`step_s` per
        step; `timing` the run it was measured in, for starting, evaluating and saving)."""
        t = self.final_base.training
        per_step = settings.batch_size * self.examples_per_step
        wanted = max(1, math.ceil(self.final_examples / per_step))
        # The final run tokenises the spec's own split first (the trials held out fewer rows): margin for it.
        left = (self.deadline - time.monotonic()) * 0.95 - 1.5 * timing.overhead_s
        # Each evaluation saves, and copies the best: up to FINAL_EVALS of them, in at most a quarter of the time.
        per_eval = timing.eval_s * self.facts.eval_rows / self.facts.trial_eval_rows + 2 * timing.save_s
        evals = max(1, min(FINAL_EVALS, int(0.25 * left / per_eval))) if per_eval > 0 else FINAL_EVALS
        steps = min(wanted, math.floor((left - evals * per_eval) / step_s)) if step_s > 0 else wanted
        if steps < 1:
            self.say("no time is left for the winner's full run (its trial's run, if any, is the result)",
                     level="warning")
            return None
        every = max(t.eval_every or 0, math.ceil(steps / evals))
        spec = spec_with(self.final_base, settings, self.info, f"{self.name}-best", max_steps=steps,
                         eval_every=every, save_every=every)
        fits = "the spec's length" if steps == wanted else f"what fits the {format_seconds(left)} left"
        self.say(f"winner: {why} ({settings.describe()}); training it for {steps} steps ({fits}), "
                 f"keeping the best checkpoint by {METRIC}")
        entry = SweepEntry(method=CHOICES[settings.choice].method, label="winner", note=f"{why}, {steps} steps")
        started = threading.Event()

        def watch(event: Event) -> None:
            if isinstance(event, Started) and not started.is_set():
                started.set()
                entry.run_dir = event.run_dir
                self.plan.entries.append(entry)
                self.plan.save()
            if self.stop.is_set() or time.monotonic() > self.deadline:
                stop.set()

        stop = threading.Event()
        _, result = self._run(spec, stop, self.deadline, watch)
        entry.run_dir = str(result.run_dir)
        entry.adapter_bytes = weights_bytes(Path(result.run_dir))
        if not any(e is entry for e in self.plan.entries):
            self.plan.entries.append(entry)
        if result.status != "completed":
            entry.note += f"; {result.status}" + (f": {result.error}" if result.error else "")
        self.plan.save()
        if result.status == "failed":
            self.say(f"the winner's full run failed: {result.error}", level="error")
            return None
        return Path(result.run_dir)

    def _free_disk(self, keep: Path | None) -> None:
        """Trials' checkpoints go once the search is over (full fine-tuning writes gigabytes per trial); their
        folders stay, with their events, spec and marker. The best run keeps everything."""
        freed = 0
        folders = [Path(r.run_dir) for r in self.trials if r.run_dir] + list((self.plan.folder / "probe").glob("*"))
        for folder in folders:
            if keep is None or folder.resolve() != keep.resolve():
                freed += remove_checkpoints(folder)
        if freed:
            self.say(f"removed the trials' checkpoints ({freed / 2**20:,.0f} MiB); their folders and logs stay")

    def _result(self, winner: TrialRecord | None = None, best_dir: Path | None = None) -> SearchResult:
        from adapter_studio.engine.runs import summarize_run

        seconds = time.monotonic() - self.start
        stopped = self.stop.is_set()  # by the person; a final run cut by the budget still completes the search
        status = "cancelled" if stopped else ("completed" if best_dir else "failed")
        error = None if best_dir or stopped else "no trial reached an evaluation"
        metrics: dict[str, float | None] = {}
        if best_dir is not None:
            summary = summarize_run(best_dir)
            metrics = {METRIC: summary.best_eval_loss, "final_eval_loss": summary.final_eval_loss,
                       "accuracy": summary.accuracy}  # fmt: skip
        chosen = f"winner trial {winner.number} ({winner.settings.describe()})" if winner else "no trial won"
        chosen = "none compared: the first baseline trained with the time left" if best_dir and not winner else chosen
        self.say(f"search {status} in {format_seconds(seconds)}: {len(self.trials)} trials, {chosen}; "
                 f"best run {best_dir or '-'}")
        baselines = baseline_rows([t.run_dir for t in self.trials if t.run_dir])
        return SearchResult(status, best_dir, error, self.plan.folder, self.trials, winner.number if winner else None,
                            metrics, seconds, getattr(self, "info", None), self.rank_by.name if self.rank_by else None,
                            baselines)


def run_auto_search(spec: RunSpec, budget_s: float, emit: Emit | None = None, stop_event: threading.Event | None = None,
                    *, name: str | None = None, space: SearchSpace | None = None, rungs: Rungs | None = None,
                    max_trials: int | None = None, rank_by: str | None = None) -> SearchResult:
    """Search methods and settings for `budget_s` seconds of wall-clock time, then train the winner fully.

    `emit` receives every event of every run, plus SearchLog lines about the search itself; `stop_event`
    ends the search cleanly (the current run is cancelled with its checkpoint, the result lists what
    finished). `space` and `rungs` replace the defaults (tests pass tiny rungs; without `rungs` a probe
    run sizes them to the budget). `max_trials` caps the trials (default: as many as the time allows).
    `rank_by` picks the winner by another metric (module docstring)."""
    search = AutoSearch(spec, budget_s, emit, stop_event or threading.Event(), name=name, space=space, rungs=rungs,
                        max_trials=max_trials, rank_by=rank_by)
    return search.execute()
