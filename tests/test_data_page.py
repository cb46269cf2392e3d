"""The Data page, offscreen: token-length histogram, max length and packing, and every bad input as a
dialog (never a traceback) after which the window still works."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.data.preview import length_stats
from adapter_studio.engine.spec import DataSpec
from conftest import wind_down
from PySide6.QtWidgets import QApplication, QMessageBox
from test_data import BAD_INPUTS, alpaca_rows, write_rows

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from adapter_studio.gui.main_window import MainWindow
    from adapter_studio.gui.state import StudioState

    monkeypatch.setenv("ADAPTER_STUDIO_DATA_CACHE", str(tmp_path / "cache"))
    w = MainWindow(StudioState(runs_dir=str(tmp_path / "runs")))
    w.show()
    w.go_to("data")
    yield w
    # Not qtbot.addWidget: it deletes the window before this runs. No thread outlives the window, and
    # none starts after it: the data page's own work ends, then every page's (conftest.wind_down).
    qtbot.waitUntil(lambda: not w.pages["data"].busy and not w.pages["data"].stats_busy, timeout=60_000)
    wind_down(w, qtbot)
    for dialog in error_dialogs():
        dialog.close()
    w.close()
    w.deleteLater()
    qtbot.wait(10)


def error_dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


def choose_model(window: Any, qtbot: Any, model: Path) -> Any:
    window.pages["model"].choose(str(model))
    page = window.pages["data"]
    qtbot.waitUntil(lambda: page._stats_tokenizer is not None, timeout=60_000)
    return page


def open_data(page: Any, qtbot: Any, path: Path | str) -> None:
    page.path.setText(str(path))
    page.reload(keep_mapping=False)


def wait_for_stats(page: Any, qtbot: Any) -> dict[str, Any]:
    qtbot.waitUntil(lambda: page.stats is not None and not page.stats_busy, timeout=60_000)
    return page.stats


def test_histogram_max_length_line_counts_and_packing(window, qtbot, tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    page = choose_model(window, qtbot, tiny_llama)
    assert not page.max_length_line.isVisible()  # nothing counted yet: no line over empty axes
    page.eval_split.setValue(0.0)
    page.max_length.setValue(60)
    pairs = [("reverse " + "a" * n, "b" * n) for n in (1, 2, 3, 4, 20, 40)]
    path = write_rows(tmp_path / "a.jsonl", [*alpaca_rows(pairs), {"instruction": "x", "output": ""}])
    open_data(page, qtbot, path)
    stats = wait_for_stats(page, qtbot)
    assert "<b>7</b> rows" in page.summary.text() and "<b>1</b> of 7 dropped" in page.summary.text()
    assert stats["lengths"] == [31, 33, 35, 37, 69, 109]  # as the engine counts them (tests/test_data.py)
    assert sum(page.histogram_bars.opts["height"]) == 6
    assert page.max_length_line.value() == 60 and page.max_length_line.isVisible()
    assert page.max_length_line.label.toPlainText() == "max length 60"
    text = page.length_stats.text()
    assert "<b>1</b> row is longer than max length 60" in text
    assert "<b>2</b> rows dropped" in text and "longer than max_length 60 before its answer" in text
    assert "<b>7</b> rows read · <b>5</b> train · <b>0</b> held out" in text
    assert f"<b>{31 + 33 + 35 + 37 + 60}</b> tokens per epoch" in text
    assert "packing is off" in text

    page.max_length.setValue(80)  # a new count, from the cache: the line moves, nothing is dropped for length
    qtbot.waitUntil(lambda: page.stats is not None and page.stats["max_length"] == 80, timeout=60_000)
    assert page.max_length_line.value() == 80 and page.stats["from_cache"]
    assert page.stats["truncated"] == 1 and len(page.stats["dropped"]) == 1
    spec = DataSpec(path=str(path), eval_split=0, max_length=80)
    assert page.stats["packed_tokens"] == length_stats(spec, page.tokenizer, 4)["packed_tokens"]
    page.packing.setChecked(True)
    qtbot.waitUntil(lambda: "packing is on" in page.length_stats.text(), timeout=60_000)
    assert window.state.data.packing and window.state.data.max_length == 80
    share = f"{page.stats['padding_share_padded']:.0%} of computed tokens with batch padding"
    assert share in page.length_stats.text()
    assert not error_dialogs()


def test_held_out_share_is_left_to_the_data_size_until_set(window, qtbot, tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    page = choose_model(window, qtbot, tiny_llama)
    assert page.eval_split.text() == "auto"
    pairs = [("reverse " + "a" * (i % 9 + 1), "b" * (i % 9 + 1)) for i in range(240)]
    open_data(page, qtbot, write_rows(tmp_path / "small.jsonl", alpaca_rows(pairs)))
    wait_for_stats(page, qtbot)
    assert page.eval_split.text() == "auto: 12 of 240 rows"  # 10 %, shrunk for a small set (engine.data.examples)
    assert window.state.data.eval_split is None
    assert "<b>228</b> train · <b>12</b> held out" in page.length_stats.text()

    page.eval_split.setValue(0.1)  # a share the person sets is theirs
    qtbot.waitUntil(lambda: "<b>24</b> held out" in page.length_stats.text(), timeout=60_000)
    assert window.state.data.eval_split == pytest.approx(0.1)
    page.eval_split.setValue(page.eval_split.minimum())
    assert window.state.data.eval_split is None and page.eval_split.text() == "auto: 12 of 240 rows"

    # An eval file replaces the share: the box said "auto: 12 of 240 rows" while all 240 were trained on.
    held = write_rows(tmp_path / "held.jsonl", alpaca_rows(pairs[:20]))
    page.eval_path.setText(str(held))
    page.eval_path.editingFinished.emit()
    qtbot.waitUntil(lambda: not page.eval_split.isEnabled(), timeout=60_000)
    assert page.eval_split.text() == "none: the eval file" and "held.jsonl" in page.eval_split.toolTip()
    page.eval_path.setText("")
    page.eval_path.editingFinished.emit()
    qtbot.waitUntil(lambda: page.eval_split.isEnabled(), timeout=60_000)
    assert page.eval_split.text() == "auto: 12 of 240 rows"
    assert not error_dialogs()


WINDOW_WORDS = {  # the page maps no columns by itself, so the first missing role is the instruction
    "required column missing": ["{dir}/cols.jsonl", "columns found are question, reply",
                                "Pick the column for <b>output</b> under Columns, or another format."],
    # Columns not placed: the page's words, not the spec's (`data.format: …, data.columns: {…}`), and the column
    # each role likely is.
    "shape not told by the columns": ["{dir}/posts.csv", "shape from its columns (body, label)</span>",
                                      "Pick the column for <b>text</b> (likely body) under Columns"],
    "question found, its answer not": ["{dir}/mathqa.json", "<b>output</b> (likely Rationale) under Columns"],
    "pair under longer names": ["{dir}/pairs.jsonl", "<b>chosen</b> (likely chosen_text) and <b>rejected</b> "
                                "(likely rejected_text) under Columns"],
    "two answers, which is better unknown": ["{dir}/pairs.jsonl", "<b>preferred</b> (the column that says which "
                                             "is better)"],
    # The page's box by its label (it said "raise data.max_length"): Max length.
    "every row longer than max length": ["{dir}/long.jsonl", "every row is longer than max length 16",
                                         "raise Max length to at least"],
}


def mapped_on_the_page(data: dict[str, Any]) -> bool:
    """Columns the page cannot place are said on the page, beside the boxes that map them, not in a dialog:
    the cases whose data the engine refuses with ColumnsNotMapped."""
    from adapter_studio.engine.data.preview import preview_data
    from adapter_studio.engine.data.shapes import ColumnsNotMapped
    from adapter_studio.engine.errors import UserError

    try:
        preview_data(DataSpec(**data))
    except ColumnsNotMapped:
        return True
    except UserError:
        return False
    return False


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_shows_a_dialog_and_the_window_still_works(window, qtbot, tmp_path, case, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    bad = BAD_INPUTS[case]
    data = bad.write(tmp_path)
    page = window.pages["data"]
    if case in ("every row longer than max length", "one label only"):  # found when tokenising: needs a tokenizer
        choose_model(window, qtbot, tiny_llama)
        page.max_length.setValue(data.get("max_length", 0))
    page.eval_path.setText(data.get("eval_path", ""))
    page.format.setCurrentText(data.get("format", "(detect)"))
    open_data(page, qtbot, data["path"])
    if mapped_on_the_page(data):
        qtbot.waitUntil(lambda: not page.busy, timeout=60_000)
        texts = html.unescape(page.summary.text())
        assert "Pick the column" in texts and page.combos and not error_dialogs()
    else:
        qtbot.waitUntil(lambda: bool(error_dialogs()), timeout=60_000)
        texts = " ".join(d.text() + (d.detailedText() or "") for d in error_dialogs())
    for word in WINDOW_WORDS.get(case, bad.expected):
        assert word.format(dir=tmp_path) in texts, texts
    assert "Traceback" not in texts
    for dialog in error_dialogs():
        dialog.close()

    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(5)))
    page.eval_path.setText("")
    page.format.setCurrentText("(detect)")
    page.max_length.setValue(0)
    open_data(page, qtbot, good)
    qtbot.waitUntil(lambda: page.preview is not None and page.preview.total_rows == 5, timeout=60_000)
    assert page.preview.format == "alpaca" and page.table.rowCount() == 5
    assert window.state.data.path == str(good)
    assert not error_dialogs()


def test_a_row_of_megabytes_is_shown_in_part(window, qtbot, tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    """Tokenising a 2 MB row to show its first max_length tokens held the window for seconds."""
    page = choose_model(window, qtbot, tiny_llama)
    rows = [{"instruction": "summarise " + "word " * 400_000, "output": "short"}, *alpaca_rows()]
    open_data(page, qtbot, write_rows(tmp_path / "long.jsonl", rows))
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=60_000)
    page.show_rendered()
    shown = page.rendered.toPlainText()
    assert "shown in part" in shown and len(shown) < 40 * page.auto_max_length


def test_a_file_that_fails_after_good_data_leaves_nothing_to_train(window, qtbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The page shows the error, not the file before it: Start must not train on that one unseen."""
    from adapter_studio.engine.errors import UserError

    page = window.pages["data"]
    good = write_rows(tmp_path / "good.jsonl", alpaca_rows())
    window.state.set_data(DataSpec(path=str(good), max_rows=8))  # as a spec file opened with max_rows gives it
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=60_000)
    assert page.combos["instruction"].currentText() == "instruction"
    open_data(page, qtbot, tmp_path / "missing.jsonl")
    qtbot.waitUntil(lambda: bool(error_dialogs()), timeout=60_000)
    assert window.state.data is None and not page.combos  # the last file's column boxes went with it
    assert page.eval_split.specialValueText() == "auto"  # it said "auto: 8 of 8 rows", of the file before
    with pytest.raises(UserError, match="a dataset first"):
        window.state.build_spec()
    for dialog in error_dialogs():
        dialog.close()
    open_data(page, qtbot, good)  # the path put right: what has no box on the page (max_rows) is kept
    qtbot.waitUntil(lambda: window.state.data is not None and not page.busy, timeout=60_000)
    assert window.state.data.max_rows == 8


