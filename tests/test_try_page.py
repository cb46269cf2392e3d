"""The Try page offscreen: base and tuned answers stream into their panes, Stop, held-out rows, classifiers."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from adapter_studio.engine.inference.playground import Playground
from adapter_studio.engine.training.run import run
from adapter_studio.gui.pages.try_page import TryPage, example_labels
from adapter_studio.gui.state import StudioState
from conftest import reversal_pairs, write_jsonl
from PySide6.QtCore import QAbstractEventDispatcher, QThread

pytestmark = pytest.mark.gui
LOAD_MS = 30_000


@pytest.fixture(scope="module")
def lora_run(tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any) -> Path:
    """A short LoRA run: 10 steps move the tiny model enough that its greedy answers change (on q,v: on every
    linear layer, the default, the same steps move it to answering nothing at all)."""
    lora = {"name": "lora", "target_modules": ["q_proj", "v_proj"]}
    result = run(make_spec(tiny_llama, alpaca_jsonl, lora, learning_rate=1e-2, max_steps=10, eval_samples=0))
    assert result.status == "completed", result.error
    return result.run_dir


@pytest.fixture(scope="module")
def classifier_run(tiny_bert_cls: Path, classification_csv: Path, make_spec: Any) -> Path:
    result = run(make_spec(tiny_bert_cls, classification_csv, "lora", learning_rate=1e-2, max_steps=5,
                           eval_samples=0))  # fmt: skip
    assert result.status == "completed", result.error
    return result.run_dir


@pytest.fixture
def page(qtbot: Any) -> TryPage:
    page = TryPage(StudioState())
    qtbot.addWidget(page)
    page.errors = []  # type: ignore[attr-defined]
    page.error = page.errors.append  # type: ignore[method-assign]
    page.show()
    yield page
    page.stop()
    qtbot.waitUntil(lambda: not page.busy, timeout=LOAD_MS)  # no generation thread outlives its test


def open_run(page: TryPage, qtbot: Any, run_dir: Path) -> None:
    page.state.set_current_run(run_dir)  # the page is visible, so it starts loading at once
    qtbot.waitUntil(lambda: page.playground is not None, timeout=LOAD_MS)
    assert page.errors == []  # type: ignore[attr-defined]


def test_loads_lazily_when_shown(qtbot: Any, lora_run: Path) -> None:
    page = TryPage(StudioState())
    qtbot.addWidget(page)
    page.state.set_current_run(lora_run)
    assert page.playground is None and not page.busy  # hidden: nothing loads yet
    assert not page.generate_button.isEnabled()
    page.show()
    page.on_shown()
    qtbot.waitUntil(lambda: page.playground is not None, timeout=LOAD_MS)
    assert page.generate_button.isEnabled()
    assert lora_run.name in page.status.text()


def test_shows_base_and_tuned_answers_and_the_held_out_examples(page: TryPage, qtbot: Any, lora_run: Path) -> None:
    open_run(page, qtbot, lora_run)
    pg = page.playground
    assert page.examples.count() == len(pg.held_out_examples(50)) == 10
    assert "10 held-out examples." in page.status.text() and pg.held_out_count == 10
    page.examples.setCurrentRow(2)
    _, message, expected, *_ = pg.held_out_examples(50)[2]
    assert page.prompt.toPlainText() == message
    assert page.expected.toPlainText() == expected == message.removeprefix("reverse ")[::-1]

    page.max_new_tokens.setValue(24)
    page.generate_button.click()
    assert page.busy and page.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not page.busy, timeout=LOAD_MS)
    base, tuned = page.panes["base"].toPlainText(), page.panes["tuned"].toPlainText()
    # The panes hold exactly what the engine answers (greedy at temperature 0).
    assert base == "".join(pg.stream("base", message, max_new_tokens=24))
    assert tuned == "".join(pg.stream("tuned", message, max_new_tokens=24))
    assert base and tuned and base != tuned
    folder = page.playground.tuned.checkpoint  # which run answered, said again after the answer, with its step
    step = json.loads((folder / "state.json").read_text())["step"]
    checkpoint = f"best (step {step})" if folder.name == "best" else f"step {step}"
    assert page.status.text() == f"Done — run <b>{lora_run.name}</b>, LoRA, checkpoint {checkpoint}"
    assert page.generate_button.isEnabled() and not page.stop_button.isEnabled()
    # a held-out example that ends a conversation is answered with its earlier turns, while left as it is
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "olleh"},
             {"role": "user", "content": message}]  # fmt: skip
    page.held_out[2] = page.held_out[2]._replace(prompt=pg.renderer.prompt(turns), earlier=2)
    page.pick_example(2)
    assert "its 2 earlier turns go before the message" in page.status.text()
    page.generate_button.click()
    qtbot.waitUntil(lambda: not page.busy, timeout=LOAD_MS)
    assert page.panes["tuned"].toPlainText() == "".join(
        pg.stream("tuned", message, max_new_tokens=24, rendered=pg.renderer.prompt(turns)))


def test_held_out_list_leads_with_what_differs(
    page: TryPage, qtbot: Any, tiny_llama: Path, make_spec: Any, tmp_path: Path
) -> None:
    """Issue 26: cut to its first characters, every demo row read the same instruction ("Convert the date to
    ISO 8601 (YYYY-MM…") and the input, the part that differs, was cut off. Each row now starts with it."""
    instructions = ["Write the letters of the word below in reverse order, last letter first.",
                    "Reverse the following word and answer with the reversed word only."]  # fmt: skip
    rows = [{"instruction": instructions[i % 2], "input": question.removeprefix("reverse "), "output": answer}
            for i, (question, answer) in enumerate(reversal_pairs(80, seed=3))]  # fmt: skip
    data = write_jsonl(tmp_path / "instructed.jsonl", rows)
    result = run(make_spec(tiny_llama, data, "lora", max_steps=1, eval_samples=0,
                           data={"eval_split": 0.25, "max_length": 160}))  # fmt: skip
    assert result.status == "completed", result.error
    open_run(page, qtbot, result.run_dir)

    assert page.examples.count() == len(page.held_out) == 20
    for row, (_, message, expected, *_) in enumerate(page.held_out):
        instruction, word = message.split("\n\n")
        item = page.examples.item(row)
        assert item.text() == f"{word} — {instruction}"
        assert item.toolTip() == f"{message}\n\nExpected: {expected}"  # the whole row, untouched


def test_example_labels_drop_an_opening_every_row_shares() -> None:
    labels = example_labels(["Translate to French: the cat sleeps", "Translate to French: a dog barks", "Hi"])
    assert labels == ["Translate to French: the cat sleeps", "Translate to French: a dog barks", "Hi"]  # not all
    labels = example_labels(["Translate to French: the cat sleeps", "Translate to French: a dog barks"])
    assert labels == ["…the cat sleeps", "…a dog barks"]
    assert example_labels(["word " * 40], width=20) == ["word word word word…"]


STOP_AFTER = 60  # characters (one token each with the test tokenizer) before Stop: the sample of tokens


def test_stop_ends_generation_and_the_window_stays_responsive(
    page: TryPage, qtbot: Any, lora_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens are made off the GUI thread (each is recorded with the thread that made it), and the GUI
    thread's event loop ran out of work and waited for more (its dispatcher's `aboutToBlock`) while they
    arrived: generating on the GUI thread delivers every token inside the Generate click, with no wait
    between any two. Counted per token, not against a clock (a wall-clock timer ticked only twice in one busy
    run, issue 20), and not as a share of the tokens: with the CPU taken by other processes the GUI thread
    woke to two or more tokens at a time for 34 of 63 (measured 2026-12-07; idle, 2–7 %).
    Stop ends the answer after its current token."""
    open_run(page, qtbot, lora_run)
    full = "".join(page.playground.stream("base", "reverse abc", max_new_tokens=200))
    assert len(full) > 150  # not stopped, the base rambles on to (nearly) the 200-token limit
    made_in: set[int] = set()  # the threads that made the tokens
    stream = page.playground.stream

    def recorded(*args: Any, **kwargs: Any) -> Any:
        for token in stream(*args, **kwargs):
            made_in.add(threading.get_ident())
            yield token

    monkeypatch.setattr(page.playground, "stream", recorded)
    waits = [0]  # times the GUI thread went idle so far

    def went_idle() -> None:
        waits[0] += 1

    pane = page.panes["base"]
    arrivals: list[int] = []  # the GUI thread's idle count as each token reaches the pane

    def arrived() -> None:
        if pane.toPlainText():  # not the pane's clearing
            arrivals.append(waits[0])

    dispatcher = QAbstractEventDispatcher.instance(QThread.currentThread())
    dispatcher.aboutToBlock.connect(went_idle)
    pane.textChanged.connect(arrived)
    try:
        page.prompt.setPlainText("reverse abc")
        page.max_new_tokens.setValue(200)
        page.generate_button.click()
        qtbot.waitUntil(lambda: len(pane.toPlainText()) >= STOP_AFTER, timeout=LOAD_MS)
        page.stop_button.click()
        qtbot.waitUntil(lambda: not page.busy, timeout=LOAD_MS)
    finally:
        dispatcher.aboutToBlock.disconnect(went_idle)
        pane.textChanged.disconnect(arrived)

    assert made_in and threading.get_ident() not in made_in
    assert len(arrivals) >= 10 and arrivals[-1] > arrivals[0], arrivals  # the event loop waited between tokens

    stopped = pane.toPlainText()
    assert STOP_AFTER <= len(stopped) < len(full)
    assert full.startswith(stopped)
    assert page.status.text().startswith("Stopped — run <b>")


def test_changing_the_run_reloads(page: TryPage, qtbot: Any, lora_run: Path, classifier_run: Path) -> None:
    open_run(page, qtbot, lora_run)
    first = page.playground
    open_run(page, qtbot, classifier_run)
    assert page.playground is not first and page.playground.task == "classification"


def test_classifier_run_shows_a_probability_table(page: TryPage, qtbot: Any, classifier_run: Path) -> None:
    open_run(page, qtbot, classifier_run)
    assert page.generate_button.text() == "Classify"
    assert page.classification.isVisible() and not page.answers.isVisible()
    assert page.findChild(object, "randomHeadNote").isVisible()
    page.examples.setCurrentRow(0)
    assert page.expected.toPlainText() in ("positive", "negative")
    page.generate_button.click()
    qtbot.waitUntil(lambda: page.probabilities.rowCount() == 2, timeout=LOAD_MS)
    table = page.probabilities
    cells = {table.item(r, 0).text(): (table.item(r, 1).text(), table.item(r, 2).text()) for r in range(2)}
    expected = Playground.classify(page.playground, page.prompt.toPlainText())
    assert set(cells) == {"positive", "negative"}
    for label, (base, tuned) in cells.items():
        assert base == f"{expected['base'][label]:.1%}"
        assert tuned == f"{expected['tuned'][label]:.1%}"
    assert sum(float(t.rstrip("%")) for _, t in cells.values()) == pytest.approx(100.0, abs=0.2)
    # A text of one's own: the example's expected label and second text go (the old pair was classified with it).
    page.text_pair.setText("the example's second text")
    page._picked_pair = page.text_pair.text()  # as an example of a text-pair set brings one
    page.prompt.setPlainText("Apple unveils a new chip")
    assert page.expected.toPlainText() == "" and page.text_pair.text() == ""
    page.examples.setCurrentRow(1)
    assert page.expected.toPlainText() in ("positive", "negative")


@pytest.mark.parametrize(("shown", "held", "text"), [(10, 10, "10 held-out examples."),
                                                     (50, 1200, "50 of the 1,200 held-out examples listed.")])
def test_the_list_says_how_many_of_the_held_out_rows_it_offers(shown: int, held: int, text: str) -> None:
    from adapter_studio.gui.pages.try_page import _examples_shown

    assert _examples_shown(shown, held) == text  # the Data page said 60 held out where this said 50


def test_a_message_longer_than_the_model_reads_is_said_before_generating(page: TryPage, qtbot: Any,
                                                                          lora_run: Path) -> None:  # fmt: skip
    """A 12,000-token message to SmolLM2 (8,192 positions) showed "Generating…" for minutes, then '' and '*'."""
    open_run(page, qtbot, lora_run)
    pg = page.playground
    limit = pg.context_limit
    assert limit == 256  # tiny_llama's positions
    page.prompt.setPlainText("reverse " + "abc" * 100)
    page.generate_button.click()
    tokens = pg.prompt_tokens(page.prompt.toPlainText())
    assert not page.busy and page.status.text() == (f"the message is {tokens:,} tokens, and this model reads 256 at "
                                                    "most — shorten the message")  # fmt: skip
    assert pg.room_for_answer(250, 128) == 6  # an answer that would run past the positions stops at them
    page.prompt.setPlainText("reverse " + "ab" * 100)  # fits, with a few tokens left for the answer
    room = limit - pg.prompt_tokens(page.prompt.toPlainText())
    assert 0 < room < page.max_new_tokens.value()
    page.generate_button.click()
    qtbot.waitUntil(lambda: not page.busy, timeout=LOAD_MS)
    assert page.status.text().endswith(f"(answers end at the model's 256 positions: {room} tokens after this "
                                       "message)")  # it said "Done", the answers a dozen characters, unexplained


def test_a_run_trained_on_since_it_was_loaded_answers_with_its_newest_checkpoint(page: TryPage, qtbot: Any,
                                                                                  lora_run: Path) -> None:  # fmt: skip
    """Resumed and trained on, the run still answered from the checkpoint loaded before (step 10 against 25;
    step 10 itself deleted by then)."""
    import shutil

    open_run(page, qtbot, lora_run)
    loaded = page.playground.tuned.checkpoint
    newer = loaded.parent / "step-9999999"
    shutil.copytree(loaded, newer)
    try:
        page.on_shown()  # shown again
        qtbot.waitUntil(lambda: page.playground is not None and page.playground.tuned.checkpoint == newer,
                        timeout=LOAD_MS)  # fmt: skip
        page.on_shown()  # nothing newer: kept, not loaded again
        assert page._loader is None
    finally:
        shutil.rmtree(newer)
