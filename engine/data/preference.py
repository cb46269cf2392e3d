"""Preference pairs: rows with a chosen and a rejected answer to the same prompt, as training sees them.

Three shapes are read (format `preference`, detected when a file has `chosen` and `rejected` columns):
- `prompt` / `chosen` / `rejected` as text (the prompt is one user turn, the answers assistant turns);
- the same with message lists (a prompt conversation; answers as assistant turns, or one string each;
  answers that repeat the prompt's turns first, as UltraFeedback's, lose the repeat); any of these as an
  HH transcript (a prompt that ends "\\n\\nAssistant:") is read as its turns;
- whole dialogues, no prompt column: `chosen` / `rejected` as message lists, or as Anthropic HH
  transcripts ("\\n\\nHuman: … \\n\\nAssistant: …"), split where the two diverge: the shared turns are
  the prompt, the last assistant turn of each is its answer.
Each side is rendered with the chat template as prompt + answer, with the loss (here: the answer's
log-probability) on the final answer's tokens only; the two sides are stored one after the other
(chosen, rejected) in the token store, and `PairSet` gives them back as pairs. `collate_pairs` makes
a batch of 2·B rows, the B chosen answers first, then the B rejected ones (TRL's order), and the same
pairs laid out as one shared prompt and two answers each (`shared_prefix_rows`), which lets a
decoder read each prompt once for both answers (engine.objectives.logps).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from adapter_studio.engine.data.files import locate
from adapter_studio.engine.data.rendering import Rendered
from adapter_studio.engine.data.shapes import Example, _turns, written_turns
from adapter_studio.engine.data.tokenising import IGNORE, TokenizedSet
from adapter_studio.engine.errors import UserError

_TRANSCRIPT = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_SPEAKERS = {"Human": "user", "Assistant": "assistant"}


@dataclass
class PairRows:
    """One row's pair: the prompt turns and the two answers."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


def _kind(value: Any) -> str:
    return {list: "list", dict: "JSON object", bool: "true/false value"}.get(type(value), type(value).__name__)


def is_transcript(text: str) -> bool:
    return bool(re.search(r"(^|\n\n)Human:", text)) and bool(re.search(r"\n\nAssistant:", text))


def is_transcript_prompt(value: Any) -> bool:
    """A prompt written as an HH transcript ("\n\nHuman: … \n\nAssistant:", as TRL's and Dahoas' HH sets give
    it); its answers are the text after "Assistant:", a space first."""
    return isinstance(value, str) and is_transcript(value) and re.match(r"\s*Human:", value) is not None


def transcript_turns(text: str, column: str, where: str) -> list[dict[str, str]]:
    """An HH transcript as turns; the text before the first speaker must be empty."""
    parts = _TRANSCRIPT.split(text)
    if parts[0].strip():
        raise UserError(
            f"field '{column}' has text before its first 'Human:' turn",
            where=where,
            fix="start each dialogue with '\\n\\nHuman: '",
        )
    return [{"role": _SPEAKERS[s], "content": c.strip()} for s, c in zip(parts[1::2], parts[2::2], strict=True)]


def _as_turns(value: Any, column: str, where: str, default_role: str) -> list[dict[str, str]]:
    value = written_turns(value)  # a CSV cell holding a message list as text
    if isinstance(value, str):
        if default_role == "dialogue" and is_transcript(value):
            return transcript_turns(value, column, where)
        # HH as prompt/chosen/rejected: a prompt that is a transcript ending "\n\nAssistant:" (a text that
        # only quotes one, not starting with "Human:", stays one turn).
        if is_transcript_prompt(value):
            turns = transcript_turns(value, column, where)
            return turns[:-1] if turns[-1] == {"role": "assistant", "content": ""} else turns
        if default_role == "dialogue":
            raise UserError(f"field '{column}' is plain text, and there is no prompt column to answer", where=where,
                            fix="add a 'prompt' column, or give whole dialogues (message lists, or '\\n\\nHuman: … "
                            "\\n\\nAssistant: …' transcripts)")  # fmt: skip
        return [{"role": default_role, "content": value}]
    if value is None:
        raise UserError(f"field '{column}' is missing or empty", where=where, fix=f"give every row a '{column}'")
    if isinstance(value, list):
        return _turns(value, column, where)
    if isinstance(value, dict) and ({"role", "content"} <= value.keys() or {"from", "value"} <= value.keys()):
        return _turns([value], column, where)  # one message, not in a list
    raise UserError(
        f"field '{column}' is a {_kind(value)}, expected text or a list of messages",
        where=where,
        fix=f"make '{column}' a string or a list of {{role, content}} messages in every row",
    )


