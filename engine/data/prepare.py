"""From rows to training tensors: render each example as the model will see it, mark the tokens
that carry loss (the answers), split off the held-out set, truncate or pack, and batch.

Preparation streams: rows are read, checked, rendered and tokenised a chunk at a time, and the
token ids go straight to flat arrays on disk. Those arrays are the cache (keyed by the files' paths,
sizes and modification times, the data settings and the tokenizer), so opening the same data again
is instant, and the arrays are memory-mapped, so a data set larger than memory can be prepared.
Truncation and packing are views over the arrays: changing `max_length` re-tokenises nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from adapter_studio.engine.data.files import RowChunk, data_files, iter_chunks, locate
from adapter_studio.engine.data.shapes import Example, detect_format, mapping_for_labels, resolve_columns, to_examples
from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.spec import DataSpec

IGNORE = -100
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
CHAT_FORMATS = ("alpaca", "messages", "sharegpt")
EVAL_PROMPTS = 10_000  # the most answers evaluation generates (training.eval_samples' limit)
CACHE_VERSION = 1
HOLD_BYTES = 64 * 2**20  # data files up to this size are read once; larger ones stream twice
CACHE_BYTES = 8 * 2**30  # the data cache keeps its newest entries within this size
Progress = Callable[[str, float], None]


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss; for classification, [label id]
    row: int


@dataclass
class Rendered:
    """An example as text, with the character spans that carry loss."""

    text: str
    spans: list[tuple[int, int]]
    row: int


class TokenizedSet(Sequence[Tokenized]):
    """Tokenised examples held as flat arrays (memory-mapped from the cache); items are built on access.

    An item is one or more segments `ids[start:end]` (several when packed); its labels are the ids
    where `loss` is set, or `labels[i]` for classification, or the ids themselves for plain text.
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
    ) -> None:
        self.ids, self.loss, self.starts, self.ends = ids, loss, starts, ends
        self.rows, self.bounds, self.labels = rows, bounds, labels

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
        return Tokenized(ids.tolist(), labels, int(self.rows[index]))

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


@dataclass
class PreparedData:
    format: str
    columns: dict[str, str]
    train: Sequence[Tokenized]
    eval: Sequence[Tokenized]
    eval_prompts: list[tuple[str, str]] = field(default_factory=list)  # (prompt text, expected answer)
    id2label: dict[int, str] | None = None
    dropped: list[str] = field(default_factory=list)
    truncated: int = 0
    rows: int = 0  # usable examples (train and held out, before the max_length check)
    rows_read: int = 0  # rows in the files, dropped ones included
    full_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # train, before truncation
    from_cache: bool = False

    @property
    def train_tokens(self) -> int:
        if isinstance(self.train, TokenizedSet):
            return self.train.tokens
        return sum(len(t.input_ids) for t in self.train)


# --- rendering ------------------------------------------------------------------------------------

# A message content the chat template cannot mistake for real text; the spaces and newlines around
# it reveal a template that trims or rewrites contents (those are rendered one by one instead).
_MARK = " \n\ue000{}\ue001\n "
_MARK_RE = re.compile(" \n\ue000(\\d+)\ue001\n ")
_VERIFY_FIRST, _VERIFY_EVERY = 2, 997


_TYPE_TESTS = {"string", "defined", "undefined", "none", "mapping", "sequence", "iterable"}


def _content_used_verbatim(source: str) -> bool:
    """Whether a chat template only prints message contents as they are (joined with + or ~) or tests
    them for being empty or of a type, so that a content can be filled in after rendering. Filters,
    methods, comparisons, `set`, macros: the template looks inside the content, render each row."""
    from jinja2 import Environment, TemplateSyntaxError, nodes

    def is_content(node: nodes.Node) -> bool:
        return (
            isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "content"
        ) or (isinstance(node, nodes.Getattr) and node.attr == "content")

    def fine(node: nodes.Node, context: str) -> bool:
        if is_content(node):
            return context in ("output", "truth")
        if isinstance(node, nodes.Output):
            return all(fine(child, "output") for child in node.nodes)
        if isinstance(node, (nodes.If, nodes.CondExpr)):
            branches = [c for c in node.iter_child_nodes() if c is not node.test]
            inner = context if isinstance(node, nodes.CondExpr) else "other"
            return fine(node.test, "truth") and all(fine(c, inner) for c in branches)
        if context == "output" and isinstance(node, (nodes.Add, nodes.Concat)):
            inner = "output"
        elif context == "truth" and (
            isinstance(node, (nodes.And, nodes.Or, nodes.Not))
            or (isinstance(node, nodes.Test) and node.name in _TYPE_TESTS)
        ):
            inner = "truth"
        else:
            inner = "other"
        return all(fine(child, inner) for child in node.iter_child_nodes())

    try:
        tree = Environment(extensions=["jinja2.ext.loopcontrols"]).parse(source)
    except TemplateSyntaxError:
        return False
    return fine(tree, "other")


