"""KTO data: single answers marked desirable or not (`prompt`, `completion`, `label`), as training sees them.

Format `kto`, detected from `prompt`, `completion` and `label` columns. The prompt is text (one user
turn) or a message list; the completion text or assistant turns; the label a true/false value (also
1/0, "true"/"false", "yes"/"no", "desirable"/"undesirable"). Each row is rendered with the chat template
as prompt + completion (loss on the completion only) and stored as one item with its label.
`collate_kto` makes 2·B rows: the B rows as they are, then B mismatched rows for KTO's KL estimate,
each prompt with the completion of the row before it in the batch (the first takes the last's), as
TRL does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from adapter_studio.engine.data.files import locate
from adapter_studio.engine.data.preference import _as_turns, _kind, is_transcript_prompt, pad_rows, starts_with
from adapter_studio.engine.data.rendering import Rendered
from adapter_studio.engine.data.shapes import Example
from adapter_studio.engine.data.tokenising import IGNORE, TokenizedSet
from adapter_studio.engine.errors import UserError

_TRUE = {"true", "yes", "1", "desirable", "good"}
_FALSE = {"false", "no", "0", "undesirable", "bad"}


def _desirable(value: Any, column: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UserError(
        f"field '{column}' is {value!r} ({_kind(value)}), expected true or false",
        where=where,
        fix=f"mark each row's '{column}' true (a desirable answer) or false (an undesirable one)",
    )


def kto_examples(
    rows: list[dict[str, Any]],
    fmt: str,
    columns: dict[str, str],
    where: str,
    numbers: list[int] | None = None,
    unit: str = "row",
) -> tuple[list[Example], list[str]]:
    """Rows → Examples (`messages` the prompt, `chosen` the completion, `label` desirable), and a note
    per dropped row; the same call as shapes.to_examples."""
    out: list[Example] = []
    dropped: list[str] = []
    p_col, c_col, l_col = columns["prompt"], columns["completion"], columns["label"]
    for number, row in zip(numbers or range(1, len(rows) + 1), rows, strict=True):
        here = locate(where, unit, number)
        desirable = _desirable(row.get(l_col), l_col, here)
        if row.get(c_col) in (None, "", []):  # null (pandas' NaN written as JSON) or left out: as empty
            dropped.append(f"{here}: empty '{c_col}' (nothing to learn)")
            continue
        # No prompt is no turn: a completion that is a whole conversation brings its own, else the row goes.
        given = row.get(p_col)
        prompt = [] if given in (None, "", []) else _as_turns(given, p_col, here, "user")
        completion = _as_turns(row.get(c_col), c_col, here, "assistant")
        if starts_with(completion, prompt):  # a completion that is the whole conversation
            completion = completion[len(prompt) :]
        if completion[-1]["role"] != "assistant":
            dropped.append(f"{here}: '{c_col}' does not end with an assistant answer")
            continue
        if not completion[-1]["content"].strip():
            dropped.append(f"{here}: empty '{c_col}' (nothing to learn)")
            continue
        prompt = prompt + completion[:-1]
        if not any(t["role"] == "user" for t in prompt):
            dropped.append(f"{here}: no prompt (no user turn before the completion)")
            continue
        answer = completion[-1]["content"]
        answer = answer.strip() if is_transcript_prompt(row.get(p_col)) else answer  # " hello" after "Assistant:"
        out.append(Example(row=number, messages=prompt, chosen=answer, label=desirable, path=where, unit=unit))
    return out, dropped


def render_completions(examples: Iterable[Example], renderer: Any) -> list[Rendered]:
    """Each example as prompt + completion, the loss span the completion's."""
    out = []
    for e in examples:
        r = renderer.render(Example(row=e.row, messages=[*e.messages, {"role": "assistant", "content": e.chosen}]))
        out.append(Rendered(r.text, r.spans[-1:], r.row))
    return out


@dataclass
class KtoItem:
    input_ids: list[int]
    labels: list[int]
    row: int
    desirable: bool

    def split(self) -> int:
        """Where the completion starts: the first token that carries loss."""
        return next(i for i, label in enumerate(self.labels) if label != IGNORE)