def starts_with(turns: list[dict[str, str]], prefix: list[dict[str, str]]) -> bool:
    """Whether `turns` go on from all of `prefix` (compared by role and text, outer spaces aside)."""
    def key(t: dict[str, str]) -> tuple[str, str]:
        return t["role"], t["content"].strip()

    return len(turns) > len(prefix) and [key(t) for t in turns[: len(prefix)]] == [key(t) for t in prefix]


# SHP (stanfordnlp/SHP, SHP-2) writes `labels` 1 when human_ref_A is preferred and 0 when human_ref_B is, as its
# dataset card says. Under these names only: elsewhere a number names no lettered column (either way is a guess).
_SHP = ("human_ref_a", "human_ref_b", "labels")
_TIES = {"", "tie", "tie (bothbad)", "both", "neither", "none", "equal", "same", "draw"}


def _suffix(name: str) -> str | None:
    """What tells one of a pair of columns or values from the other: its last number (response_0,
    response1) or a last letter of its own (human_ref_A, model_a, B)."""
    number = re.search(r"(\d+)$", name)
    if number:
        return str(int(number.group(1)))
    letter = re.search(r"(?:^|[^a-z0-9])([a-z])$", name.lower())
    return letter.group(1) if letter else None


def _shown(column: str) -> str:
    """How a value names this answer column: its number, or its last letter as the column writes it."""
    suffix = _suffix(column)
    return column if suffix is None else suffix if suffix[0].isdigit() else column[-1]


def _named(text: str, a: str, b: str) -> str | None:
    """What a preferred column's value (as lower-case text) says: an answer column's name, or a number or
    letter (None for none)."""
    if re.fullmatch(r"-?\d+(\.0*)?", text):  # 1, 1.0, -1: the number itself
        return str(int(float(text)))
    return text if text in (a.lower(), b.lower()) else _suffix(text)


def preferred_columns(row: dict[str, Any], columns: dict[str, str], where: str) -> tuple[str, str] | str:
    """(chosen, rejected) columns of a row that gives two answers and which is better: the preferred
    column's value names one answer column, in full or by its last number or letter. A tie is a note (the
    row is dropped); a value that names neither answer raises UserError."""
    a, b, column = columns["answer_a"], columns["answer_b"], columns["preferred"]
    value = row.get(column)
    text = "" if value is None else str(value).strip()
    if not isinstance(value, bool) and text.lower() in _TIES:
        return f"{where}: '{column}' is {text or 'empty'}: no answer is preferred"
    said = None if isinstance(value, bool) else _named(text.lower(), a, b)  # true/false names no answer
    if (a.lower(), b.lower(), column.lower()) == _SHP and said in ("0", "1"):
        said = "a" if said == "1" else "b"
    for mine, other in ((a, b), (b, a)):
        if said is not None and said in (mine.lower(), _suffix(mine)):
            return mine, other
    raise UserError(
        f"field '{column}' is {text!r}, which names neither answer ('{a}' or '{b}')",
        where=where,
        fix=f"write {_shown(a)} or {_shown(b)} (or the preferred answer's column name) in '{column}', "
        "or map another column to preferred",
    )


