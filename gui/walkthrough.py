"""`adapter-studio walkthrough SPEC --out DIR`: drive the real window offscreen through every page
with a spec — choose, train, look at the run, try it, export both ways — saving a screenshot per page
and a report of what it saw. The README's pictures come from it, and tests use it as an end-to-end check."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapter_studio.engine.errors import UserError

TRAIN_TIMEOUT_S = 3600
TRY_EXAMPLE = 1  # the held-out example the Try picture answers
TRY_NEW_TOKENS = 48  # enough for the tuned answer (a date) and a look at how the base one goes


def _wait(app: Any, condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise UserError(f"the walk-through timed out waiting for {what}", where="walkthrough")
        app.processEvents()
        time.sleep(0.02)


def _settle(app: Any, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def walkthrough(spec_path: str, out: Path, overrides: list[str] | None = None) -> int:
    if "DISPLAY" not in os.environ and "WAYLAND_DISPLAY" not in os.environ:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from adapter_studio.gui.app import create_app
    from adapter_studio.gui.main_window import MainWindow

    out.mkdir(parents=True, exist_ok=True)
    app = create_app()
    window = MainWindow()
    window.resize(1400, 900)
    window.show()
    window.apply_spec_file(spec_path, overrides)
    state = window.state
    report: dict[str, Any] = {"pages": [], "form_fields": {}, "plot_points": {}, "status": None,
                              "exports": {}, "screenshots": []}

    def shoot(name: str) -> None:
        _settle(app)
        path = out / f"{name}.png"
        window.grab().save(str(path))
        report["screenshots"].append(str(path))

    _wait(app, lambda: state.model_summary is not None, 300, "the model summary")
    data_page = window.pages["data"]
    _wait(app, lambda: getattr(data_page, "preview", None) is not None, 300, "the data preview")
    # The pages that need no run first; Runs and Try are shown after training, with the run to show.
    for key in ("model", "data", "method", "compare"):
        window.go_to(key)
        if key == "data":
            _wait(app, lambda: getattr(data_page, "tokenizer", None) is not None, 300, "the tokenizer")
            data_page.show_rendered()
            _settle(app)
            _wait(app, lambda: not data_page.stats_busy, 300, "the data's token counts")  # the histogram drawn
        if key == "compare":
            compare = window.pages["compare"]
            # The memory estimate follows the data's token counts (counted above), then comes the estimate.
            _settle(app)
            _wait(app, compare.complete, 300, "every method's cost")  # not a picture of "estimating…" rows
        report["pages"].append(key)
        shoot(key)
    method_form = window.pages["method"].form
    report["form_fields"][state.method.name] = method_form.field_names if method_form else []

    train = window.train_page
    window.go_to("train")
    report["pages"].append("train")
    train.start()
    total = state.training.max_steps or 0
    _wait(app, lambda: len(train.metrics) >= max(3, total // 2) or not train.controller.running,
          TRAIN_TIMEOUT_S, "training to reach mid-run")
    shoot("train")
    _wait(app, lambda: not train.controller.running, TRAIN_TIMEOUT_S, "training to finish")
    if state.objective.pairwise:  # a preference run's own plots: chosen and rejected rewards, the margin
        train.more.setCurrentWidget(train.rewards_plot)
    shoot("train_finished")
    report["status"] = train.last_status
    report["plot_points"] = {name: plot.total_points() for name, plot in train.plots.items()}

    runs = window.pages["runs"]
    window.go_to("runs")
    report["pages"].append("runs")
    if state.current_run is not None:
        runs.refresh()
        runs.select_runs([state.current_run])  # its curves, not empty axes
    shoot("runs")
    if train.last_status == "completed":
        report["try"] = _try_run(app, window)
        report["pages"].append("try")
        shoot("try")
        report["evaluate"] = _evaluate_run(app, window)
        report["pages"].append("evaluate")
        shoot("evaluate")

    export = window.pages["export"]
    window.go_to("export")
    report["pages"].append("export")
    if train.last_status == "completed":
        from adapter_studio.engine.inference.trained import run_spec

        kinds = ["adapter"] + (["merged"] if run_spec(state.current_run).method.mergeable else [])
        for kind in kinds:
            target = out / "exports" / kind
            if target.exists():
                import shutil

                shutil.rmtree(target)
            export.export(kind, target)
            _wait(app, lambda: not export.busy, 1800, f"the {kind} export")
            if kind in export.exports:
                report["exports"][kind] = export.exports[kind]
        _gguf_export(app, export, state.current_run, out, report)
    shoot("export")
    for key in window.pages:
        if key not in report["pages"]:
            window.go_to(key)
            report["pages"].append(key)
            shoot(key)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("status", "plot_points", "exports")}, indent=1))
    window.close()
    return 0 if report["status"] == "completed" and report["exports"] else 1


def _gguf_export(app: Any, export: Any, run_dir: Path, out: Path, report: dict[str, Any]) -> None:
    """q8_0 GGUF with its llama.cpp / transformers checks, where the run's model can be written as GGUF."""
    import shutil

    from adapter_studio.engine.export.run_gguf import gguf_refusal

    reason = gguf_refusal(run_dir, "q8_0")
    if reason:
        report["gguf_refused"] = reason
        return
    target = out / "exports" / "gguf-q8_0"
    shutil.rmtree(target, ignore_errors=True)
    export.export_gguf("q8_0", target)
    _wait(app, lambda: not export.busy, 1800, "the GGUF export")
    if "gguf-q8_0" in export.exports:
        report["exports"]["gguf-q8_0"] = export.exports["gguf-q8_0"]


def _evaluate_run(app: Any, window: Any) -> dict[str, Any]:
    """On the Evaluate page: score the run just trained (held-out rows, in-context baseline, forgetting)."""
    page = window.pages["evaluate"]
    window.go_to("evaluate")
    page.evaluate()
    _wait(app, lambda: not page.busy, 1800, "the evaluation")
    result = page.result
    if result is None:
        return {"status": page.status.text()}
    return {"status": page.status.text(), "metrics": result.metrics, "report": str(result.report),
            "forgetting": None if result.forgetting is None else result.forgetting.ratio}  # fmt: skip


def _try_run(app: Any, window: Any) -> dict[str, str]:
    """On the Try page: load the run just trained, pick a held-out example and let both models answer."""
    page = window.pages["try"]
    window.go_to("try")
    _wait(app, lambda: page.playground is not None or "Cannot load" in page.status.text(), 600, "the run to load")
    if page.playground is None or not page.examples.count():
        return {"status": page.status.text()}
    page.examples.setCurrentRow(min(TRY_EXAMPLE, page.examples.count() - 1))
    page.max_new_tokens.setValue(TRY_NEW_TOKENS)
    page.generate()
    _wait(app, lambda: not page.busy, 900, "the answers")
    return {
        "status": page.status.text(),  # "Done — run …": both answers finished
        "prompt": page.prompt.toPlainText(),
        "expected": page.expected.toPlainText(),
        **{which: pane.toPlainText() for which, pane in page.panes.items()},
    }
