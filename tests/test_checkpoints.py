"""Run folders are safe to open and survive crashes: no pickle is ever loaded from them, every file of
a checkpoint is recorded with its size and checksum, and a resume skips a checkpoint a crash cut short."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.events import Event, Log, Metrics, Started
from adapter_studio.engine.training import checkpoints
from adapter_studio.engine.training.run import RunResult, run

SETTINGS = {"max_steps": 12, "learning_rate": 2e-2, "seed": 3, "save_every": 4, "eval_samples": 0}


def _run(spec: Any, **kwargs: Any) -> tuple[RunResult, list[Event]]:
    events: list[Event] = []
    return run(spec, events.append, **kwargs), events


def _stopped_at(step: int, spec: Any) -> RunResult:
    stop = threading.Event()

    def emit(event: Event) -> None:
        if isinstance(event, Metrics) and event.step >= step:
            stop.set()

    return run(spec, emit, stop)


def test_a_checkpoint_holds_no_pickle_and_records_every_file(tiny_llama: Path, alpaca_jsonl: Path,
                                                             make_spec: Any) -> None:  # fmt: skip
    result, _ = _run(make_spec(tiny_llama, alpaca_jsonl, "lora", **SETTINGS))
    assert result.status == "completed", result.error
    for folder in checkpoints.list_checkpoints(result.run_dir / "checkpoints"):
        names = {p.name for p in folder.iterdir()}
        assert names == {checkpoints.WEIGHTS, checkpoints.OPTIMIZER, checkpoints.RNG, checkpoints.STATE}, names
        state = json.loads((folder / checkpoints.STATE).read_text())
        assert set(state["files"]) == names - {checkpoints.STATE}
        assert all(len(r["sha256"]) == 64 and r["bytes"] > 0 for r in state["files"].values())
        assert checkpoints.problem(folder) is None
    assert not list(result.run_dir.rglob("*.pt")) and not list(result.run_dir.rglob("*.bin"))


@pytest.mark.parametrize(
    "damage",
    ["truncate weights", "flip a byte of the optimizer", "delete the RNG file", "empty state.json"],
)
def test_resume_skips_a_damaged_checkpoint_and_says_which(damage: str, tiny_llama: Path, alpaca_jsonl: Path,
                                                          make_spec: Any) -> None:  # fmt: skip
    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", **SETTINGS)
    first = _stopped_at(9, spec)  # checkpoints at steps 4 and 8, and 9 at the stop
    assert first.status == "cancelled" and first.step == 9
    newest = checkpoints.latest_checkpoint(first.run_dir / "checkpoints")
    assert newest is not None and newest.name == "step-0000009"
    target = {"truncate weights": checkpoints.WEIGHTS, "flip a byte of the optimizer": checkpoints.OPTIMIZER,
              "delete the RNG file": checkpoints.RNG, "empty state.json": checkpoints.STATE}[damage]  # fmt: skip
    path = newest / target
    if damage.startswith("truncate"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage.startswith("flip"):
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage.startswith("delete"):
        path.unlink()
    else:
        path.write_text("")
    resumed, events = _run(None, resume_dir=first.run_dir)
    assert resumed.status == "completed", resumed.error
    started = next(e for e in events if isinstance(e, Started))
    warnings = [e.message for e in events if isinstance(e, Log) and e.level == "warning"]
    assert started.resumed_from_step == 8, warnings
    assert any("skipped checkpoint step-0000009" in w for w in warnings), warnings


class _Payload:
    """A pickle that would run code when loaded (it calls print)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_a_run_folder_carrying_a_malicious_pickle_is_refused(tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    first = _stopped_at(5, make_spec(tiny_llama, alpaca_jsonl, "lora", **SETTINGS))
    newest = checkpoints.latest_checkpoint(first.run_dir / "checkpoints")
    assert newest is not None
    # Made to look like an older version's checkpoint: state.pt, no format or file record.
    state = json.loads((newest / checkpoints.STATE).read_text())
    (newest / checkpoints.STATE).write_text(json.dumps({"step": state["step"]}))
    for name in (checkpoints.OPTIMIZER, checkpoints.RNG):
        (newest / name).unlink()
    torch.save({"optimizer": _Payload(), "scheduler": {}}, newest / checkpoints.LEGACY_STATE,
               pickle_protocol=pickle.HIGHEST_PROTOCOL)  # fmt: skip
    resumed, _ = _run(None, resume_dir=first.run_dir)
    assert resumed.status == "failed"
    assert "state.pt holds more than tensors and numbers" in (resumed.error or ""), resumed.error
    assert "resume only run folders you made yourself" in (resumed.error or "")
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("folder", "state", "label"),
    [
        ("best", '{"step": 30}', "best (step 30)"),  # the step is what a person finds on the curves
        ("step-0000040", '{"step": 40}', "step 40"),
        ("step-0000040", None, "step-0000040"),  # no state (damaged, or being written): the folder's name
        ("best", "{", "best"),
    ],
)
def test_a_checkpoint_is_named_with_its_step(tmp_path: Path, folder: str, state: str | None, label: str) -> None:
    path = tmp_path / folder
    path.mkdir()
    if state is not None:
        (path / checkpoints.STATE).write_text(state)
    assert checkpoints.checkpoint_label(path) == label


