"""`adapter-studio combine RUN RUN … [--how cat] [--weights W,W,…]`: finished LoRA runs combined into a
new run folder (engine.combine_runs), which `export`, `eval` and the window take like a trained run;
`--how fusion` trains AdapterFusion over finished bottleneck-adapter runs (engine.methods.fusion)."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.run_args import run_folder


def add_combine_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from adapter_studio.engine.combine_runs import HOW, LORAHUB_EXAMPLES, LORAHUB_TRIALS

    combine = sub.add_parser("combine", help="combine finished runs into a new run: merge LoRA runs, or train "
                             "AdapterFusion over bottleneck-adapter runs")  # fmt: skip
    combine.add_argument("run_dirs", nargs="+", type=run_folder, help="two or more run folders")
    combine.add_argument("--how", default="cat", choices=(*HOW, "fusion"),
                         help="cat (default: exactly the weighted sum of the runs' updates), svd (that sum at the "
                              "largest rank), linear (one rank: sums the A and the B matrices, so the runs' parts "
                              "mix — not the sum of the updates), ties, dare_linear, dare_ties, lorahub (linear, "
                              "weights found on a few examples); fusion: train AdapterFusion over bottleneck-adapter "
                              "runs on the first run's data")  # fmt: skip
    combine.add_argument("--weights", help="one weight per run, comma-separated (default: equal, summing to 1)")
    combine.add_argument("--density", type=float, help="share of each update kept by ties / dare (default 0.5)")
    combine.add_argument("--data", help="lorahub: a data file of the task (default: the first run's held-out rows)")
    combine.add_argument("--examples", type=int, default=LORAHUB_EXAMPLES, help="lorahub: rows scored per trial")
    combine.add_argument("--trials", type=int, default=LORAHUB_TRIALS, help="lorahub: weight settings tried")
    combine.add_argument("--out", help="runs folder for the result (default: the first run's)")
    combine.add_argument("--name", help="the new run folder's name (default: combined-HOW-DATE-TIME)")
    combine.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_combine(args: argparse.Namespace, print_event: Callable[[Any, bool], None] | None = None) -> int:
    """`print_event(event, quiet)`: how a fusion run's progress is shown (the CLI's own printer)."""
    from pathlib import Path

    from adapter_studio.engine.combine_runs import combine_runs

    if args.how == "fusion":
        return _fuse(args, print_event or (lambda event, quiet: None))
    if args.density is not None and not args.how.startswith(("ties", "dare")):  # it was taken and unused
        raise UserError(f"--density is for ties and dare, not {args.how}", where="--density",
                        fix="leave it out, or use --how ties, dare_linear or dare_ties")  # fmt: skip
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise UserError(f"--weights {args.weights!r} is not a comma-separated list of numbers",
                            where="--weights", fix="e.g. --weights 0.7,0.3") from None  # fmt: skip
    result = combine_runs([Path(r) for r in args.run_dirs], weights, args.how,
                          density=0.5 if args.density is None else args.density,
                          output_dir=Path(args.out) if args.out else None, name=args.name,
                          data=Path(args.data) if args.data else None, examples=args.examples,
                          trials=args.trials)  # fmt: skip
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "how": result.how, "rank": result.rank,
                          "trainable_params": result.trainable_params}))  # fmt: skip
    else:
        print(f"combined run {result.run_dir}: {result.how}, rank {result.rank}, "
              f"{result.trainable_params:,} adapter parameters; export it with adapter-studio export "
              f"{shlex.quote(str(result.run_dir))} --adapter --out DIR")
    return 0


def _fuse(args: argparse.Namespace, print_event: Callable[[Any, bool], None]) -> int:
    """Train AdapterFusion over the runs, as `train` would train its spec."""
    import sys
    import threading
    from pathlib import Path

    from adapter_studio.engine.combine_runs import fusion_spec
    from adapter_studio.engine.training.run import run
    from adapter_studio.stopping import install_stop_handlers

    spec = fusion_spec([Path(r) for r in args.run_dirs])
    updates = {"output_dir": args.out} if args.out else {}
    spec = spec.model_copy(update={**updates, "name": args.name})
    stop = threading.Event()
    install_stop_handlers(stop)
    result = run(spec, (lambda e: None) if args.json else (lambda e: print_event(e, False)), stop)
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "how": "fusion", "status": result.status,
                          "error": result.error}))  # fmt: skip
    elif result.status != "completed":
        print(f"error: {result.error}", file=sys.stderr)
    return 0 if result.status == "completed" else 1
