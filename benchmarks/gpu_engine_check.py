"""One short check of the engine on a CUDA GPU: bf16 LoRA, QLoRA (4-bit NF4 base), a few other
methods, and export of the QLoRA run; with the memory estimate against torch's peak for each.

The SmolLM2-135M architecture with random weights stands in for the real model (its weights do not
travel to the GPU host); speed and memory do not depend on the weights' values.

    python benchmarks/gpu_engine_check.py --tokenizer DIR [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    ("lora", "none"),
    ("lora", "4bit"),
    ("dora", "none"),
    ("adapter_p", "none"),
    ("prefix_tuning", "none"),
    ("full", "none"),
]


def build_model(tokenizer_dir: str, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(ROOT / "resources" / "model_configs" / "smollm2-135m")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import torch

    print(
        "torch",
        torch.__version__,
        "cuda",
        torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
    )
    check_training(args.tokenizer, args.steps, CASES, export=True)


def check_training(tokenizer: str, steps: int, cases: list[tuple[str, str]], *, export: bool = False) -> None:
    """Train each (method, quantisation) case through `engine.training.run.run`; print tokens/s, peak memory and
    the estimate; with `export`, export the QLoRA run as adapter and merged weights."""
    import torch
    from adapter_studio.engine.estimate.costs import estimate
    from adapter_studio.engine.events import Finished, Metrics, Started
    from adapter_studio.engine.export.run_export import export_run
    from adapter_studio.engine.models.loading import load_config, resolve_source
    from adapter_studio.engine.spec import parse_spec
    from adapter_studio.engine.training.run import run

    work = Path(tempfile.mkdtemp())
    model = build_model(tokenizer, work / "smol")
    config = load_config(resolve_source(str(model)))
    results = {}
    for method, quant in cases:
        spec = parse_spec(
            {
                "model": {"source": str(model), "quantization": quant},
                "data": {
                    "path": str(ROOT / "resources/demo/train.jsonl"),
                    "eval_path": str(ROOT / "resources/demo/eval.jsonl"),
                    "max_length": 256,
                },
                "method": {"name": method},
                "training": {"max_steps": steps, "batch_size": 8, "save_every": steps, "eval_samples": 4},
                "output_dir": str(work / "runs"),
            }
        )
        events: list = []  # type: ignore[type-arg]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            result = run(spec, events.append)
        except Exception as e:  # report and go on: one broken case must not hide the others
            print(f"{method}/{quant}: EXCEPTION {type(e).__name__}: {e}")
            continue
        seconds = time.perf_counter() - t0
        started = next((e for e in events if isinstance(e, Started)), None)
        metrics = [e for e in events if isinstance(e, Metrics)]
        finished = next(e for e in events if isinstance(e, Finished))
        if not metrics:
            print(f"{method}/{quant}: {finished.status} {finished.error or ''}")
            continue
        peak = max((m.memory_peak_bytes or 0 for m in metrics), default=0)
        speed = statistics.median(m.tokens_per_s for m in metrics[3:]) if len(metrics) > 3 else 0
        row = estimate(
            config,
            spec.method,
            spec.training.model_copy(update={"batch_size": 8}),
            task="causal_lm",
            quantization=quant,
            seq_len=256,
            device="cuda",
        )
        est = row.get("memory_bytes", {}).get("total", 0) - row.get("memory_bytes", {}).get("overhead", 0)
        print(
            f"{method}/{quant}: {finished.status} {finished.error or ''} device={getattr(started, 'device', '?')} "
            f"precision={getattr(started, 'precision', '?')} trainable={getattr(started, 'trainable_params', 0):,} "
            f"loss {metrics[0].loss:.3f}->{metrics[-1].loss:.3f} tokens/s {speed:,.0f} peak {peak / 2**20:,.0f} MiB "
            f"estimate for full 256-token rows (no CUDA context) {est / 2**20:,.0f} MiB time {seconds:.0f}s"
        )
        results[(method, quant)] = result
    qlora = results.get(("lora", "4bit"))
    if export and qlora is not None and qlora.status == "completed":
        for kind in ("adapter", "merged"):
            try:
                out = export_run(qlora.run_dir, kind, work / f"qlora-{kind}")
                print(f"qlora export {kind}: {out.bytes / 2**20:.1f} MiB verified max diff {out.verified_max_diff:.2e}")
            except Exception as e:
                print(f"qlora export {kind}: FAILED {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
