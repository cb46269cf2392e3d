"""The examples of the data files, read and checked a chunk at a time (`example_chunks`), the first
pass over them that counts them and notes what was dropped and why (`survey_data`, which keeps the
examples of small files so they are read once), and the seeded held-out split.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from adapter_studio.engine.data.by_values import classification_by_values
from adapter_studio.engine.data.files import RowChunk, iter_chunks
from adapter_studio.engine.data.kto import kto_examples
from adapter_studio.engine.data.preference import pair_examples
from adapter_studio.engine.data.shapes import (
    ColumnsNotMapped,
    Example,
    detect_shape,
    mapping_for_labels,
    resolve_columns,
    to_examples,
)
from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.spec import DataSpec

SHOWN_ROWS = 50  # rows the Data page shows
HOLD_BYTES = 64 * 2**20  # data files up to this size are read once; larger ones stream twice
# The held-out split when data.eval_split is left empty (held_out_count).
DEFAULT_EVAL_SHARE = 0.1
SMALL_DATA_ROWS = 500
MIN_HELD_OUT = 8
# Every evaluation scores every held-out row: 10 % of 300,000 rows took 16 minutes after each checkpoint of a
# tiny model, 0.7 s of training. 2,000 rows judge a loss or an accuracy to about a percent.
MAX_AUTO_HELD_OUT = 2_000


@dataclass
class ExampleChunk:
    format: str
    mapping: dict[str, str]
    examples: list[Example]
    dropped: list[str]
    rows: RowChunk
    columns: list[str]  # the file's columns so far, those first seen in this chunk included
    written_labels: list[str] | None = None  # classification with data.label_names: each label as written


def example_chunks(
    spec: DataSpec, path: str | list[str], fmt: str | None = None, progress: Callable[[float], None] | None = None
) -> Iterator[ExampleChunk]:
    """The examples of data.path (or another path with the same settings), a chunk at a time."""
    fmt = fmt or spec.format
    mapping: dict[str, str] = {}
    columns: list[str] = []
    hints = spec.columns  # with the roles the first file's values showed, where its names did not
    field = "data.eval_path" if spec.eval_path and path == spec.eval_path and path != spec.path else "data.path"
    for chunk in iter_chunks(path, progress=progress, field=field):
        if chunk.first_of_file:
            columns = file_columns(chunk.rows)
            try:
                if fmt is None:
                    fmt, hints = detect_shape(columns, hints, chunk.path, chunk.rows[:100])
                mapping = _resolve(fmt, columns, hints, chunk)
            except ColumnsNotMapped as e:
                e.rows = chunk.rows[:SHOWN_ROWS]  # for the Data page to show while columns are mapped
                raise
        elif new := [c for c in file_columns(chunk.rows) if c not in columns]:
            columns += new  # JSON writers leave out empty keys: a column may first appear this far down
            mapping = _with_later_columns(fmt or "", columns, hints, mapping, chunk.path)
        assert fmt is not None
        read = {"preference": pair_examples, "kto": kto_examples}.get(fmt, to_examples)
        examples, dropped = read(chunk.rows, fmt, mapping, chunk.path, chunk.numbers, chunk.unit)
        written = None
        if spec.label_names and fmt == "classification":  # named here: every reader of the rows sees the names
            written = [str(e.label) for e in examples]  # what the names' keys are checked against
            for e in examples:
                e.label = spec.label_names.get(str(e.label), e.label)
        yield ExampleChunk(fmt, mapping, examples, dropped, chunk, list(columns), written)


def file_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of a chunk's rows, in the order they first appear (JSON rows need not all have each)."""
    return list(dict.fromkeys(k for row in rows for k in row))


def _with_later_columns(fmt: str, columns: list[str], hints: dict[str, str], mapping: dict[str, str],
                        where: str) -> dict[str, str]:  # fmt: skip
    """`mapping` and the roles that columns first seen in a later chunk play; the roles already mapped stay
    as they are (the rows before had no such column, so they read the same either way)."""
    try:
        found = resolve_columns(fmt, columns, hints, where)
    except UserError:
        return mapping
    taken = set(mapping.values())
    return {**{r: c for r, c in found.items() if c not in taken}, **mapping}


