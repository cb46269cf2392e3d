"""Check the memory estimate against a real CUDA training loop on SmolLM2-135M (needs a GPU).

For each method: build SmolLM2-135M on the GPU in the dtype the estimate assumes (bf16 base, float32
for full fine-tuning), apply the method as a run does, and train a few steps the way
engine/training/session.py does (bf16 autocast, backward, gradient clipping, AdamW step). Prints the estimate
without the CUDA-context overhead (which `max_memory_allocated` does not see) next to the measured
`torch.cuda.max_memory_allocated()`, and the memory a forward pass adds (saved activations and
logits) next to the estimated activations + temporary. Weights are random: memory does not depend
on their values, so the architecture comes from resources/model_configs/smollm2-135m.

Then it trains bf16 LoRA and QLoRA (4-bit NF4 base) for --train-steps through the engine on the demo
data and prints their tokens/s and peak memory (benchmarks/gpu_engine_check.py does more methods and
the QLoRA exports). The tokenizer comes from the embedded SmolLM2, or --tokenizer DIR where the
embedded model is not installed (weights are random either way).

    python benchmarks/gpu_check.py [--batch 4] [--seq 512] [--steps 3] [--methods lora,full,...]

Exits with a message (status 0) where there is no CUDA. Runs in well under a minute on an H100.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_METHODS = ("lora,lora+gc,dora,rslora,adalora,ia3,prompt_tuning,p_tuning,prefix_tuning,p_tuning_v2,"
                   "llama_adapter,last_layers,full,adapter_h,parallel_adapter,loha,lokr,vera,oft,mam")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a shipped config name or model folder")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma list; NAME+gc turns on checkpointing")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=30, help="steps of the bf16 LoRA and QLoRA runs (0: none)")
    parser.add_argument("--tokenizer", help="a SmolLM2 tokenizer folder (default: the embedded model's)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: this check compares the estimate with torch.cuda.max_memory_allocated, "
              "so it needs a GPU (nothing was measured)")
        return 0
    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.estimate.costs import estimate
    from adapter_studio.engine.methods import METHODS
    from adapter_studio.engine.models.loading import load_config, resolve_source
    from adapter_studio.engine.spec import TrainingSpec

    config = load_config(resolve_source(args.model))
    print(f"{torch.cuda.get_device_name(0)}; {args.model}; batch {args.batch} × {args.seq} tokens; "
          f"{args.steps} steps; torch {torch.__version__}")
    print(f"{'method':<18}{'est. total':>12}{'measured peak':>15}{'ratio':>7}   "
          f"{'est. act+tmp':>13}{'fwd adds':>10}{'ratio':>7}")
    t0 = time.perf_counter()
    ratios = []
    for item in args.methods.split(","):
        name, _, flag = item.partition("+")
        training = TrainingSpec(batch_size=args.batch, precision="bf16", gradient_checkpointing=flag == "gc",
                                max_steps=args.steps)
        row = estimate(config, METHODS[name](), training, task="causal_lm", device="cuda", seq_len=args.seq)
        if "error" in row:
            print(f"{item:<18} estimate: {row['error']}")
            continue
        try:
            peak, forward = measure(config, name, training, row, args)
        except (UserError, RuntimeError, ValueError) as e:
            print(f"{item:<18} real run failed: {type(e).__name__}: {str(e)[:120]}")
            continue
        m = row["memory_bytes"]
        est = m["total"] - m["overhead"]
        act = m["activations"] + m["temporary"]
        ratios.append(est / peak)
        print(f"{item:<18}{est / 2**30:10.2f} G{peak / 2**30:13.2f} G{est / peak:7.2f}   "
              f"{act / 2**30:11.2f} G{forward / 2**30:8.2f} G{act / forward if forward else float('nan'):7.2f}")
    if ratios:
        print(f"\n{len(ratios)} methods: estimate / measured peak min {min(ratios):.2f}, max {max(ratios):.2f}, "
              f"mean {sum(ratios) / len(ratios):.2f}; CUDA context not counted on either side "
              f"({time.perf_counter() - t0:.0f} s)")
    if args.train_steps:
        train_check(args)
    return 0


def train_check(args: argparse.Namespace) -> None:
    """bf16 LoRA and QLoRA through the engine: tokens/s and peak memory."""
    from gpu_engine_check import check_training

    tokenizer = args.tokenizer
    if tokenizer is None:
        from adapter_studio.engine.models.loading import EMBEDDED_SMOLLM2, load_tokenizer, resolve_source

        try:
            loaded = load_tokenizer(resolve_source(EMBEDDED_SMOLLM2))
        except Exception as e:  # the embedded package is missing: say so, the memory table stands
            print(f"\nno training check: the embedded SmolLM2 is not installed ({e}); pass --tokenizer DIR")
            return
        tokenizer = tempfile.mkdtemp(prefix="smollm2-tokenizer-")
        loaded.save_pretrained(tokenizer)
    print(f"\nbf16 LoRA and QLoRA through the engine, {args.train_steps} steps on the demo data:")
    check_training(tokenizer, args.train_steps, [("lora", "none"), ("lora", "4bit")])


def measure(config: object, name: str, training: object, row: dict, args: argparse.Namespace) -> tuple[int, int]:
    """Peak allocated bytes over a few real training steps, and what one forward pass adds."""
    import torch
    from adapter_studio.engine.defaults import fill_method
    from adapter_studio.engine.methods import METHODS, MethodContext
    from adapter_studio.engine.models.info import describe_model
    from transformers import AutoModelForCausalLM

    gc.collect()
    torch.cuda.empty_cache()
    dtype = getattr(torch, row["assumptions"]["weight_dtype"])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    info = describe_model(model)
    spec = fill_method(METHODS[name](), info)  # as a run fills it (engine.defaults)
    spec.check(info, training)
    model = spec.apply(model, MethodContext(info=info, training=training, total_steps=args.steps))
    if training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.to("cuda")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = spec.build_optimizer(model, 1e-4, 0.0) or torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq), device="cuda", generator=g)
    mask = torch.ones_like(ids)
    mask[-1, -args.seq // 4:] = 0  # a padded row, as batches padded to their longest row have
    labels = ids.masked_fill(mask == 0, -100)
    model.train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    forward = 0
    for step in range(args.steps):
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        if step == args.steps - 1:
            forward = torch.cuda.memory_allocated() - before
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        spec.on_step(model, step)  # before zero_grad, as engine/training/session.py: AdaLoRA reads the gradients
        optimizer.zero_grad(set_to_none=True)
        del out
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del model, optimizer, trainable
    gc.collect()
    torch.cuda.empty_cache()
    return peak, forward


if __name__ == "__main__":
    raise SystemExit(main())
