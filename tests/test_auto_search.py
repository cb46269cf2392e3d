"""Automatic search: budgets, rung sizing, a search that prunes and trains its winner, stopping, the CLI
and the Runs page's Auto button."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import optuna
import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Started
from adapter_studio.engine.runs import summarize_run
from adapter_studio.engine.search.auto import run_auto_search
from adapter_studio.engine.search.budget import (
    Rungs,
    bracket_shares,
    expected_segments,
    parse_budget,
    plan_rungs,
    search_seconds,
)
from adapter_studio.engine.search.results import MARKER, SearchLog
from adapter_studio.engine.search.space import SearchSpace, Settings, space_for
from adapter_studio.engine.training.sweep import load_sweep, sweep_rows
from test_cli import cli, write_spec

# Two baselines that are far apart: LoRA on every linear layer at a brisk rate, and LoRA on the attention
# projections at the bottom of its band, which cannot keep up at the first rung.
SPACE = SearchSpace(["lora_all_linear", "lora_attention"], (4,), None,
                    [Settings("lora_all_linear", 2e-3, 4), Settings("lora_attention", 1e-4, 4)])  # fmt: skip
# Compare at 8 and 16 examples; a finished trial trains 32. One bracket (plain successive halving), so
# which trial is judged where does not hang on Hyperband's hash of the search's name.
RUNGS = Rungs(first=8, factor=2, count=2, hyperband=False)


@pytest.mark.parametrize(
    ("factor", "count", "shares", "segments"),
    [
        # optuna's allotment for 3 brackets of factor 3 is 9 : 5 : 3; a trial in bracket b trains to rung b
        # unjudged. One bracket is successive halving: 1 + 2/3 + 6/9 segments a trial after the first.
        (3, 2, [9 / 17, 5 / 17, 3 / 17], 9 + 9 / 17 * (1 + 2 / 3 + 6 / 9) + 5 / 17 * (3 + 6 / 3) + 3 / 17 * 9),
        (2, 1, [1 / 2, 1 / 2], 2 + 1 / 2 * (1 + 1 / 2) + 1 / 2 * 2),  # 2 : 2
    ],
)
def test_hyperband_brackets_and_their_cost(factor: int, count: int, shares: list[float], segments: float) -> None:
    assert bracket_shares(factor, count) == pytest.approx(shares)
    assert expected_segments(factor, count, 2) == pytest.approx(segments)
    one_bracket = factor**count + 1 + count * (1 - 1 / factor)
    assert expected_segments(factor, count, 2, hyperband=False) == pytest.approx(one_bracket)
    pruner = Rungs(8, factor, count, hyperband=False).pruner()
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20m", 1200), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400), (" 2 min ", 120), ("1h 5m", 3900)],
)
def test_budgets_in_the_accepted_forms(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20 minutes", "90s, 20m, 1h"), ("20", "bare number"), ("", "not a budget"), ("-5m", "not a budget"),
     ("5s", "at least 10s"), ("200h", "at most 168h")],
)  # fmt: skip
def test_bad_budgets_say_the_accepted_forms(text: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected) as caught:
        parse_budget(text)
    assert caught.value.where == "--budget"


def test_rungs_fit_the_search_time_and_never_outgrow_the_final_run() -> None:
    rungs = plan_rungs(600, overhead_s=5, example_s=0.05, eval_s=4, final_examples=100_000, quantum=8)
    assert rungs is not None and (rungs.factor, rungs.count) == (3, 2) and rungs.first % 8 == 0
    cost = 8 * 5 + expected_segments(3, 2, 8) * (rungs.first * 0.05 + 4)
    assert rungs.hyperband and isinstance(rungs.pruner(), optuna.pruners.HyperbandPruner)
    assert 0.9 * 600 < cost <= 600  # about eight trials use the time, no more
    short = plan_rungs(600, overhead_s=5, example_s=0.05, eval_s=4, final_examples=900, quantum=8)
    assert short is not None and short.full <= 900 and short.first == 96  # 900 / 9 = 100, down to a multiple of 8
    tight = plan_rungs(60, overhead_s=5, example_s=0.1, eval_s=4, final_examples=100_000, quantum=8)
    assert tight is not None and tight.count == 1  # too little time for three rungs
    assert plan_rungs(60, overhead_s=5, example_s=0.5, eval_s=4, final_examples=100_000, quantum=8) is None
    # ~60 % of the budget searches; more when the winner's own run is known to be short.
    assert search_seconds(1200, 600) == 720
    assert search_seconds(1200, 100) == 1020
    assert search_seconds(1200, 0) == 1020  # never above 85 %


def test_default_space_fits_the_task_and_keeps_what_the_spec_fixes(make_spec, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl)  # batch 4 fixed, learning rate left to the search
    space = space_for(spec, "causal_lm", total_params=300_000)
    assert space.choices == ["lora_attention", "lora_all_linear", "rslora_all_linear", "full"]
    assert space.batch_sizes == (4,) and space.learning_rate is None
    assert [s.choice for s in space.baselines] == ["lora_all_linear", "full"]
    training = spec.training.model_copy(update={"batch_size": None, "learning_rate": 1e-3})
    big = space_for(spec.model_copy(update={"training": training}), "classification", total_params=7_000_000_000)
    assert "full" not in big.choices and big.batch_sizes == (8, 16, 32) and big.learning_rate == 1e-3


def test_search_prunes_a_loser_and_trains_the_winner_fully(make_spec, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, max_steps=12)  # the winner's own run: 12 steps of 4
    lines: list[str] = []
    started: list[Started] = []

    def emit(event: object) -> None:
        if isinstance(event, SearchLog):
            lines.append(event.message)
        elif isinstance(event, Started):
            started.append(event)

    result = run_auto_search(spec, 600, emit, name="a1", space=SPACE, rungs=RUNGS, max_trials=3)
    assert result.status == "completed", result.error
    statuses = [t.status for t in result.trials]
    assert len(statuses) == 3 and statuses[0] == "completed" and statuses[1] == "pruned", lines
    pruned = result.trials[1]
    assert pruned.examples == 8 and summarize_run(Path(pruned.run_dir)).status == "cancelled"  # type: ignore[arg-type]
    marker = json.loads(Path(pruned.run_dir, MARKER).read_text())  # type: ignore[arg-type]
    assert (marker["search"], marker["status"], marker["number"]) == ("a1", "pruned", 2)
    assert not list(Path(pruned.run_dir, "checkpoints").iterdir())  # type: ignore[arg-type]  # freed
    # The winner is a finished trial with the lowest held-out loss, trained again for the spec's 12 steps.
    done = [t for t in result.trials if t.status == "completed"]
    winner = min(done, key=lambda t: t.metric or 9)
    assert result.best_trial == winner.number
    best = summarize_run(result.run_dir)  # type: ignore[arg-type]
    assert best.status == "completed" and best.steps == 12 and best.name == "a1-best"
    assert (result.run_dir / "checkpoints" / "best" / "trainable.safetensors").exists()  # type: ignore[operator]
    assert result.best_metrics["eval_loss"] == best.best_eval_loss < winner.metric  # type: ignore[operator]
    assert [s.run_dir for s in started][-1] == str(result.run_dir)
    # The trials and the winner are a sweep: table rows with the settings each used.
    rows = sweep_rows(load_sweep(result.folder))
    assert [r["trial"] for r in rows] == ["trial 1", "trial 2", "trial 3", "winner"]
    assert [r["status"] for r in rows[:2]] == ["completed", "pruned"] and rows[3]["status"] == "completed"
    assert rows[0]["learning_rate"] == 2e-3 and rows[1]["learning_rate"] == 1e-4
    assert rows[0]["batch_size"] == 4 and rows[1]["targets"] == "q_proj,k_proj,v_proj,o_proj"
    assert rows[0]["targets"] == "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    weights = next((result.run_dir / "checkpoints").glob("step-*/trainable.safetensors"))
    assert rows[3]["adapter_bytes"] == weights.stat().st_size  # the table's "adapter" column read "-" for all
    assert all(r["adapter_bytes"] for r in rows[:2])  # a trial's too, measured before its checkpoints went
    table = list(csv.DictReader(io.StringIO((result.folder / "sweep.csv").read_text())))
    assert table[1]["status"] == "pruned" and table[1]["note"].startswith("pruned at 8 examples")
    assert load_sweep(result.folder).best_run_dir == str(result.run_dir)
    data = result.to_json()
    assert data["best_run_dir"] == str(result.run_dir) and len(data["trials"]) == 3
    assert set(data["trials"][0]) >= {"settings", "metric", "status"}
    assert data["trials"][1]["settings"]["method"] == "lora" and data["trials"][1]["status"] == "pruned"


def test_hyperband_judges_a_loser_early_in_one_bracket_only(make_spec, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    # The search's name fixes the brackets: "hb6" puts trials 1 and 2 in the eager bracket 0 (judged at
    # 8 examples) and trial 3 in bracket 2, which judges only at 32, the end. Trial 3 repeats the loser.
    loser = Settings("lora_attention", 1e-4, 4)
    space = SearchSpace(SPACE.choices, (4,), None, [*SPACE.baselines, loser])
    rungs = Rungs(first=8, factor=2, count=2)
    result = run_auto_search(make_spec(tiny_llama, alpaca_jsonl, max_steps=8), 600, None, name="hb6", space=space,
                             rungs=rungs, max_trials=3)  # fmt: skip
    assert result.status == "completed", result.error
    assert [(t.status, t.examples) for t in result.trials] == [("completed", 32), ("pruned", 8), ("completed", 32)]
    assert result.trials[2].metric > result.trials[0].metric  # type: ignore[operator]  # still the loser
    assert result.best_trial == 1


def test_a_stop_cancels_the_current_trial_and_keeps_what_finished(make_spec, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, max_steps=12)
    stop = threading.Event()
    runs: list[str] = []

    def emit(event: object) -> None:
        if isinstance(event, Started):
            runs.append(event.run_dir)
            if len(runs) == 2:
                stop.set()  # Ctrl-C as the second trial starts

    result = run_auto_search(spec, 600, emit, stop, name="a2", space=SPACE, rungs=RUNGS, max_trials=3)
    assert result.status == "cancelled" and [t.status for t in result.trials] == ["completed", "stopped"]
    assert summarize_run(Path(runs[1])).status == "cancelled"
    assert result.run_dir == Path(runs[0]) and len(runs) == 2  # no winner's run: the best trial is the result
    assert list(Path(runs[0], "checkpoints").iterdir())  # the result keeps its checkpoints


def test_too_little_time_to_compare_trains_the_baseline(make_spec, tiny_llama, alpaca_jsonl, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.search import auto

    # A machine where a step takes 5 s and an evaluation 5 s: 2 minutes leave no room for trials.
    slow = auto.RunTiming(overhead_s=1.0, step_s=5.0, eval_s=5.0, save_s=0.0, steps=6)
    monkeypatch.setattr(auto.RunTiming, "from_events", classmethod(lambda cls, events: slow))
    lines: list[str] = []
    result = run_auto_search(make_spec(tiny_llama, alpaca_jsonl, max_steps=40), 120,
                             lambda e: lines.append(e.message) if isinstance(e, SearchLog) else None, name="a3")
    assert result.status == "completed" and result.trials == [] and result.best_trial is None
    assert any("too little to compare settings" in line for line in lines)
    best = summarize_run(result.run_dir)  # type: ignore[arg-type]
    # ~110 s left: one evaluation (5 s) and (110 - 5) / (5 s x 1.3) = 16 of the spec's 40 steps.
    assert best.name == "a3-best" and 10 <= best.steps < 40 and best.status == "completed"
    assert [r["trial"] for r in sweep_rows(load_sweep(result.folder))] == ["winner"]


def test_a_search_needs_held_out_rows(make_spec, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match="held-out rows"):
        run_auto_search(make_spec(tiny_llama, alpaca_jsonl, data={"eval_split": 0}), 60)


def test_cli_auto_prints_json_with_trials_and_the_best_run(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, alpaca_jsonl, tmp_path / "runs", max_steps=6)
    done = cli("auto", str(spec), "--budget", "10m", "--max-trials", "2", "--name", "c1", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert len(data["trials"]) == 2 and {t["status"] for t in data["trials"]} <= {"completed", "pruned"}
    for trial in data["trials"]:
        assert set(trial["settings"]) >= {"method", "learning_rate", "batch_size", "targets"}
        assert trial["metric"] > 0
    assert Path(data["best_run_dir"], "checkpoints", "best").exists()
    assert "probe:" in done.stderr and "winner: trial" in done.stderr  # progress on stderr with --json
    assert (tmp_path / "runs" / "sweeps" / "c1" / "sweep.csv").exists()
    bad = cli("auto", str(spec), "--budget", "20 minutes")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "90s, 20m, 1h" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.gui
def test_auto_from_the_runs_page(window, qtbot, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.spec import TrainingSpec
    from PySide6.QtCore import Qt
    from test_gui import choose

    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    window.state.training = TrainingSpec(max_steps=8, batch_size=4, precision="float32")
    panel = window.runs_page.sweep
    window.go_to("runs")
    finished = []
    panel.sweep_finished.connect(finished.append)
    panel.budget.setText("20 minutes")
    qtbot.mouseClick(panel.auto_button, Qt.MouseButton.LeftButton)
    assert "90s, 20m" in panel.status.text() and not window.train_page.controller.running
    panel.max_trials = 3  # the budget bounds the time; three trials keep the test short
    panel.budget.setText("2m")
    qtbot.mouseClick(panel.auto_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.train_page.metrics != [], timeout=60_000)  # trials shown live on Train
    qtbot.waitUntil(lambda: bool(finished), timeout=120_000)
    plan = finished[0]
    assert plan.kind == "auto" and plan.best_run_dir
    statuses = [r["status"] for r in panel.rows]
    assert {"completed", "pruned"} & set(statuses) and [r["trial"] for r in panel.rows].count("winner") == 1
    losses = [r["final_eval_loss"] for r in panel.rows if r["final_eval_loss"] is not None]
    assert losses == sorted(losses)  # ranked by the quality picked (final eval loss), the winner among them
    assert panel.table.rowCount() == len(panel.rows) >= 3
    winner_row = next(i for i, r in enumerate(panel.rows) if r["run_dir"] == plan.best_run_dir)
    assert panel.table.item(winner_row, 0).font().bold()  # the winner stands out
    assert window.state.current_run == Path(plan.best_run_dir)  # Try and Export act on the winner
    assert [str(r.path) for r in window.runs_page.selected_runs()] == [plan.best_run_dir]  # and the table shows it
    plots = window.train_page.plots.values()  # the winner's own series only: no trial's empty ones
    assert all(count > 0 for plot in plots for count in plot.point_counts().values())
    assert panel.auto_button.isEnabled()
