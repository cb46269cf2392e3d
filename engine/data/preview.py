"""What the Data page shows before training: rows, the detected shape, the exact training text of a
row with the tokens that carry loss marked, and the token lengths against max_length."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from adapter_studio.engine.data.batches import batch_tokens, pack_bounds
from adapter_studio.engine.data.examples import check_some_left, survey_data
from adapter_studio.engine.data.files import data_files
from adapter_studio.engine.data.preference import model_rows
from adapter_studio.engine.data.prepare import Progress, prepare_data
from adapter_studio.engine.data.rendering import CHAT_FORMATS, ChatRenderer, _render_pairs
from adapter_studio.engine.data.shapes import Example, mapping_for_labels
from adapter_studio.engine.data.text_pairs import pair_inputs
from adapter_studio.engine.data.tokenising import TokenizedSet, tokenize_rendered
from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.spec import DataSpec

DEFAULT_BATCH_SIZE = 4


@dataclass
class DataPreview:
    format: str
    columns: list[str]
    mapping: dict[str, str]
    rows: list[dict[str, Any]]
    examples: list[Example]
    total_rows: int
    dropped: list[str] = field(default_factory=list)
    usable: int = 0
    tasks: list[str] = field(default_factory=list)  # the task column's names, in training's order (sorted)
    labels: dict[str, int] = field(default_factory=dict)  # classification: rows per label, in the model's order
    written_labels: set[str] = field(default_factory=set)  # the labels as the rows write them (before names)


def preview_data(spec: DataSpec, max_rows: int = 200) -> DataPreview:
    """Read and check the data the way training will (errors are the same UserErrors).

    Every row is read and checked, a chunk at a time; the first `max_rows` are kept for the table.
    A separate evaluation file is checked too (its columns, and for classification its labels).
    """
    if spec.eval_path:  # said as its own field before the training file is read
        data_files(spec.eval_path, "data.eval_path")
    survey = survey_data(spec, spec.path, limit=spec.max_rows, keep=max_rows)
    check_some_left(survey, spec.path)
    if spec.eval_path:
        held = survey_data(spec, spec.eval_path, survey.format)
        if survey.format == "classification":
            known = set(mapping_for_labels(label for label, _ in survey.labels).values())
            for label, where in held.labels:
                if str(label) not in known:
                    raise UserError(
                        f"label '{label}' is not one of the training labels ({', '.join(sorted(known))})",
                        where=where,
                        fix="fix the label, or add training rows that have it",
                    )
    return DataPreview(
        survey.format,
        survey.file_columns,
        survey.columns,
        survey.first_rows,
        survey.first_examples,
        survey.rows,
        survey.dropped,
        survey.count,
        sorted(survey.tasks),
        label_counts([label for label, _ in survey.labels]),
        survey.written_labels,
    )


PIECE_CONTEXT = 8  # tokens before one that its text is read against (a character spans at most 4 bytes)
LABELS_NAMED = 6  # labels a summary names; the rest are counted
IMBALANCE = 5  # the commonest label with this many times the rarest's rows is worth a word


def label_counts(labels: list[Any]) -> dict[str, int]:
    """Rows per label, in the order the model numbers them (mapping_for_labels)."""
    counts = Counter(str(label) for label in labels)
    return {name: counts[name] for name in mapping_for_labels(labels).values()}


def describe_labels(counts: dict[str, int]) -> str:
    """The labels and their rows in a line, and a word where they are far from balanced."""
    if not counts:
        return ""
    named = " · ".join(f"{name}: {n:,}" for name, n in list(counts.items())[:LABELS_NAMED])
    more = f" · {len(counts) - LABELS_NAMED} more" if len(counts) > LABELS_NAMED else ""
    if len(counts) == 1:  # the rows stay on show, so that another label column can be picked in the boxes
        return f"1 label ({named}): a classifier needs two at least — map the label column, or add rows of others"
    text = f"{len(counts)} labels (rows each) — {named}{more}"
    common, rare = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
    if counts[common] >= IMBALANCE * max(counts[rare], 1):
        text += (f"; {common!r} has {counts[common] / max(counts[rare], 1):.0f}× the rows of {rare!r}: accuracy "
                 "leans toward the common labels, macro-F1 (Evaluate page) weighs every label alike")  # fmt: skip
    return text


SHOWN_CHARS_PER_TOKEN = 32  # more than any token spells: text past max_length × this is past max_length too


def shortened(example: Example, chars: int) -> tuple[Example, bool]:
    """The example with each text cut to `chars` characters, and whether any was: tokenising a row of
    megabytes to show its first max_length tokens held the window for seconds."""
    cut = False

    def short(text: str) -> str:
        nonlocal cut
        cut |= len(text) > chars
        return text[:chars] + " …" if len(text) > chars else text

    fields = {name: short(getattr(example, name)) for name in ("prompt", "completion", "text", "chosen", "rejected")}
    messages = [{k: short(v) if isinstance(v, str) and k != "role" else v for k, v in m.items()}
                for m in example.messages]  # content, and an alpaca turn's instruction and input
    pair = short(example.text_pair) if example.text_pair is not None else None
    return replace(example, **fields, messages=messages, text_pair=pair), cut


def render_tokens(spec: DataSpec, example: Example, fmt: str, tokenizer: Any) -> list[tuple[str, bool]]:
    """The example as the model sees it: (token text, carries loss) pairs in order."""
    max_length = spec.max_length or 512
    if fmt == "preference":  # both sides, chosen then rejected, each with its answer's tokens marked
        from adapter_studio.engine.data.preference import render_pairs

        renderer = ChatRenderer(tokenizer, spec.system_prompt, spec.template)
        sides = render_pairs([example], renderer)
        out: list[tuple[str, bool]] = []
        for mark, side in zip(("── chosen ──\n", "\n── rejected ──\n"), sides, strict=True):
            tokens, _, _ = tokenize_rendered([side], tokenizer, max_length, not renderer.use_chat_template)
            out.append((mark, False))
            if not tokens:  # the answer starts past max_length: the text as it is, nothing marked
                out.append((side.text, False))
                continue
            out += _marked(tokenizer, tokens[0].input_ids, tokens[0].labels)
        return out
    if fmt == "kto":
        from adapter_studio.engine.data.kto import render_completions

        renderer = ChatRenderer(tokenizer, spec.system_prompt, spec.template)
        mark = [("── desirable ──\n" if example.label else "── undesirable ──\n", False)]
        rendered, special = render_completions([example], renderer), not renderer.use_chat_template
        tokens, _, _ = tokenize_rendered(rendered, tokenizer, max_length, special)
        if not tokens:
            return [*mark, (rendered[0].text, False)]
        return mark + _marked(tokenizer, tokens[0].input_ids, tokens[0].labels)
    if fmt == "prompt_completion":
        rendered, special = _render_pairs([example], tokenizer), True
    elif fmt in CHAT_FORMATS:
        renderer = ChatRenderer(tokenizer, spec.system_prompt, spec.template)
        rendered, special = [renderer.render(example)], not renderer.use_chat_template
    else:
        if fmt == "text":
            ids = tokenizer(example.text, add_special_tokens=True)["input_ids"][:max_length]
        else:  # a text and its pair as training encodes them: [CLS] title [SEP] description [SEP]
            text, pair = pair_inputs(tokenizer, example.text, example.text_pair)
            ids = tokenizer(text, pair, truncation=True, max_length=max_length)["input_ids"]
        pieces = [(piece, fmt == "text") for piece in token_pieces(tokenizer, ids)]
        # A classifier learns no token of its row but the row's label: that is what is marked.
        return pieces if fmt == "text" else [*pieces, (f"\n→ label: {example.label}", True)]
    tokens, _, _ = tokenize_rendered(rendered, tokenizer, max_length, special)
    if not tokens:
        return [(rendered[0].text, False)]
    return _marked(tokenizer, tokens[0].input_ids, tokens[0].labels)


def _marked(tokenizer: Any, ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    return [(piece, label != -100) for piece, label in zip(token_pieces(tokenizer, ids), labels, strict=True)]


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's text as it reads in its row: what decoding the token adds to the few tokens before it.
    Decoded alone, a WordPiece token loses the space before it (BERT's rows read 'fearsforpension') and a
    byte-level one may hold part of a character (the character is then the piece of its last token, the
    others empty). Where the longer text does not extend the shorter (a tokenizer that tidies spaces), the
    token is decoded alone. A window of tokens, not the whole row, keeps a 4k-token row fast."""
    pieces: list[str] = []
    pending: int | None = None  # the first token of a character not yet complete
    for k in range(len(ids)):
        first = k if pending is None else pending
        start = max(0, first - PIECE_CONTEXT)
        before, now = tokenizer.decode(ids[start:first]), tokenizer.decode(ids[start : k + 1])
        if now.endswith("\ufffd") and k + 1 < len(ids):  # a character's first bytes: it shows with its last
            pieces.append("")
            pending = first
            continue
        pieces.append(now[len(before):] if now.startswith(before) else tokenizer.decode(ids[first : k + 1]))
        pending = None
    return pieces


