"""AdapterFusion on real data (`adapter-studio combine --how fusion`): does fusing a related task's adapter
help the target task?

Two Pfeiffer adapter runs trained with the app's defaults through the CLI — one on SVAMP, one on
MultiArith (the math word problems of benchmarks/quality.py: the same rows, split and answer-loss
metric) — are fused by AdapterFusion trained on the SVAMP run's rows and budget, and every model is
scored on SVAMP's 200 held-out rows: the base, each adapter alone, and the fusion. The runs stay in
`--workdir` when it is given (then a second call reuses them).

    .venv/bin/python benchmarks/fusion.py [--workdir DIR]

The last line is `fusion_vs_target <R>`: the fusion's answer loss over the SVAMP adapter's alone (below 1:
fusing paid on the held-out rows).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality as q  # the tasks, split, training through the CLI and the answer loss
from composition import TARGET, combine, print_losses, train_runs


def scored_model(run_dir: Path) -> object:
    """A run's trained model as the app rebuilds it (the base in float32, the run's method and checkpoint): a
    bottleneck adapter has no peft folder to load onto the base."""
    from adapter_studio.engine.inference.trained import load_trained

    return load_trained(run_dir).model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="keep the run folders here (default: a temporary folder, removed)")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fusion-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        runs = train_runs(work, "adapter_p", ["method.name=adapter_p"])
        started = time.perf_counter()
        fused = combine([runs["svamp"], runs["multiarith"]], work / "fused", "fusion", "--how", "fusion")
        fusion_seconds = time.perf_counter() - started
        _, held = q.split(TARGET, q.TASKS[TARGET], "test", 0)
        model, tok = q.load_causal(q.smollm_folder())
        results = {"base": q.answer_loss(model, tok, held)}
        for label, run_dir in (("SVAMP adapter alone", runs["svamp"]), ("MultiArith adapter alone", runs["multiarith"]),
                               ("AdapterFusion of both", fused)):  # fmt: skip
            results[label] = q.answer_loss(scored_model(run_dir), tok, held)  # the same tokenizer for every row
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_losses(len(held), results)
    took = f"{fusion_seconds:.0f} s" if fusion_seconds > 1 else "kept from --workdir"
    print(f"fusion training: {took}; total {time.perf_counter() - t0:.0f} s")
    print(f"fusion_vs_target {results['AdapterFusion of both'] / results['SVAMP adapter alone']:.3f}")


if __name__ == "__main__":
    main()
