"""Is the window responsive while it trains, and does training from the window lose speed?

1. A 10 ms QTimer on the main thread records the gaps between its ticks while a run trains from
   the window: prints the 99th percentile stall and the largest one (goals: < 50 ms and < 200 ms).
2. The same spec trained by `adapter-studio train` (its own process, as a person would compare) and from
   the window (TrainingController), alternated several times: prints the median tokens/s of each and
   their ratio (goal >= 0.95). Not headless in this process: a run on the main thread would leave
   OpenMP threads of its own behind, and libgomp then throttles every other thread's (see gui/app.py).

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/responsiveness.py [--model embedded:smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo"


def make_spec(model: str, steps: int, runs: Path):  # type: ignore[no-untyped-def]
    from adapter_studio.engine.spec import parse_spec

    return parse_spec(
        {
            "model": {"source": model},
            "data": {"path": str(DEMO / "train.jsonl"), "eval_split": 0, "max_length": 128},
            "method": {"name": "lora"},
            "training": {"max_steps": steps, "batch_size": 4, "save_every": 10_000, "eval_samples": 0},
            "output_dir": str(runs),
        }
    )


def median_tokens_per_s(events: list) -> float:  # type: ignore[type-arg]
    from adapter_studio.engine.events import Metrics

    speeds = [e.tokens_per_s for e in events if isinstance(e, Metrics)][2:]  # skip warm-up steps
    return statistics.median(speeds) if speeds else 0.0


def run_cli(spec, runs: Path) -> float:  # type: ignore[no-untyped-def]
    """The spec trained by `adapter-studio train` in a process of its own: median tokens/s."""
    import json
    import subprocess
    import sys

    from adapter_studio.engine.events import event_from_dict
    from adapter_studio.engine.imports import OPENMP_WAITING

    out = Path(tempfile.mkdtemp(dir=runs))
    path = out / "spec.json"
    path.write_text(spec.model_copy(update={"output_dir": str(out)}).model_dump_json(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAITING}  # the CLI's own, not the window's
    cli = Path(sys.executable).with_name("adapter-studio")
    subprocess.run([str(cli), "train", str(path)], env=env, check=True, capture_output=True)
    lines = next(out.glob("*/events.jsonl")).read_text().splitlines()
    return median_tokens_per_s([event_from_dict(json.loads(line)) for line in lines])


def run_in_window(app, spec) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    from adapter_studio.gui.worker import TrainingController
    from PySide6.QtCore import QEventLoop, QTimer

    controller = TrainingController()
    events: list = []  # type: ignore[type-arg]
    controller.events.connect(events.extend)
    gaps: list[float] = []
    last = [time.perf_counter()]
    # What the training thread was doing when the window stalled: its events, stamped as they are made.
    stamped: list[tuple[float, Any]] = []
    put = controller.pump.put
    controller.pump.put = lambda event: (stamped.append((time.perf_counter(), event)), put(event))  # type: ignore[method-assign]

    def tick() -> None:
        now = time.perf_counter()
        gap = (now - last[0]) * 1000 - 10
        gaps.append(gap)
        if gap > STALL_MS:
            before = [e for t, e in stamped if t <= last[0]]
            doing = next((_describe(e) for e in reversed(before)), "starting")
            STALLS.append((gap, doing))
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    # Qt's own event loop, as in the app: it waits with the interpreter lock released, where a
    # processEvents() spin would hold it and slow the training thread down.
    loop = QEventLoop()
    controller.done.connect(loop.quit)
    controller.failed.connect(loop.quit)
    controller.start(spec)
    if controller.running:
        loop.exec()
    timer.stop()
    return median_tokens_per_s(events), gaps[20:]  # the first ticks include start-up work


STALL_MS = 100.0
STALLS: list[tuple[float, str]] = []


def _describe(event: Any) -> str:
    kind = type(event).__name__
    if kind == "Stage":
        return f"stage {event.stage}"
    if kind == "Metrics":
        return f"training (after step {event.step})"
    return kind.lower()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from adapter_studio.gui.app import create_app

    app = create_app()
    runs = Path(tempfile.mkdtemp())
    window_speeds, cli_speeds, all_gaps = [], [], []
    for _ in range(args.rounds):
        speed, gaps = run_in_window(app, make_spec(args.model, args.steps, runs))
        window_speeds.append(speed)
        all_gaps += gaps
        cli_speeds.append(run_cli(make_spec(args.model, args.steps, runs), runs))
    all_gaps.sort()
    p99 = all_gaps[int(0.99 * (len(all_gaps) - 1))] if all_gaps else 0.0
    worst = max(all_gaps, default=0.0)
    print(f"timer stalls over {len(all_gaps)} ticks: p99 {p99:.1f} ms (goal < 50), max {worst:.1f} ms (goal < 200)")
    training = [g for g, doing in STALLS if doing.startswith("training")]
    print(f"  stalls over {STALL_MS:.0f} ms: {len(STALLS)}, of which {len(training)} after the first training step "
          f"(worst {max(training, default=0):.0f} ms); the others while the model loads")
    for gap, doing in sorted(STALLS, reverse=True)[:5]:
        print(f"  stall {gap:6.0f} ms while the run was at: {doing}")
    window, cli = statistics.median(window_speeds), statistics.median(cli_speeds)
    print(f"tokens/s window {[round(s) for s in window_speeds]}, adapter-studio train {[round(s) for s in cli_speeds]}")
    print(f"median tokens/s: window {window:.0f}, adapter-studio train {cli:.0f}")
    print(f"ratio window/cli {window / cli:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
