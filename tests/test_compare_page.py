"""The Compare page: every method's cost for the chosen model, updated as settings change."""

from __future__ import annotations

import csv

import pytest
from PySide6.QtCore import Qt

from engine.methods import METHODS

pytestmark = pytest.mark.gui


def lora_row(page):  # type: ignore[no-untyped-def]
    return next(r for r in page.rows if r["method"] == "lora")


def test_costs_for_every_method_follow_the_settings(window, qtbot, tiny_llama, tmp_path):  # type: ignore[no-untyped-def]
    page = window.pages["compare"]
    window.pages["model"].choose(str(tiny_llama))
    window.go_to("compare")
    qtbot.waitUntil(lambda: len(page.rows) == len(METHODS), timeout=120_000)
    row = lora_row(page)
    assert row["trainable_params"] > 0 and row["memory_bytes"]["total"] > row["memory_bytes"]["weights"]
    assert page.table.rowCount() == len(METHODS)
    assert page.table.item(0, 0).text() == "LoRA"  # the chosen method, highlighted first in the library order
    bitfit = next(r for r in page.rows if r["method"] == "bitfit")
    assert "no bias" in bitfit["error"] or "has none" in bitfit["error"]

    before = row["trainable_params"]
    window.state.method = window.state.method.model_copy(update={"r": 16})
    window.state.spec_edited.emit()
    qtbot.waitUntil(lambda: lora_row(page)["trainable_params"] == 2 * before, timeout=60_000)

    page.ticks.item(1).setCheckState(Qt.CheckState.Unchecked)
    assert page.table.rowCount() == len(METHODS) - 1
    out = tmp_path / "costs.csv"
    page.save_csv(str(out))
    rows = list(csv.reader(out.open()))
    assert rows[0][0] == "method" and len(rows) == len(METHODS)
    page.save_png(str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_start_warns_when_the_estimate_does_not_fit(window, qtbot, tiny_llama, alpaca_jsonl, monkeypatch):  # type: ignore[no-untyped-def]
    from engine.spec import DataSpec

    window.state.set_model(str(tiny_llama))
    window.state.data = DataSpec(path=str(alpaca_jsonl))
    window.state.last_estimate = {"method": "lora", "fits": False, "device_memory_bytes": 2**30,
                                  "memory_bytes": {"total": 2**33}}
    asked = []
    monkeypatch.setattr(window.train_page, "ask_start_anyway", lambda text: asked.append(text) or False)
    window.train_page.start()
    assert asked and "smaller batch size" in asked[0] and "gradient checkpointing" in asked[0]
    assert not window.train_page.controller.running