@pytest.mark.parametrize(
    ("content", "fmt", "found", "picks", "mapping"),
    [
        ([{"Problem": "2 + 2?", "Rationale": "2 + 2 = 4", "Verdict": "a"}] * 3, "alpaca", {"instruction": "Problem"},
         {"output": "Rationale"}, {"instruction": "Problem", "output": "Rationale"}),
        ([{"instruction": "hi", "chosen_text": "hello", "rejected_text": "go away"}] * 3, "preference",
         {"prompt": "instruction"}, {"chosen": "chosen_text", "rejected": "rejected_text"},
         {"prompt": "instruction", "chosen": "chosen_text", "rejected": "rejected_text"}),
        ([{"question": "hi", "response_a": "hello", "response_b": "go away", "Which is better": "A"}] * 3,
         "preference", {"prompt": "question", "answer_a": "response_a", "answer_b": "response_b"},
         {"preferred": "Which is better"}, {"prompt": "question", "answer_a": "response_a",
                                            "answer_b": "response_b", "preferred": "Which is better"}),
    ],
    ids=["answer under an unknown name", "pair under longer names", "two answers, which is better unknown"],
)  # fmt: skip
def test_columns_it_cannot_place_are_mapped_on_the_page(window, qtbot, tmp_path, content, fmt, found, picks,  # type: ignore[no-untyped-def]
                                                        mapping) -> None:  # fmt: skip
    """A file whose columns fit no shape's usual names: the page shows its rows and a box per role of the likely
    format, with what it found filled in; picking the rest in the boxes loads it."""
    page = window.pages["data"]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    open_data(page, qtbot, path)
    qtbot.waitUntil(lambda: not page.busy and "Pick the column" in page.summary.text(), timeout=30_000)
    for role, column in picks.items():  # each role to pick, with the column it likely is (where one is)
        hint = "the column that says which is better" if role == "preferred" else f"likely {column}"
        assert f"<b>{role}</b> ({hint})" in page.summary.text()
    assert page.format.currentText() == fmt and page.table.rowCount() == 3
    assert page.table.columnCount() == len(content[0])
    assert {r: c.currentText() for r, c in page.combos.items() if c.currentText() != "(none)"} == found
    for role, column in picks.items():
        page.combos[role].setCurrentText(column)
    page.reload()
    qtbot.waitUntil(lambda: page.preview is not None, timeout=30_000)
    assert page.preview.format == fmt and page.preview.mapping == mapping
    assert window.state.data.columns == mapping and error_dialogs() == []