def pair_from_row(row: dict[str, Any], columns: dict[str, str], where: str) -> PairRows | str:
    """The row's pair, or a note saying why it carries nothing to learn (the row is dropped);
    a field of the wrong kind raises UserError naming the file, line and field."""
    if "chosen" in columns and "rejected" in columns:
        c_col, r_col = columns["chosen"], columns["rejected"]
    else:
        picked = preferred_columns(row, columns, where)
        if isinstance(picked, str):
            return picked
        c_col, r_col = picked
    empty = next((c for c in (c_col, r_col) if row.get(c) in (None, "", [])), None)  # null (pandas' NaN), left out
    if empty is not None:
        return f"{where}: empty answer in '{empty}' (nothing to compare)"
    has_prompt = "prompt" in columns and row.get(columns["prompt"]) not in (None, "", [])
    if has_prompt:
        prompt = _as_turns(row.get(columns["prompt"]), columns["prompt"], where, "user")
        chosen = _as_turns(row.get(c_col), c_col, where, "assistant")
        rejected = _as_turns(row.get(r_col), r_col, where, "assistant")
        if starts_with(chosen, prompt) and starts_with(rejected, prompt):  # answers that repeat the prompt
            chosen, rejected = chosen[len(prompt) :], rejected[len(prompt) :]  # (UltraFeedback's whole dialogues)
    else:
        plain = written_turns(row.get(c_col))  # a message list written as text is a dialogue
        if "prompt" in columns and isinstance(plain, str) and not is_transcript(plain):
            return f"{where}: empty '{columns['prompt']}' (no question to answer)"
        chosen = _as_turns(row.get(c_col), c_col, where, "dialogue")
        rejected = _as_turns(row.get(r_col), r_col, where, "dialogue")
        prompt = []
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    prompt = prompt + chosen[:shared]
    chosen_rest, rejected_rest = chosen[shared:], rejected[shared:]
    for rest, column in ((chosen_rest, c_col), (rejected_rest, r_col)):
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            if len(rest) != 1:
                return (f"{where}: '{c_col}' and '{r_col}' differ before their last answer (a pair shares "
                        "everything but one final assistant turn)")
            return f"{where}: '{column}' does not end with an assistant answer"
        if not rest[0]["content"].strip():
            return f"{where}: empty answer in '{column}' (nothing to compare)"
    if not any(t["role"] == "user" for t in prompt):
        return f"{where}: no prompt (no user turn before the answers)"
    if chosen_rest[0]["content"] == rejected_rest[0]["content"]:
        return f"{where}: '{c_col}' and '{r_col}' are the same answer (nothing to prefer)"
    system = row.get(columns["system"]) if "system" in columns else None
    if isinstance(system, str) and system.strip() and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    answers = chosen_rest[0]["content"], rejected_rest[0]["content"]
    if has_prompt and is_transcript_prompt(row.get(columns["prompt"])):  # " hello" after "Assistant:"
        answers = answers[0].strip(), answers[1].strip()
    return PairRows(prompt, *answers)


def pair_examples(
    rows: list[dict[str, Any]],
    fmt: str,
    columns: dict[str, str],
    where: str,
    numbers: list[int] | None = None,
    unit: str = "row",
) -> tuple[list[Example], list[str]]:
    """Rows → Examples (`messages` the prompt, `chosen` and `rejected` the answers), plus a note per
    dropped row; the same call as shapes.to_examples."""
    out: list[Example] = []
    dropped: list[str] = []
    for number, row in zip(numbers or range(1, len(rows) + 1), rows, strict=True):
        pair = pair_from_row(row, columns, locate(where, unit, number))
        if isinstance(pair, str):
            dropped.append(pair)
            continue
        out.append(Example(row=number, messages=pair.prompt, chosen=pair.chosen, rejected=pair.rejected,
                           path=where, unit=unit))  # fmt: skip
    return out, dropped


def render_pairs(examples: Iterable[Example], renderer: Any) -> list[Rendered]:
    """Each example as two rendered texts, chosen then rejected; the loss span is the final answer's."""
    out = []
    for e in examples:
        for answer in (e.chosen, e.rejected):
            messages = [*e.messages, {"role": "assistant", "content": answer}]
            r = renderer.render(Example(row=e.row, messages=messages))
            out.append(Rendered(r.text, r.spans[-1:], r.row))
    return out


@dataclass
class PairItem:
    """A pair as one item: the chosen ids then the rejected ids (`split` is where the rejected start)."""

    input_ids: list[int]
    labels: list[int]
    row: int
    split: int

    @property
    def sides(self) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
        s = self.split
        return (self.input_ids[:s], self.labels[:s]), (self.input_ids[s:], self.labels[s:])


class PairSet(Sequence[PairItem]):
    """Pairs over a set of tokenised sides stored chosen, rejected, chosen, rejected, …"""

    def __init__(self, sides: Any) -> None:
        self.sides = sides

    def __len__(self) -> int:
        return len(self.sides) // 2

    @overload
    def __getitem__(self, index: int) -> PairItem: ...
    @overload
    def __getitem__(self, index: slice) -> list[PairItem]: ...
    def __getitem__(self, index: int | slice) -> PairItem | list[PairItem]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        chosen, rejected = self.sides[2 * index], self.sides[2 * index + 1]
        return PairItem(chosen.input_ids + rejected.input_ids, chosen.labels + rejected.labels, chosen.row,
                        len(chosen.input_ids))  # fmt: skip

    @property
    def lengths(self) -> np.ndarray:
        both = self.sides.lengths
        return both[0::2] + both[1::2]

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


