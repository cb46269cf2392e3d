"""`adapter-studio`: the window by default, and every engine action headless (CONTRACT.md). Parsing and
`--version`/`--help` import nothing heavy; each command imports what it needs."""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from adapter_studio import __version__
from adapter_studio.cluster_command import add_cluster_parser, cmd_cluster
from adapter_studio.combine_command import add_combine_parser, cmd_combine
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.imports import freeze_imports_in_this_process
from adapter_studio.eval_command import add_eval_parser, cmd_eval
from adapter_studio.run_args import add_set, run_folder
from adapter_studio.stopping import EXIT_CANCELLED, EXIT_USER_ERROR, install_stop_handlers, interrupt_on_sigterm
from adapter_studio.sweep_command import RANK_HELP, add_sweep_parser, cmd_sweep


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapter-studio", description="No-code fine-tuning of language models on your own workstation."
    )
    parser.add_argument("--version", action="version", version=f"adapter-studio {__version__}")
    parser.add_argument("--self-test", action="store_true", help="open the window, print seconds to first paint")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--demo", action="store_true",
                        help="open the window with the demo (without it: as the window was last closed, else the demo)")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="train headless from a spec file")
    train.add_argument("spec", nargs="?", help="spec file (YAML)")
    add_set(train)
    train.add_argument("--resume", metavar="RUN_DIR", type=run_folder, help="continue a stopped or interrupted run")
    train.add_argument("--devices", type=int, default=None, help="train with N processes (GPUs) via accelerate")
    train.add_argument("--quiet", action="store_true", help="only the final line")
    train.add_argument("--run-dir", help=argparse.SUPPRESS)  # set by the multi-device launcher

    export = sub.add_parser("export", help="export a run's adapter, merged model or GGUF")
    export.add_argument("run_dir", type=run_folder, help="the run folder (`adapter-studio runs` lists them)")
    kind = export.add_mutually_exclusive_group(required=True)
    kind.add_argument("--adapter", action="store_true", help="adapter only (loadable by peft)")
    kind.add_argument("--merged", action="store_true", help="full model with the adapter merged in")
    kind.add_argument(
        "--gguf",
        metavar="TYPE",
        help="GGUF for llama.cpp / Ollama: f16, bf16, q8_0, q4_k_m, q5_k_m, "
        "q6_k (merged), or lora (the adapter in llama.cpp's format); checked after writing",
    )
    export.add_argument("--out", required=True, help="target folder (must not exist)")

    methods = sub.add_parser("methods", help="list the method library")
    methods.add_argument("--json", action="store_true", help="print the library as JSON")

    params = sub.add_parser("params", help="trainable parameters, adapter size and memory per method")
    params.add_argument("--model", required=True, help="model folder, .gguf file or shipped config name")
    params.add_argument("--methods", default="all",
                        help="all, or a comma list of method names (in_context, features: the no-training baselines)")
    add_set(params)
    params.add_argument("--json", action="store_true", help="print the rows as JSON")

    runs = sub.add_parser("runs", help="list the run history")
    runs.add_argument("--dir", default="runs", help="the runs folder")
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")

    add_sweep_parser(sub)

    auto = sub.add_parser("auto", help="search methods and settings on a time budget, then train the winner")
    auto.add_argument("spec", help="spec file (YAML): model, data, and the winner's training length")
    auto.add_argument("--budget", required=True, help="wall-clock time for it all: 90s, 20m, 1h or 1h30m")
    add_set(auto)
    auto.add_argument("--name", help="search name (default: auto-<date>-<time>)")
    auto.add_argument("--max-trials", type=int, help="try at most this many settings (default: as many as fit)")
    auto.add_argument("--json", action="store_true", help="print the result as JSON (progress goes to stderr)")
    auto.add_argument("--rank-by", metavar="METRIC", help=RANK_HELP + "; pruning still compares held-out losses")

    add_eval_parser(sub)
    add_combine_parser(sub)
    add_cluster_parser(sub)

    walk = sub.add_parser("walkthrough", help="drive the window offscreen through every page, save screenshots")
    walk.add_argument("spec", help="spec file (YAML) of the run it trains on the way")
    walk.add_argument("--out", required=True, help="folder for the screenshots and report")
    add_set(walk)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    one_command = argv is None and args.command is not None  # this process's own command: it exits after it
    try:
        if args.command is None:
            from adapter_studio.gui.app import main as gui_main

            return gui_main(self_test=args.self_test, restore=not args.demo)  # plain: as the window was left
        if one_command:
            freeze_imports_in_this_process()  # engine.imports: nothing of anyone else's is frozen
            interrupt_on_sigterm()  # `kill`, `timeout`: cleaned up as Ctrl-C is (train installs its own)
        if not args.debug:  # the app says what it loaded; transformers' load report (a new head "MISSING") and its
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # "Loading weights" bar (\r-redrawn in a log
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # file) are noise beside "loaded … in 0.7 s"
        handler = COMMANDS[args.command]
        return handler(args)
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_CANCELLED
    except BrokenPipeError:  # `adapter-studio methods | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e} (run with --debug for details)", file=sys.stderr)
        return 1
    finally:
        if one_command:  # the interpreter's last collection walks every object torch made (~1 s); the OS frees it
            gc.freeze()


