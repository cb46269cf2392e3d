"""Every method of the library trains on the embedded real models, from the CLI and from the window.

Two optimizer steps each (this checks that each method trains on the real architectures and files,
not how well: the demo and benchmarks measure quality). SmolLM2-135M-Instruct is a Llama-style decoder
without biases, so BitFit is refused there with its reason; on MiniLM (a BERT-style encoder with a
classification head) the methods that hand keys and values through past_key_values, and
LLaMA-Adapter, are refused; AdapterFusion, which fuses finished runs, is refused on both without them, and
Poly, which routes rows by task, on data without a task column (tests/test_poly.py trains it on SmolLM2).
Everything else must complete."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from adapter_studio.engine.methods import METHODS
from adapter_studio.engine.training.sweep import load_sweep, sweep_rows
from test_cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # `make test-all`; CI keeps test_cli's real-model run

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo" / "train.jsonl"
SMOLLM2 = "embedded:smollm2-135m-instruct"
MINILM = "embedded:all-minilm-l6-v2"
# AdapterFusion is refused without finished runs to fuse (tests/test_fusion.py trains it).
REFUSED = {SMOLLM2: {"bitfit", "adapter_fusion", "poly"},
           MINILM: {"llama_adapter", "prefix_tuning", "p_tuning_v2", "mam", "unipelt", "adapter_fusion", "poly"}}
TRAINING = {"max_steps": 2, "batch_size": 2, "save_every": 1000, "eval_samples": 0, "log_every": 1}


def spec_text(model: str, data: Path, runs: Path) -> str:
    data_fields = {"path": str(data), "max_length": 64, "eval_split": 0}
    return json.dumps({"model": {"source": model}, "data": data_fields, "training": TRAINING,
                       "output_dir": str(runs)})  # JSON is YAML


def check_rows(rows: list[dict], model: str) -> None:  # type: ignore[type-arg]
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == set(METHODS)
    refused = {m for m, r in by_method.items() if r["status"] == "refused"}
    assert refused == REFUSED[model], {m: by_method[m]["error"] for m in refused ^ REFUSED[model]}
    for method, row in by_method.items():
        if method in refused:
            assert row["error"], method
            continue
        assert row["status"] == "completed", (method, row["error"])
        assert row["trainable_params"] > 0 and math.isfinite(row["final_loss"]), method


# pytest-timeout's 900 s (pyproject) would end it before its own subprocess limit: on a busy 2-core machine
# 22 runs (each loading SmolLM2) took longer than 900 s; the library now has 47, so about twice the wait.
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("model", [SMOLLM2, MINILM])
def test_every_method_trains_on_the_real_model_through_the_cli(model, tmp_path, classification_csv) -> None:  # type: ignore[no-untyped-def]
    data = DEMO if model == SMOLLM2 else classification_csv
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(model, data, tmp_path / "runs"))
    done = cli("sweep", str(spec), "--methods", "all", "--name", "all", timeout=3300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_rows(sweep_rows(load_sweep(tmp_path / "runs" / "sweeps" / "all")), model)


@pytest.mark.gui
@pytest.mark.timeout(3600)  # as above: its own wait is 3300 s
@pytest.mark.parametrize("model", [SMOLLM2, MINILM])
def test_every_method_trains_on_the_real_model_from_the_window(window, qtbot, model, classification_csv) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.spec import DataSpec, TrainingSpec
    from PySide6.QtCore import Qt

    window.state.set_model(model)
    window.state.set_data(DataSpec(path=str(DEMO if model == SMOLLM2 else classification_csv), max_length=64,
                                   eval_split=0))
    window.state.training = TrainingSpec(**TRAINING)
    panel = window.runs_page.sweep
    panel.set_ticked(list(METHODS))
    finished: list = []  # type: ignore[type-arg]
    panel.sweep_finished.connect(finished.append)
    window.go_to("runs")
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=3_300_000)
    check_rows(panel.rows, model)
    assert window.train_page.metrics and window.train_page.metrics[-1].step == 2  # the last run, shown live