def pair_view(store: Any, max_length: int, files: list[tuple[Any, ...]]) -> tuple[PairSet, int, list[str]]:
    """The stored sides, truncated to max_length, as pairs; a pair goes when either side has no answer
    token left (its answer starts past max_length)."""
    first = store.first_loss.reshape(-1, 2)
    ok = (first >= 0) & (first < max_length)
    keep_pair = ok.all(axis=1)
    keep = np.repeat(keep_pair, 2)
    rows, file_ids = store.rows[0::2], store.files[0::2]
    dropped = [
        f"{locate(str(files[f][0]), str(files[f][1]), int(r))}: longer than max_length {max_length} before an answer"
        for f, r in zip(file_ids[~keep_pair].tolist(), rows[~keep_pair].tolist(), strict=True)
    ]
    starts = store.offsets[:-1][keep]
    lengths = np.minimum(store.lengths[keep], max_length)
    truncated = int((store.lengths[keep] > max_length).sum())
    sides = TokenizedSet(store.ids, store.loss, starts, starts + lengths, store.rows[keep])
    return PairSet(sides), truncated, dropped


def model_rows(train: Any) -> Any:
    """The rows a model reads in a step, for their lengths and labelled share: a pair set's sides (chosen
    and rejected apart), a KTO set's answers, any other set itself."""
    for name in ("sides", "items"):  # PairSet.sides, KtoSet.items
        inner = getattr(train, name, None)
        if inner is not None:
            return inner
    return train


def collate_pairs(items: Sequence[PairItem], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    """2·B padded rows: the chosen sides, then the rejected sides; labels are -100 outside the answers.
    With them, where every pair has a shared prompt, its `shared_prefix_rows` layout (`prefix_*`, `suffix_*`)."""
    rows = pad_rows([p.sides[0] for p in items] + [p.sides[1] for p in items], pad_id, multiple)
    return {**rows, **shared_prefix_rows(items, pad_id, multiple)}


def shared_length(chosen: tuple[list[int], list[int]], rejected: tuple[list[int], list[int]]) -> int:
    """How many leading tokens the two sides share before either has a labelled one."""
    (c_ids, c_labels), (r_ids, r_labels) = chosen, rejected
    limit = min(len(c_ids), len(r_ids))
    for labels in (c_labels, r_labels):
        limit = min(limit, next((i for i, x in enumerate(labels) if x != IGNORE), len(labels)))
    k = 0
    while k < limit and c_ids[k] == r_ids[k]:
        k += 1
    return k


def shared_prefix_rows(items: Sequence[PairItem], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    """The pairs as B prompts and 2·B answers: `prefix_ids`/`prefix_mask` (B rows, padded on the left so
    every prompt ends at the last column), `suffix_ids`/`suffix_mask`/`suffix_labels` (2·B rows, chosen
    and rejected of each pair next to each other, padded on the right). Each suffix's first token is
    predicted by its prompt's last position. Empty when a pair shares no token (nothing to share)."""
    import torch

    shared = [shared_length(*p.sides) for p in items]
    if not items or min(shared) < 1:
        return {}
    width = -(-max(shared) // multiple) * multiple
    answers = -(-max(len(ids) - k for p, k in zip(items, shared, strict=True) for ids, _ in p.sides) // multiple)
    whole = -(-max(len(ids) for p in items for ids, _ in p.sides) // multiple)
    if len(items) * width + 2 * len(items) * answers * multiple >= 0.9 * 2 * len(items) * whole * multiple:
        return {}  # padded to the longest prompt and the longest answer, the split would not save work
    prefix_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(items), width), dtype=torch.long)
    suffixes = []
    for i, (pair, k) in enumerate(zip(items, shared, strict=True)):
        ids = pair.sides[0][0]
        prefix_ids[i, width - k :] = torch.tensor(ids[:k])
        prefix_mask[i, width - k :] = 1
        suffixes += [(side_ids[k:], side_labels[k:]) for side_ids, side_labels in pair.sides]
    suffix = pad_rows(suffixes, pad_id, multiple)
    return {"prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "suffix_ids": suffix["input_ids"],
            "suffix_mask": suffix["attention_mask"], "suffix_labels": suffix["labels"]}  # fmt: skip


def pad_rows(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    """(ids, labels) rows padded to the longest, rounded up to `multiple`; labels IGNORE in the padding."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        n = len(row_ids)
        ids[i, :n] = torch.tensor(row_ids)
        mask[i, :n] = 1
        labels[i, : len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def as_conversation(e: Example) -> Example | None:
    """A preference pair (or a KTO answer marked desirable) as a conversation that ends in the answer to
    match: a preference run is judged and tried, like any other, by how it answers held-out prompts. None
    for a KTO answer marked undesirable; rows of other shapes as they are."""
    if not e.chosen.strip():
        return e
    if e.label is False:
        return None
    return Example(row=e.row, messages=[*e.messages, {"role": "assistant", "content": e.chosen}], path=e.path,
                   unit=e.unit)  # fmt: skip
