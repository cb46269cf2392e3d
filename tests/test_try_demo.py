"""The playground on the real demo: after a short LoRA run, SmolLM2's base and tuned answers differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.spec import load_spec_file
from adapter_studio.engine.training.run import run
from adapter_studio.gui.pages.try_page import TryPage
from adapter_studio.gui.state import StudioState

pytestmark = [pytest.mark.slow, pytest.mark.gui, pytest.mark.usefixtures("every_core")]
DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo" / "demo.yaml"


def test_demo_base_and_tuned_answer_differently(qtbot: Any, tmp_path: Path) -> None:
    spec = load_spec_file(
        DEMO, ["training.max_steps=12", "training.save_every=12", "training.eval_samples=0", f"output_dir={tmp_path}"]
    )
    result = run(spec)
    assert result.status == "completed", result.error

    page = TryPage(StudioState())
    qtbot.addWidget(page)
    page.error = lambda e: pytest.fail(f"the Try page reported {e}")  # type: ignore[method-assign]
    page.show()
    page.state.set_current_run(result.run_dir)
    qtbot.waitUntil(lambda: page.playground is not None, timeout=600_000)
    page.examples.setCurrentRow(0)  # a held-out date, with its expected answer shown
    assert page.expected.toPlainText().count("-") == 2  # YYYY-MM-DD
    page.max_new_tokens.setValue(16)
    page.generate_button.click()
    qtbot.waitUntil(lambda: not page.busy, timeout=600_000)
    base, tuned = page.panes["base"].toPlainText(), page.panes["tuned"].toPlainText()
    assert base and tuned and base != tuned
