"""Which CPU training options pay off, each against the engine as it is (bf16 autocast on this CPU).

Trains the demo (embedded SmolLM2, LoRA, the demo's batch and length) for a few steps with each
variant, alternating the variants over several rounds (this machine is shared and noisy), and prints
per variant the median real tokens/s, its ratio to the baseline, and the mean loss of the steps, which
shows whether a variant changes what is learned. Variants:
    baseline        the engine's choices: widths rounded up to one of 8 steps per doubling (SpeedOptions.
                    cpu_width_steps), frozen base in bf16, LoRA inputs kept in bf16, fused AdamW, LoRA dropout
                    masks from 16-bit lanes (engine.training.bits_dropout)
    exact-widths    widths = the longest row of each batch (every new width builds new oneDNN kernels)
    pad16           widths rounded up to a multiple of 16 (and no steps)
    float32-base    frozen base weights loaded in float32 (as before the bf16 base)
    lora-input-cast LoRA layers cast their input to float32 first (peft's default)
    adamw-foreach   AdamW's foreach implementation (one launch per group of tensors) instead of fused
    torch-dropout   torch's own dropout on LoRA's input (a float drawn per element)

    .venv/bin/python benchmarks/cpu_speed_options.py [--steps 20] [--rounds 2] [--set "method={name: full}"]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo" / "demo.yaml"
# name: (width multiple, width steps per doubling, model.dtype, LoRA input kept in the autocast dtype, AdamW keyword,
# bits dropout)
VARIANTS = {
    "baseline": (1, 8, "auto", True, "fused", True),
    "exact-widths": (1, 0, "auto", True, "fused", True),
    "pad16": (16, 0, "auto", True, "fused", True),
    "float32-base": (1, 8, "float32", True, "fused", True),
    "lora-input-cast": (1, 8, "auto", False, "fused", True),
    "adamw-foreach": (1, 8, "auto", True, "foreach", True),
    "torch-dropout": (1, 8, "auto", True, "fused", False),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list; baseline is always run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a spec override for every variant (e.g. 'method={name: full}')")
    args = parser.parse_args()
    chosen = {"baseline", *args.variants.split(",")}
    warnings.filterwarnings("ignore")
    import adapter_studio.engine.training.devices as devices
    from adapter_studio.engine.events import Metrics
    from adapter_studio.engine.spec import load_spec_file
    from adapter_studio.engine.training.run import run
    from adapter_studio.engine.training.speed import SpeedOptions

    runs = tempfile.mkdtemp()
    speeds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for name, (multiple, steps, dtype, lora_in_autocast, adamw, bits_dropout) in (
            (n, v) for n, v in VARIANTS.items() if n in chosen
        ):
            speed = SpeedOptions(pad_multiple={"cpu": multiple}, cpu_width_steps=steps,
                                 lora_inputs_in_autocast_dtype=lora_in_autocast, bits_dropout_on_cpu=bits_dropout)
            devices.adamw_implementation = lambda params, kind=adamw: {kind: True}  # type: ignore[misc]
            spec = load_spec_file(DEMO, [f"training.max_steps={args.steps}", f"output_dir={runs}",
                                         "training.eval_samples=0", "data.eval_split=0", "training.save_every=100000",
                                         f"model.dtype={dtype}", *args.set])
            events: list = []  # type: ignore[type-arg]
            result = run(spec, events.append, speed=speed)
            metrics = [e for e in events if isinstance(e, Metrics)]
            assert result.status == "completed", result.error
            speeds[name] += [m.tokens_per_s for m in metrics[3:]]  # after warm-up
            losses[name].append(statistics.mean(m.loss for m in metrics))
            print(f"  {name:<10} median {statistics.median(m.tokens_per_s for m in metrics[3:]):6.0f} tok/s  "
                  f"mean loss {losses[name][-1]:.4f}", flush=True)
    base = statistics.median(speeds["baseline"])
    print()
    for name in (n for n in VARIANTS if n in chosen):
        median = statistics.median(speeds[name])
        print(f"{name:<10} {median:6.0f} tok/s  {median / base:5.2f}× baseline  mean loss "
              f"{statistics.mean(losses[name]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
