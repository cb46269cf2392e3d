"""The approaches that train nothing, costed beside the methods (`adapter-studio params --methods
in_context,features`, the Compare page): what a person compares a fine-tuning method against.

- `in_context` (text generation): the base model answers with k training rows before each prompt, as the
  Evaluate page's in-context baseline does (k = IN_CONTEXT_K unless given). Nothing trains or is saved;
  the cost is the longer prompt, (k + 1) rows of the data's length, cut at the model's context.
- `features` (classification): the frozen encoder's mean-pooled features and a logistic regression on
  them, as the Evaluate page's feature baseline: it learns labels × (hidden + 1) coefficients, outside the
  model, and saves no file.

Their memory is an inference pass, not a training step: no gradients, optimizer states or activations
kept for a backward pass. Under no_grad each block's tensors are freed before the next block runs, so
the peak is the weights, the key/value cache of the whole prompt (generation keeps it for every block
while it answers), one block's working set for every token, the attention's padding mask, and the last
position's logits (generate computes only those at its first pass), plus the process's overhead.
"""

from __future__ import annotations

from typing import Any

from adapter_studio.engine.estimate.memory import CPU_PROCESS_BYTES, CUDA_CONTEXT_BYTES

BASELINES = ("in_context", "features")
TITLES = {"in_context": "In-context examples (no training)", "features": "Frozen features + logistic regression"}
FAMILY = "no training (baseline)"
TASKS = {"in_context": "causal_lm", "features": "classification"}
EVAL_BATCH = 16  # the Evaluate page's batch (engine.evaluation.run_eval.EvalSettings)


def baseline_row(
    name: str,
    base: Any,
    config: Any,
    *,
    task: str,
    device: str,
    device_memory: int | None,
    dtype: Any,
    precision: str,
    seq_len: int,
    k: int,
    batch: int = EVAL_BATCH,
    num_labels: int | None = None,
) -> dict[str, Any]:
    """One baseline's row, with the keys of a method's row (`costs.estimate`); `base` is the meta model
    of engine.estimate.meta_models. A baseline that does not fit the task gets `error`."""
    import torch
    from adapter_studio.engine.defaults import model_max_length

    row: dict[str, Any] = {
        "method": name,
        "title": TITLES[name],
        "family": FAMILY,
        "mergeable": False,
        "baseline": True,
    }
    if TASKS[name] != task:
        what = "a text-generation model" if TASKS[name] == "causal_lm" else "a classifier"
        return {**row, "error": f"{TITLES[name]} is a baseline for {what}, not for this {task} model"}
    info, shape = base.info, base.shape
    context = model_max_length(config)
    tokens_per_row = min(seq_len, context)
    s = min((k + 1) * tokens_per_row, context) if name == "in_context" else tokens_per_row
    c = 2 if precision in ("bf16", "fp16") or dtype in (torch.bfloat16, torch.float16) else 4
    weights = sum(p.numel() * p.element_size() for p in base.model.parameters())
    weights += sum(b.numel() * b.element_size() for b in base.model.buffers())
    heads = shape.heads
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    kv_dim = shape.q_dim // heads * kv_heads
    tokens = batch * s
    # One block at a time: its input and output (residual), q, k, v and the attention output, the MLP's
    # intermediates; eager attention its probabilities, fused attention the additive padding mask.
    width = 2 * shape.hidden + 2 * shape.q_dim + 2 * kv_dim + shape.mlp_factor * shape.intermediate
    block = tokens * width * c
    block += batch * heads * s * s * c if shape.eager else batch * s * s * c
    cache = 2 * info.num_layers * kv_dim * tokens * c if name == "in_context" else 0
    logits = batch * shape.vocab * 4 if name == "in_context" else 0
    labels = max(2, num_labels or int(getattr(config, "num_labels", 2) or 2))  # the data's, where known
    learned = labels * (info.hidden_size + 1) if name == "features" else 0
    memory = {
        "weights": int(weights),
        "gradients": 0,
        "optimizer": 0,
        "activations": int(cache),
        "temporary": int(block + logits),
        "overhead": CUDA_CONTEXT_BYTES if device == "cuda" else CPU_PROCESS_BYTES,
    }
    memory["total"] = sum(memory.values())
    total = sum(p.numel() for p in base.model.parameters())
    if name == "in_context":
        note = f"{k} training rows before each prompt: {s:,} of the model's {context:,} tokens"
    else:
        note = f"a logistic regression on {info.hidden_size} frozen features, {labels} labels"
    row.update(
        trainable_params=learned,
        total_params=total,
        trainable_share=learned / total if total else 0.0,
        adapter_bytes=0,
        memory_bytes=memory,
        note=note,
        assumptions={
            "device": device,
            "weight_dtype": str(dtype).removeprefix("torch."),
            "quantization": "none",
            "precision": precision,
            "batch_size": batch,
            "seq_len": s,
            "optimizer": "none",
            "gradient_checkpointing": False,
            "task": task,
            "devices": 1,
            "distributed": "none",
            "in_context_k": k if name == "in_context" else None,
            "context_tokens": context,
        },
    )
    if device_memory:
        row["device_memory_bytes"] = int(device_memory)
        row["fits"] = memory["total"] <= device_memory
    return row