def length_stats(
    spec: DataSpec,
    tokenizer: Any,
    batch_size: int | None = None,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Token lengths of the training rows against max_length, and what packing would save.

    Prepares the data exactly as training will (so the result is cached for the run: give the `task` and the
    format and columns the run will have, or the run tokenises it again under another key). Returns
    `lengths` (tokens per training row before truncation), `max_length`, `truncated` (rows longer
    than it), `rows` (rows read), `examples` (training rows), `train_examples` (those left after the
    max_length check), `eval_examples` (held-out rows), `dropped`
    (notes: where and why), `total_tokens` (tokens trained per epoch), `padded_tokens` and
    `packed_tokens` (tokens computed per epoch with batch padding to the longest row, and with
    packing), the padding shares of both, and `labelled_share` (the training tokens that carry a loss;
    None for plain text and classification).
    """
    from adapter_studio.engine.defaults import DEFAULT_MAX_LENGTH

    max_length = spec.max_length or DEFAULT_MAX_LENGTH
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    data = prepare_data(spec.model_copy(update={"packing": False}), tokenizer, task, max_length, seed,
                        progress=progress)  # fmt: skip
    lengths = np.asarray(data.full_lengths, np.int64)
    if data.format == "preference":  # stored as chosen, rejected, …: a pair is as long as its longer side, the
        lengths = np.maximum(lengths[0::2], lengths[1::2])  # row max_length limits (summed, pairs passed it)
    items = (
        data.train.lengths
        if isinstance(data.train, TokenizedSet)
        else np.asarray([len(t.input_ids) for t in data.train])
    )
    if data.format == "text":  # trained as max_length blocks; "padded" is one document per row
        padded_lengths, packed_lengths = np.minimum(lengths, max_length), items
    else:
        packing_applies = data.format not in ("classification", "preference", "kto")
        padded_lengths = items
        packed_lengths = _packed(items, max_length) if packing_applies else items
    padded = batch_tokens(padded_lengths, batch_size, seed)
    packed = batch_tokens(packed_lengths, batch_size, seed)
    # The rows a model reads (a pair's sides apart): their labelled share and the longest, for the memory
    # estimate (pair log-probabilities project the answers' positions only, as a supervised loss does).
    rows = model_rows(data.train)  # a TokenizedSet; its share is None for plain text and classification
    return {
        "format": data.format,
        "lengths": lengths.tolist(),
        "max_length": max_length,
        "truncated": data.truncated if data.format != "text" else int((lengths > max_length).sum()),
        "rows": data.rows_read,
        "split_rows": data.rows,  # the rows split into training and held out, before the max_length check
        "examples": len(lengths),
        "train_examples": len(data.train) if data.format != "text" else len(lengths),
        "eval_examples": len(data.eval),
        "dropped": list(data.dropped),
        "total_tokens": int(items.sum()),
        "padded_tokens": padded,
        "packed_tokens": packed,
        "padding_share_padded": 1 - int(padded_lengths.sum()) / padded if padded else 0.0,
        "padding_share_packed": 1 - int(packed_lengths.sum()) / packed if packed else 0.0,
        "packing_applies": data.format not in ("classification", "text", "preference", "kto"),
        # Tokens carrying a loss: the output head projects only those in a one-process run (fast_loss).
        "labelled_share": rows.labelled_share,
        "longest_row": int(rows.lengths.max()) if len(rows) else 0,
        "from_cache": data.from_cache,
    }


def _packed(lengths: np.ndarray, max_length: int) -> np.ndarray:
    bounds = pack_bounds(lengths, max_length)
    sums = np.concatenate([[0], np.cumsum(lengths)])
    return sums[bounds[1:]] - sums[bounds[:-1]] if len(bounds) > 1 else np.zeros(0, np.int64)
