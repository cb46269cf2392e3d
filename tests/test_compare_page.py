"""The Compare page: every method's cost for the chosen model, updated as settings change."""

from __future__ import annotations

import csv
import html

import pytest
from adapter_studio.engine.methods import METHODS
from adapter_studio.gui.pages.compare_page import COMMON, cost_overrides
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton

from tests.test_gui import choose

pytestmark = pytest.mark.gui


def lora_row(page):  # type: ignore[no-untyped-def]
    return next(r for r in page.rows if r["method"] == "lora")


def test_costs_for_every_method_follow_the_settings(window, qtbot, tiny_llama, tmp_path):  # type: ignore[no-untyped-def]
    page = window.pages["compare"]
    window.pages["model"].choose(str(tiny_llama))
    window.go_to("compare")
    qtbot.waitUntil(page.complete, timeout=120_000)
    # Every method, then the baseline that fits a text generator: in-context examples, nothing trained.
    assert len(page.rows) == len(METHODS) + 1 and page.rows[-1]["method"] == "in_context"
    assert page.rows[-1]["trainable_params"] == 0 and "4 training rows before each prompt" in page.notes.text()
    assert "nothing trains" in page.chart.visible_texts()
    shown = {page.ticks.item(i).data(Qt.ItemDataRole.UserRole) for i in range(page.ticks.count())
             if not page.ticks.item(i).isHidden()}
    assert "in_context" in shown and "features" not in shown  # no tick without a row (a classifier's baseline)
    row = lora_row(page)
    assert row["trainable_params"] > 0 and row["memory_bytes"]["total"] > row["memory_bytes"]["weights"]
    # The common library is charted at first (it reads without scrolling), every method a click away.
    assert page.table.rowCount() == len(COMMON) + 1 and page.charted.text() == f"Charted: 17 of {len(METHODS)} methods"
    qtbot.mouseClick(page.findChild(QPushButton, "tickAll"), Qt.MouseButton.LeftButton)
    assert page.table.rowCount() == len(METHODS) + 1
    assert page.table.item(0, 0).text() == "LoRA"  # the chosen method, highlighted first in the library order
    size = page.table.horizontalHeaderItem(3)  # 9.4 MiB here was 12.7 MiB exported, unexplained
    assert size.text() == "adapter size" and "An export adds the tokenizer's files" in size.toolTip()
    bitfit = next(r for r in page.rows if r["method"] == "bitfit")
    assert "no bias" in bitfit["error"] or "has none" in bitfit["error"]

    # Untouched, every method is at its own defaults, as `adapter-studio params` gives it: LoRA's r of 8 gave
    # VeRA (256 of its own) a rank of 8.
    from adapter_studio.engine.estimate.table import estimate_table

    own = {r["method"]: r["trainable_params"] for r in estimate_table(str(tiny_llama), "vera,miss,lora", [])}
    assert {m: r["trainable_params"] for r in page.rows if (m := r["method"]) in own} == own
    before = row["trainable_params"]
    window.state.method = window.state.method.model_copy(update={"r": 16})
    window.state.spec_edited.emit()
    qtbot.waitUntil(lambda: lora_row(page)["trainable_params"] == 2 * before, timeout=60_000)
    assert "method.r=16" in cost_overrides(window.state)  # a rank set is shared by the methods that have one

    page.ticks.item(1).setCheckState(Qt.CheckState.Unchecked)
    assert page.table.rowCount() == len(METHODS)
    out = tmp_path / "costs.csv"
    page.save_csv(str(out))
    rows = list(csv.reader(out.open()))
    assert rows[0][0] == "method" and len(rows) == len(METHODS) + 1
    assert rows[-1][:2] == ["In-context examples (no training)", "0"] and rows[-1][-1] == "no training (baseline)"
    page.save_png(str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").stat().st_size > 1000

    # Two processes: the memory shown is each one's, and the page says so.
    window.state.training = window.state.training.model_copy(update={"devices": 2})
    window.state.spec_edited.emit()
    qtbot.waitUntil(lambda: page.complete() and lora_row(page)["assumptions"]["devices"] == 2, timeout=60_000)
    assert "per process: 2 processes" in page.status.text()
    if page.device_memory:  # CPU processes share the machine's memory: each bar against its half
        assert "shared by 2" in page.status.text()


def test_start_warns_when_the_estimate_does_not_fit(window, qtbot, tiny_llama, alpaca_jsonl, monkeypatch):  # type: ignore[no-untyped-def]
    from adapter_studio.engine.spec import DataSpec

    window.state.set_model(str(tiny_llama))
    window.state.data = DataSpec(path=str(alpaca_jsonl))
    window.state.last_estimate = {"method": "lora", "fits": False, "device_memory_bytes": 2**30,
                                  "memory_bytes": {"total": 2**33}}
    asked = []
    monkeypatch.setattr(window.train_page, "ask_start_anyway", lambda text: asked.append(text) or False)
    window.train_page.start()
    assert asked and "smaller batch size" in asked[0] and "gradient checkpointing" in asked[0]
    assert not window.train_page.controller.running


def test_an_edit_shows_the_chosen_method_first_then_the_rest(tiny_llama):  # type: ignore[no-untyped-def]
    from adapter_studio.engine.methods import LoRA
    from adapter_studio.gui.pages.compare_page import estimate_rows

    source = str(tiny_llama)
    *_, settled = [rows for rows in estimate_rows(source, [], LoRA()) if rows]
    assert not any(r.get("pending") for r in settled)
    before = {r["method"]: r for r in settled}

    # Batch size only changes the arithmetic: everything is answered at once, nothing left pending.
    answers = [rows for rows in estimate_rows(source, ["training.batch_size=16"], LoRA()) if rows]
    assert len(answers) == 1
    bigger = {r["method"]: r for r in answers[0]}
    assert bigger["ia3"]["memory_bytes"]["activations"] > before["ia3"]["memory_bytes"]["activations"]

    # A new rank (one no other test uses, so nothing is cached): LoRA, the chosen method, is exact in the
    # first answer; the other rank methods follow.
    first, *_, last = [rows for rows in estimate_rows(source, ["method.r=24"], LoRA(r=24)) if rows]
    first_rows = {r["method"]: r for r in first}
    assert first_rows["lora"]["trainable_params"] == 3 * before["lora"]["trainable_params"]
    assert first_rows["dora"].get("pending") and not first_rows["ia3"].get("pending")
    last_rows = {r["method"]: r for r in last}
    assert not any(r.get("pending") for r in last)
    assert last_rows["dora"]["trainable_params"] > before["dora"]["trainable_params"]


def test_the_three_charts_share_the_row_order(window, qtbot, tiny_llama):  # type: ignore[no-untyped-def]
    page = window.pages["compare"]
    window.pages["model"].choose(str(tiny_llama))
    window.go_to("compare")
    qtbot.waitUntil(page.complete, timeout=120_000)
    chart = page.chart
    # Every plot draws row 0 (the library's first method) at the top.
    assert all(plot.getViewBox().yInverted() for plot in (chart.params, chart.size, chart.memory))


def test_refusals_are_listed_under_the_chart_not_across_it(window, qtbot, tiny_llama):  # type: ignore[no-untyped-def]
    """Issue 26: BitFit's reason was printed in red across the bars; the parts' legend covered the memory bars."""
    page = window.pages["compare"]
    window.pages["model"].choose(str(tiny_llama))
    window.go_to("compare")
    qtbot.waitUntil(page.complete, timeout=120_000)
    qtbot.mouseClick(page.findChild(QPushButton, "tickAll"), Qt.MouseButton.LeftButton)
    reason = next(r for r in page.rows if r["method"] == "bitfit")["error"]
    assert reason.startswith("method.name: ")  # the engine's message names the field; the page leaves it out
    drawn = page.chart.visible_texts()
    assert "not available" in drawn and not any(reason[:20] in text for text in drawn)
    full = next(text for r, text in zip(page.visible_rows(), drawn, strict=True) if r["method"] == "full")
    assert full.endswith("(100%)")  # it read "(1e+02%)"
    assert f"<b>BitFit</b>: {html.escape(reason.removeprefix('method.name: '))}" in page.notes.text()
    # Nothing drawn in the chart runs past the edge of its plot, or over another plot's bars.
    view = page.chart.params.getViewBox()

    def overflowing() -> list[str]:
        right = view.sceneBoundingRect().right() + 1
        return [t.toPlainText() for t in page.chart.labels if t.isVisible() and t.sceneBoundingRect().right() > right]

    qtbot.waitUntil(lambda: not overflowing(), timeout=5_000)  # once drawn at the window's size
    legend = page.chart.legend
    assert len(legend.items) == 6
    assert not legend.sceneBoundingRect().intersects(page.chart.memory.getViewBox().sceneBoundingRect())

    # The notes follow the ticked methods. AdapterFusion is refused too: no finished runs are chosen to fuse.
    assert "<b>AdapterFusion</b>: AdapterFusion fuses two or more" in page.notes.text()  # no spec field's path
    for title in ("BitFit", "AdapterFusion"):
        tick = next(i for i in range(page.ticks.count()) if page.ticks.item(i).text() == title)
        page.ticks.item(tick).setCheckState(Qt.CheckState.Unchecked)
    assert "BitFit" not in page.notes.text() and "not available" not in page.chart.visible_texts()


def test_memory_is_estimated_at_the_datas_longest_row(window, qtbot, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    """Issue 26: every row at the full length made 6.4 GiB for a demo run that peaked at 2.3 GiB. Batches are
    padded to their longest row, so once the Data page has counted the tokens the peak step is estimated."""
    page, data_page = window.pages["compare"], window.pages["data"]
    window.pages["model"].choose(str(tiny_llama))
    window.go_to("compare")
    qtbot.waitUntil(page.complete, timeout=120_000)
    worst = lora_row(page)
    assert "worst case" in page.notes.text() and f"× {worst['assumptions']['seq_len']} tokens" in page.notes.text()

    data_page.path.setText(str(alpaca_jsonl))
    data_page.reload(keep_mapping=False)
    qtbot.waitUntil(lambda: data_page.stats is not None and not data_page.stats_busy, timeout=60_000)
    longest = max(data_page.stats["lengths"])
    assert longest < worst["assumptions"]["seq_len"]
    qtbot.waitUntil(lambda: page.complete() and lora_row(page)["assumptions"]["seq_len"] == longest, timeout=60_000)
    measured = lora_row(page)
    assert measured["memory_bytes"]["activations"] < worst["memory_bytes"]["activations"] / 2
    assert measured["memory_bytes"]["weights"] == worst["memory_bytes"]["weights"]
    assert f"× {longest} tokens: the data's longest row" in page.notes.text()
    # Only the answers' tokens go through the output layer (the engine's loss skips the prompts').
    share = data_page.stats["labelled_share"]
    assert 0 < share < 1 and measured["assumptions"]["labelled_share"] == share
    assert f"only the {100 * share:.0f}% of tokens that carry a loss" in page.notes.text()

    data_page.packing.setChecked(True)  # packed rows fill max length: the full length is the real one
    full = data_page.stats["max_length"]
    # (Until the rows are counted again the page falls back to the worst case, also the full length.)
    qtbot.waitUntil(lambda: page.complete() and "packed rows fill max length" in page.notes.text(), timeout=60_000)
    assert lora_row(page)["assumptions"]["seq_len"] == full


def test_chart_labels_write_numbers_out() -> None:
    from adapter_studio.gui.cost_chart import short_count, three_digits

    assert [three_digits(x) for x in (100.0, 0.341, 5.3, 0.0086, 1234.0)] == ["100", "0.341", "5.3", "0.0086", "1234"]
    assert [short_count(n) for n in (950, 460_800, 999_700, 134_515_008, 7_000_000_000)] == [
        "950", "461K", "1M", "135M", "7B"]  # fmt: skip


def tiny_budget(tiny_llama, monkeypatch, **training):  # type: ignore[no-untyped-def]
    """Device memory just enough for the tiny model's LoRA step with `training`, for the Compare page's
    estimate and the advice alike."""
    from adapter_studio.engine.estimate import fit, table
    from adapter_studio.engine.spec import parse_spec

    spec = parse_spec({"model": {"source": str(tiny_llama)}, "data": {"path": "-"}, "training": training})
    monkeypatch.setattr(fit, "_device_memory", lambda device: 2**50)
    budget = fit.fit_advice(spec).needed
    monkeypatch.setattr(fit, "_device_memory", lambda device: budget)
    monkeypatch.setattr(table, "_device_memory", lambda device: budget)
    return budget


def test_compare_page_says_what_makes_the_chosen_method_fit_and_applies_it(window, qtbot, tiny_llama,  # type: ignore[no-untyped-def]
                                                                           monkeypatch):  # fmt: skip
    from adapter_studio.engine.spec import TrainingSpec

    tiny_budget(tiny_llama, monkeypatch, batch_size=4)
    page = window.pages["compare"]
    window.pages["model"].choose(str(tiny_llama))
    window.state.set_training(TrainingSpec(batch_size=16))
    window.go_to("compare")
    qtbot.waitUntil(lambda: "does not fit" in page.fit_note.text(), timeout=120_000)
    note = html.unescape(page.fit_note.text())
    assert "It fits with" in note and "batch 4 × 4 accumulated" in note, note
    assert page.fit_apply.isVisible()
    page.fit_apply.click()
    assert (window.state.training.batch_size, window.state.training.gradient_accumulation) == (4, 4)
    assert window.pages["method"].training_form.values()["batch_size"] == 4  # the Method page shows it
    qtbot.waitUntil(lambda: page.complete() and lora_row(page)["assumptions"]["batch_size"] == 4, timeout=60_000)
    qtbot.waitUntil(lambda: page.fit_note.text() == "" and not page.fit_apply.isVisible(), timeout=30_000)


@pytest.mark.parametrize("choice", ["apply", "cancel", "anyway"])
def test_start_offers_the_change_that_fits(window, qtbot, tiny_llama, alpaca_jsonl, monkeypatch, choice):  # type: ignore[no-untyped-def]
    from adapter_studio.engine.spec import DataSpec, TrainingSpec

    budget = tiny_budget(tiny_llama, monkeypatch, batch_size=2, max_steps=2, eval_samples=0, precision="float32")
    window.state.set_model(str(tiny_llama))
    window.state.data = DataSpec(path=str(alpaca_jsonl))
    window.state.set_training(TrainingSpec(batch_size=8, max_steps=2, eval_samples=0, precision="float32"))
    window.state.last_estimate = {"method": "lora", "fits": False, "device_memory_bytes": budget,
                                  "memory_bytes": {"total": budget * 2}}  # fmt: skip
    asked = []
    monkeypatch.setattr(window.train_page, "ask_fit", lambda text: asked.append(text) or choice)
    train = window.train_page
    train.start()
    assert asked and "It fits with batch 2 × 4 accumulated" in asked[0], asked
    if choice == "cancel":
        assert not train.controller.running and window.state.training.batch_size == 8
        return
    qtbot.waitUntil(lambda: not train.controller.running, timeout=120_000)
    assert train.last_status == "completed", train.last_error
    saved = (train.run_dir / "spec.yaml").read_text()
    expected = (2, 4) if choice == "apply" else (8, 1)
    assert (window.state.training.batch_size, window.state.training.gradient_accumulation) == expected
    assert f"batch_size: {expected[0]}" in saved and f"gradient_accumulation: {expected[1]}" in saved


def test_a_preference_objective_counts_two_rows_a_pair_and_the_frozen_copy(window, qtbot, tiny_llama):  # type: ignore[no-untyped-def]
    """Issue 24: DPO's memory in Compare: each pair is a chosen and a rejected row, and full fine-tuning keeps a
    frozen copy of the model as the reference."""
    from adapter_studio.engine.objectives import OBJECTIVES

    page = window.pages["compare"]
    window.pages["model"].choose(str(tiny_llama))
    window.go_to("compare")
    qtbot.waitUntil(page.complete, timeout=120_000)
    before = {r["method"]: r for r in page.rows if "memory_bytes" in r}
    batch = before["lora"]["assumptions"]["batch_size"]
    window.state.set_objective(OBJECTIVES["dpo"]())
    qtbot.waitUntil(lambda: page.complete() and lora_row(page)["assumptions"].get("objective") == "dpo",
                    timeout=60_000)  # fmt: skip
    after = {r["method"]: r for r in page.rows if "memory_bytes" in r}
    assert after["lora"]["assumptions"]["rows_per_step"] == 2 * batch
    assert after["lora"]["memory_bytes"]["activations"] > before["lora"]["memory_bytes"]["activations"]
    assert after["lora"]["memory_bytes"]["weights"] == before["lora"]["memory_bytes"]["weights"]  # adapter off
    assert after["full"]["memory_bytes"]["weights"] == 2 * before["full"]["memory_bytes"]["weights"]  # a copy
    notes = page.notes.text()
    assert f"{batch} pairs ({2 * batch} rows: chosen and rejected" in notes
    assert "DPO compares with the model before training: methods that change the base weights (" in notes
    assert "keep a frozen copy of it" in notes


def test_the_chart_reads_without_scrolling_and_shows_each_steps_memory(window, qtbot, tiny_llama):  # type: ignore[no-untyped-def]
    """The helper's walk at 1280 x 800: 50 rows put the axes and legend below the fold; the memory bars had no
    numbers, squeezed against a device line 20 times further; full fine-tuning chosen was scrolled out of sight."""
    page = window.pages["compare"]
    window.resize(1280, 800)
    window.pages["model"].choose(str(tiny_llama))
    window.go_to("compare")
    qtbot.waitUntil(page.complete, timeout=120_000)
    assert page.chart.height() <= page.chart_scroll.viewport().height()  # the common rows: nothing to scroll
    totals = [label.toPlainText() for label in page.chart.memory_labels if label.isVisible()]
    assert len(totals) == len([r for r in page.visible_rows() if "memory_bytes" in r]) and all(totals)
    largest = max(r["memory_bytes"]["total"] for r in page.visible_rows() if "memory_bytes" in r)
    if page.device_memory and page.device_memory > 3 * largest:  # this machine's memory against a tiny model
        assert not page.chart.device_line.isVisible() and "device" in page.chart.memory.getAxis("bottom").labelText
    for plot in (page.chart.size, page.chart.memory):  # a tiny model's 0.5 GiB read "500" under "(x0.001)"
        axis = plot.getAxis("bottom")
        assert axis.autoSIPrefixScale == 1.0 and "(x" not in axis.labelString()

    qtbot.mouseClick(page.findChild(QPushButton, "tickAll"), Qt.MouseButton.LeftButton)
    window.resize(1024, 640)
    window.pages["method"].select("supertuning")  # near the end of the library's 50
    qtbot.waitUntil(lambda: page.complete() and page.state.last_estimate["method"] == "supertuning", timeout=60_000)
    row = next(i for i, r in enumerate(page.visible_rows()) if r["method"] == "supertuning")
    top = page.chart.row_top(row) - page.chart_scroll.verticalScrollBar().value()
    assert 0 <= top <= page.chart_scroll.viewport().height()
    assert page.table.visualItemRect(page.table.item(row, 0)).intersects(page.table.viewport().rect())
    page.chart_scroll.verticalScrollBar().setValue(0)  # the person scrolls up while estimates stream in
    page.redraw()
    assert page.chart_scroll.verticalScrollBar().value() == 0


def test_a_classifiers_costs_count_the_datas_labels(window, qtbot, tiny_bert_cls, tmp_path):  # type: ignore[no-untyped-def]
    """AG News has 4 topics: Compare counted a 2-label head (770 parameters fewer than the run trained) and a
    feature baseline of '2 labels'."""
    from adapter_studio.engine.estimate.table import estimate_table

    topics = ["world", "sports", "business", "science"]
    path = tmp_path / "topics.csv"
    path.write_text("text,label\n" + "".join(f"item {i} of {topics[i % 4]},{topics[i % 4]}\n" for i in range(40)))
    window.pages["model"].choose(str(tiny_bert_cls))
    page = window.pages["data"]
    page.path.setText(str(path))
    page.reload(keep_mapping=False)
    qtbot.waitUntil(lambda: window.state.data is not None and window.state.data_labels == 4, timeout=60_000)
    compare = window.pages["compare"]
    window.go_to("compare")
    qtbot.waitUntil(lambda: compare.complete() and lora_row(compare)["trainable_params"]
                    == estimate_table(str(tiny_bert_cls), "lora", num_labels=4)[0]["trainable_params"],
                    timeout=120_000)  # fmt: skip
    assert lora_row(compare)["trainable_params"] > estimate_table(str(tiny_bert_cls), "lora")[0]["trainable_params"]
    features = next(r for r in compare.rows if r["method"] == "features")
    assert "4 labels" in features["note"]


def test_an_objective_the_data_cannot_train_is_said_under_the_chart(window, qtbot, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    """DPO picked with instruction rows loaded: the chart estimates DPO's pairs, and says the run cannot start
    (as the Method page does), not only a failed run after Start."""
    from adapter_studio.engine.objectives import OBJECTIVES

    page = window.pages["compare"]
    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    window.go_to("compare")
    qtbot.waitUntil(page.complete, timeout=120_000)
    assert "Cannot train" not in page.notes.text()
    window.state.set_objective(OBJECTIVES["dpo"]())
    qtbot.waitUntil(lambda: page.complete() and lora_row(page)["assumptions"].get("objective") == "dpo",
                    timeout=60_000)  # fmt: skip
    notes = page.notes.text()
    assert "<b>Cannot train:</b>" in notes and "or pick Supervised on the Method page" in notes, notes
