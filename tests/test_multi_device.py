"""Several processes through `accelerate launch` (gloo on CPU, FACTS.md): same curve, one log, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "adapter_studio.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def spec_file(tmp: Path, model: Path, data: Path, runs: Path, **training: object) -> Path:
    train = {
        "max_steps": 8,
        "batch_size": 4,
        "save_every": 4,
        "eval_samples": 0,
        "precision": "float32",
        "learning_rate": 0.01,
        **training,
    }
    path = tmp / "spec.yaml"
    path.write_text(
        f"model: {{source: {model}}}\ndata: {{path: {data}, max_length: 64, eval_split: 0}}\n"
        # q,v: at lr 0.01 the rounding of a mean of two means grows fastest with every adapted layer (all
        # linear ones: 0.08 apart by step 6; q,v: within 0.05 over the 8 steps)
        f"method: {{name: lora, target_modules: [q_proj, v_proj]}}\ntraining: {json.dumps(train)}\noutput_dir: {runs}\n"
    )
    return path


def wait_for_step(proc: subprocess.Popen[str], step: int, seconds: float = 240) -> None:
    """Read the process's progress lines until step `step` has been printed (or `seconds` have passed)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.stdout.readline().startswith(f"step {step} "):  # type: ignore[union-attr]
            return


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "metrics"]


def test_two_processes_follow_the_one_process_curve(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    one = spec_file(tmp_path, tiny_llama, alpaca_jsonl, tmp_path / "one")
    assert subprocess.run([*CLI, "train", str(one)], env=ENV, capture_output=True, timeout=300).returncode == 0
    # A copy no process has prepared yet: both ranks tokenise it at once into the shared data cache.
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_bytes(alpaca_jsonl.read_bytes())
    two = spec_file(tmp_path, tiny_llama, fresh, tmp_path / "two", batch_size=2)
    out = subprocess.run(
        [*CLI, "train", str(two), "--devices", "2", "--quiet"], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-2000:]
    assert out.stdout == "finished completed at step 8\n"  # --quiet: the processes' lines printed none
    (single,), (double,) = list((tmp_path / "one").iterdir()), list((tmp_path / "two").iterdir())
    a, b = losses(single), losses(double)
    assert len(a) == len(b) == 8
    # Same global batches; the only difference is a mean of two per-process means vs one mean.
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.05, (a, b)
    assert [p.name for p in sorted((double / "checkpoints").glob("step-*"))] == ["step-0000004", "step-0000008"]
    events = [json.loads(x)["type"] for x in (double / "events.jsonl").read_text().splitlines()]
    assert events.count("started") == 1 and events.count("finished") == 1  # one log, by the main process


@pytest.mark.slow  # each process compiles (inductor shares its cache between them)
def test_two_processes_compile_their_blocks(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = spec_file(tmp_path, tiny_llama, alpaca_jsonl, tmp_path / "runs", batch_size=2, compile=True)
    out = subprocess.run(
        [*CLI, "train", str(spec), "--devices", "2"], env=ENV, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert len(losses(next((tmp_path / "runs").iterdir()))) == 8
    assert "recompile_limit" not in out.stderr  # DDP's wrapper must not make every block its own compile


def test_stop_reaches_every_process(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = spec_file(
        tmp_path, tiny_llama, alpaca_jsonl, tmp_path / "runs", max_steps=100_000, save_every=100_000, batch_size=2
    )
    proc = subprocess.Popen(
        [*CLI, "train", str(spec), "--devices", "2"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for_step(proc, 3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=180)
    assert proc.returncode == 130
    run_dir = next((tmp_path / "runs").iterdir())
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "finished" and last["status"] == "cancelled"
    assert list((run_dir / "checkpoints").glob("step-*"))


@pytest.mark.parametrize(("strategy", "expected"), [("fsdp", "FSDP shards"), ("deepspeed", "DeepSpeed ZeRO shards")])
def test_sharded_strategies_are_refused_without_cuda(strategy, expected, monkeypatch):  # type: ignore[no-untyped-def]
    import torch
    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.training.launch import check_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=expected) as info:
        check_devices(2, strategy)
    assert info.value.where == "training.distributed" and "ddp" in (info.value.fix or "")
    check_devices(2, "ddp")  # CPU processes with gloo are fine
