"""Answers of many prompts at once: greedy generation in batches with the KV cache (prompts sorted by
length so a batch pads little), and a classifier's predictions and pooled features, batch by batch.

Every function takes `tick(n)` (called after each batch with the rows done) and a stop event checked
between batches: stopping raises `EvaluationStopped`, so no half-scored result is ever reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.text_pairs import pair_inputs

if TYPE_CHECKING:
    import numpy as np
    import torch

Tick = Callable[[int], None]


class EvaluationStopped(Exception):
    """The person stopped the evaluation (Stop, Ctrl-C) before it ended."""


def batches(count: int, batch_size: int, stop: threading.Event | None) -> Iterator[range]:
    for start in range(0, count, batch_size):
        if stop is not None and stop.is_set():
            raise EvaluationStopped
        yield range(start, min(start + batch_size, count))


def context_limit(model: torch.nn.Module) -> int | None:
    """The most positions the model takes (learned position tables fail beyond it), or None."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def autocast_for(precision: str, device: str) -> AbstractContextManager[Any]:
    """The run's compute precision for inference too: bf16 (or fp16) autocast, or nothing for float32.
    On a CPU with AMX, bf16 generation of SmolLM2 took 3.6 s per batch of 16 against 5.7 s in float32,
    with the same answers."""
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes or device not in ("cpu", "cuda"):
        return nullcontext()
    return torch.autocast(device, dtype=dtypes[precision])


def batch_size_for(model: torch.nn.Module, wanted: int, *, adapter_on: bool = True) -> int:
    """One row at a time for soft-prompt methods: peft drops position ids, so a left-padded row would be
    answered differently than alone; `wanted` for every other model, and for a soft-prompt model with its
    adapter switched off (the base answers: peft then hands generation to the base model itself, which
    keeps the position ids — one row at a time made a P-Tuning run's base answers take 10 minutes for 60
    demo rows where LoRA's took 12 s)."""
    config = getattr(model, "active_peft_config", None)
    return 1 if adapter_on and getattr(config, "is_prompt_learning", False) else wanted


def generate_greedy(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    pad_id: int,
    stop_ids: list[int],
    max_new_tokens: int,
    batch_size: int,
    device: str,
    tick: Tick,
    stop: threading.Event | None = None,
) -> list[list[int]]:
    """The greedily generated token ids for each prompt (token ids), in the prompts' order.

    Batches are left-padded and decoded with the KV cache; the answer stops at any of `stop_ids`."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for batch in batches(len(order), batch_size, stop):
        chosen = [order[j] for j in batch]
        width = max(len(prompts[i]) for i in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, i in enumerate(chosen):
            n = len(prompts[i])
            ids[row, width - n :] = torch.tensor(prompts[i])
            mask[row, width - n :] = 1
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None, use_cache=True,
                eos_token_id=stop_ids, pad_token_id=pad_id,
            )  # fmt: skip
        for row, i in enumerate(chosen):
            tokens = generated[row, width:].tolist()
            cut = next((j for j, t in enumerate(tokens) if t in stop_ids), len(tokens))
            out[i] = tokens[:cut]
        tick(len(chosen))
    return out


def _encode(tokenizer: Any, texts: list[Any], max_length: int, device: str) -> dict[str, torch.Tensor]:
    first = [t[0] for t in texts]
    pairs = [t[1] or "" for t in texts] if any(t[1] is not None for t in texts) else None
    first, pairs = pair_inputs(tokenizer, first, pairs)
    enc = tokenizer(first, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def predict_labels(
    model: torch.nn.Module, tokenizer: Any, texts: list[tuple[str, str | None]], *, max_length: int,
    batch_size: int, device: str, tick: Tick, stop: threading.Event | None = None,
) -> list[int]:  # fmt: skip
    """The classifier's label id (argmax of its logits) for each (text, text pair)."""
    import torch

    predicted: list[int] = []
    for batch in batches(len(texts), batch_size, stop):
        with torch.no_grad():
            logits = model(**_encode(tokenizer, [texts[i] for i in batch], max_length, device)).logits
        predicted += logits.argmax(-1).tolist()
        tick(len(batch))
    return predicted


def pooled_features(
    model: torch.nn.Module, tokenizer: Any, texts: list[tuple[str, str | None]], *, max_length: int,
    batch_size: int, device: str, tick: Tick, stop: threading.Event | None = None,
) -> np.ndarray:  # fmt: skip
    """The mean of the last hidden layer over each text's tokens (padding left out): frozen features."""
    import numpy as np
    import torch

    rows = []
    for batch in batches(len(texts), batch_size, stop):
        enc = _encode(tokenizer, [texts[i] for i in batch], max_length, device)
        with torch.no_grad():
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
        tick(len(batch))
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
