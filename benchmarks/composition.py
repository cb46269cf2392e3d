"""Composition of finished LoRA runs (`adapter-studio combine`): does LoraHub's weight search pay?

Two runs trained with the app's defaults through the CLI — one on SVAMP, one on MultiArith (the math word
problems of benchmarks/quality.py, the same rows, split and answer-loss metric) — are combined with equal
weights (`--how linear`) and with LoraHub's weights found on a few SVAMP rows from the dev split
(`--how lorahub --data`), and every model is scored on SVAMP's 200 held-out rows: the base, each run
alone, and both combinations. The runs themselves stay in `--workdir` when it is given.

    .venv/bin/python benchmarks/composition.py [--examples 32] [--trials 40] [--workdir DIR]

The last line is `lorahub_vs_equal <R>`: LoraHub's answer loss over the equal weights' (below 1: the
found weights are better on the held-out rows).
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
import quality as q  # the tasks, split, training through the CLI and the answer loss

TASKS = ("svamp", "multiarith")
TARGET = "svamp"


def combine(runs: list[Path], out: Path, name: str, *extra: str) -> Path:
    if (out / name / "checkpoints").exists():  # kept from an earlier run of this benchmark (--workdir)
        return out / name
    cmd = [str(q.CLI), "combine", *map(str, runs), "--out", str(out), "--name", name, "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"adapter-studio combine failed: {proc.stderr[-2000:]}")
    return Path(json.loads(proc.stdout)["run_dir"])


def train_runs(work: Path, name: str, overrides: list[str]) -> dict[str, Path]:
    """One run per task with the app's defaults (and `overrides`) through the CLI; kept runs are reused."""
    runs = {}
    for task in TASKS:
        cfg = q.TASKS[task]
        train, _ = q.split(task, cfg, "test", 0)
        runs[task] = work / task / "runs" / name
        if (runs[task] / "checkpoints").exists():  # kept from an earlier run of this benchmark (--workdir)
            continue
        spec = q.write_spec(task, cfg, train, work / task, name)
        cmd = [str(q.CLI), "train", str(spec), *(a for o in overrides for a in ("--set", o))]
        seconds = q.run_cli(cmd, work / task / f"{name}.log", "train")
        print(f"trained {task} ({name}): {len(train)} rows, {seconds:.0f} s", flush=True)
    return runs


def print_losses(rows: int, results: dict[str, float]) -> None:
    """The table of SVAMP answer losses, each with its drop against the base model's."""
    print()
    print(f"SVAMP answer loss on {rows} held-out rows (lower is better); drop against the base")
    for label, loss in results.items():
        print(f"  {label:<26} {loss:.4f}  {100 * (1 - loss / results['base']):5.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=32, help="SVAMP dev rows LoraHub scores its weights on")
    ap.add_argument("--trials", type=int, default=40, help="weight settings LoraHub tries")
    ap.add_argument("--workdir", help="keep the run folders here (default: a temporary folder, removed)")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="composition-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        runs = train_runs(work, "defaults", [])
        cfg = q.TASKS[TARGET]
        _, held = q.split(TARGET, cfg, "test", 0)
        _, dev = q.split(TARGET, cfg, "dev", 0)
        examples = work / "svamp-dev.jsonl"
        examples.write_text("".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n"
                                    for r in dev[: args.examples]), encoding="utf-8")  # fmt: skip
        both = [runs["svamp"], runs["multiarith"]]
        started = time.perf_counter()
        equal = combine(both, work / "combined", "equal", "--how", "linear")
        hub = combine(both, work / "combined", "lorahub", "--how", "lorahub", "--data", str(examples),
                      "--examples", str(args.examples), "--trials", str(args.trials))  # fmt: skip
        hub_seconds = time.perf_counter() - started
        found = [json.loads(line) for line in (hub / "events.jsonl").read_text().splitlines()]
        found_line = [e["message"] for e in found if e["type"] == "log"][-1]
        model, tok = q.load_causal(q.smollm_folder())
        results = {"base": q.answer_loss(model, tok, held)}
        scored = (
            ("SVAMP run alone", runs["svamp"]),
            ("MultiArith run alone", runs["multiarith"]),
            ("equal weights (linear)", equal),
            ("LoraHub weights", hub),
        )
        for i, (label, run_dir) in enumerate(scored):
            out = work / f"export-{i}"
            shutil.rmtree(out, ignore_errors=True)
            exported = q.export_run(cfg, run_dir, out)
            model, tok = q.load_causal(q.smollm_folder(), adapter=exported["export"])
            results[label] = q.answer_loss(model, tok, held)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_losses(len(held), results)
    took = f"  (both combinations: {hub_seconds:.0f} s)" if hub_seconds > 1 else "  (combinations kept from --workdir)"
    print(found_line + took)
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(f"lorahub_vs_equal {results['LoraHub weights'] / results['equal weights (linear)']:.3f}")


if __name__ == "__main__":
    main()