def data_format(spec: DataSpec) -> str:
    """data.format, or the shape of data.path's first chunk (no need to read a large file whole for it)."""
    return spec.format or next(iter(example_chunks(spec, spec.path))).format


def _resolve(fmt: str, columns: list[str], hints: dict[str, str], chunk: RowChunk) -> dict[str, str]:
    """Role → column; rows to classify whose names say nothing (an evaluation file without a header line, read
    in the format its training file was) are mapped by their values, where those show a label and a text."""
    try:
        return resolve_columns(fmt, columns, hints, chunk.path)
    except ColumnsNotMapped:
        found = classification_by_values(columns, chunk.rows[:100]) if fmt == "classification" else None
        if found is None:
            raise
        return resolve_columns(fmt, columns, {**found, **hints}, chunk.path)


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
    tasks: set[str] = field(default_factory=set)  # the task names of data.columns.task, if mapped
    written_labels: set[str] = field(default_factory=set)  # classification: the labels as the rows write them


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
            survey.file_columns = list(part.columns)
            survey.held = [] if part.rows.total_bytes <= HOLD_BYTES else None
        survey.columns = {**part.mapping, **survey.columns}  # with the roles of columns found further down
        survey.file_columns += [c for c in part.columns if c not in survey.file_columns]
        examples = part.examples if limit is None else part.examples[: limit - survey.count]
        if survey.held is not None:
            survey.held.append((part.rows.path, part.rows.unit, examples))
        survey.count += len(examples)
        survey.rows += len(part.rows.rows)
        survey.dropped += part.dropped
        survey.tasks.update(e.task for e in examples if e.task is not None)
        if part.format == "classification":
            survey.labels += [(e.label, e.where) for e in examples]
            survey.written_labels.update(part.written_labels[: len(examples)] if part.written_labels is not None
                                         else (str(e.label) for e in examples))  # fmt: skip
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
        fmt, mapping = part.format, {**part.mapping, **mapping}  # with the roles of columns found further down
        examples += part.examples
        dropped += part.dropped
    return fmt, mapping, examples, dropped


def held_out_count(count: int, share: float | None) -> int:
    """How many of `count` examples are held out. `share` None is the default rule: DEFAULT_EVAL_SHARE, at
    most MAX_AUTO_HELD_OUT rows, shrinking below SMALL_DATA_ROWS in proportion to the data (to MIN_HELD_OUT
    rows at least): every
    held-out row is one a small set does not learn from (MultiArith, 240 rows, six seeds: holding out
    24 rows left the answer loss 5 % above training on all of them, 12 rows 1 %)."""
    if share is not None and share <= 0:
        return 0
    full = round(count * (DEFAULT_EVAL_SHARE if share is None else share))
    if share is None:
        full = min(full, MAX_AUTO_HELD_OUT)
    if share is None and count < SMALL_DATA_ROWS:
        full = max(min(full, MIN_HELD_OUT), round(full * count / SMALL_DATA_ROWS))
    return max(0, min(max(1, full), count - 1))  # one row at least, and one left to train


