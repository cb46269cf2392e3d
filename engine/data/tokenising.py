"""Tokenising: rendered examples (and plain documents, and classification texts) to token ids, with
a flag per token for the loss, as flat arrays in one batched call to the fast tokenizer where there
is one; and `Tokenized`/`TokenizedSet`, the examples as training sees them (items built on access
from the flat arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, pairwise
from typing import Any, overload

import numpy as np
from adapter_studio.engine.data.rendering import Rendered
from adapter_studio.engine.data.shapes import Example
from adapter_studio.engine.data.text_pairs import pair_inputs

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss; for classification, [label id]
    row: int
    task: int = -1  # index of the row's task (data.columns.task); -1 for none


class TokenizedSet(Sequence[Tokenized]):
    """Tokenised examples held as flat arrays (memory-mapped from the cache); items are built on access.

    An item is one or more segments `ids[start:end]` (several when packed); its labels are the ids
    where `loss` is set, or `labels[i]` for classification, or the ids themselves for plain text; its
    task is `tasks[i]` where the data has a task column (never for packed items, which mix rows).
    """

    def __init__(
        self,
        ids: np.ndarray,
        loss: np.ndarray | None,
        starts: np.ndarray,
        ends: np.ndarray,
        rows: np.ndarray,
        bounds: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        tasks: np.ndarray | None = None,
    ) -> None:
        self.ids, self.loss, self.starts, self.ends = ids, loss, starts, ends
        self.rows, self.bounds, self.labels = rows, bounds, labels
        self.tasks = tasks if tasks is not None and len(tasks) and bounds is None else None

    def __len__(self) -> int:
        return len(self.starts) if self.bounds is None else len(self.bounds) - 1

    @overload
    def __getitem__(self, index: int) -> Tokenized: ...
    @overload
    def __getitem__(self, index: slice) -> list[Tokenized]: ...
    def __getitem__(self, index: int | slice) -> Tokenized | list[Tokenized]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        segments = [index] if self.bounds is None else range(self.bounds[index], self.bounds[index + 1])
        pieces = [(int(self.starts[s]), int(self.ends[s])) for s in segments]
        ids = np.concatenate([self.ids[a:b] for a, b in pieces]).astype(np.int64)
        if self.labels is not None:
            labels = [int(self.labels[index])]
        elif self.loss is None:
            labels = ids.tolist()
        else:
            loss = np.concatenate([self.loss[a:b] for a, b in pieces]).astype(bool)
            labels = np.where(loss, ids, IGNORE).tolist()
        task = int(self.tasks[index]) if self.tasks is not None else -1
        return Tokenized(ids.tolist(), labels, int(self.rows[index]), task)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per item."""
        per_segment = self.ends - self.starts
        if self.bounds is None:
            return per_segment
        sums = np.concatenate([[0], np.cumsum(per_segment)])
        return sums[self.bounds[1:]] - sums[self.bounds[:-1]]

    @property
    def tokens(self) -> int:
        return int((self.ends - self.starts).sum())

    @property
    def labelled_tokens(self) -> int | None:
        """Tokens that carry a loss (answers); None where every token does (plain text) or none does
        (classification labels)."""
        if self.loss is None or self.labels is not None:
            return None
        return summed_prefixes(self.loss, self.ends) - summed_prefixes(self.loss, self.starts)

    @property
    def labelled_share(self) -> float | None:
        """`labelled_tokens` over all tokens: what the output head projects where the loss skips the rest."""
        labelled, tokens = self.labelled_tokens, self.tokens
        return labelled / tokens if labelled is not None and tokens else None


PREFIX_BLOCK = 1 << 24  # tokens a cumulative sum holds at once (128 MiB of int64)


def summed_prefixes(values: np.ndarray, positions: np.ndarray, block: int = PREFIX_BLOCK) -> int:
    """The sum over `positions` of values[:p].sum(), a block of values at a time: one cumulative sum over
    238M tokens took 4 GB and held the window for 7 s."""
    ordered = np.sort(np.asarray(positions, np.int64))
    total, carry, lo = 0, 0, 0
    for start in range(0, len(values), block):
        stop = min(start + block, len(values))
        sums = np.cumsum(values[start:stop], dtype=np.int64)
        hi = int(np.searchsorted(ordered, stop, side="left"))  # the positions in [start, stop)
        inside = ordered[lo:hi] - start
        total += int(sums[inside[inside > 0] - 1].sum()) + carry * (hi - lo)
        carry += int(sums[-1])
        lo = hi
    return total + carry * (len(ordered) - lo)  # positions at the very end