class KtoSet(Sequence[KtoItem]):
    """Tokenised completions with their desirable flags."""

    def __init__(self, items: TokenizedSet, desirable: np.ndarray) -> None:
        self.items, self.desirable = items, desirable

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> KtoItem: ...
    @overload
    def __getitem__(self, index: slice) -> list[KtoItem]: ...
    def __getitem__(self, index: int | slice) -> KtoItem | list[KtoItem]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        t = self.items[index]
        return KtoItem(t.input_ids, t.labels, t.row, bool(self.desirable[index if index >= 0 else index + len(self)]))

    @property
    def lengths(self) -> np.ndarray:
        return self.items.lengths

    @property
    def tokens(self) -> int:
        return self.items.tokens


def kto_view(store: Any, max_length: int, files: list[tuple[Any, ...]]) -> tuple[KtoSet, int, list[str]]:
    """The stored completions truncated to max_length; one whose completion starts past it is dropped."""
    keep = (store.first_loss >= 0) & (store.first_loss < max_length)
    dropped = [
        f"{locate(str(files[f][0]), str(files[f][1]), int(r))}: longer than max_length {max_length} before its answer"
        for f, r in zip(store.files[~keep].tolist(), store.rows[~keep].tolist(), strict=True)
    ]
    starts = store.offsets[:-1][keep]
    lengths = np.minimum(store.lengths[keep], max_length)
    truncated = int((store.lengths[keep] > max_length).sum())
    items = TokenizedSet(store.ids, store.loss, starts, starts + lengths, store.rows[keep])
    return KtoSet(items, store.labels[keep].astype(bool)), truncated, dropped


def mix_kinds(batches: list[list[int]], desirable: Sequence[bool], world: int = 1) -> list[list[int]]:
    """`batches` (lists of row indices) with rows swapped so that every batch of two or more rows holds both
    kinds wherever the data allows: KTO's step margin (desirable rewards minus undesirable ones) needs both
    in a batch, and length-grouped batches often hold one kind only. A batch of one kind swaps one of its
    rows for one of the other kind from a batch holding at least two of those: both end mixed.
    Deterministic (a resumed run sees the same batches); batch sizes and order are kept. With `world`
    processes each takes every world-th row of a batch (the session's split), and each of those parts is mixed."""
    if world > 1:
        parts = mix_kinds([b[r::world] for b in batches for r in range(world)], desirable)
        joined = []
        for n, b in enumerate(batches):
            whole = list(b)
            for r in range(world):
                whole[r::world] = parts[n * world + r]
            joined.append(whole)
        return joined
    out = [list(b) for b in batches]
    counts = [sum(bool(desirable[i]) for i in b) for b in out]
    for n, batch in enumerate(out):
        good = counts[n]
        if len(batch) < 2 or 0 < good < len(batch):
            continue
        wanted = good == 0  # the kind this batch lacks
        for m, other in enumerate(out):
            have = counts[m] if wanted else len(other) - counts[m]  # rows of the wanted kind there
            if m == n or have < 2:  # the other batch keeps one of them, and gets one of this batch's kind
                continue
            give = next(i for i in other if bool(desirable[i]) == wanted)
            other[other.index(give)], batch[0] = batch[0], give
            delta = 1 if wanted else -1
            counts[n], counts[m] = counts[n] + delta, counts[m] - delta
            break
    return out


def collate_kto(items: Sequence[KtoItem], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    """2·B padded rows (the rows, then the KL rows: prompt i with completion i−1) and `desirable` (B)."""
    import torch

    cuts = [t.split() for t in items]
    rows = [(t.input_ids, t.labels) for t in items]
    for i, t in enumerate(items):  # prompt of i, completion of the row before (the first takes the last's)
        j, c = (i - 1) % len(items), cuts[i]
        other, oc = items[j], cuts[j]
        rows.append((t.input_ids[:c] + other.input_ids[oc:], [IGNORE] * c + other.labels[oc:]))
    desirable = torch.tensor([t.desirable for t in items], dtype=torch.bool)
    return {**pad_rows(rows, pad_id, multiple), "desirable": desirable}