class TemplateMismatch(Exception):
    """The fast renderer disagreed with the chat template on a later example: start again without it."""


@dataclass
class _Skeleton:
    """A chat template rendered once for a sequence of roles, with a marker where each content goes."""

    literals: list[str]
    order: list[int]  # message index of each marker, in text order
    spans: list[tuple[tuple[int, int], tuple[int, int]]]  # loss spans as (literal index, offset) pairs
    consistent: bool

    def fill(self, contents: list[str]) -> tuple[str, list[tuple[int, int]]]:
        parts: list[str] = []
        starts: list[int] = []
        pos = 0
        for j, literal in enumerate(self.literals):
            starts.append(pos)
            parts.append(literal)
            pos += len(literal)
            if j < len(self.order):
                content = contents[self.order[j]]
                parts.append(content)
                pos += len(content)
        spans = [(starts[a] + oa, starts[b] + ob) for (a, oa), (b, ob) in self.spans]
        return "".join(parts), spans


class ChatRenderer:
    """Renders conversations with the tokenizer's chat template, or a plain template without one.

    The chat template is rendered once per sequence of roles with markers for the contents, and
    each example fills the markers in: the same text as rendering it, checked against the template
    on the first examples of each shape and every ~1000th, at a fraction of the cost.
    """

    def __init__(
        self, tokenizer: Any, system_prompt: str | None = None, template: str | None = None, fast: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.template = template
        self.use_chat_template = template is None and bool(getattr(tokenizer, "chat_template", None))
        source = getattr(tokenizer, "chat_template", None)
        self.fast = fast and self.use_chat_template and isinstance(source, str) and _content_used_verbatim(source)
        self._skeletons: dict[tuple[str, ...], _Skeleton | None] = {}
        self._seen: dict[tuple[str, ...], int] = {}
        if template is not None:
            _check_template(template)

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system_prompt and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def _chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # jinja raises its own errors from inside the model's template
            raise UserError(
                f"the model's chat template cannot render this conversation ({type(e).__name__}: {e})",
                where="chat template",
                fix="check the roles' order (system, user, assistant, ...) or set data.template to a plain template",
            ) from None

    def _plain_prompt(self, messages: list[dict[str, str]]) -> str:
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        out = f"{system}\n\n" if system else ""
        for m in messages:
            if m["role"] == "user":
                instruction, extra = (m["instruction"], m["input"]) if "instruction" in m else (m["content"], "")
                template = self.template or (PLAIN_PROMPT_INPUT if extra else PLAIN_PROMPT)
                out += template.format(instruction=instruction, input=extra)
            elif m["role"] == "assistant":
                out += m["content"] + (self.tokenizer.eos_token or "") + "\n\n"
        return out

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The text a model is given to answer the last user turn (for generation)."""
        messages = self._with_system(messages)
        return self._chat(messages, True) if self.use_chat_template else self._plain_prompt(messages)

    def render(self, example: Example) -> Rendered:
        messages = self._with_system(example.messages)
        if self.fast:
            quick = self._render_fast(messages)
            if quick is not None:
                return Rendered(quick[0], quick[1], example.row)
        text, spans = self._render_slow(messages)
        return Rendered(text, spans, example.row)

    def _render_slow(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        if self.use_chat_template:
            full = self._chat(messages, False)
            spans: list[tuple[int, int]] = []
            consistent = True
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                prefix = self._chat(messages[:i], True)
                upto = self._chat(messages[: i + 1], False)
                # Templates that rewrite earlier turns break the prefix property: use the plain one.
                consistent = consistent and full.startswith(prefix) and full.startswith(upto)
                spans.append((len(prefix), len(upto)))
            if consistent:
                return full, spans
        return self._render_plain(messages)

    def _render_plain(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        # The answer and its end-of-text token carry the loss.
        spans = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                before = self._plain_prompt(messages[:i])
                answer = m["content"] + (self.tokenizer.eos_token or "")
                spans.append((len(before), len(before) + len(answer)))
        text = self._plain_prompt(messages)
        # The separator after the last answer only pads: nothing follows it.
        return (text[:-2] if messages and messages[-1]["role"] == "assistant" else text), spans

    def _render_fast(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]] | None:
        contents = [m["content"] for m in messages]
        if any(not c.strip() or "\ue000" in c for c in contents):
            return None  # templates often treat empty contents specially
        roles = tuple(m["role"] for m in messages)
        if roles not in self._skeletons:
            self._skeletons[roles] = self._skeleton(roles)
        skeleton = self._skeletons[roles]
        if skeleton is None:
            return None
        result = skeleton.fill(contents) if skeleton.consistent else self._render_plain(messages)
        seen = self._seen[roles] = self._seen.get(roles, 0) + 1
        if seen <= _VERIFY_FIRST or seen % _VERIFY_EVERY == 0:
            expected = self._render_slow(messages)
            if expected != result:
                if seen > _VERIFY_FIRST:
                    raise TemplateMismatch
                self._skeletons[roles] = None
                return expected
        return result

    def _skeleton(self, roles: tuple[str, ...]) -> _Skeleton | None:
        marked = [{"role": r, "content": _MARK.format(i)} for i, r in enumerate(roles)]
        try:
            full = self._chat(marked, False)
        except UserError:
            return None
        parts = _MARK_RE.split(full)
        literals, order = parts[0::2], [int(i) for i in parts[1::2]]
        if sorted(order) != list(range(len(roles))) or any("\ue000" in p or "\ue001" in p for p in literals):
            return None
        starts, pos = [], 0
        for j, literal in enumerate(literals):
            starts.append(pos)
            pos += len(literal) + (len(_MARK.format(order[j])) if j < len(order) else 0)

        def where(position: int) -> tuple[int, int] | None:
            for j in range(len(literals) - 1, -1, -1):
                if starts[j] <= position:
                    offset = position - starts[j]
                    return (j, offset) if offset <= len(literals[j]) else None
            return None

        spans = []
        consistent = True
        for i, role in enumerate(roles):
            if role != "assistant":
                continue
            prefix, upto = self._chat(marked[:i], True), self._chat(marked[: i + 1], False)
            consistent = consistent and full.startswith(prefix) and full.startswith(upto)
            a, b = where(len(prefix)), where(len(upto))
            if a is None or b is None:
                if consistent:
                    return None
                continue
            spans.append((a, b))
        return _Skeleton(literals, order, spans, consistent)


def _check_template(template: str) -> None:
    if "{instruction}" not in template:
        raise UserError(
            "data.template has no {instruction} field",
            where="data.template",
            fix="write where the instruction goes, e.g. 'Question: {instruction}\\nAnswer: '",
        )
    try:
        template.format(instruction="", input="")
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(
            f"data.template cannot be filled in ({type(e).__name__}: {e})",
            where="data.template",
            fix="use only {instruction} and {input}; write a literal brace as {{ or }}",
        ) from None


def _render_pairs(examples: list[Example], tokenizer: Any) -> list[Rendered]:
    eos = tokenizer.eos_token or ""
    return [
        Rendered(e.prompt + e.completion + eos, [(len(e.prompt), len(e.prompt) + len(e.completion) + len(eos))], e.row)
        for e in examples
    ]


# --- tokenising -----------------------------------------------------------------------------------


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


def _encode_rendered(rendered: list[Rendered], tokenizer: Any, special: bool) -> _Encoded:
    """Tokenise in one batched call; a token carries loss when it starts inside a loss span."""
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
    texts = [e.text for e in examples]
    pairs = [e.text_pair or "" for e in examples] if any(e.text_pair is not None for e in examples) else None
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


# --- reading and checking -------------------------------------------------------------------------


@dataclass
class ExampleChunk:
    format: str
    mapping: dict[str, str]
    examples: list[Example]
    dropped: list[str]
    rows: RowChunk


def example_chunks(
    spec: DataSpec, path: str | list[str], fmt: str | None = None, progress: Callable[[float], None] | None = None
) -> Iterator[ExampleChunk]:
    """The examples of data.path (or another path with the same settings), a chunk at a time."""
    fmt = fmt or spec.format
    mapping: dict[str, str] = {}
    for chunk in iter_chunks(path, progress=progress):
        if chunk.first_of_file:
            columns = list(dict.fromkeys(k for row in chunk.rows[:100] for k in row))
            fmt = fmt or detect_format(columns, spec.columns, where=chunk.path)
            mapping = resolve_columns(fmt, columns, spec.columns, chunk.path)
        assert fmt is not None
        examples, dropped = to_examples(chunk.rows, fmt, mapping, chunk.path, chunk.numbers, chunk.unit)
        yield ExampleChunk(fmt, mapping, examples, dropped, chunk)


@dataclass
class Survey:
    """What a first pass over the data found: its shape, how many examples, what was dropped and why."""

    format: str
    columns: dict[str, str]
    count: int
    rows: int
    dropped: list[str]
    labels: list[tuple[Any, str]]  # classification: (label, where) of every example
    first_rows: list[dict[str, Any]]
    first_examples: list[Example]
    file_columns: list[str]
    held: list[tuple[str, str, list[Example]]] | None = None  # (file, unit, examples) of a small data set


def survey_data(
    spec: DataSpec,
    path: str | list[str],
    fmt: str | None = None,
    limit: int | None = None,
    keep: int = 0,
    progress: Callable[[float], None] | None = None,
) -> Survey:
    """Read and check every row (the same UserErrors as training), keeping counts and notes, and the
    examples themselves when the files are small (so tokenising need not read them again)."""
    survey = Survey(fmt or "", {}, 0, 0, [], [], [], [], [])
    for part in example_chunks(spec, path, fmt, progress):
        if not survey.format or not survey.columns:
            survey.format, survey.columns = part.format, part.mapping
            survey.file_columns = list(dict.fromkeys(k for row in part.rows.rows[:100] for k in row))
            survey.held = [] if part.rows.total_bytes <= HOLD_BYTES else None
        examples = part.examples if limit is None else part.examples[: limit - survey.count]
        if survey.held is not None:
            survey.held.append((part.rows.path, part.rows.unit, examples))
        survey.count += len(examples)
        survey.rows += len(part.rows.rows)
        survey.dropped += part.dropped
        if part.format == "classification":
            survey.labels += [(e.label, e.where) for e in examples]
        if len(survey.first_rows) < keep:
            survey.first_rows += part.rows.rows[: keep - len(survey.first_rows)]
            survey.first_examples += examples[: keep - len(survey.first_examples)]
        if limit is not None and survey.count >= limit:
            break
    return survey


def load_examples(spec: DataSpec, path: str | list[str]) -> tuple[str, dict[str, str], list[Example], list[str]]:
    """Every example of `path` in memory: (format, role → column, examples, notes on dropped rows)."""
    fmt, mapping, examples, dropped = spec.format or "", {}, [], []
    for part in example_chunks(spec, path):
        if not mapping:
            fmt, mapping = part.format, part.mapping
        examples += part.examples
        dropped += part.dropped
    return fmt, mapping, examples, dropped


def held_out_mask(count: int, share: float, seed: int) -> np.ndarray:
    """Which of `count` examples are held out: a seeded shuffle, at least one each side."""
    mask = np.zeros(count, bool)
    if share <= 0 or count < 2:
        return mask
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(count * share)), count - 1)
    mask[order[:n_eval]] = True
    return mask


def split_examples(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    held = held_out_mask(len(examples), share, seed).tolist()
    train = [e for e, h in zip(examples, held, strict=True) if not h]
    return train, [e for e, h in zip(examples, held, strict=True) if h]


# --- the token store: flat arrays on disk, the cache --------------------------------------------


class _StoreWriter:
    """Appends tokenised examples to `ids.bin`/`loss.bin` and keeps their per-example arrays."""

    def __init__(self, folder: Path, id_dtype: Any) -> None:
        folder.mkdir(parents=True)
        self.folder, self.id_dtype = folder, np.dtype(id_dtype)
        self.ids = (folder / "ids.bin").open("wb")
        self.loss = (folder / "loss.bin").open("wb")
        self.arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("lengths", "full", "first_loss", "rows", "files")}
        self.labels: list[int] = []

    def add(self, enc: _Encoded, rows: list[int], file_index: int, full: np.ndarray | None = None) -> None:
        if len(enc.ids) and int(enc.ids.max()) > np.iinfo(self.id_dtype).max:
            raise RuntimeError(f"token id {int(enc.ids.max())} does not fit {self.id_dtype}")
        self.ids.write(enc.ids.astype(self.id_dtype).tobytes())
        self.loss.write(enc.loss.astype(np.uint8).tobytes())
        self.arrays["lengths"].append(enc.lengths)
        self.arrays["full"].append(enc.lengths if full is None else full)
        self.arrays["first_loss"].append(enc.first_loss)
        self.arrays["rows"].append(np.asarray(rows, np.int64))
        self.arrays["files"].append(np.full(len(rows), file_index, np.int32))

    def close(self) -> None:
        self.ids.close()
        self.loss.close()
        for name, parts in self.arrays.items():
            np.save(self.folder / f"{name}.npy", np.concatenate(parts) if parts else np.zeros(0, np.int64))
        np.save(self.folder / "labels.npy", np.asarray(self.labels, np.int64))


@dataclass
class _Store:
    ids: np.ndarray
    loss: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    full: np.ndarray
    first_loss: np.ndarray
    rows: np.ndarray
    files: np.ndarray
    labels: np.ndarray

    @classmethod
    def load(cls, folder: Path, id_dtype: str, in_memory: bool) -> _Store:
        def flat(name: str, dtype: Any) -> np.ndarray:
            path = folder / name
            if path.stat().st_size == 0:
                return np.zeros(0, dtype)
            return np.fromfile(path, dtype) if in_memory else np.memmap(path, dtype, mode="r")

        small = {n: np.load(folder / f"{n}.npy") for n in ("lengths", "full", "first_loss", "rows", "files", "labels")}
        offsets = np.concatenate([[0], np.cumsum(small["lengths"])]).astype(np.int64)
        return cls(flat("ids.bin", np.dtype(id_dtype)), flat("loss.bin", np.uint8), offsets, **small)


def cache_root() -> Path | None:
    """Where prepared data is cached: ADAPTER_STUDIO_DATA_CACHE (a folder, or 0 for none), else
    $XDG_CACHE_HOME/adapter-studio/data (~/.cache/adapter-studio/data)."""
    from adapter_studio.engine.app_cache import app_cache_dir

    setting = os.environ.get("ADAPTER_STUDIO_DATA_CACHE", "")
    if setting.lower() in ("0", "off", "none", "false"):
        return None
    return Path(setting).expanduser() if setting else app_cache_dir() / "data"


def _file_stamp(path: Path) -> list[Any]:
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes its output."""
    backend = _backend(tokenizer)
    body = backend.to_str() if backend is not None else f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}"
    parts = [type(tokenizer).__name__, body, str(getattr(tokenizer, "chat_template", None)),
             str(tokenizer.eos_token), str(tokenizer.bos_token), str(len(tokenizer))]  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _cache_key(spec: DataSpec, tokenizer: Any, task: str | None, seed: int) -> str:
    material = {
        "version": CACHE_VERSION,
        "files": [_file_stamp(p) for p in data_files(spec.path)],
        "eval_files": [_file_stamp(p) for p in data_files(spec.eval_path)] if spec.eval_path else None,
        "data": spec.model_dump(mode="json", include={"format", "columns", "system_prompt", "template", "max_rows"}),
        "split": None if spec.eval_path else [spec.eval_split, seed],
        "task": task,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def _prune_cache(root: Path, keep: Path) -> None:
    """Drop the least recently used entries beyond CACHE_BYTES, and leftovers of interrupted writes.
    Other processes (the ranks of a multi-device run, the window's preview) write and rename entries
    meanwhile: one that vanishes while it is looked at is theirs, and is skipped."""
    entries = []
    for entry in root.iterdir():
        try:
            if ".tmp-" in entry.name:
                if time.time() - entry.stat().st_mtime > 86_400:
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            meta = entry / "meta.json"
            if meta.exists():
                size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                entries.append((meta.stat().st_mtime, size, entry))
        except FileNotFoundError:
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= CACHE_BYTES:
            break
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size


# --- preparing ------------------------------------------------------------------------------------


def _stage(progress: Progress | None, stage: str) -> Callable[[float], None] | None:
    return None if progress is None else (lambda fraction: progress(stage, fraction))


def _where(path: str | list[str]) -> str:
    return path if isinstance(path, str) else path[0]


def prepare_data(
    spec: DataSpec,
    tokenizer: Any,
    task: str | None,
    max_length: int,
    seed: int,
    *,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> PreparedData:
    """Read, check, split and tokenise the data a run trains and evaluates on.

    `task` None follows the data (classification for classification data). `progress(stage,
    fraction)` is called as the files are read ("reading") and tokenised ("tokenising"). Data seen
    before with the same files, settings and tokenizer comes from the cache without reading a row.
    """
    root = cache_root() if use_cache else None
    key = _cache_key(spec, tokenizer, task, seed)
    found = _cached(root, key, max_length) if root is not None else None
    scratch: tempfile.TemporaryDirectory[str] | None = None
    if found is not None:
        meta, folder = found
    else:
        if root is not None:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError:
                root = None
        if root is None:
            scratch = tempfile.TemporaryDirectory(prefix="adapter-studio-data-")
        meta, folder = _prepare_store(spec, tokenizer, task, max_length, seed, root or Path(scratch.name), key,
                                      progress)  # fmt: skip
        if scratch is None and root is not None:
            _prune_cache(root, folder)
    fmt = meta["format"]
    _check_task(fmt, task)
    # A scratch folder is deleted at once: on POSIX its mapped files live on until unmapped.
    in_memory = scratch is not None and os.name != "posix"
    try:
        train_store = _Store.load(folder / "train", meta["id_dtype"], in_memory)
        eval_store = _Store.load(folder / "eval", meta["id_dtype"], in_memory)
    except (OSError, ValueError):
        if found is None:
            raise
        shutil.rmtree(folder, ignore_errors=True)  # a damaged cache entry: prepare the data again
        return prepare_data(spec, tokenizer, task, max_length, seed, progress=progress, use_cache=use_cache)
    finally:
        if scratch is not None:
            scratch.cleanup()
    files = [tuple(f) for f in meta["files"]]
    id2label = {int(i): str(name) for i, name in meta["id2label"]} if meta["id2label"] is not None else None
    data = PreparedData(
        fmt, dict(meta["columns"]), [], [], [tuple(p) for p in meta["eval_prompts"]], id2label,
        list(meta["dropped"]), rows=meta["rows"], rows_read=meta["rows_read"], full_lengths=train_store.full,
        from_cache=found is not None,
    )  # fmt: skip
    data.train, data.truncated, too_long = _view(train_store, fmt, max_length, spec.packing, files)
    data.eval, _, _ = _view(eval_store, fmt, max_length, False, files)
    data.dropped += too_long
    if not len(data.train):
        raise _all_too_long(train_store, max_length, _where(spec.path))
    return data


def _cached(root: Path, key: str, max_length: int) -> tuple[dict[str, Any], Path] | None:
    # Classification entries also depend on max_length (the tokenizer truncates text pairs itself).
    for folder in (root / key, root / f"{key}-{max_length}"):
        meta = _read_meta(folder)
        if meta is not None:
            os.utime(folder / "meta.json")  # for the least-recently-used pruning
            return meta, folder
    return None


def _check_task(fmt: str, task: str | None) -> None:
    if task is not None and (fmt == "classification") != (task == "classification"):
        raise UserError(
            f"{fmt} data needs a {'classification' if fmt == 'classification' else 'text-generation'} model",
            where="data.format",
            fix="pick a matching model (an encoder such as MiniLM for classification) or another data file",
        )


def _prepare_store(
    spec: DataSpec,
    tokenizer: Any,
    task: str | None,
    max_length: int,
    seed: int,
    root: Path,
    key: str,
    progress: Progress | None,
) -> tuple[dict[str, Any], Path]:
    """Read and check everything (pass one), then tokenise it into a new cache entry (pass two)."""
    survey = survey_data(spec, spec.path, limit=spec.max_rows, progress=_stage(progress, "reading"))
    fmt = survey.format
    _check_task(fmt, task)
    check_some_left(survey, spec.path)
    eval_survey = survey_data(spec, spec.eval_path, fmt) if spec.eval_path else None
    held = np.zeros(survey.count, bool) if eval_survey else held_out_mask(survey.count, spec.eval_split, seed)
    id2label = None
    if fmt == "classification":
        train_labels = [label for (label, _), h in zip(survey.labels, held.tolist(), strict=True) if not h]
        id2label = mapping_for_labels(train_labels)
        held_labels = [x for x, h in zip(survey.labels, held.tolist(), strict=True) if h]
        _check_labels(held_labels + (eval_survey.labels if eval_survey else []), id2label)
    folder = root / (f"{key}-{max_length}" if fmt == "classification" else key)
    meta = _build_store(spec, tokenizer, fmt, (survey, eval_survey), held, id2label, max_length, folder, progress)
    return meta, folder


def check_some_left(survey: Survey, path: str | list[str]) -> None:
    if survey.count:
        return
    reasons = "; ".join(survey.dropped[:3]) + ("; …" if len(survey.dropped) > 3 else "")
    raise UserError(
        f"all {survey.rows} rows were dropped, so nothing is left to train on ({reasons})",
        where=_where(path),
        fix="fill in the empty fields, or map the right columns in data.columns",
    )


def _check_labels(labels: list[tuple[Any, str]], id2label: dict[int, str]) -> None:
    known = set(id2label.values())
    for label, where in labels:
        if str(label) not in known:
            raise UserError(
                f"label '{label}' is not one of the training labels ({', '.join(id2label.values())})",
                where=where,
                fix="fix the label, or add training rows that have it",
            )


def _all_too_long(store: _Store, max_length: int, where: str) -> UserError:
    needed = store.first_loss[store.first_loss >= 0]
    shortest = int(needed.min()) + 1 if len(needed) else None
    hint = f" (the shortest needs {shortest} tokens before its answer)" if shortest else ""
    return UserError(
        f"every row is longer than max_length {max_length} before its answer starts{hint}",
        where=where,
        fix=f"raise data.max_length{f' to at least {shortest}' if shortest else ''}, or shorten the prompts",
    )


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if meta.get("version") == CACHE_VERSION else None


def _build_store(
    spec: DataSpec,
    tokenizer: Any,
    fmt: str,
    surveys: tuple[Survey, Survey | None],
    held: np.ndarray,
    id2label: dict[int, str] | None,
    max_length: int,
    folder: Path,
    progress: Progress | None,
) -> dict[str, Any]:
    """Pass two: tokenise every example into train/ and eval/ under a temporary name, then rename."""
    # Unique per writer: the window's preview and a run may prepare the same data at once, and the
    # global `random` is reseeded by every run (two writers drew the same number and collided).
    temporary = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    id_dtype = "uint16" if len(tokenizer) <= 1 << 16 else "uint32"
    for fast in (True, False):
        try:
            meta = _tokenise_all(spec, tokenizer, fmt, surveys, held, id2label, max_length, temporary, id_dtype,
                                 fast, progress)  # fmt: skip
            break
        except TemplateMismatch:
            shutil.rmtree(temporary, ignore_errors=True)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    survey, eval_survey = surveys
    meta.update(
        columns=survey.columns,
        id2label=sorted(id2label.items()) if id2label is not None else None,
        dropped=survey.dropped + [f"eval {d}" for d in (eval_survey.dropped if eval_survey else [])],
        rows=survey.count,
        rows_read=survey.rows,
    )
    (temporary / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    try:
        temporary.rename(folder)
    except OSError:  # another process prepared the same data meanwhile
        shutil.rmtree(temporary, ignore_errors=True)
    return meta


def _tokenise_all(
    spec: DataSpec,
    tokenizer: Any,
    fmt: str,
    surveys: tuple[Survey, Survey | None],
    held: np.ndarray,
    id2label: dict[int, str] | None,
    max_length: int,
    folder: Path,
    id_dtype: str,
    fast: bool,
    progress: Progress | None,
) -> dict[str, Any]:
    renderer = ChatRenderer(tokenizer, spec.system_prompt, spec.template, fast=fast) if fmt in CHAT_FORMATS else None
    label2id = {v: k for k, v in (id2label or {}).items()}
    writers = {False: _StoreWriter(folder / "train", id_dtype), True: _StoreWriter(folder / "eval", id_dtype)}
    files: list[tuple[str, str]] = []
    eval_prompts: list[tuple[str, str]] = []
    survey, eval_survey = surveys
    sources = [(spec.path, survey, held, survey.count)]
    if spec.eval_path and eval_survey is not None:
        sources.append((spec.eval_path, eval_survey, None, eval_survey.count))
    for path, source, mask, limit in sources:
        index = 0
        report = _stage(progress, "tokenising") if mask is not None else None
        for file, unit, examples in _examples_again(spec, path, fmt, source, report):
            examples = examples[: limit - index]
            flags = [True] * len(examples) if mask is None else mask[index : index + len(examples)].tolist()
            index += len(examples)
            if (file, unit) not in files:
                files.append((file, unit))
            file_index = files.index((file, unit))
            for is_eval in (False, True):
                chosen = [e for e, f in zip(examples, flags, strict=False) if f == is_eval]
                if not chosen:
                    continue
                writer = writers[is_eval]
                rows = [e.row for e in chosen]
                wanted = EVAL_PROMPTS - len(eval_prompts) if is_eval else 0
                if fmt == "classification":
                    enc, full = _encode_classification(chosen, tokenizer, max_length)
                    writer.add(enc, rows, file_index, full)
                    writer.labels += [label2id[str(e.label)] for e in chosen]
                elif fmt == "text":
                    writer.add(_encode_documents([e.text for e in chosen], tokenizer), rows, file_index)
                else:
                    if fmt == "prompt_completion":
                        rendered, special = _render_pairs(chosen, tokenizer), True
                        eval_prompts += [(e.prompt, e.completion.strip()) for e in chosen[:wanted]]
                    else:
                        assert renderer is not None
                        rendered, special = [renderer.render(e) for e in chosen], not renderer.use_chat_template
                        eval_prompts += _chat_eval_prompts(chosen[:wanted], rendered)
                    writer.add(_encode_rendered(rendered, tokenizer, special), rows, file_index)
            if index >= limit:
                break
    for writer in writers.values():
        writer.close()
    return {"version": CACHE_VERSION, "id_dtype": id_dtype, "files": files, "eval_prompts": eval_prompts,
            "format": fmt}  # fmt: skip


def _examples_again(
    spec: DataSpec, path: str | list[str], fmt: str, survey: Survey, progress: Callable[[float], None] | None
) -> Iterator[tuple[str, str, list[Example]]]:
    """The surveyed examples: kept from the first pass when small, else read again."""
    if survey.held is not None:
        for i, part in enumerate(survey.held):
            if progress is not None:
                progress(i / len(survey.held))
            yield part
        return
    for part in example_chunks(spec, path, fmt, progress):
        yield part.rows.path, part.rows.unit, part.examples


def _chat_eval_prompts(examples: list[Example], rendered: list[Rendered]) -> list[tuple[str, str]]:
    """(prompt, expected answer) of held-out conversations ending in an answer, for exact match. The
    prompt is the rendered text up to the last answer: what training saw before it."""
    return [
        (r.text[: r.spans[-1][0]], e.messages[-1]["content"].strip())
        for e, r in zip(examples, rendered, strict=False)
        if e.messages and e.messages[-1]["role"] == "assistant" and r.spans
    ]


# --- truncating and packing: views over the store -------------------------------------------------


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
    if fmt == "classification":
        truncated = int((store.full > max_length).sum())
        return TokenizedSet(store.ids, None, starts, store.offsets[1:], store.rows, labels=store.labels), truncated, []
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
    items = TokenizedSet(store.ids, store.loss, kept_starts, kept_starts + lengths, rows, bounds)
    return items, truncated, dropped


def batch_tokens(lengths: np.ndarray, batch_size: int, seed: int = 0) -> int:
    """Tokens computed in one epoch when each batch is padded to its longest item (training's order)."""
    if not len(lengths):
        return 0
    values = lengths.tolist()
    return sum(len(b) * max(values[i] for i in b) for b in epoch_batches(values, batch_size, seed, 0))


# --- batching -------------------------------------------------------------------------------------


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
    """Pad a batch to its longest item, rounded up to `multiple` (few distinct shapes let kernels
    chosen for a shape be reused; see SpeedOptions.pad_multiple in engine.training.speed)."""
    import torch

    items = list(items)
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
    if classification:
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([t.labels[0] for t in items])}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