def test_8bit_adamw_state_whose_tensors_share_memory_is_saved_and_restored(tmp_path: Path) -> None:
    """bitsandbytes gives every parameter's state the same quantisation maps: safetensors refused them ("Some
    tensors share memory"), so 8-bit AdamW on SmolLM2 failed at its first checkpoint (layers of ≥ 4,096 weights
    only: the tiny models' are smaller)."""
    bnb = pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 128))  # two 8-bit states
    optimizer = bnb.optim.AdamW8bit(layers.parameters(), lr=0.01)
    layers(torch.randn(4, 128)).square().sum().backward()
    optimizer.step()
    tensors, info = checkpoints._split_state(optimizer.state_dict())
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    restored = checkpoints._join_state(load_file(str(tmp_path / "optimizer.safetensors")), info)
    compared = 0
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.get("__bnb_optimizer_quant_state__", {}).items():
            assert torch.equal(restored["state"][index]["__bnb_optimizer_quant_state__"][key], value), key
            compared += 1
    assert compared == 2 * 6 + 2 * 2  # the weights' states, maps and scales; the biases' plain moments


def test_a_checkpoint_deleted_as_it_is_read_gives_way_to_the_latest(tmp_path: Path, monkeypatch: Any) -> None:
    """A run still training keeps its last two checkpoints: one picked as the latest was deleted while the base
    model loaded, and `export` of a live run failed on a FileNotFoundError (3 tries of 3)."""
    import shutil

    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.inference import trained
    from safetensors.torch import save_file

    def checkpoint(step: int) -> Path:
        folder = tmp_path / "checkpoints" / f"step-{step:07d}"
        folder.mkdir(parents=True)
        save_file({"w": torch.full((2,), float(step))}, str(folder / checkpoints.WEIGHTS))
        (folder / checkpoints.STATE).write_text("{}")
        return folder

    first = checkpoint(5)
    real = checkpoints.read_trainable

    def rotated(folder: Path) -> dict[str, Any]:  # the trainer saves step 10, and deletes step 5, meanwhile
        if folder == first and first.exists():
            checkpoint(10)
            shutil.rmtree(first)
        return real(folder)

    monkeypatch.setattr(checkpoints, "read_trainable", rotated)
    found, tensors = trained._read_checkpoint(tmp_path, None)
    assert found.name == "step-0000010" and float(tensors["w"][0]) == 10.0
    with pytest.raises(FileNotFoundError):  # a checkpoint asked for by name is that one, or none
        trained._read_checkpoint(tmp_path, first)
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(UserError, match="this run has no checkpoint yet"):
        trained._read_checkpoint(tmp_path, None)
