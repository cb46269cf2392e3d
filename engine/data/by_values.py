"""What a file's values say where its column names do not: a CSV whose first line is a row rather than a
header (AG News, DBpedia and Yahoo Answers as first published: `"3","Wall St. Bears Claw Back …","Reuters -
…"`), and which of a file's columns holds a label to classify by and which the text.
"""

from __future__ import annotations

import re
from typing import Any

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
DATA_CELL_CHARS = 40  # a header cell this long is a row's text, not a column's name
LABEL_CHARS = 30  # a label is a short name or a number
MAX_LABELS = 20
MIN_ROWS = 8  # fewer rows say too little about a column's values
TEXT_CHARS = 20  # the mean length of a column of text to classify


def headerless_names(count: int) -> list[str]:
    return [f"column {i}" for i in range(1, count + 1)]


def looks_like_data(record: list[str]) -> bool:
    """Whether a CSV's first line is a row: a cell is a number or a sentence (long, with spaces: a long
    name without them, `the_full_description_of_the_article`, is a column's). A header of the numbers
    0…n-1 or 1…n is pandas' for unnamed columns, and stays a header."""
    cells = [c.strip() for c in record]
    numbers = [c for c in cells if _NUMBER.fullmatch(c)]
    if numbers and cells in ([str(i) for i in range(k, len(cells) + k)] for k in (0, 1)):
        return False
    return bool(numbers) or any(len(c) > DATA_CELL_CHARS and re.search(r"\s", c) for c in cells)


def _values(rows: list[dict[str, Any]], column: str) -> list[str]:
    return [str(v).strip() for row in rows if (v := row.get(column)) is not None and str(v).strip()]


def is_label_column(values: list[str]) -> bool:
    """A few short values, each on several rows. One class id alone counts too: DBpedia's files are sorted
    by class, so their first rows all carry class 1."""
    distinct = set(values)
    one_id = len(distinct) == 1 and all(re.fullmatch(r"\d{1,3}", v) for v in distinct)
    return (len(values) >= MIN_ROWS and (len(distinct) >= 2 or one_id)
            and len(distinct) <= min(MAX_LABELS, len(values) // 2)
            and all(len(v) <= LABEL_CHARS for v in distinct))  # fmt: skip


def is_text_column(values: list[str]) -> bool:
    """Prose: long on average, and rarely the same twice."""
    return (len(values) >= MIN_ROWS and sum(map(len, values)) / len(values) >= TEXT_CHARS
            and len(set(values)) >= 0.8 * len(values))  # fmt: skip


def classification_by_values(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, str] | None:
    """Role → column for rows to classify, read from the values: the first column of labels, the first
    column of text (and the next as its pair, as a news item's title and description); None when the
    values show no such pair of columns."""
    values = {c: _values(rows, c) for c in columns}
    label = next((c for c in columns if is_label_column(values[c])), None)
    texts = [c for c in columns if c != label and is_text_column(values[c])]
    if label is None or not texts:
        return None
    return {"text": texts[0], **({"text_pair": texts[1]} if len(texts) > 1 else {}), "label": label}
