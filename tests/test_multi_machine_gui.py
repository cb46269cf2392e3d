"""Several machines from the window: the Method page's "Several machines" section sets
`training.machines`, Start runs this machine's share (the other "machine" is a CLI launch on this host),
and the cluster files are written from the window's spec."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.spec import TrainingSpec
from PySide6.QtWidgets import QFileDialog, QPushButton

from tests.test_gui import choose, error_dialogs
from tests.test_multi_device import CLI, ENV
from tests.test_multi_machine import free_port

pytestmark = pytest.mark.gui


def edit_machines(page: Any, **values: Any) -> None:
    for name, value in values.items():
        page.machines_form.setters[name](value)
    page.machines_form.changed.emit(page.machines_form.values())


@pytest.mark.parametrize("window_rank", [0, 1])
def test_the_window_trains_one_machine_of_two(  # type: ignore[no-untyped-def]
    window, qtbot, tiny_llama, alpaca_jsonl, tmp_path, window_rank
) -> None:
    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    window.state.training = TrainingSpec(
        max_steps=8, batch_size=2, learning_rate=0.01, save_every=4, eval_samples=0, precision="float32"
    )
    page = window.pages["method"]
    port = free_port()
    edit_machines(page, count=2, rank=window_rank, main_address="127.0.0.1", main_port=port)
    assert window.state.training.machines.count == 2 and window.state.training.max_steps == 8
    spec = window.state.build_spec()
    spec_file = tmp_path / "other.yaml"
    spec.model_copy(update={"output_dir": str(tmp_path / "other-runs")}).save(spec_file)
    other = subprocess.Popen(
        [*CLI, "train", str(spec_file), "--set", f"training.machines.rank={1 - window_rank}"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    train = window.train_page
    window.go_to("train")
    train.start()
    qtbot.waitUntil(lambda: not train.controller.running, timeout=300_000)
    out, _ = other.communicate(timeout=120)
    assert other.returncode == 0, out[-2000:]
    assert train.last_status == "completed", train.last_error
    assert not error_dialogs()
    if window_rank == 0:  # the window follows the run it writes: every step's loss
        assert len(train.metrics) == 8
    else:  # machine 0 (the CLI) has the run; this one only took part
        assert "step 8 " in out and not train.metrics
        assert not list(Path(window.state.runs_dir).glob("lora-*"))


def test_machines_section_edits_the_spec_and_writes_cluster_files(  # type: ignore[no-untyped-def]
    window, qtbot, tiny_llama, alpaca_jsonl, tmp_path, monkeypatch
) -> None:
    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    page = window.pages["method"]
    assert {"count", "rank", "main_address", "main_port"} <= set(page.machines_form.field_names)
    edit_machines(page, count=3, main_address="head-node", main_port=6100)
    assert window.state.training.machines.model_dump() == {
        "count": 3,
        "rank": 0,
        "main_address": "head-node",
        "main_port": 6100,
        "hosts": [],
    }
    # Editing another training field keeps the machines (that form has no field for them).
    page.training_form.setters["batch_size"](2)
    page.training_form.changed.emit(page.training_form.values())
    assert window.state.training.batch_size == 2 and window.state.training.machines.count == 3
    edit_machines(page, rank=3)
    assert page.validation.text() == "machines: rank 3 is not one of the 3 machines (0 … 2)"  # not "Value error,"
    assert window.state.training.machines.rank == 0  # the bad value is not taken
    with pytest.raises(UserError, match=r"Method page: machines: rank 3 is not one of the 3 machines \(0 … 2\) — put"):
        window.state.build_spec()  # Start trained with the machines before it, under the red line
    edit_machines(page, rank=1)
    assert page.validation.text() == ""
    # A spec loaded from a file shows its machines.
    window.state.set_training(TrainingSpec(machines=["a", "b"]))
    assert page.machines_form.values()["count"] == 2 and page.machines_form.values()["main_address"] == "a"

    window.state.set_training(TrainingSpec(machines=2))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "cluster"))
    page.findChild(QPushButton, "writeClusterFiles").click()
    assert (tmp_path / "cluster" / "lora.slurm").exists() and (tmp_path / "cluster" / "lora.sky.yaml").exists()
    assert "sbatch" in page.cluster_note.text() and "sky launch" in page.cluster_note.text()
    assert not error_dialogs()


def test_cluster_files_for_one_machine_are_refused_in_a_dialog(  # type: ignore[no-untyped-def]
    window, qtbot, tiny_llama, alpaca_jsonl, tmp_path, monkeypatch
) -> None:
    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    shown: list[str] = []
    monkeypatch.setattr(
        "adapter_studio.gui.pages.method_page.show_error", lambda parent, error: shown.append(str(error))
    )
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "cluster"))
    window.pages["method"]._write_cluster_files()
    assert shown and "one machine" in shown[0]
    assert not (tmp_path / "cluster").exists()
