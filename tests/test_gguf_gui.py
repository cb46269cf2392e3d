"""The Export page's GGUF export: the type menu, the stages, the verification table and the Ollama
command, and a refusal shown as a message (never a traceback)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.events import Stage
from adapter_studio.engine.export.gguf_checks import GgufVerification, Reader
from adapter_studio.engine.export.llama_cpp import INSTALL_HINT
from adapter_studio.engine.export.run_gguf import GgufExportResult
from adapter_studio.engine.training.run import run
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def trained_run(tiny_llama, alpaca_jsonl, make_spec) -> Path:  # type: ignore[no-untyped-def]
    result = run(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=3, save_every=3))
    assert result.status == "completed"
    return result.run_dir


def error_dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


def pick_folder(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[str]:
    """Answer the folder dialog with `folder`; returns the titles it was asked with."""
    asked: list[str] = []

    def answer(parent: Any, title: str, *args: Any, **kwargs: Any) -> str:
        asked.append(title)
        return str(folder)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(answer))
    return asked


@pytest.mark.parametrize("have_llama_cpp", [False, True], ids=["without llama.cpp", "with llama.cpp"])
def test_the_gguf_types_and_what_the_k_quants_need(qtbot, tmp_path, monkeypatch, have_llama_cpp):  # type: ignore[no-untyped-def]
    from adapter_studio.gui.pages import export_page
    from adapter_studio.gui.state import StudioState

    monkeypatch.setattr(export_page.llama_cpp, "installed", lambda: have_llama_cpp)
    page = export_page.ExportPage(StudioState(runs_dir=str(tmp_path / "runs")))
    qtbot.addWidget(page)
    box = page.findChild(export_page.QComboBox, "ggufType")
    assert box is page.gguf_type
    data = [box.itemData(i) for i in range(box.count())]
    assert data == ["f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k", "lora"]
    assert box.itemText(data.index("lora")) == "lora (adapter for llama.cpp)"
    assert box.currentData() == "q8_0"
    for i, quant in enumerate(data):
        k_quant = quant in ("q4_k_m", "q5_k_m", "q6_k")
        assert box.model().item(i).isEnabled() == (have_llama_cpp or not k_quant), quant
        tip = box.itemData(i, Qt.ItemDataRole.ToolTipRole) or ""
        assert (INSTALL_HINT in tip) == (k_quant and not have_llama_cpp), quant
    button = page.findChild(export_page.QPushButton, "exportGguf")
    assert button is page.gguf_button and button.text() == "Export GGUF…"
    assert not button.isEnabled()  # no run yet
    note = page.findChild(export_page.QLabel, "ggufNote").text()
    assert "llama.cpp, Ollama and LM Studio" in note and "read back" in note


def test_gguf_export_shows_stages_the_check_and_the_ollama_command(window, qtbot, trained_run, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from adapter_studio.gui.pages import export_page

    release = threading.Event()
    calls: list[tuple[Path, str, Path]] = []

    def fake_export_gguf(run_dir: Path, quant: str, out: Path, emit: Any = None, prompts: int = 60) -> Any:
        calls.append((run_dir, quant, out))
        emit(Stage(stage="exporting", detail="writing tiny <b>model</b>"))
        assert release.wait(60), "the test never saw the stage"
        out.mkdir()
        file = out / f"tiny-{quant}.gguf"
        file.write_bytes(b"GGUF" + bytes(2044))
        (out / "Modelfile").write_text("FROM ./tiny.gguf\n")
        verification = GgufVerification(prompts=60, torch_stopped=58, torch_perplexity=3.5, max_logit_diff=1.5e-3)
        verification.readers.append(Reader("transformers (GGUF reader)", 57, 58, 3.52, note="read back"))
        command = f"ollama create tiny -f {out / 'Modelfile'}"
        return GgufExportResult(out, file, quant, 2100, verification, command)

    monkeypatch.setattr(export_page, "export_gguf", fake_export_gguf)
    asked = pick_folder(monkeypatch, tmp_path)
    window.state.set_current_run(trained_run)
    window.go_to("export")
    page = window.pages["export"]
    page.gguf_type.setCurrentIndex(page.gguf_type.findData("f16"))
    assert page.gguf_button.isEnabled()
    qtbot.mouseClick(page.gguf_button, Qt.MouseButton.LeftButton)

    target = tmp_path / f"{trained_run.name}-gguf-f16"
    assert asked and "GGUF" in asked[0]
    qtbot.waitUntil(lambda: "writing tiny" in page.status.text(), timeout=30_000)
    assert calls == [(trained_run, "f16", target)]  # on the worker thread, in the background
    assert "<b>model</b>" not in page.status.text()  # the stage is shown as text, not markup
    assert page.busy and not page.gguf_button.isEnabled() and not page.adapter_button.isEnabled()
    release.set()
    qtbot.waitUntil(lambda: not page.busy, timeout=30_000)

    assert not error_dialogs()
    assert page.exports["gguf-f16"] == str(target / "tiny-f16.gguf")
    assert page.gguf_button.isEnabled() and page.adapter_button.isEnabled()
    text = page.results.toPlainText()
    assert str(target / "tiny-f16.gguf") in text and "2.0 KiB" in text
    assert "transformers (GGUF reader)" in text and "57 / 60" in text and "58 / 60 (torch 58)" in text
    assert "3.520 (+0.57 %)" in text and "read back" in text
    assert f"ollama create tiny -f {target / 'Modelfile'}" in text
    table = page.results.document().rootFrame().childFrames()
    assert table, "the verification is shown as a table"
    assert "|---|" not in text


@pytest.mark.parametrize("taken", [False, True], ids=["tokenizer refused", "beside an export of that name"])
def test_a_refused_gguf_export_says_why_without_a_traceback(window, qtbot, trained_run, tmp_path, monkeypatch, taken):  # type: ignore[no-untyped-def]
    pick_folder(monkeypatch, tmp_path)
    target = tmp_path / f"{trained_run.name}-gguf-q8_0"
    if taken:
        target.mkdir()
    window.state.set_current_run(trained_run)
    window.go_to("export")
    page = window.pages["export"]
    assert page.gguf_type.currentData() == "q8_0"
    qtbot.mouseClick(page.gguf_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(error_dialogs()), timeout=120_000)
    assert not page.busy
    texts = " ".join(d.text() + (d.detailedText() or "") for d in error_dialogs())
    # A folder of the export's name already there: the export goes to <name>-2 (test_gui), refused here too.
    assert "tokenizer" in texts and "Traceback" not in texts
    assert "Export failed" in page.status.text() and "tokenizer" in page.status.text()
    assert page.gguf_button.isEnabled()
    assert target.exists() == taken and not (tmp_path / f"{target.name}-2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left
    for d in error_dialogs():
        d.close()


@pytest.mark.parametrize("kind", ["classifier", "prompt tuning"])
def test_gguf_is_offered_only_for_runs_it_can_hold(window, qtbot, tiny_bert_cls, classification_csv, tiny_llama,
                                                 alpaca_jsonl, make_spec, kind):  # type: ignore[no-untyped-def]
    """A classifier, or a method that cannot be merged into the weights, has no GGUF: the button says why
    before it is clicked, not after the model loads."""
    spec = (make_spec(tiny_bert_cls, classification_csv, "lora", max_steps=2, eval_samples=0) if kind == "classifier"
            else make_spec(tiny_llama, alpaca_jsonl, "prompt_tuning", max_steps=2))  # fmt: skip
    result = run(spec)
    assert result.status == "completed"
    window.state.set_current_run(result.run_dir)
    window.go_to("export")
    page = window.pages["export"]
    assert page.adapter_button.isEnabled()
    assert not page.gguf_button.isEnabled() and not page.gguf_type.isEnabled()
    words = "this run trained a classifier" if kind == "classifier" else "Prompt Tuning cannot be merged into"
    assert words in page.gguf_button.toolTip() and "export the adapter" in page.gguf_button.toolTip()
    window.state.set_current_run(None)  # the run was deleted on the Runs page: its name stayed here
    assert page.run_label.text().startswith("No run yet") and not page.adapter_button.isEnabled()
