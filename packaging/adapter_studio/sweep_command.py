"""`adapter-studio sweep SPEC --methods a,b [--rank-by METRIC] [--json]`: several methods trained one after
another on the same budget (engine.training.sweep), then one table; `--continue SWEEP_DIR` runs those left."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.run_args import add_set
from adapter_studio.stopping import EXIT_CANCELLED, install_stop_handlers

RANK_HELP = ("rank by a metric: best_eval_loss, final_eval_loss, final_loss, accuracy, exact_match (from training) "
             "or an evaluation's exact_match, token_f1, rouge_l, chrf, bleu, macro_f1, forgetting (the runs that "
             "have no evaluation are evaluated first)")  # fmt: skip


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sweep = sub.add_parser("sweep", help="train several methods one after another and compare them")
    sweep.add_argument("spec", nargs="?", help="spec file (YAML): model, data and the shared training budget")
    sweep.add_argument("--methods", help="all, or a comma list of method names (see `adapter-studio methods`)")
    add_set(sweep)
    sweep.add_argument("--name", help="sweep name (default: sweep-<date>-<time>)")
    sweep.add_argument("--continue", dest="resume", metavar="SWEEP_DIR", help="run the methods a sweep has left")
    sweep.add_argument("--json", action="store_true", help="print the result rows as JSON")
    sweep.add_argument("--rank-by", metavar="METRIC", help=RANK_HELP)


def cmd_sweep(args: argparse.Namespace, print_event: Callable[[Any, bool], None]) -> int:
    """`print_event(event, quiet)`: the CLI's own printer of a run's events."""
    from adapter_studio.engine.evaluation.ranking import metric, rank
    from adapter_studio.engine.spec import load_spec_file
    from adapter_studio.engine.training.sweep import (
        evaluate_sweep,
        format_rows,
        load_sweep,
        plan_sweep,
        run_sweep,
        sweep_rows,
    )

    if args.resume and (args.spec or args.methods):  # they went unread: the sweep's own plan went on
        raise UserError("give a spec file and --methods, or --continue SWEEP_DIR, not both", where="sweep",
                        fix="--continue runs the methods the sweep has left, with its own spec")  # fmt: skip
    if args.resume:
        plan = load_sweep(args.resume)
    else:
        if not args.spec or not args.methods:
            raise UserError(
                "give a spec file and --methods, or --continue SWEEP_DIR",
                where="sweep",
                fix="e.g. adapter-studio sweep spec.yaml --methods lora,ia3,prompt_tuning",
            )
        from adapter_studio.engine.methods import METHODS

        spec = load_spec_file(args.spec, args.overrides)
        names = list(METHODS) if args.methods.strip() == "all" else [m.strip() for m in args.methods.split(",")]
        plan = plan_sweep(spec, [m for m in names if m], args.name)
    if args.rank_by:
        metric(args.rank_by)  # an unknown name fails before anything trains
    stop = threading.Event()  # with --json stdout is the JSON alone: progress to stderr, as auto's and eval's
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        print(f"sweep {plan.folder}: {', '.join(e.method for e in plan.entries)}", flush=True)
        for entry in plan.entries:
            if entry.refused:
                print(f"  {entry.method}: not run — {entry.refused}")
        install_stop_handlers(stop)
        run_sweep(plan, _named_finish(print_event), stop)
        if args.rank_by and metric(args.rank_by).evaluated and not stop.is_set():
            evaluate_sweep(plan, args.rank_by, lambda message: print(message, flush=True), stop)
    rows = sweep_rows(plan)
    if args.rank_by:
        rows = rank(rows, metric(args.rank_by).name)
    print(json.dumps(rows, indent=1) if args.json else format_rows(rows, args.rank_by))
    print(f"table: {plan.folder / 'sweep.csv'}", file=sys.stderr if args.json else sys.stdout)
    if stop.is_set():
        return EXIT_CANCELLED
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _named_finish(print_event: Callable[[Any, bool], None]) -> Callable[[Any], None]:
    """Each run's finish line, named by its method ("finished completed at step 4" said not which)."""
    from adapter_studio.engine.events import Finished, Started

    method = [""]

    def show(event: Any) -> None:
        if isinstance(event, Started):
            method[0] = event.method
        if isinstance(event, Finished):
            print(f"{method[0]}: ", end="")
        print_event(event, True)

    return show
