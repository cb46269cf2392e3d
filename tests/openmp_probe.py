"""Run by test_openmp_threads.py in a process of its own: the window's threads and OpenMP's.

libgomp gives every thread that runs a parallel region a team of threads of its own, kept until that
thread exits, and while a process has more of them than cores it cuts every thread's spin-wait short:
training then ran 40 % slower. So no torch work may leave a team behind: a worker's goes with its
thread (create_app lets pool threads exit once idle), and the main thread never makes one.

OpenMP's threads are told apart by name: a new thread starts with its creator's, so each thread that
does torch work here is named first, and a native thread (not Python's) of that name is its team.
Prints one JSON line.
    python tests/openmp_probe.py MODEL_FOLDER DATA.jsonl RUNS_DIR
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time

os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ["OMP_NUM_THREADS"] = "2"  # a team of two even on a one-core machine
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # tokenizers' own pool would carry a worker's name too

import numpy  # noqa: F401  # numpy's and scipy's OpenBLAS start their threads now, named after this one
import scipy.linalg  # noqa: F401


def set_name(name: str) -> None:
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: this thread's name


def native_threads(name: str) -> int:
    """Threads named `name` that are not Python's (a tqdm monitor started by a worker carries its name)."""
    python = {t.native_id for t in threading.enumerate()}
    tasks = os.listdir("/proc/self/task")
    return sum(1 for t in tasks if int(t) not in python and open(f"/proc/self/task/{t}/comm").read().strip() == name)


def main() -> None:
    model, data, runs = sys.argv[1:4]
    set_name("probe-main")
    from adapter_studio.gui.app import create_app

    app = create_app()
    import torch
    from adapter_studio.engine.spec import parse_spec
    from adapter_studio.engine.training.run import run
    from adapter_studio.gui.worker import TrainingController, run_in_background
    from PySide6.QtCore import QEventLoop, QThreadPool, QTimer

    def wait_until(condition, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            loop = QEventLoop()
            QTimer.singleShot(20, loop.quit)
            loop.exec()
        return condition()

    def matmul() -> None:
        a = torch.randn(1024, 1024)
        (a @ a).sum()

    pool = QThreadPool.globalInstance()
    seen: dict[str, object] = {}

    def load() -> int:  # a background job as the pages run them (a model's summary, an export)
        set_name("probe-load")
        matmul()
        return native_threads("probe-load")

    results: list[int] = []
    run_in_background(load, on_result=results.append, on_error=lambda e: results.append(-1))
    wait_until(lambda: bool(results))
    seen["load: its OpenMP threads while it ran"] = results[0] if results else None
    wait_until(lambda: pool.activeThreadCount() == 0 and not native_threads("probe-load"))
    seen["load: left after it"] = native_threads("probe-load")

    spec = parse_spec({
        "model": {"source": model}, "data": {"path": data, "eval_split": 0.0, "max_length": 64},
        "method": {"name": "lora"}, "output_dir": runs,
        "training": {"max_steps": 2, "batch_size": 4, "save_every": 2, "eval_samples": 0, "precision": "float32"},
    })  # fmt: skip

    def train(emit, stop):  # type: ignore[no-untyped-def]  # the Train page's run, its thread named
        set_name("probe-train")
        result = run(spec, emit, stop)
        matmul()  # a tiny model's ops may all be too small to go parallel
        seen["train: its OpenMP threads while it ran"] = native_threads("probe-train")
        return result

    controller = TrainingController()
    done: list[object] = []
    controller.done.connect(done.append)
    controller.failed.connect(done.append)
    controller.start_job(train)
    wait_until(lambda: bool(done), 120.0)
    seen["train: status"] = getattr(done[0], "status", repr(done[0])) if done else "no result"
    wait_until(lambda: pool.activeThreadCount() == 0 and not native_threads("probe-train"))
    seen["train: left after it"] = native_threads("probe-train")

    seen["main: OpenMP threads after all that"] = native_threads("probe-main")
    matmul()
    seen["main: after a matmul of its own"] = native_threads("probe-main")
    print(json.dumps(seen))
    app.quit()


if __name__ == "__main__":
    main()
