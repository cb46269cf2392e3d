"""What only a CUDA GPU can check: bf16 autocast, CUDA memory stats, FSDP through accelerate launch, and
the compiled training step on a GPU. (Quantised bases and 8-bit AdamW run on the CPU too:
tests/test_quantized.py, on whichever device the machine has.)

Skipped with the reason where there is no CUDA GPU (as in CI); `benchmarks/gpu_session.sh` runs them
on a lent GPU machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.events import Finished, Metrics, Started

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def train(spec: Any) -> tuple[Any, list[Any]]:
    from adapter_studio.engine.training.run import run

    events: list[Any] = []
    result = run(spec, events.append)
    return result, events


def test_auto_precision_is_bf16_autocast_with_cuda_memory_stats(tiny_llama, alpaca_jsonl, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", precision="auto", learning_rate=0.01, max_steps=30)
    result, events = train(spec)
    assert result.status == "completed", result.error
    started = next(e for e in events if isinstance(e, Started))
    assert "cpu" not in started.device.lower(), started.device
    assert started.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    metrics = [e for e in events if isinstance(e, Metrics)]
    assert all(m.memory_peak_bytes and m.memory_peak_bytes > 0 for m in metrics)
    assert metrics[-1].loss < metrics[0].loss
    assert not torch.backends.cuda.cudnn_sdp_enabled()  # no cuDNN plan per batch shape


def test_fsdp_through_accelerate_launch(tiny_llama, alpaca_jsonl, make_spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The launcher's FSDP settings on a real GPU (with one process where the machine has one GPU)."""
    from adapter_studio.engine.events import EventFollower
    from adapter_studio.engine.training.launch import start_multi

    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", precision="auto", max_steps=6, save_every=3)
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"distributed": "fsdp"})})
    proc, run_dir = start_multi(spec, min(2, torch.cuda.device_count()))
    output, _ = proc.communicate(timeout=300)
    events = EventFollower(run_dir / "events.jsonl").poll()
    finished = [e for e in events if isinstance(e, Finished)]
    assert proc.returncode == 0 and finished and finished[-1].status == "completed", output[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-0000003", "step-0000006"]
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / "checkpoints" / "step-0000006" / "trainable.safetensors"))
    assert any("lora_B" in n and float(t.abs().sum()) > 0 for n, t in saved.items())  # trained, full tensors
    # The gathered checkpoint carries the plain model's names: the adapter exports and reloads.
    from adapter_studio.engine.export.run_export import export_run

    exported = export_run(run_dir, "adapter", tmp_path / "adapter")
    assert exported.verified_max_diff is not None and exported.verified_max_diff < 1e-3


def test_resume_on_cuda_continues_the_curve(tiny_llama, alpaca_jsonl, make_spec) -> None:  # type: ignore[no-untyped-def]
    import threading

    from adapter_studio.engine.training.run import run

    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", precision="auto", max_steps=12, save_every=4)
    stop = threading.Event()
    seen: list[Any] = []

    def emit(event: Any) -> None:
        seen.append(event)
        if isinstance(event, Metrics) and event.step == 6:
            stop.set()

    first = run(spec, emit, stop)
    assert first.status == "cancelled"
    resumed: list[Any] = []
    second = run(spec, resumed.append, resume_dir=Path(first.run_dir))
    assert second.status == "completed", second.error
    started = next(e for e in resumed if isinstance(e, Started))
    assert started.resumed_from_step >= 4


def test_compiled_step_on_cuda_follows_the_eager_curve(tiny_llama, alpaca_jsonl, make_spec, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """training.compile on a GPU: triton kernels, widths padded to a multiple of 8 (one kernel variant)."""
    import adapter_studio.engine.training.session as train_module
    from torch._dynamo.utils import counters

    widths: list[int] = []
    collate = train_module.collate

    def recording_collate(*args: Any) -> Any:
        batch = collate(*args)
        widths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(train_module, "collate", recording_collate)
    curves = {}
    for compile in ("off", "on"):
        widths.clear()
        counters.clear()
        spec = make_spec(tiny_llama, alpaca_jsonl, {"name": "lora", "dropout": 0.0}, precision="auto",
                         learning_rate=0.01, max_steps=8, eval_samples=0, compile=compile)  # fmt: skip
        result, events = train(spec)
        assert result.status == "completed", result.error
        curves[compile] = [e.loss for e in events if isinstance(e, Metrics)]
    assert widths and all(w % 8 == 0 for w in widths), widths
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # with and without a padding mask
    assert max(abs(a - b) for a, b in zip(curves["off"], curves["on"], strict=True)) < 2e-2, curves
