"""Truncating, packing and batching: views over the token store that cut or pack the examples to
`max_length` (so changing it re-tokenises nothing), the seeded order of each epoch's batches, and
`collate`, which pads a batch into tensors.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
from adapter_studio.engine.data.cache import _Store
from adapter_studio.engine.data.files import locate
from adapter_studio.engine.data.kto import KtoItem, collate_kto, kto_view
from adapter_studio.engine.data.preference import PairItem, collate_pairs, pair_view
from adapter_studio.engine.data.tokenising import IGNORE, Tokenized, TokenizedSet


def pack_bounds(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Greedy packing in order: item boundaries so that each pack holds at most max_length tokens."""
    bounds = [0]
    total = 0
    for i, n in enumerate(lengths.tolist()):
        if total and total + n > max_length:
            bounds.append(i)
            total = 0
        total += n
    if len(lengths):
        bounds.append(len(lengths))
    return np.asarray(bounds, np.int64)


def _view(
    store: _Store, fmt: str, max_length: int, packing: bool, files: list[tuple[Any, ...]]
) -> tuple[TokenizedSet, int, list[str]]:
    """The examples as training sees them: (items, how many were truncated, notes on dropped ones)."""
    starts = store.offsets[:-1]
    if fmt == "preference":  # pairs of sides, never packed
        return pair_view(store, max_length, files)  # type: ignore[return-value]
    if fmt == "kto":  # completions with their desirable flags, never packed
        return kto_view(store, max_length, files)  # type: ignore[return-value]
    if fmt == "classification":
        truncated = int((store.full > max_length).sum())
        items = TokenizedSet(store.ids, None, starts, store.offsets[1:], store.rows, labels=store.labels,
                             tasks=store.tasks)  # fmt: skip
        return items, truncated, []
    if fmt == "text":  # one stream of documents, cut into max_length blocks
        total = int(store.offsets[-1])
        block_starts = np.arange(0, total, max_length, dtype=np.int64)
        block_ends = np.minimum(block_starts + max_length, total)
        keep = block_ends - block_starts > 1
        block_starts, block_ends = block_starts[keep], block_ends[keep]
        return TokenizedSet(store.ids, None, block_starts, block_ends, np.arange(1, len(block_starts) + 1)), 0, []
    keep = (store.first_loss >= 0) & (store.first_loss < max_length)
    dropped = [
        f"{locate(str(files[f][0]), str(files[f][1]), int(r))}: "
        + ("no answer tokens" if first < 0 else f"longer than max_length {max_length} before its answer starts")
        for f, r, first in zip(store.files[~keep].tolist(), store.rows[~keep].tolist(),
                               store.first_loss[~keep].tolist(), strict=True)
    ]  # fmt: skip
    lengths = np.minimum(store.lengths[keep], max_length)
    truncated = int((store.lengths[keep] > max_length).sum())
    kept_starts = starts[keep]
    bounds = pack_bounds(lengths, max_length) if packing else None
    rows = store.rows[keep] if bounds is None else store.rows[keep][bounds[:-1]]
    tasks = store.tasks[keep] if len(store.tasks) else None
    items = TokenizedSet(store.ids, store.loss, kept_starts, kept_starts + lengths, rows, bounds, tasks=tasks)
    return items, truncated, dropped


def batch_tokens(lengths: np.ndarray, batch_size: int, seed: int = 0) -> int:
    """Tokens computed in one epoch when each batch is padded to its longest item (training's order)."""
    if not len(lengths):
        return 0
    values = lengths.tolist()
    return sum(len(b) * max(values[i] for i in b) for b in epoch_batches(values, batch_size, seed, 0))


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch, a pure function of (seed, epoch) so a resumed run sees the same
    order. Examples of similar length share a batch (less padding); batch order stays random."""
    order = list(range(len(lengths)))
    rng = random.Random(seed * 100_003 + epoch)
    rng.shuffle(order)
    # Sort within windows of 50 batches: most of the padding saving, little loss of randomness.
    window = batch_size * 50
    grouped: list[int] = []
    for i in range(0, len(order), window):
        grouped += sorted(order[i : i + window], key=lambda j: lengths[j])
    batches = [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: Iterable[Tokenized], pad_id: int, classification: bool, multiple: int = 1) -> dict[str, Any]:
    """Pad a batch to its longest item, rounded up to `multiple` (few distinct shapes let kernels chosen
    for a shape be reused; the session asks SpeedOptions.multiple_for in engine.training.speed). Items that
    all have a task add `task_ids` (one per row), which a method that routes by task reads (engine.methods.poly)."""
    import torch

    items = list(items)
    if items and isinstance(items[0], PairItem):
        return collate_pairs(items, pad_id, multiple)  # type: ignore[arg-type]
    if items and isinstance(items[0], KtoItem):
        return collate_kto(items, pad_id, multiple)  # type: ignore[arg-type]
    width = max(len(t.input_ids) for t in items)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for i, t in enumerate(items):
        n = len(t.input_ids)
        ids[i, :n] = torch.tensor(t.input_ids)
        mask[i, :n] = 1
        if not classification:
            labels[i, :n] = torch.tensor(t.labels)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if classification:
        batch["labels"] = torch.tensor([t.labels[0] for t in items])
    if items and all(t.task >= 0 for t in items):
        batch["task_ids"] = torch.tensor([t.task for t in items])
    return batch


def sample_batches(items: Any, pad_id: int, classification: bool, batch_size: int, count: int,
                   seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """Up to `count` batches of shuffled training rows, for a method that reads data before the first step
    (LoRA's EVA). A classifier's labels are left out: one per row, they would not mask tokens."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, min(len(order), count * batch_size), batch_size):
        batch = collate([items[i] for i in order[start : start + batch_size]], pad_id, classification)
        if classification:
            batch.pop("labels")
        batches.append(batch)
    return batches
