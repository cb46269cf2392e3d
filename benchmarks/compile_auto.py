"""training.compile = auto over a user's sequence of runs: whole runs, start to finish, through the CLI.

Runs one spec (the demo by default: SmolLM2, LoRA on q,v, 150 steps of 8, three evaluations) five times in
a row with a fresh app cache (and so a fresh inductor cache, which the engine keeps under it), after an
untimed two-step run that fills the app's model and data caches:

    off        training.compile: off
    auto-new   auto on a machine that has never compiled this run: the cost is unknown (a minute assumed)
    on         compiled from the start with an empty inductor cache: what a first compile costs
    auto-again auto once `on` has measured the cost and filled inductor's cache: a user's next run
    off-again  off again: `off` is the mean of the first and the last run, as the machine drifts

and prints each run's wall time, whether it compiled, its first step's seconds and the median tokens/s of
its steps, then `whole_run_speedup <off / auto-again>` (and `first_run_ratio <off / auto-new>`, which
should stay near 1: auto must not cost a run that cannot pay for it). One machine, one run each: on
this shared 2-core machine a whole run is good to a few per cent.

    .venv/bin/python benchmarks/compile_auto.py [--spec resources/demo/demo.yaml] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "adapter-studio"
RUNS = (("off", "off"), ("auto-new", "auto"), ("on", "on"), ("auto-again", "auto"), ("off-again", "off"))


def whole_run(spec: str, compile_mode: str, sets: list[str], out: Path, env: dict[str, str]) -> dict[str, float]:
    command = [str(CLI), "train", spec, "--set", f"training.compile={compile_mode}", "--set", f"output_dir={out}"]
    for item in sets:
        command += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    events = [json.loads(line) for line in next(out.glob("*/events.jsonl")).read_text().splitlines()]
    metrics = [e for e in events if e["type"] == "metrics"]
    return {"seconds": seconds, "compiled": any(e["type"] == "stage" and e["stage"] == "compiling" for e in events),
            "first_step_s": metrics[0]["elapsed_s"],
            "tokens_per_s": statistics.median(m["tokens_per_s"] for m in metrics[3:] or metrics)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "resources" / "demo" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a spec override")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="compile-auto-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # the engine's own place for it, under the fresh app cache
    # the first run with a fresh app cache also converts the embedded model and tokenises the data: done
    # once here, untimed, so that every timed run starts alike
    whole_run(args.spec, "off", [*args.set, "training.max_steps=2"], folder / "runs" / "prime", env)
    results = {}
    for name, mode in RUNS:
        r = results[name] = whole_run(args.spec, mode, args.set, folder / "runs" / name, env)
        print(f"{name:<11} {r['seconds']:6.1f} s  compiled {'yes' if r['compiled'] else 'no ':<3}  "
              f"first step {r['first_step_s']:5.1f} s  {r['tokens_per_s']:6.0f} tokens/s", flush=True)
    off = (results["off"]["seconds"] + results["off-again"]["seconds"]) / 2  # first and last: the machine drifts
    print(f"first_run_ratio {off / results['auto-new']['seconds']:.2f}")
    print(f"whole_run_speedup {off / results['auto-again']['seconds']:.2f}")


if __name__ == "__main__":
    main()
