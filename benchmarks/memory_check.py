"""Check the activation estimate against what autograd really keeps for the backward pass.

For each method, a real model gets the method applied and runs one forward pass inside
`torch.autograd.graph.saved_tensors_hooks`; every tensor autograd saves is recorded once per storage
(views and re-saves of the same tensor count once; parameters are weights, not activations). The sum
is compared with `adapter_studio.engine.estimate.costs.estimate(...)["memory_bytes"]["activations"]` for the same batch,
sequence length and precision.

    .venv/bin/python benchmarks/memory_check.py                  # tiny Llama / GPT-2 / BERT, every method
    .venv/bin/python benchmarks/memory_check.py --smollm2        # also SmolLM2-135M (embedded GGUF, ~20 s load)
    .venv/bin/python benchmarks/memory_check.py --methods lora,full --precision both
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from adapter_studio.engine.defaults import CPU_EAGER_MAX_WIDTH, fill_method
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.estimate.costs import estimate
from adapter_studio.engine.methods import METHODS, MethodContext
from adapter_studio.engine.models.info import describe_model
from adapter_studio.engine.spec import TrainingSpec
from adapter_studio.engine.training.speed import SpeedOptions


def tiny_configs() -> dict[str, tuple[object, str]]:
    from transformers import BertConfig, GPT2Config, LlamaConfig

    return {
        "tiny-llama": (LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=2048, max_position_embeddings=512), "causal_lm"),
        "tiny-gpt2": (GPT2Config(n_embd=128, n_layer=4, n_head=4, vocab_size=2048, n_positions=512), "causal_lm"),
        "tiny-bert": (BertConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                                 vocab_size=2048, num_labels=2), "classification"),
    }


def build_real(config: object, task: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    return cls.from_config(config, dtype=torch.float32)


def make_batch(batch: int, seq: int, vocab: int, task: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, -seq // 4:] = 0  # one padded row, as real batches have: attention gets a padding mask
    if task == "classification":
        labels = torch.randint(0, 2, (batch,), generator=g)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def saved_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str) -> int:
    """Bytes autograd saves for backward in one forward pass (unique storages, parameters excluded)."""
    return saved_bytes_of(model, lambda: model(**batch).loss, precision)


def saved_bytes_of(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor], precision: str) -> int:
    """Bytes autograd saves for backward while `loss_of()` runs (unique storages, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in params and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = loss_of()
    loss.backward()
    return sum(seen.values())


def check(name: str, config: object, task: str, methods: list[str], batch: int, seq: int, precision: str,
          model_loader=None) -> list[float]:
    ratios = []
    for method_name in methods:
        cls = METHODS[method_name]
        training = TrainingSpec(batch_size=batch, precision=precision)
        row = estimate(config, cls(), training, task=task, device="cpu", weight_dtype="float32", seq_len=seq)
        if "error" in row:
            continue
        model = model_loader() if model_loader else build_real(config, task)
        sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
        if task == "causal_lm" and sdpa and seq <= CPU_EAGER_MAX_WIDTH:
            model.config._attn_implementation = "eager"  # what a CPU training run uses for batches this short
        info = describe_model(model)
        spec = fill_method(cls(), info)  # as a run fills it (engine.defaults)
        try:
            spec.check(info, training)
            model = spec.apply(model, MethodContext(info=info, training=training, total_steps=100))
            SpeedOptions().speed_up_lora_layers(model, "cpu", precision)  # as a run does (e.g. LoRA's bool masks)
            vocab = int(getattr(config, "vocab_size", 1000))
            measured = saved_bytes(model, make_batch(batch, seq, vocab, task), precision)
        except (UserError, RuntimeError, ValueError, TypeError) as e:
            print(f"{name:<12} {method_name:<17} {precision:<8} real run failed: {type(e).__name__}: {e}"[:160])
            continue
        est = row["memory_bytes"]["activations"]
        ratio = est / measured if measured else float("nan")
        ratios.append(ratio)
        print(f"{name:<12} {method_name:<17} {precision:<8} estimate {est / 2**20:9.2f} MiB  "
              f"measured {measured / 2**20:9.2f} MiB  ratio {ratio:5.2f}")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="also check SmolLM2-135M (embedded GGUF, ~20 s load)")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny random models")
    parser.add_argument("--methods", default="all", help="all or a comma list")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bf16", "both"],
                        help="auto: what a run on this CPU uses (bf16 autocast where it is fast)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    if args.precision == "auto":
        from adapter_studio.engine.training.devices import pick_precision

        precisions = [pick_precision("auto", "cpu")]
    else:
        precisions = ["float32", "bf16"] if args.precision == "both" else [args.precision]
    t0 = time.perf_counter()
    ratios: list[float] = []
    for precision in precisions if not args.no_tiny else []:
        for name, (config, task) in tiny_configs().items():
            ratios += check(name, config, task, methods, args.batch, args.seq, precision)
    if args.smollm2:
        from adapter_studio.engine.models.loading import EMBEDDED_SMOLLM2, load_config, load_model, resolve_source
        from adapter_studio.engine.spec import ModelSpec

        config = load_config(resolve_source(EMBEDDED_SMOLLM2))
        cached: dict[str, torch.nn.Module] = {}

        def loader() -> torch.nn.Module:
            if "base" not in cached:
                cached["base"], _, _ = load_model(ModelSpec(source=EMBEDDED_SMOLLM2), "causal_lm", dtype=torch.float32)
            return copy.deepcopy(cached["base"])

        for precision in precisions:
            ratios += check("smollm2", config, "causal_lm", methods, args.batch, max(args.seq, 256), precision,
                            model_loader=loader)
    if ratios:
        print(f"\n{len(ratios)} checks: ratio estimate/measured min {min(ratios):.2f}, max {max(ratios):.2f}, "
              f"mean {sum(ratios) / len(ratios):.2f}  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