@pytest.mark.parametrize(
    ("file", "content", "model", "expected"),
    [
        ("news.csv", "label,title,description\n3,Stocks rise,Markets gained today.\n1,Talks fail,Leaders met.\n",
         "tiny_bert_cls", {"format": "classification", "text": "title", "text_pair": "description", "label": "label"}),
        ("problems.json", json.dumps([{"problem": "Ann has 3 apples and eats 1. How many are left?",
                                       "question": "How many are left?", "equation": "( 3.0 - 1.0 )",
                                       "gold_answer": 2.0}] * 3),
         "tiny_llama", {"format": "alpaca", "instruction": "problem", "output": "gold_answer"}),
        ("news.csv", "".join(f'"{i % 4 + 1}","Stocks rise for day {i}","Markets gained today for the {i}th time."\n'
                             for i in range(8)),
         "tiny_bert_cls", {"format": "classification", "text": "column 2", "text_pair": "column 3",
                           "label": "column 1"}),
        ("pairs.jsonl", "".join(json.dumps({"prompt": f"Question {i}?", "response_0": "Yes.", "response_1": "No.",
                                            "better_response_id": i % 2, "safer_response_id": 0}) + "\n"
                                for i in range(4)),
         "tiny_llama", {"format": "preference", "prompt": "prompt", "answer_a": "response_0",
                        "answer_b": "response_1", "preferred": "better_response_id"}),
    ],
    ids=["news as published", "math problems as published", "news without a header line",
         "two answers and the better one's number"],
)  # fmt: skip
def test_files_as_published_are_read_without_a_mapping(tiny_llama, tiny_bert_cls, window, qtbot, tmp_path, file,  # type: ignore[no-untyped-def]
                                                       content, model, expected) -> None:  # fmt: skip
    """A new user opens a public file as it comes: the Data page detects its shape and fills the columns."""
    page = choose_model(window, qtbot, {"tiny_llama": tiny_llama, "tiny_bert_cls": tiny_bert_cls}[model])
    (tmp_path / file).write_text(content, encoding="utf-8")
    open_data(page, qtbot, tmp_path / file)
    qtbot.waitUntil(lambda: set(expected) - {"format"} <= set(page.combos), timeout=30_000)
    assert f"format <b>{expected.pop('format')}</b> (detected)" in page.summary.text()
    assert {role: page.combos[role].currentText() for role in expected} == expected
    assert error_dialogs() == []