def held_out_mask(count: int, share: float | None, seed: int, labels: list[Any] | None = None) -> np.ndarray:
    """Which of `count` examples are held out (`held_out_count` of them): a seeded shuffle. With `labels` (rows
    to classify) the split is stratified: each label's share of the held-out rows is its share of the data, a
    label of two rows or more has one held out where there are enough to go round (300 World and 20 Sports rows
    held out 16 World and no Sports, so accuracy said nothing of Sports), and every label keeps one for training
    (a class the model never sees is not one it can learn)."""
    mask = np.zeros(count, bool)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    wanted = held_out_count(count, share)
    if labels is None:
        mask[order[:wanted]] = True
        return mask
    by_label: dict[str, list[int]] = {}
    for i in order:  # each label's rows in the shuffled order
        by_label.setdefault(str(labels[i]), []).append(i)
    room = {k: len(rows) - 1 for k, rows in by_label.items()}  # one kept for training
    quota = dict.fromkeys(by_label, 0)
    if wanted >= sum(r > 0 for r in room.values()):  # one of each, then the rest by share
        quota = {k: int(r > 0) for k, r in room.items()}
    left = wanted - sum(quota.values())
    exact = {k: max(0.0, left * len(rows) / count) for k, rows in by_label.items()}
    for k in by_label:
        quota[k] = min(room[k], quota[k] + int(exact[k]))
    for k in sorted(by_label, key=lambda k: exact[k] - int(exact[k]), reverse=True):  # largest remainders
        if sum(quota.values()) >= wanted:
            break
        quota[k] += int(quota[k] < room[k])
    for k in sorted(by_label, key=lambda k: room[k] - quota[k], reverse=True):  # what caps left over
        while sum(quota.values()) < wanted and quota[k] < room[k]:
            quota[k] += 1
    for k, rows in by_label.items():
        mask[rows[: quota[k]]] = True
    return mask


def split_examples(
    examples: list[Example], share: float | None, seed: int, fmt: str
) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples, split as training splits them."""
    labels = [e.label for e in examples] if fmt == "classification" else None
    held = held_out_mask(len(examples), share, seed, labels).tolist()
    train = [e for e, h in zip(examples, held, strict=True) if not h]
    return train, [e for e, h in zip(examples, held, strict=True) if h]


def run_labels(data: DataSpec) -> dict[int, str] | None:
    """id → label of every row of a classification run's data (its classifier head's size), checked for two
    before the model loads with a head of one; None where there are no rows. `data.label_names`' keys are
    checked against the labels as the rows write them."""
    _, _, examples, _ = load_examples(data.model_copy(update={"label_names": {}}), data.path)
    if not examples:
        return None
    check_label_names(data.label_names, {str(e.label) for e in examples})
    id2label = mapping_for_labels(data.label_names.get(str(e.label), e.label) for e in examples)
    check_two_labels(id2label, data.path)
    return id2label


def check_label_names(names: dict[str, str], written: set[str]) -> None:
    """Each name's label is one the rows write (a typo would leave that label unnamed), and no name is a label
    left unnamed (the two would be one class)."""
    unnamed = [label for label in mapping_for_labels(written).values() if label not in names]
    unknown = [k for k in names if k not in written]
    if unknown:
        raise _no_row_has(unknown[0], unnamed)
    clash = next((v for v in names.values() if v in unnamed), None)
    if clash is not None:
        raise UserError(f"names a label '{clash}', as the rows already call another: the two would be one class",
                        where="data.label_names", fix="give it another name")  # fmt: skip


def _no_row_has(key: str, unnamed: list[str]) -> UserError:
    return UserError(f"names label '{key}', which no training row has", where="data.label_names",
                     fix=f"write it as the data does: {', '.join(unnamed)}" if unnamed else "remove it")  # fmt: skip


def check_two_labels(id2label: dict[int, str], path: str | list[str]) -> None:
    """A classifier learns nothing from one label: say so before a run that cannot learn starts."""
    if len(id2label) < 2:
        raise UserError(
            f"every training row has the label '{next(iter(id2label.values()), '')}': a classifier needs two "
            "labels at least",
            where=_where(path),
            fix="add rows of the other labels (a file sorted by label may need more of its rows: data.max_rows), "
            "or pick another format",
        )


def check_some_left(survey: Survey, path: str | list[str]) -> None:
    if survey.count:
        return
    reasons = "; ".join(survey.dropped[:3]) + ("; …" if len(survey.dropped) > 3 else "")
    raise UserError(
        f"{'the only row was' if survey.rows == 1 else f'all {survey.rows} rows were'} dropped, so nothing is left "
        f"to train on ({reasons})",
        where=_where(path),
        fix="put those rows right as their reasons say (the first are listed), or map other columns in data.columns",
    )


def _where(path: str | list[str]) -> str:
    return path if isinstance(path, str) else path[0]