@dataclass
class _Encoded:
    """A batch of tokenised examples as flat arrays."""

    ids: np.ndarray
    loss: np.ndarray  # bool per token
    lengths: np.ndarray
    first_loss: np.ndarray  # index of each example's first loss token, -1 when it has none

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)


def _backend(tokenizer: Any) -> Any:
    """The Rust tokenizer of a fast tokenizer, with no truncation or padding left over from a call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


def _flat(lists: list[list[int]], dtype: Any = np.int64) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, lists), np.int64, len(lists))
    return np.fromiter(chain.from_iterable(lists), dtype, int(lengths.sum())), lengths


def _first_true(mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    first = np.full(len(lengths), -1, np.int64)
    hits = np.flatnonzero(mask)
    if len(hits):
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        example = np.searchsorted(np.cumsum(lengths), hits, side="right")
        unique, at = np.unique(example, return_index=True)
        first[unique] = hits[at] - starts[unique]
    return first


ENCODE_CHARS = 4_000_000  # characters a batched call tokenises: 2,048 rows of 20,000 each peaked at 7.3 GB


def _char_batches(sizes: list[int]) -> list[slice]:
    """Consecutive slices of items whose characters add up to at most ENCODE_CHARS (a longer item alone)."""
    out, start, size = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and size + n > ENCODE_CHARS:
            out.append(slice(start, i))
            start, size = i, 0
        size += n
    return [*out, slice(start, len(sizes))]


def _joined(parts: list[_Encoded]) -> _Encoded:
    if len(parts) == 1:
        return parts[0]
    return _Encoded(*(np.concatenate([getattr(p, name) for p in parts])
                      for name in ("ids", "loss", "lengths", "first_loss")))  # fmt: skip


def _encode_rendered(rendered: list[Rendered], tokenizer: Any, special: bool) -> _Encoded:
    """Tokenise in batched calls of at most ENCODE_CHARS characters; a token carries loss when it starts inside
    a loss span."""
    batches = _char_batches([len(r.text) for r in rendered])
    return _joined([_encode_batch(rendered[part], tokenizer, special) for part in batches])


def _encode_batch(rendered: list[Rendered], tokenizer: Any, special: bool) -> _Encoded:
    backend = _backend(tokenizer)
    if backend is None:
        return _encode_by_segments(rendered, tokenizer, special)
    encodings = backend.encode_batch([r.text for r in rendered], add_special_tokens=special)
    ids, lengths = _flat([e.ids for e in encodings])
    pairs = chain.from_iterable(chain.from_iterable(e.offsets for e in encodings))
    offsets = np.fromiter(pairs, np.int64, 2 * len(ids)).reshape(-1, 2)
    # Place every text on one line of characters (with a gap between texts) and find, for each
    # token's start, the loss span that starts at or before it.
    text_lengths = np.fromiter((len(r.text) + 1 for r in rendered), np.int64, len(rendered))
    base = np.concatenate([[0], np.cumsum(text_lengths)[:-1]])
    token_start = offsets[:, 0] + np.repeat(base, lengths)
    spans = np.array([(s + b, e + b) for r, b in zip(rendered, base.tolist(), strict=True) for s, e in r.spans],
                     dtype=np.int64).reshape(-1, 2)  # fmt: skip
    loss = np.zeros(len(ids), bool)
    if len(spans):
        k = np.searchsorted(spans[:, 0], token_start, side="right") - 1
        loss = (k >= 0) & (token_start < spans[np.maximum(k, 0), 1]) & (offsets[:, 1] > offsets[:, 0])
    return _Encoded(ids, loss, lengths, _first_true(loss, lengths))


def _encode_by_segments(rendered: list[Rendered], tokenizer: Any, special: bool) -> _Encoded:
    """Without offsets (a Python tokenizer): tokenise prompt and answer pieces apart and join them."""
    all_ids: list[list[int]] = []
    all_loss: list[list[bool]] = []
    for r in rendered:
        cuts = sorted({0, len(r.text), *chain.from_iterable(r.spans)})
        ids: list[int] = []
        loss: list[bool] = []
        for a, b in pairwise(cuts):
            piece = tokenizer.encode(r.text[a:b], add_special_tokens=False)
            ids += piece
            loss += [any(s <= a < e for s, e in r.spans)] * len(piece)
        if special:
            wrapped = tokenizer.build_inputs_with_special_tokens(ids)
            lead = next((i for i in range(len(wrapped)) if wrapped[i : i + len(ids)] == ids), 0)
            loss = [False] * lead + loss + [False] * (len(wrapped) - lead - len(ids))
            ids = wrapped
        all_ids.append(ids)
        all_loss.append(loss)
    ids_flat, lengths = _flat(all_ids)
    loss_flat = np.fromiter(chain.from_iterable(all_loss), bool, len(ids_flat))
    return _Encoded(ids_flat, loss_flat, lengths, _first_true(loss_flat, lengths))


def _encode_documents(texts: list[str], tokenizer: Any) -> _Encoded:
    """Plain text for continued pre-training: each document's tokens and an end-of-text token."""
    return _joined([_encode_document_batch(texts[part], tokenizer) for part in _char_batches(list(map(len, texts)))])


