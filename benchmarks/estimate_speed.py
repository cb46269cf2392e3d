"""How long `adapter-studio params` takes for every method on Llama-3.1-8B (budget: 3 s after imports).

    .venv/bin/python benchmarks/estimate_speed.py [--model llama-3.1-8b] [--repeats 3]

Prints the first call (reads the config, builds the meta model) and repeated calls with the meta model
cached but every method applied afresh, wall-clock and this process's CPU seconds (the latter is what
the code costs when the machine is busy), each with its ratio to the budget; then one call answered
from the cache of applied methods (what the Compare page gets when only batch size, length, precision
or optimizer change).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BUDGET_S = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    t0 = time.perf_counter()
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from adapter_studio.engine.estimate.table import clear_caches, estimate_table

    print(f"imports: {time.perf_counter() - t0:.2f} s (not counted)")
    timings = []
    for i in range(1 + args.repeats):
        clear_caches(keep_models=i > 0)
        wall, cpu = time.perf_counter(), time.process_time()
        rows = estimate_table(args.model, args.methods, [])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        label = "first call (config + meta model)" if i == 0 else f"repeat {i} (cached model)"
        print(f"{label:<34} {len(rows)} methods  wall {wall:5.2f} s ({wall / BUDGET_S:4.2f}× budget)  "
              f"cpu {cpu:5.2f} s ({cpu / BUDGET_S:4.2f}× budget)")
        timings.append((wall, cpu))
    wall = time.perf_counter()
    estimate_table(args.model, args.methods, ["training.batch_size=7"])
    print(f"{'from cached applied methods':<34} {len(rows)} methods  wall {time.perf_counter() - wall:5.3f} s")
    best = min(timings[1:] or timings)
    ok = timings[0][0] <= BUDGET_S
    print(f"\nfirst call {timings[0][0]:.2f} s, best repeat {best[0]:.2f} s wall / {best[1]:.2f} s cpu; "
          f"budget {BUDGET_S:.0f} s: {'within' if ok else 'OVER'} on the first call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