def test_columns_chosen_for_one_file_carry_to_the_next_that_has_them(tiny_llama, window, qtbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Mapping output ← equation on SVAMP, then opening MultiArith (the same columns) put gold_answer back, unsaid."""
    page = choose_model(window, qtbot, tiny_llama)
    rows = [{"problem": "Ann has 3 apples and eats 1. How many are left?", "question": "How many are left?",
             "equation": "( 3.0 - 1.0 )", "gold_answer": 2.0}] * 3  # fmt: skip
    files = {name: tmp_path / f"{name}.json" for name in ("svamp", "multiarith", "other")}
    files["svamp"].write_text(json.dumps(rows))
    files["multiarith"].write_text(json.dumps(rows))
    files["other"].write_text(json.dumps([{k: v for k, v in r.items() if k != "equation"} for r in rows]))

    def shown(name: str) -> None:
        qtbot.waitUntil(lambda: not page.busy and page.preview is not None
                        and page._loaded.path == str(files[name]), timeout=30_000)  # fmt: skip

    open_data(page, qtbot, files["svamp"])
    shown("svamp")
    assert page.preview.mapping["output"] == "gold_answer"
    page.combos["output"].setCurrentText("equation")
    page.reload()
    qtbot.waitUntil(lambda: not page.busy and page.preview.mapping["output"] == "equation", timeout=30_000)
    open_data(page, qtbot, files["multiarith"])
    shown("multiarith")
    assert page.preview.mapping == {"instruction": "problem", "output": "equation"}
    assert window.state.data.columns["output"] == "equation"
    assert "Columns kept from the last file: output ← equation." in page.summary.text()
    open_data(page, qtbot, files["other"])
    shown("other")
    assert page.preview.mapping["output"] == "gold_answer"
    assert "Columns: output ← equation, chosen for the last file, is not in this one." in page.summary.text()
    assert error_dialogs() == []


def test_a_classification_file_shows_its_labels_and_their_balance(tiny_bert_cls, window, qtbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page = choose_model(window, qtbot, tiny_bert_cls)
    rows = ["text,label", *(["good film,<pos>"] * 12), "bad film,neg", "dull film,neg"]
    (tmp_path / "reviews.csv").write_text("\n".join(rows), encoding="utf-8")
    open_data(page, qtbot, tmp_path / "reviews.csv")
    qtbot.waitUntil(lambda: page.preview is not None, timeout=30_000)
    assert page.preview.labels == {"<pos>": 12, "neg": 2}
    text = html.unescape(page.summary.text())
    assert "2 labels (rows each) — <pos>: 12 · neg: 2; '<pos>' has 6× the rows of 'neg'" in text
    assert "&lt;pos&gt;" in page.summary.text()  # the data's text, not markup


def test_a_file_named_with_a_comma_is_one_file_and_a_comma_list_several(tiny_llama, window, qtbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The page split every path at its commas: a file named `a,b.jsonl` could not be loaded."""
    page = choose_model(window, qtbot, tiny_llama)
    for name in ("a,b.jsonl", "c.jsonl"):
        (tmp_path / name).write_text('{"instruction": "x", "output": "y"}\n' * 10, encoding="utf-8")
    for typed, read in ((str(tmp_path / "a,b.jsonl"), str(tmp_path / "a,b.jsonl")),
                        (f"{tmp_path / 'a,b.jsonl'}, {tmp_path / 'c.jsonl'}",
                         [str(tmp_path / "a,b.jsonl"), str(tmp_path / "c.jsonl")])):  # fmt: skip
        open_data(page, qtbot, typed)
        qtbot.waitUntil(lambda read=read: window.state.data is not None and window.state.data.path == read,
                        timeout=30_000)  # fmt: skip
        assert page.preview is not None and "not found" not in page.summary.text()


def test_the_pages_token_count_is_the_runs_tokenised_data(window, qtbot, tiny_llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The page counted under its own cache key (no task, the format left to detect, seed 0): 300,000 rows were
    tokenised for the count, then again when the run started."""
    from adapter_studio.engine.data.prepare import prepare_data

    page = choose_model(window, qtbot, tiny_llama)
    window.state.set_training(window.state.training.model_copy(update={"seed": 3}))
    pairs = [(f"reverse {'ab' * n}", "ba" * n) for n in range(1, 30)]
    open_data(page, qtbot, write_rows(tmp_path / "fresh.jsonl", alpaca_rows(pairs)))
    stats = wait_for_stats(page, qtbot)
    assert not stats["from_cache"]
    spec = window.state.build_spec()  # what Start trains: its data as the session reads it
    run = prepare_data(spec.data, page.tokenizer, "causal_lm", stats["max_length"], spec.training.seed)
    assert run.from_cache


def test_counting_tokens_says_how_far_it_is(window, qtbot) -> None:  # type: ignore[no-untyped-def]
    """"Counting tokens…" stood for four minutes over 300,000 rows: the count's progress, reported on its worker
    thread, reaches the page."""
    import threading

    page = window.pages["data"]
    worker = threading.Thread(target=page._counting.report, args=("tokenising", 0.4))
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: page.length_stats.text() == "Counting tokens… tokenising 40%", timeout=5_000)


def test_a_saved_held_out_share_survives_the_boxs_two_digits(window, qtbot, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    """A run of 300,000 rows saves 2,000 held out as 0.006667; the box shows two digits, and any change on the
    page read 0.01 back (above 400,000 rows 0.0: nothing held out)."""
    from adapter_studio.engine.spec import DataSpec

    page = choose_model(window, qtbot, tiny_llama)
    window.state.set_data(DataSpec(path=str(alpaca_jsonl), eval_split=0.006667))  # as Clone loads a run's spec
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=30_000)
    page.max_length.setValue(100)
    assert window.state.data.eval_split == 0.006667 and window.state.data.max_length == 100
    page.eval_split.setValue(0.2)  # typed: the person's
    assert window.state.data.eval_split == pytest.approx(0.2)


def test_typing_a_max_length_renders_the_row_once(window, qtbot, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    """Each digit typed was a value, and each rendered the row: "32768" rendered a 2 MB row five times."""
    page = choose_model(window, qtbot, tiny_llama)
    open_data(page, qtbot, alpaca_jsonl)
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=30_000)
    renders = []
    page.show_rendered = lambda: renders.append(page.max_length.value())  # type: ignore[method-assign]
    for value in (3, 32, 327, 3276, 32768):
        page.max_length.setValue(value)
    qtbot.waitUntil(lambda: renders == [32768], timeout=5_000)
    qtbot.wait(400)
    assert renders == [32768]


def test_labels_written_as_ids_are_named_on_the_page(tiny_bert_cls, window, qtbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """AG News writes its topics 1-4: the Label names box (shown for classification, where the prompt row
    is not) names them for the run; a mistake is said where it was typed, and another file starts unnamed."""
    from adapter_studio.engine.errors import UserError

    page = choose_model(window, qtbot, tiny_bert_cls)
    rows = ["label,text", *(f"{i % 3 + 1},story {i}" for i in range(9))]
    (tmp_path / "news.csv").write_text("\n".join(rows), encoding="utf-8")
    open_data(page, qtbot, tmp_path / "news.csv")
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=30_000)
    assert page.label_names.isVisibleTo(page) and not page.system_prompt.isVisibleTo(page)
    page.label_names.setText("1=World, 2=Sports, 3=Business")
    page.label_names.editingFinished.emit()
    qtbot.waitUntil(lambda: not page.busy and page.preview.labels.get("World") == 3, timeout=30_000)
    assert window.state.data.label_names == {"1": "World", "2": "Sports", "3": "Business"}
    assert "World: 3" in page.summary.text()
    page.label_names.setText("1=World, 2 Sports")
    page.label_names.editingFinished.emit()
    said = "Label names: '2 Sports' is not label=name — write e.g. 1=World, 2=Sports"
    assert said in html.unescape(page.summary.text())
    assert window.state.data.label_names == {"1": "World", "2": "Sports", "3": "Business"}  # as it was
    with pytest.raises(UserError, match="is not label=name"):  # Start says so: it trained on the ids unsaid
        window.state.build_spec()
    page.label_names.setText("1=2")  # 2 is another label the rows write: the two would be one class
    page.label_names.editingFinished.emit()
    qtbot.waitUntil(lambda: not page.busy and "one class" in page.summary.text(), timeout=30_000)
    assert "Label names: names a label '2', as the rows already call another" in html.unescape(page.summary.text())
    window.state.build_spec()  # a mistake in the data, said on the page and refused by the run, not in the box
    page.label_names.setText("1=World, 4=Sci/Tech")
    page.label_names.editingFinished.emit()
    qtbot.waitUntil(lambda: not page.busy and "no training row has" in page.summary.text(), timeout=30_000)
    assert "Label names: names label '4', which no training row has — write it as the data does: 2, 3" in (
        html.unescape(page.summary.text()))
    (tmp_path / "other.csv").write_text("text,label\ngood,pos\nbad,neg\n", encoding="utf-8")
    open_data(page, qtbot, tmp_path / "other.csv")
    qtbot.waitUntil(lambda: not page.busy and page.preview.labels == {"neg": 1, "pos": 1}, timeout=30_000)
    assert page.label_names.text() == "" and window.state.data.label_names == {}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, ""),
        (51.0, "51.0"),
        ([{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello"}],
         "user: hi?\n\nassistant: hello"),
        ([{"from": "human", "value": "hi?"}], "human: hi?"),
        (["A) 20", "B) 30"], '["A) 20", "B) 30"]'),  # JSON, not Python's repr
        ({"score": 8, "text": "café"}, '{"score": 8, "text": "café"}'),
    ],
    ids=["empty", "number", "messages", "sharegpt turns", "list", "object"],
)
def test_the_preview_table_shows_lists_of_messages_as_turns_and_other_lists_as_json(value: Any, shown: str) -> None:
    from adapter_studio.gui.data_texts import cell_text

    assert cell_text(value) == shown


def test_another_file_typed_after_the_demo_is_read_afresh_with_the_apps_defaults(window, qtbot, tmp_path):  # type: ignore[no-untyped-def]
    """A new user's first step after `make run`: type their own file's path and press Enter. The demo's
    column mapping, evaluation file and recipe stayed: 'data.columns maps instruction to …, which this file
    does not have', the demo's eval file refused in the new file's format, and 150 steps at the demo's rate
    on q,v only instead of the app's defaults for the data."""
    from adapter_studio.engine.methods import METHODS
    from adapter_studio.engine.spec import TrainingSpec
    from adapter_studio.gui.main_window import DEMO_SPEC

    page, state = window.pages["data"], window.state
    window.load_demo()
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=30_000)
    assert page.eval_path.text() and page.preview.mapping["instruction"] == "instruction"
    assert state.training.max_steps == 150 and state.method.target_modules == ["q_proj", "v_proj"]
    rows = [{"Class Index": i % 2 + 1, "Title": f"headline number {i} of the day", "Description": f"a story {i}"}
            for i in range(20)]  # fmt: skip
    news = write_rows(tmp_path / "news.jsonl", rows)
    page.path.setText(str(news))
    page.path.returnPressed.emit()
    qtbot.waitUntil(lambda: not page.busy, timeout=30_000)
    assert page.preview is not None and page.preview.format == "classification", page.summary.text()
    assert page.eval_path.text() == "" and state.data.eval_path is None
    summary = page.summary.text()
    assert f"Eval file cleared: {DEMO_SPEC.parent / 'eval.jsonl'} came with the previous data" in summary
    assert state.training == TrainingSpec() and state.method == METHODS["lora"]()
    assert "Method and training settings: the app's defaults for this data" in summary
    # the same file again keeps what was picked for it
    page.eval_path.setText(str(news))
    page.path.returnPressed.emit()
    qtbot.waitUntil(lambda: not page.busy, timeout=30_000)
    assert page.eval_path.text() == str(news) and "Eval file cleared" not in page.summary.text()


def test_a_demo_recipe_the_person_edited_stays_with_other_data(window, qtbot, tmp_path):  # type: ignore[no-untyped-def]
    page, state = window.pages["data"], window.state
    window.load_demo()
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=30_000)
    state.set_training(state.training.model_copy(update={"max_steps": 40}))
    open_data(page, qtbot, write_rows(tmp_path / "rows.jsonl", alpaca_rows()))
    qtbot.waitUntil(lambda: not page.busy and page.preview is not None, timeout=30_000)
    assert state.training.max_steps == 40 and state.method.target_modules == ["q_proj", "v_proj"]
    assert "the app's defaults" not in page.summary.text()