def _encode_document_batch(texts: list[str], tokenizer: Any) -> _Encoded:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    backend = _backend(tokenizer)
    if backend is not None:
        lists = [e.ids + eos for e in backend.encode_batch(texts, add_special_tokens=False)]
    else:
        lists = [ids + eos for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    ids, lengths = _flat(lists)
    return _Encoded(ids, np.ones(len(ids), bool), lengths, np.zeros(len(lengths), np.int64))


def _encode_classification(examples: list[Example], tokenizer: Any, max_length: int) -> tuple[_Encoded, np.ndarray]:
    """Text (and text pair) ids truncated to max_length the tokenizer's way, and the untruncated lengths."""
    sizes = [len(e.text) + len(e.text_pair or "") for e in examples]
    parts = [_encode_labelled_batch(examples[part], tokenizer, max_length) for part in _char_batches(sizes)]
    return _joined([enc for enc, _ in parts]), np.concatenate([full for _, full in parts])


def _encode_labelled_batch(examples: list[Example], tokenizer: Any, max_length: int) -> tuple[_Encoded, np.ndarray]:
    texts = [e.text for e in examples]
    pairs = [e.text_pair or "" for e in examples] if any(e.text_pair is not None for e in examples) else None
    texts, pairs = pair_inputs(tokenizer, texts, pairs)
    lists = tokenizer(texts, pairs)["input_ids"]
    full = np.fromiter(map(len, lists), np.int64, len(lists))
    long = np.flatnonzero(full > max_length).tolist()
    if long:
        cut = tokenizer([texts[i] for i in long], [pairs[i] for i in long] if pairs else None,
                        truncation=True, max_length=max_length)["input_ids"]  # fmt: skip
        for i, ids in zip(long, cut, strict=True):
            lists[i] = ids
    ids, lengths = _flat(lists)
    return _Encoded(ids, np.zeros(len(ids), bool), lengths, np.zeros(len(lengths), np.int64)), full


def tokenize_rendered(
    rendered: list[Rendered], tokenizer: Any, max_length: int, add_special_tokens: bool
) -> tuple[list[Tokenized], int, list[str]]:
    """Tokenise rendered examples, truncated to max_length; examples with no loss left are dropped."""
    if not rendered:
        return [], 0, []
    enc = _encode_rendered(rendered, tokenizer, add_special_tokens)
    out, truncated, dropped = [], 0, []
    offsets = enc.offsets
    for i, r in enumerate(rendered):
        if not 0 <= enc.first_loss[i] < max_length:
            dropped.append(f"row {r.row}: longer than max_length {max_length} before its answer, nothing left to learn")
            continue
        truncated += int(enc.lengths[i] > max_length)
        ids = enc.ids[offsets[i] : offsets[i] + min(int(enc.lengths[i]), max_length)]
        loss = enc.loss[offsets[i] : offsets[i] + len(ids)]
        out.append(Tokenized(ids.tolist(), np.where(loss, ids, IGNORE).tolist(), r.row))
    return out, truncated, dropped
