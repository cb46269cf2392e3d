"""Poly (routing by task) on real multi-task data: does a per-task mixture of LoRA skills beat one LoRA?

One training file mixes the two math word-problem sets of benchmarks/quality.py — SVAMP and MultiArith,
the same rows and split — with a `task` column. The app trains it through the CLI with its defaults
twice: LoRA (one adapter for both tasks) and Poly (LoRA skills mixed per task), and each model is scored
on each task's 200 held-out rows by the answer loss (Poly reads every row as its task).

    .venv/bin/python benchmarks/poly_routing.py [--poly-set training.learning_rate=2e-3] [--workdir DIR]

The last line is `poly_vs_lora <R>`: Poly's mean answer loss over the two tasks divided by LoRA's (below 1:
routing by task paid on the held-out rows).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality as q  # the tasks, split, model, CLI and the answer loss

TASKS = ("svamp", "multiarith")


def mixed_spec(work: Path, name: str) -> Path:
    """Both tasks' training rows, alternating, with their task named: the spec a user writes for it."""
    trains = [q.split(task, q.TASKS[task], "test", 0)[0] for task in TASKS]
    rows = [{"instruction": r["instruction"], "output": r["output"], "task": task}
            for pair in zip(*trains, strict=True) for task, r in zip(TASKS, pair, strict=True)]  # fmt: skip
    data = work / "data" / "math-two-tasks.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = {"model": {"source": str(q.smollm_gguf())}, "data": {"path": str(data), "format": "alpaca"},
            "training": {"epochs": 1}, "output_dir": str(work / "runs"), "name": name}  # fmt: skip
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    return path


def train(work: Path, name: str, overrides: list[str]) -> tuple[Path, float]:
    run_dir = work / "runs" / name
    if (run_dir / "checkpoints").exists():  # kept from an earlier call (--workdir)
        return run_dir, 0.0
    cmd = [str(q.CLI), "train", str(mixed_spec(work, name))] + [a for o in overrides for a in ("--set", o)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"adapter-studio train failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return run_dir, time.perf_counter() - started


def scores(run_dir: Path | None, tok: object, held: dict[str, list[dict]]) -> dict[str, float]:
    """Answer loss per task: the base (run_dir None), or a run's trained model answering as each task."""
    from adapter_studio.engine.inference.trained import load_trained
    from adapter_studio.engine.methods.poly import routed

    if run_dir is None:
        model, _ = q.load_causal(q.smollm_folder())
        return {task: q.answer_loss(model, tok, rows) for task, rows in held.items()}
    trained = load_trained(run_dir)
    tasks = list(getattr(trained.spec.method, "tasks", []))
    out = {}
    for task, rows in held.items():
        with routed(trained.model, tasks.index(task) if tasks else None):
            out[task] = q.answer_loss(trained.model.eval(), tok, rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--poly-set", action="append", default=[], help="a --set for the Poly run (repeatable)")
    ap.add_argument("--workdir", help="keep the run folders here (default: a temporary folder, removed)")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="poly-"))
    work.mkdir(parents=True, exist_ok=True)
    held = {task: q.split(task, q.TASKS[task], "test", 0)[1] for task in TASKS}
    try:
        lora, lora_s = train(work, "lora", ["method.name=lora"])
        suffix = "-".join(o.split(".")[-1].replace("=", "") for o in args.poly_set)
        poly, poly_s = train(work, f"poly{'-' + suffix if suffix else ''}", ["method.name=poly", *args.poly_set])
        _, tok = q.load_causal(q.smollm_folder())
        results = {"base": scores(None, tok, held), "LoRA (app defaults)": scores(lora, tok, held),
                   f"Poly (app defaults{' + --poly-set' if args.poly_set else ''})": scores(poly, tok, held)}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"answer loss on {len(held['svamp'])} held-out rows per task (lower is better)")
    if args.poly_set:
        print(f"Poly run: {' '.join(args.poly_set)}")
    print(f"{'model':<34} {'SVAMP':>8} {'MultiArith':>11} {'mean':>8}")
    for label, by_task in results.items():
        mean = sum(by_task.values()) / len(by_task)
        print(f"{label:<34} {by_task['svamp']:>8.3f} {by_task['multiarith']:>11.3f} {mean:>8.3f}")
    print(f"training: LoRA {lora_s:.0f} s, Poly {poly_s:.0f} s (0: kept from --workdir)")
    means = [sum(v.values()) / len(v) for v in results.values()]
    print(f"poly_vs_lora {means[2] / means[1]:.3f}")


if __name__ == "__main__":
    main()