def _print_event(event: Any, quiet: bool) -> None:
    from adapter_studio.engine.events import Checkpoint, Eval, Finished, Log, Metrics, Stage, Started
    from adapter_studio.engine.objectives.training import progress_text as _preference

    if quiet and not isinstance(event, Finished):
        return
    if isinstance(event, Started):
        print(f"run {event.run_dir}: {event.method} on {event.model}, {event.trainable_params:,} trainable "
              f"of {event.total_params:,}, {event.total_steps} steps, {event.device}, {event.precision}")  # fmt: skip
    elif isinstance(event, Metrics):
        print(
            f"step {event.step} loss {event.loss:.4f} lr {event.lr:.2e} grad {event.grad_norm:.3f} "
            f"{event.tokens_per_s:.0f} tok/s mem {event.memory_bytes / 2**20:.0f} MiB{_preference(event)}"
        )
    elif isinstance(event, Eval):
        scores = (("accuracy", event.accuracy), ("exact_match", event.exact_match))
        extra = "".join(f" {k} {v:.3f}" for k, v in scores if v is not None)
        print(f"eval step {event.step} eval_loss {event.eval_loss:.4f}{extra}{_preference(event)}")
    elif isinstance(event, Checkpoint):
        print(f"checkpoint {event.path}")
    elif isinstance(event, Stage):
        print(f"[{event.stage}]{' ' + event.detail if event.detail else ''}")
    elif isinstance(event, Log) and event.level not in ("debug", "error"):  # a run's error: its finished line says it
        print(f"{event.level}: {event.message}" if event.level != "info" else event.message)
    elif isinstance(event, Finished):
        tail = f": {event.error}" if event.error else ""
        print(f"finished {event.status} at step {event.step}{tail}")
    sys.stdout.flush()


def cmd_train(args: argparse.Namespace) -> int:
    from adapter_studio.engine.spec import load_spec_file

    if bool(args.spec) == bool(args.resume):  # a spec beside --resume went unread: the run's own spec went on
        raise UserError("give a spec file or --resume RUN_DIR" + (", not both" if args.spec else ""), where="train",
                        fix="to change a resumed run's settings, add --set KEY=VALUE")  # fmt: skip
    if args.devices is not None and args.devices < 1:
        raise UserError(f"must be at least 1 (got {args.devices})", where="--devices")
    devices = args.devices
    if args.resume:
        from adapter_studio.engine.runs import require_run_folder

        require_run_folder(Path(args.resume), "--resume")
        saved = Path(args.resume) / "spec.yaml"
        from adapter_studio.engine.training.resume_rules import refuse_kept_overrides

        refuse_kept_overrides(args.overrides or [], load_spec_file(saved), str(saved))
        spec = load_spec_file(saved, args.overrides)
    else:
        spec = load_spec_file(args.spec, args.overrides)
    devices = devices or spec.training.devices
    if args.quiet:  # the libraries' progress bars too (converting a GGUF model), in the launched processes too
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # The launcher's own processes come back here with --run-dir: each trains, none launches again.
    if args.run_dir is None and (devices > 1 or spec.training.machines.count > 1):
        from adapter_studio.engine.training.launch import launch_multi

        return launch_multi(args, devices)
    stop = threading.Event()
    install_stop_handlers(stop)
    from adapter_studio.engine.training.run import run

    result = run(spec, lambda e: _print_event(e, args.quiet), stop, resume_dir=args.resume, run_dir=args.run_dir)
    if result.status == "completed":
        return 0
    if result.status == "cancelled":
        from adapter_studio.engine.training.devices import process_rank

        # Stopping is machine 0's to report: a process of another rank stopped with it, as it should.
        return EXIT_CANCELLED if args.run_dir is None or process_rank() == 0 else 0
    print(f"error: {result.error}", file=sys.stderr)
    return EXIT_USER_ERROR if result.by_person else 1


def cmd_export(args: argparse.Namespace) -> int:
    from adapter_studio.engine.export.run_export import export_run

    def show(event: Any) -> None:
        _print_event(event, False)

    _say_unfinished(Path(args.run_dir))
    if args.gguf:
        return _export_gguf(args, show)
    result = export_run(Path(args.run_dir), "merged" if args.merged else "adapter", Path(args.out), emit=show)
    diff = (
        f", verified (max logit difference {result.verified_max_diff:.2e})"
        if result.verified_max_diff is not None
        else ""
    )
    print(f"exported {result.kind} to {result.path} ({result.bytes / 2**20:.1f} MiB){diff}")
    return 0


