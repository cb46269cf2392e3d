"""Ladder side-tuning's training memory against LoRA and full fine-tuning on the same batch (issue 23's goal:
side-tuning at most half of LoRA's).

On the embedded SmolLM2-135M, for each method: the bytes of one training step measured part by part on
the real model with the method applied —
    weights      every parameter and buffer as loaded (float32 on this CPU; a GPU keeps a frozen base in bf16,
                 which `--gpu-weights` models by counting frozen weights at 2 bytes)
    gradients    4 bytes per trainable parameter
    optimizer    AdamW: 8 bytes per trainable parameter
    activations  what autograd really saves in one forward pass (benchmarks/memory_check.saved_bytes:
                 unique storages, parameters excluded), on a batch of `--batch` rows of `--seq` tokens
    logits       the step's logits and their float32 loss gradients, batch·seq·vocabulary·(c + 8)
and their sum, the step's peak. No process overhead is counted: it is the same for every method.
The last line: `side_vs_lora R side_vs_full R` (the goal: side_vs_lora at most 0.5).

    .venv/bin/python benchmarks/side_memory.py                  # batch 4 × 256 tokens, bf16 autocast where fast
    .venv/bin/python benchmarks/side_memory.py --batch 8 --seq 512 --gpu-weights
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from adapter_studio.engine.defaults import fill_method
from adapter_studio.engine.methods import METHODS, MethodContext
from adapter_studio.engine.models.info import describe_model
from adapter_studio.engine.spec import TrainingSpec
from memory_check import make_batch, saved_bytes

CASES = {  # label: (method, fields); "lora" as the app fills it (all linear layers), "lora q,v" the classic
    "lora": ("lora", {}),
    "lora q,v": ("lora", {"target_modules": ["q_proj", "v_proj"]}),
    "full": ("full", {}),
    "side_tuning": ("side_tuning", {}),
}


def step_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str, gpu_weights: bool) -> dict:
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    frozen_size = 2 if gpu_weights else None
    weights = sum(p.numel() * (frozen_size or p.element_size()) if not p.requires_grad else p.numel() * 4
                  for p in params) + sum(b.numel() * b.element_size() for b in model.buffers())  # fmt: skip
    n = sum(p.numel() for p in trainable)
    c = 2 if precision == "bf16" else 4
    rows, seq = batch["input_ids"].shape
    parts = {
        "weights": weights,
        "gradients": 4 * n,
        "optimizer": 8 * n,
        "activations": saved_bytes(model, batch, precision),
        "logits": rows * seq * int(model.config.vocab_size) * (c + 8),
    }
    parts["total"] = sum(parts.values())
    return parts


def main() -> int:
    from adapter_studio.engine.models.loading import EMBEDDED_SMOLLM2, load_model
    from adapter_studio.engine.spec import ModelSpec
    from adapter_studio.engine.training.devices import pick_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bf16"])
    parser.add_argument("--gpu-weights", action="store_true", help="count the frozen weights at 2 bytes (a GPU's bf16)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    precision = pick_precision("auto", "cpu") if args.precision == "auto" else args.precision
    base, _, _ = load_model(ModelSpec(source=EMBEDDED_SMOLLM2), "causal_lm", dtype=torch.float32)
    base.config._attn_implementation = "sdpa"
    batch = make_batch(args.batch, args.seq, int(base.config.vocab_size), "causal_lm")
    results = {}
    print(f"SmolLM2-135M, batch {args.batch} × {args.seq} tokens, {precision}; MiB")
    print(f"{'method':<12} {'trainable':>11} {'weights':>8} {'grads':>7} {'adamw':>7} {'activ.':>8} {'logits':>8} "
          f"{'total':>8}")
    for label, (name, fields) in CASES.items():
        model = copy.deepcopy(base)
        info = describe_model(model)
        spec = fill_method(METHODS[name](**fields), info)
        model = spec.apply(model, MethodContext(info=info, training=TrainingSpec(), total_steps=100))
        parts = step_bytes(model, batch, precision, args.gpu_weights)
        results[label] = parts
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{label:<12} {trainable:>11,} " + " ".join(f"{parts[k] / 2**20:>{w},.0f}" for k, w in (
            ("weights", 8), ("gradients", 7), ("optimizer", 7), ("activations", 8), ("logits", 8), ("total", 8))))
        del model
    side = results["side_tuning"]["total"]
    ratios = {key: side / results[label]["total"] for key, label in
              (("lora", "lora"), ("lora_qv", "lora q,v"), ("full", "full"))}  # fmt: skip
    print(" ".join(f"side_vs_{key} {value:.2f}" for key, value in ratios.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
