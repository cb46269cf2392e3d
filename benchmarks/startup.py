"""Start-up time: seconds from process start to the window's first paint, against the 1.5 s budget.

Runs `adapter-studio --self-test` (offscreen) several times and prints each time, the median and
the median's ratio to the budget; then times `--version` and checks that it does not import torch.

    .venv/bin/python benchmarks/startup.py                                   # the venv's entry point
    .venv/bin/python benchmarks/startup.py --app dist/adapter-studio/adapter-studio   # the built bundle
    .venv/bin/python benchmarks/startup.py --runs 10 --strict                # exit 1 when over budget

Exit status: 1 when a run fails or `--version` imports torch (and, with --strict, when the median
is over the budget); 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 1.5
ENV = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
VERSION_PROBE = """
import sys
from adapter_studio.cli import main
try:
    main(["--version"])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets", "PySide6.QtWidgets") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def self_test_seconds(app: str) -> tuple[float, float]:
    """(seconds to first paint as the app reports it, wall seconds of the whole process)."""
    start = time.perf_counter()
    out = subprocess.run([app, "--self-test"], capture_output=True, text=True, timeout=300, env=ENV)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"error: {app} --self-test exited {out.returncode}:\n{out.stderr[-2000:]}")
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    try:
        return float(last), wall
    except ValueError:
        raise SystemExit(f"error: --self-test's last line is not seconds: {last!r}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=str(ROOT / ".venv" / "bin" / "adapter-studio"), help="the executable")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds to first paint")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the median is over the budget")
    args = parser.parse_args()
    if not Path(args.app).exists():
        raise SystemExit(f"error: {args.app} not found (make install, or make package for the bundle)")

    print(f"{args.app} --self-test, {args.runs} runs (offscreen), budget {args.budget:.2f} s")
    paints = []
    for i in range(1, args.runs + 1):
        paint, wall = self_test_seconds(args.app)
        paints.append(paint)
        print(f"  run {i}: first paint {paint:.2f} s  (process wall {wall:.2f} s)")
    median = statistics.median(paints)
    ratio = median / args.budget
    print(f"median {median:.2f} s = {ratio:.2f}× the {args.budget:.2f} s budget "
          f"({'within' if ratio <= 1 else 'OVER'} budget)")

    walls = []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run([args.app, "--version"], capture_output=True, text=True, timeout=120, env=ENV)
        walls.append(time.perf_counter() - start)
        if out.returncode != 0 or not out.stdout.startswith("adapter-studio"):
            raise SystemExit(f"error: --version failed: {out.stdout}{out.stderr}")
    print(f"--version: {statistics.median(walls):.2f} s (median of 3)")

    # Import check in the project's Python (a frozen bundle cannot run a probe script).
    python = ROOT / ".venv" / "bin" / "python"
    probe = subprocess.run([str(python if python.exists() else sys.executable), "-c", VERSION_PROBE],
                           capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)
    heavy = next((line[6:] for line in probe.stdout.splitlines() if line.startswith("HEAVY:")), None)
    if heavy is None:
        print(f"error: the --version import probe failed:\n{probe.stderr[-2000:]}", file=sys.stderr)
        return 1
    if heavy:
        print(f"error: --version imports {heavy}", file=sys.stderr)
        return 1
    print("--version imports no torch/transformers/peft/datasets/Qt widgets: ok")
    return 1 if args.strict and ratio > 1 else 0


if __name__ == "__main__":
    raise SystemExit(main())
