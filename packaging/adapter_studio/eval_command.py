"""`adapter-studio eval RUN_DIR`: score a run's base, tuned model and in-context baseline (issue 22's
command, apart from cli.py so that each module stays one screenful of commands)."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.imports import wait_briefly_then_sleep
from adapter_studio.run_args import run_folder
from adapter_studio.stopping import EXIT_CANCELLED, install_stop_handlers


def add_eval_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `eval` command's arguments."""
    ev = sub.add_parser("eval", help="score a run's tuned model against its base and an in-context baseline")
    ev.add_argument("run_dir", type=run_folder, help="the run folder")
    ev.add_argument("--data", help="a data file to evaluate on (default: the run's held-out rows)")
    ev.add_argument(
        "--checkpoint", default="best", help="best (default; the last when the run kept none), last or step-N"
    )
    ev.add_argument("--k", type=int, default=4, help="training rows in the in-context baseline's prompt (0: off)")
    ev.add_argument(
        "--extract", metavar="REGEX", help=r"the answer is this expression's first group, e.g. '####\s*(-?[\d.,]+)'"
    )
    ev.add_argument("--limit", type=int, default=500, help="evaluate at most this many rows (default 500)")
    ev.add_argument("--batch-size", type=int, default=16, help="rows generated at once")
    ev.add_argument("--max-new-tokens", type=int, help="longest answer (default: longest expected answer + 8; "
                    "at least 128 where answers are read by their last number)")
    ev.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    ev.add_argument("--no-forgetting", action="store_true", help="skip the forgetting check")
    ev.add_argument("--json", action="store_true", help="print the result as JSON (progress goes to stderr)")


def cmd_eval(args: argparse.Namespace) -> int:
    # Before torch loads, as the window does: OpenMP's idle threads spin 0.3 ms, then sleep. With libgomp's
    # default 3 ms spin the demo's evaluation took 964 s, passive 132 s, on a 2-core CPU running three other
    # jobs. Passive alone sleeps after every op of a generated token: 32 SVAMP rows on a quiet CPU took 28.9 s
    # passive, 21.8 s with the short spin; beside three busy processes 64 s and 80 s (2026-12-06).
    wait_briefly_then_sleep()
    for name in ("limit", "batch_size", "max_new_tokens", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"must be at least 1 (got {value})", where=flag)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # a CPU shared with other work answers faster with fewer threads
    stop = threading.Event()
    install_stop_handlers(stop)
    from adapter_studio.engine.evaluation.classes import summary as class_summary
    from adapter_studio.engine.evaluation.pairs import summary as pair_summary
    from adapter_studio.engine.evaluation.report import metrics_table
    from adapter_studio.engine.evaluation.run_eval import EvalSettings, EvaluationStopped, evaluate_run, regressions

    settings = EvalSettings(
        data=args.data, checkpoint=args.checkpoint, in_context=args.k, extract=args.extract, limit=args.limit,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, forgetting=not args.no_forgetting,
    )  # fmt: skip
    out = sys.stderr if args.json else sys.stdout
    shown = {"stage": "", "percent": -10}

    def progress(stage: str, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if stage == "loading":  # one step, not rows
            print("[loading] the base model and the run's checkpoint", file=out, flush=True)
        elif stage != shown["stage"] or percent >= shown["percent"] + 10 or done == total:
            # The count runs over every stage (answers, forgetting, pairs): "[tuned] 1/2 rows" read as half a stage.
            print(f"[{stage}] {percent}% of the evaluation ({done}/{total} rows over its stages)", file=out, flush=True)
            shown.update(stage=stage, percent=percent)

    try:
        result = evaluate_run(args.run_dir, settings, progress, stop)
    except EvaluationStopped:
        print("evaluation stopped: nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
        return 0
    print("\n".join(metrics_table(result.metrics)))
    if result.forgetting is not None:
        f = result.forgetting
        print(f"forgetting: loss on {f.pairs} general instructions {f.loss_base:.3f} -> {f.loss_tuned:.3f} "
              f"(ratio {f.ratio:.3f})")  # fmt: skip
    if result.pairs is not None:
        print(pair_summary(result.pairs))
    if result.classes is not None:
        print(class_summary(result.classes))
    worse = regressions(result.rows)
    changed = sum(r["change"] != 0 for r in result.rows)
    print(f"{len(result.rows)} rows, {changed} changed, {len(worse)} regressions (base right, tuned wrong)")
    for r in worse[:5]:
        print(f"  {r['where']}: expected {r['expected']!r}, tuned {r['answers']['tuned']!r}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"report: {result.report}")
    return 0
