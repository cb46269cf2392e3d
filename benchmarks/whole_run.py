"""Whole processes, start to finish: `adapter-studio train` against the Trainer + peft recipe (issue 27's CPU goal).

`benchmarks/throughput.py` compares the training steps' tokens/s; a person waits for the whole process:
interpreter start, imports, the model, the data, the steps and the saved adapter. Here each side is its
own process, timed from spawn to exit, on real instruction data:

    svamp      SVAMP math word problems (/work/shared/data/svamp.json, the rows `benchmarks/quality.py`
               trains on: instruction = problem, output = equation and number), 600 rows of the file;
    longtail   the generated instruction set with a long tail of answer lengths (longtail_data.py).

Sides, the same model, rows, method (LoRA r8/alpha16/dropout 0.05 on q,v), optimisation (AdamW lr 2e-4,
linear decay, no warm-up, clipping 1.0), batch 4, max_length 512, steps and seed:

    defaults   benchmarks/trainer_recipe.py: datasets + chat template + DataCollatorForSeq2Seq + Trainer,
               float32, random batches; saves the adapter.
    best       the same script with --best: bf16 where the device runs it fast, length-grouped batches.
    engine     `adapter-studio train SPEC.yaml` with every other setting at the app's default (precision,
               attention, `training.compile: auto`, …), held-out loss off like the recipe's; saves the adapter
               and its run folder.

Both load one float32 safetensors folder converted from the embedded GGUF before any timing, so neither
pays for the GGUF. Each process gets empty caches (XDG_CACHE_HOME, HF_HOME): a person's first run of the
data; `--warm` keeps each side's caches from its previous run instead (the app's tokenised-data cache,
datasets' map cache). Sides run interleaved per step count, `--repeats` times; the median is reported.

    .venv/bin/python benchmarks/whole_run.py                       # svamp, 30 and 150 steps (one epoch)
    .venv/bin/python benchmarks/whole_run.py --data svamp,longtail --steps 30 --repeats 2

Prints each process's wall seconds and phases, then per step count the ratios, and last
`whole_run_speedup <engine against best, geometric mean over the runs>`.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The processes get the environment this one started with: quality.py, imported for the data and the
# model, sets OMP_WAIT_POLICY=PASSIVE for its own process, which made every side about 40 % slower.
START_ENV = dict(os.environ)

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv" / "bin" / "python"
CLI = ROOT / ".venv" / "bin" / "adapter-studio"
SIDES = ("defaults", "best", "engine")
SEED = 0


def svamp_file(folder: Path) -> Path:
    from throughput import svamp_files

    return svamp_files(folder)[0]


def longtail_file(folder: Path) -> Path:
    import longtail_data

    train, _ = longtail_data.write(folder / "longtail", n_train=1000, n_eval=64, seed=SEED)
    return train


def engine_command(model: Path, train: Path, steps: int, out: Path, work: Path) -> list[str]:
    spec = {
        "model": {"source": str(model)},
        "data": {"path": str(train), "eval_split": 0.0, "max_length": 512},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "training": {
            "max_steps": steps,
            "batch_size": 4,
            "learning_rate": 2e-4,
            "scheduler": "linear",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "seed": SEED,
            "save_every": steps + 1,
            "eval_samples": 0,
        },
        "output_dir": str(out),
        "name": "whole-run",
    }
    path = work / f"spec-{steps}.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return [str(CLI), "train", str(path)]


def run_side(side: str, model: Path, train: Path, steps: int, work: Path, cache: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{side}-"))
    if side == "engine":
        command = engine_command(model, train, steps, out, work)
    else:
        command = [str(PY), str(ROOT / "benchmarks" / "trainer_recipe.py"), str(model), str(train), str(out),
                   "--steps", str(steps), "--seed", str(SEED)] + (["--best"] if side == "best" else [])  # fmt: skip
    env = {**START_ENV, "XDG_CACHE_HOME": str(cache), "HF_HOME": str(cache / "huggingface"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{side} failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    if side == "engine":
        return {"wall": wall, **engine_phases(out, start_wall=time.time() - wall)}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    phases = report["phases"]
    return {"wall": wall, "train_s": phases["trained"] - phases["trainer"], "before_s": phases["trainer"],
            "tokens": report["tokens"], "note": "bf16" if report["bf16"] else "float32"}  # fmt: skip


def engine_phases(out: Path, start_wall: float) -> dict:
    events = [json.loads(line) for line in next(out.glob("*/events.jsonl")).read_text().splitlines()]
    started = next(e for e in events if e["type"] == "started")
    metrics = [e for e in events if e["type"] == "metrics"]
    first = metrics[0]["time"] - metrics[0]["elapsed_s"]  # the clock the steps' elapsed_s counts from
    return {"train_s": metrics[-1]["elapsed_s"], "before_s": max(started["time"], first) - start_wall,
            "tokens": metrics[-1]["tokens_seen"], "note": started["precision"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="svamp")
    ap.add_argument("--steps", default="30,150", help="comma list of step counts (batch 4)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--warm", action="store_true", help="keep each side's caches from its previous run")
    args = ap.parse_args()
    sides = args.sides.split(",")
    work = Path(tempfile.mkdtemp(prefix="whole-run-"))
    import quality

    model = quality.smollm_folder()
    files = {"svamp": svamp_file, "longtail": longtail_file}
    print(f"model {model}; work {work}")
    walls: dict[tuple[str, int, str], list[float]] = {}
    for name in args.data.split(","):
        train = files[name](work)
        for steps in (int(s) for s in args.steps.split(",")):
            for repeat in range(args.repeats):
                for side in sides:
                    cache = work / "cache" / (side if args.warm else f"{side}-{name}-{steps}-{repeat}")
                    r = run_side(side, model, train, steps, work, cache)
                    walls.setdefault((name, steps, side), []).append(r["wall"])
                    print(f"{name:<9} {steps:>4} steps  {side:<9} {r['wall']:6.1f} s whole  "
                          f"({r['before_s']:5.1f} s before the first step, {r['train_s']:6.1f} s training, "
                          f"{r['tokens']:,} tokens, {r['note']})", flush=True)  # fmt: skip
    ratios = []
    print("\nmedian whole-process seconds and the engine's speedup:")
    for name, steps in dict.fromkeys((n, s) for n, s, _ in walls):
        med = {side: statistics.median(walls[(name, steps, side)]) for side in sides if (name, steps, side) in walls}
        line = f"{name:<9} {steps:>4} steps  " + "  ".join(f"{s} {v:.1f} s" for s, v in med.items())
        if "engine" in med:
            for side in ("defaults", "best"):
                if side in med:
                    line += f"  engine/{side} {med[side] / med['engine']:.2f}×"
            if "best" in med:
                ratios.append(med["best"] / med["engine"])
        print(line)
    if ratios:
        print(f"whole_run_speedup {statistics.geometric_mean(ratios):.2f}")


if __name__ == "__main__":
    main()