def test_the_auto_held_out_count_is_the_split_made(window, qtbot, tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    """A label of one row keeps it for training (engine.data.examples), and the split takes the rule's count from
    the other labels: the box said 4 held out where a split that gave the row back held out 3."""
    from adapter_studio.engine.data.examples import held_out_mask

    labels = ["rare" if i == 7 else "ab"[i % 2] for i in range(40)]
    assert not held_out_mask(40, None, 0, labels)[7]
    rows = [{"text": f"news item {i}", "label": label} for i, label in enumerate(labels)]
    page = choose_model(window, qtbot, tiny_llama)
    open_data(page, qtbot, write_rows(tmp_path / "topics.jsonl", rows))
    wait_for_stats(page, qtbot)
    assert page.stats["eval_examples"] == 4 and page.eval_split.text() == "auto: 4 of 40 rows"
    assert not error_dialogs()


def test_long_column_names_leave_the_window_its_width(window, qtbot, tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    """SVAMP's columns (verify_condition_index, …) made each mapping box as wide as the longest name: the
    window grew from 1,280 to 1,410 px, past a laptop's screen."""
    window.resize(1280, 800)
    page = choose_model(window, qtbot, tiny_llama)
    names = ["question_text_as_published", "worked_solution_with_steps", "verify_condition_index_of_the_row",
             "system_prompt_for_the_conversation", "task_family_identifier"]  # fmt: skip
    rows = [dict(zip(names, (f"q{i}", f"a{i}", str(i), "be brief", "math"), strict=True)) for i in range(20)]
    open_data(page, qtbot, write_rows(tmp_path / "long.jsonl", rows))
    page.format.setCurrentText("alpaca")
    page.reload(keep_mapping=False)
    qtbot.waitUntil(lambda: len(page.combos) >= 4, timeout=60_000)
    QApplication.processEvents()
    assert window.minimumSizeHint().width() <= 1280 and window.width() <= 1280, window.minimumSizeHint()
    combo = next(iter(page.combos.values()))
    # The list shows the names whole (a popup is as wide as its box at least).
    assert max(combo.view().minimumWidth(), combo.width()) >= combo.view().sizeHintForColumn(0)
    assert combo.view().minimumWidth() > combo.minimumSizeHint().width()  # wider than the box at its least


def test_a_max_length_under_the_least_is_refused_as_typed(window, qtbot, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    """Typed 5, the box showed 5 and the run trained at 8 (the spec's least), and the error named 8."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    page = window.pages["data"]
    open_data(page, qtbot, alpaca_jsonl)
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=30_000)
    box = page.max_length
    box.lineEdit().selectAll()
    QTest.keyClicks(box, "5")
    QTest.keyClick(box, Qt.Key.Key_Return)
    assert box.text() == "auto" and window.state.data.max_length is None
    assert box.last_refusal == "'5' is not allowed here: a whole number from 8 to 131,072, or auto; kept auto"
    split = page.eval_split  # -0.02 was taken, shown, and read as auto; the message said "from -0.04 …, or auto: 6 …"
    for typed, said in (("-0.02", "'-0.02' is not allowed here: a number from 0 to 0.9, or auto; kept auto"),
                        ("0.95", "'0.95' is not allowed here: a number from 0 to 0.9, or auto; kept auto")):
        split.lineEdit().selectAll()
        QTest.keyClicks(split, typed)
        QTest.keyClick(split, Qt.Key.Key_Return)
        assert split.last_refusal == said and window.state.data.eval_split is None


def test_a_column_picked_for_one_role_leaves_the_other(tiny_bert_cls, window, qtbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """text <- description left text_pair on description too: each row read it twice ([CLS]…[SEP]…[SEP])."""
    page = choose_model(window, qtbot, tiny_bert_cls)
    news = tmp_path / "news.csv"
    news.write_text("label,title,description\n3,Stocks rise,Markets gained today.\n1,Talks fail,Leaders met.\n")
    open_data(page, qtbot, news)
    qtbot.waitUntil(lambda: page.preview is not None and not page.busy, timeout=30_000)
    assert page.preview.mapping == {"text": "title", "text_pair": "description", "label": "label"}
    combo = page.combos["text"]
    combo.setCurrentText("description")
    combo.activated.emit(combo.currentIndex())
    qtbot.waitUntil(lambda: not page.busy and page.preview.mapping.get("text") == "description", timeout=30_000)
    assert page.preview.mapping == {"text": "description", "label": "label"}
    assert window.state.data.columns == {"text": "description", "label": "label"}


def test_an_architecture_alone_says_why_there_are_no_token_lengths(window, qtbot, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    """"Token lengths appear once a model is chosen and the data is read" stayed, with both done."""
    window.pages["model"].choose("llama-3.2-1b")
    page = window.pages["data"]
    open_data(page, qtbot, alpaca_jsonl)
    qtbot.waitUntil(lambda: "cannot be read" in page.length_stats.text(), timeout=30_000)
    assert page.length_stats.text() == ("Token lengths need the model's tokenizer, which cannot be read: the model is "
                                        "an architecture alone, without its files")


@pytest.mark.parametrize(("columns", "said"), [
    (["body", "label"], "Pick the column for <b>text</b> (likely body) under Columns, or another format."),
    # The shape's stock example (instruction ← question, output ← answer) named columns the file has not.
    (["title", "body", "meta"], "Pick the columns for <b>instruction</b> and <b>output</b> under Columns, or "
                                "another format."),
])  # fmt: skip
def test_the_page_suggests_only_columns_the_file_has(columns: list[str], said: str) -> None:
    from adapter_studio.engine.data.shapes import ColumnsNotMapped, detect_format
    from adapter_studio.gui.data_texts import pick_columns

    with pytest.raises(ColumnsNotMapped) as caught:
        detect_format(columns)
    assert pick_columns(caught.value) == said
