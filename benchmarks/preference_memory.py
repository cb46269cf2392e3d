"""What a preference step's backward pass keeps, against the memory estimate the Compare page shows.

A DPO step of B pairs runs the policy over the chosen and the rejected answer of each pair, reading each
prompt once (engine.objectives.logps.shared_row_logps), and the reference (the adapter switched off) without
gradients. The estimate counts such a step as a supervised step of 2·B rows at the pair's full length (an
upper bound). This measures, on real models with LoRA, the bytes autograd saves for one DPO step (the same
hook as memory_check.py) and prints them against the estimate for 2·B rows and, for scale, for B rows, for
prompts of several shares of the row.

    .venv/bin/python benchmarks/preference_memory.py              # tiny Llama
    .venv/bin/python benchmarks/preference_memory.py --smollm2    # also SmolLM2-135M (embedded GGUF)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from adapter_studio.engine.data.preference import PairItem, collate_pairs
from adapter_studio.engine.data.tokenising import IGNORE
from adapter_studio.engine.defaults import CPU_EAGER_MAX_WIDTH, fill_method
from adapter_studio.engine.estimate.costs import estimate
from adapter_studio.engine.methods import METHODS, MethodContext
from adapter_studio.engine.models.info import describe_model
from adapter_studio.engine.objectives import OBJECTIVES
from adapter_studio.engine.objectives.logps import pair_logps
from adapter_studio.engine.spec import TrainingSpec
from adapter_studio.engine.training.fast_loss import causal_lm_parts
from memory_check import build_real, saved_bytes_of, tiny_configs


def pairs(count: int, seq: int, prompt: int, vocab: int) -> list[PairItem]:
    """`count` pairs of `seq`-token sides sharing their first `prompt` tokens; the answers carry the labels."""
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(count):
        shared = torch.randint(3, vocab, (prompt,), generator=g).tolist()
        sides = [shared + torch.randint(3, vocab, (seq - prompt,), generator=g).tolist() for _ in range(2)]
        labels = [[IGNORE] * prompt + side[prompt:] for side in sides]
        items.append(PairItem(sides[0] + sides[1], labels[0] + labels[1], i, seq))
    return items


def check(name: str, config: object, model: torch.nn.Module, batch: int, seq: int, shares: list[float]) -> None:
    training = TrainingSpec(batch_size=batch, precision="float32", gradient_checkpointing="off")
    if getattr(model.config, "_attn_implementation", None) == "sdpa" and seq <= CPU_EAGER_MAX_WIDTH:
        model.config._attn_implementation = "eager"  # what a CPU training run uses for batches this short
    method = fill_method(METHODS["lora"](), describe_model(model))
    model = method.apply(model, MethodContext(info=describe_model(model), training=training, total_steps=100))
    parts = causal_lm_parts(model)
    dpo = OBJECTIVES["dpo"]()
    vocab = int(getattr(config, "vocab_size", 1000))
    for share in shares:
        prompt = max(1, int(seq * share))
        labelled = (seq - prompt - 1) / seq  # the answers' share of the tokens, as the Data page measures it
        rows = {o: estimate(config, METHODS["lora"](), training, task="causal_lm", device="cpu",
                            weight_dtype="float32", seq_len=seq, objective=OBJECTIVES[o](),
                            labelled_share=labelled)["memory_bytes"]["activations"] for o in ("sft", "dpo")}
        step = collate_pairs(pairs(batch, seq, prompt, vocab), pad_id=0)
        measured = saved_bytes_of(model, lambda s=step: dpo.pair_loss(pair_logps(dpo, model, parts, s)).loss, "float32")
        print(f"{name:<9} {batch} pairs × {seq} tokens, prompt {share:4.0%}:  measured {measured / 2**20:8.2f} MiB  "
              f"estimate (2·B rows) {rows['dpo'] / 2**20:8.2f} MiB = {rows['dpo'] / measured:4.2f}×  "
              f"(B rows {rows['sft'] / 2**20:8.2f} MiB = {rows['sft'] / measured:4.2f}×)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (embedded GGUF, ~20 s load)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    shares = [0.1, 0.5, 0.8]
    config, _ = tiny_configs()["tiny-llama"]
    check("tiny", config, build_real(config, "causal_lm"), args.batch, args.seq, shares)
    if args.smollm2:
        from adapter_studio.engine.models.loading import EMBEDDED_SMOLLM2, load_config, load_model, resolve_source
        from adapter_studio.engine.spec import ModelSpec

        config = load_config(resolve_source(EMBEDDED_SMOLLM2))
        model, _, _ = load_model(ModelSpec(source=EMBEDDED_SMOLLM2), "causal_lm", dtype=torch.float32)
        check("smollm2", config, model, args.batch, max(args.seq, 256), shares)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
