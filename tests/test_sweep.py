"""Method sweep: several methods on one budget, headless (engine, CLI) and from the Runs page."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Started
from adapter_studio.engine.training.sweep import list_sweeps, load_sweep, plan_sweep, run_sweep, sweep_rows
from test_cli import cli, write_spec


def test_sweep_trains_each_method_and_tabulates_quality_against_cost(make_spec, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, max_steps=4, eval_every=4)
    plan = plan_sweep(spec, ["lora", "ia3", "bitfit"], name="s1")
    assert [e.method for e in plan.entries] == ["lora", "ia3", "bitfit"]
    assert plan.entries[2].refused and "bias" in plan.entries[2].refused  # tiny Llama has no biases
    started: list[Started] = []
    run_sweep(plan, lambda e: started.append(e) if isinstance(e, Started) else None)
    assert [e.method for e in started] == ["lora", "ia3"]
    rows = {r["method"]: r for r in sweep_rows(load_sweep(plan.folder))}
    for name in ("lora", "ia3"):
        row = rows[name]
        assert row["status"] == "completed"
        assert row["trainable_params"] == next(e.trainable_params for e in started if e.method == name)
        assert row["adapter_bytes"] > 0 and row["peak_memory_bytes"] > 0 and row["train_seconds"] > 0
        assert row["final_eval_loss"] is not None and Path(row["run_dir"]).name == f"s1-{name}"
    assert rows["lora"]["trainable_params"] > rows["ia3"]["trainable_params"]
    assert rows["bitfit"]["status"] == "refused"
    # Same budget and seed for all; each method's own learning rate (spec left it automatic).
    specs = [plan.spec_for(e) for e in plan.entries[:2]]
    assert {(s.training.max_steps, s.training.batch_size, s.training.seed) for s in specs} == {(4, 4, 0)}
    assert [s.training.learning_rate for s in specs] == [None, None]
    table = list(csv.DictReader(io.StringIO((plan.folder / "sweep.csv").read_text())))
    assert [r["method"] for r in table] == ["lora", "ia3", "bitfit"] and table[0]["status"] == "completed"
    assert [p.name for p in list_sweeps(spec.output_dir)] == ["s1"]


def test_a_stopped_sweep_continues_with_the_methods_left(make_spec, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, max_steps=3)
    plan = plan_sweep(spec, ["lora", "ia3"], name="s2")
    stop = threading.Event()
    stop.set()  # stopped before it began: nothing runs, both stay pending
    run_sweep(plan, None, stop)
    assert [r["status"] for r in sweep_rows(plan)] == ["pending", "pending"]
    run_sweep(load_sweep(plan.folder))
    assert [r["status"] for r in sweep_rows(load_sweep(plan.folder))] == ["completed", "completed"]


@pytest.mark.parametrize(
    ("methods", "expected"),
    [([], "at least one method"), (["lora", "loraa"], "unknown method loraa — did you mean .*lora"),
     (["ia3", "ia3"], "ia3 is listed twice"),
     (["lora", "LoRA"], "lora is listed twice")],  # LoRA as a spec takes it
)
def test_bad_method_lists_are_refused(make_spec, tiny_llama, alpaca_jsonl, methods, expected):  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match=expected):
        plan_sweep(make_spec(tiny_llama, alpaca_jsonl), methods)


def test_cli_sweep_prints_the_table_and_writes_the_csv(tmp_path, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, alpaca_jsonl, tmp_path / "runs", max_steps=3)
    done = cli("sweep", str(spec), "--methods", "lora,prompt_tuning", "--name", "cli", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)  # stdout is the JSON alone: the progress went to stderr
    assert "lora: finished completed" in done.stderr and "table:" in done.stderr  # which method finished
    assert [(r["method"], r["status"]) for r in rows] == [("lora", "completed"), ("prompt_tuning", "completed")]
    assert (tmp_path / "runs" / "sweeps" / "cli" / "sweep.csv").exists()
    missing = cli("sweep", str(spec))
    assert missing.returncode == 2 and "--methods" in missing.stderr
    both = cli("sweep", str(spec), "--continue", str(tmp_path / "runs" / "sweeps" / "cli"))  # the spec went unread
    assert both.returncode == 2 and "or --continue SWEEP_DIR, not both" in both.stderr


@pytest.mark.gui
def test_sweep_from_the_runs_page(window, qtbot, tiny_llama, alpaca_jsonl, tmp_path):  # type: ignore[no-untyped-def]
    import pyqtgraph as pg
    from adapter_studio.engine.spec import TrainingSpec
    from PySide6.QtCore import Qt
    from test_gui import choose

    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    window.state.training = TrainingSpec(max_steps=3, batch_size=4, save_every=100, eval_samples=0,
                                         precision="float32", eval_every=3)
    panel = window.runs_page.sweep
    panel.set_ticked(["lora", "ia3", "bitfit"])
    window.go_to("runs")
    finished = []
    panel.sweep_finished.connect(finished.append)
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=240_000)
    # Ranked by the quality picked (final eval loss, lower first); the refused method has none: last.
    assert {(r["method"], r["status"]) for r in panel.rows} == {
        ("lora", "completed"), ("ia3", "completed"), ("bitfit", "refused"),
    }  # fmt: skip
    losses = [r["final_eval_loss"] for r in panel.rows]
    assert losses[:2] == sorted(losses[:2]) and panel.rows[2]["method"] == "bitfit"
    assert panel.table.rowCount() == 3 and panel.table.item(0, 1).text() == "completed"
    last = panel.table.columnCount() - 1
    assert panel.table.horizontalHeaderItem(last).text() == "▼ final held-out loss"
    assert panel.table.item(0, last).text() == f"{losses[0]:.4f}"
    assert len(panel.scatter.getPlotItem().listDataItems()) == 2  # one point per trained method
    panel.x_axis.setCurrentIndex(panel.x_axis.findData("adapter_bytes"))
    assert len(panel.scatter.getPlotItem().listDataItems()) == 2
    out = tmp_path / "sweep.csv"
    panel.save_csv(str(out))
    assert out.read_text().splitlines()[0].startswith("method,status,trainable_params")
    names = {window.runs_page.table.item(r, 0).text() for r in range(window.runs_page.table.rowCount())}
    assert {n.rsplit("-", 1)[-1] for n in names} >= {"lora", "ia3"}  # the sweep's runs are in the history
    # Ranking by an evaluation's metric: the runs are evaluated on their held-out rows first.
    assert not panel.evaluate_button.isEnabled()  # training's own metric: nothing to evaluate
    panel.y_axis.setCurrentIndex(panel.y_axis.findData("tuned_token_f1"))
    assert panel.evaluate_button.isEnabled()
    assert "press Evaluate runs" in panel.scatter.getPlotItem().titleLabel.text
    qtbot.mouseClick(panel.evaluate_button, Qt.MouseButton.LeftButton)
    assert panel.evaluate_button.text() == "Stop evaluating"
    qtbot.waitUntil(lambda: panel.evaluate_button.text() == "Evaluate runs", timeout=240_000)
    scores = [r["tuned_token_f1"] for r in panel.rows if r["status"] != "refused"]
    assert None not in scores and scores == sorted(scores, reverse=True)
    assert panel.table.item(0, last).text() == f"{scores[0]:.4f}"
    # The methods as points; the base model and the in-context baseline (no training) as dashed levels.
    assert len(panel.scatter.getPlotItem().listDataItems()) == 2
    baselines = sorted(r["method"] for r in panel.rows if r["status"] == "baseline")
    assert baselines == ["base model (no training)", "in-context (no training)"]
    lines = [i for i in panel.scatter.getPlotItem().items if isinstance(i, pg.InfiniteLine) and i.angle == 0]
    assert len(lines) == 2 and "without training" in panel.status.text()


def test_the_scatter_shows_every_point_and_names_the_best(qtbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Walking the window: the best of two methods (the rightmost) sat on the plot's edge, cut off, its x
    ticks read "6·10⁴7·10⁴8·10⁴9·10⁴", and a search's 40 names piled into one blot."""
    import itertools
    import math

    import pyqtgraph as pg
    from adapter_studio.gui.plots import LOG_TICK_GAP_PX
    from adapter_studio.gui.state import StudioState
    from adapter_studio.gui.sweep_panel import LABELLED_POINTS, SweepPanel

    panel = SweepPanel(StudioState(runs_dir=str(tmp_path)), start_run=lambda spec: None)
    qtbot.addWidget(panel)
    panel.resize(1200, 500)
    panel.show()
    panel.rows = [{"method": "lora", "status": "completed", "trial": i, "run_dir": str(tmp_path / f"t{i}"),
                   "trainable_params": 60_000 + 1_000 * i, "final_eval_loss": 4.0 + i / 100}
                  for i in range(1, 41)]  # fmt: skip
    panel.x_axis.setCurrentIndex(panel.x_axis.findData("trainable_params"))
    panel.y_axis.setCurrentIndex(panel.y_axis.findData("final_eval_loss"))
    panel.draw_scatter()
    plot = panel.scatter.getPlotItem()
    (left, right), (bottom, top) = plot.viewRange()
    xs = [math.log10(r["trainable_params"]) for r in panel.rows]
    ys = [r["final_eval_loss"] for r in panel.rows]
    assert left < min(xs) and max(xs) < right and bottom < min(ys) and max(ys) < top
    names = [i for i in plot.items if isinstance(i, pg.TextItem)]
    assert len(names) == LABELLED_POINTS and {n.toPlainText() for n in names} == {f"lora ({i})" for i in range(1, 7)}
    axis = plot.getAxis("bottom")
    ticks = sorted(v for _, values in axis.tickValues(left, right, axis.width()) for v in values)
    pixels = axis.width() / (right - left)
    assert all((b - a) * pixels >= LOG_TICK_GAP_PX for a, b in itertools.pairwise(ticks)), ticks