def _say_unfinished(run_dir: Path) -> None:
    """A run that did not finish exports its latest checkpoint as any run does, but said: a cancelled run's
    export read "exported … verified", nothing saying it held 11 of 5,000 steps."""
    from adapter_studio.engine.runs import is_run_folder, summarize_run

    if not is_run_folder(run_dir):
        return  # the export says why it is not a run
    run = summarize_run(run_dir)
    if run.status != "completed":
        of = f" of {run.total_steps:,}" if run.total_steps else ""
        print(f"warning: {run_dir.name} is {run.status} at step {run.steps:,}{of}: its latest checkpoint is "
              "exported", file=sys.stderr)


def _export_gguf(args: argparse.Namespace, show: Any) -> int:
    from adapter_studio.engine.export.run_gguf import export_gguf

    result = export_gguf(Path(args.run_dir), args.gguf, Path(args.out), emit=show)
    print(f"exported {result.file} ({result.file.stat().st_size / 2**20:.1f} MiB)")
    print(result.verification.table())
    if result.ollama_command:
        print(f"Ollama: {result.ollama_command}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from adapter_studio.engine.methods import METHOD_CLASSES

    rows = [cls.summary() for cls in METHOD_CLASSES]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        merge = "mergeable" if r["mergeable"] else "adapter only"
        print(f"{r['name']:<{width}}  {r['family']:<19} {merge:<12} {r['description']}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from adapter_studio.engine.estimate.table import estimate_table, format_table

    try:
        rows = estimate_table(args.model, args.methods, args.overrides, refuse_all_failed=True)
    except UserError as e:  # the flag the person typed, not the spec field it fills
        flag = {"model.source": "--model", "method.name": "--methods"}.get(e.where or "")
        if flag is None:
            raise
        fix = e.fix or ("give a model folder (with config.json), a .gguf file or a hub id" if flag == "--model"
                        else None)  # fmt: skip
        raise UserError(e.what, where=flag, fix=fix) from None
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from adapter_studio.engine.runs import list_runs, why_no_runs

    runs = list_runs(args.dir)
    if args.json:
        print(json.dumps([{**asdict(r), "path": str(r.path)} for r in runs], indent=1))
        return 0
    if not runs:
        print(f"no runs in {args.dir}{why_no_runs(args.dir)}")
        return 0

    def number(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    # The columns the Runs page compares: which model, how far, held-out loss and score, how long.
    rows = [("run", "status", "model", "method", "steps", "eval_loss", "accuracy", "exact", "minutes")] + [
        (r.name, r.status, Path(r.model.rstrip("/")).name or r.model, r.method_label,
         f"{r.steps}/{r.total_steps}" if r.total_steps else str(r.steps), number(r.final_eval_loss),
         number(r.accuracy, 3), number(r.exact_match, 3),
         number(r.duration_s / 60 if r.duration_s is not None else None, 1))
        for r in runs
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_auto(args: argparse.Namespace) -> int:
    from adapter_studio.engine.search.budget import parse_budget
    from adapter_studio.engine.spec import load_spec_file

    budget = parse_budget(args.budget)
    if args.max_trials is not None and args.max_trials < 1:
        raise UserError(f"must be at least 1 (got {args.max_trials})", where="--max-trials")
    spec = load_spec_file(args.spec, args.overrides)
    stop = threading.Event()
    install_stop_handlers(stop)
    from adapter_studio.engine.events import Eval
    from adapter_studio.engine.search.auto import run_auto_search
    from adapter_studio.engine.search.results import SearchLog
    from adapter_studio.engine.training.sweep import format_rows, load_sweep, sweep_rows

    out = sys.stderr if args.json else sys.stdout  # with --json, stdout is the JSON alone

    def show(event: Any) -> None:
        if isinstance(event, SearchLog):
            print(f"{event.level}: {event.message}" if event.level != "info" else event.message, file=out, flush=True)
        elif isinstance(event, Eval):
            print(
                f"  eval at step {event.step}: eval_loss {event.eval_loss:.4f}"
                + (f" accuracy {event.accuracy:.3f}" if event.accuracy is not None else ""),
                file=out,
                flush=True,
            )

    result = run_auto_search(spec, budget, show, stop, name=args.name, max_trials=args.max_trials,
                             rank_by=args.rank_by)  # fmt: skip
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(format_rows(sweep_rows(load_sweep(result.folder)), args.rank_by))
        print(f"table: {result.folder / 'sweep.csv'}\nbest run: {result.run_dir or '-'}")
    if result.status == "cancelled":
        return EXIT_CANCELLED
    if result.status == "failed":
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    return 0


def cmd_walkthrough(args: argparse.Namespace) -> int:
    from adapter_studio.gui.walkthrough import walkthrough

    return walkthrough(args.spec, Path(args.out), args.overrides)


COMMANDS = {
    "train": cmd_train,
    "export": cmd_export,
    "methods": cmd_methods,
    "params": cmd_params,
    "runs": cmd_runs,
    "sweep": functools.partial(cmd_sweep, print_event=_print_event),
    "auto": cmd_auto,
    "walkthrough": cmd_walkthrough,
    "eval": cmd_eval,
    "combine": functools.partial(cmd_combine, print_event=_print_event),  # `--how fusion` trains: show its steps
    "cluster": cmd_cluster,
}

if __name__ == "__main__":
    sys.exit(main())
