"""Reading CSV and TSV files row by row, as they were written: the delimiter the header line uses (and a
space after it), a header line or none, pandas' unnamed index column, and the quoting of a TSV."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapter_studio.engine.data.by_values import headerless_names, looks_like_data
from adapter_studio.engine.data.file_text import bad_utf8, check_not_blank, compressed_done, open_data
from adapter_studio.engine.errors import UserError

csv.field_size_limit(2**31 - 1)  # long documents in one cell are normal for training data
INDEX_NAMES = ("", "Unnamed: 0")  # pandas' `to_csv` writes its index first under an empty name


def _header_line(path: Path) -> str:
    try:
        with open_data(path, text=True) as f:
            return next((line for line in f if line.strip()), "")
    except UnicodeDecodeError:
        return ""  # the reader says where


def _delimiter(header: str, default: str) -> str:
    """`default` where the header line holds one, else the commonest of ; tab | , in it (a spreadsheet in a
    locale whose decimal mark is the comma saves its CSV with ;)."""
    if default in header:
        return default
    found = max((";", "\t", "|", ","), key=header.count)
    return found if header.count(found) else default


def _unquoted_tsv(path: Path, delimiter: str) -> bool:
    """Whether a tab-separated file is read without quote processing: every line has as many tabs as the
    header, so no quoted field spans lines or holds a tab. TSVs are mostly published unquoted (GLUE's), and a
    sentence there may begin with a quote mark ("Wow" is all I can say …), which CSV quoting reads as a field
    running on to the next quote mark, lines later."""
    if delimiter != "\t":
        return False
    tabs = None
    try:
        with open_data(path, text=True) as f:
            for line in f:
                if line.strip():
                    tabs = line.count("\t") if tabs is None else tabs
                    if line.count("\t") != tabs:
                        return False
    except UnicodeDecodeError:
        return False  # the reader says where
    return True


def _as_written(cell: str) -> str:
    """A cell of an unquoted TSV: a whole cell in quotes with its own quotes doubled (how CSV writers quote a
    cell holding a quote mark) loses them; any other quote mark is text."""
    inside = cell[1:-1]
    if len(cell) >= 2 and cell[0] == cell[-1] == '"' and '"' not in inside.replace('""', ""):
        return inside.replace('""', '"')
    return cell


def csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any], int]]:
    """(line number, row, bytes read so far) for each non-blank record."""
    check_not_blank(path)
    header_line = _header_line(path)
    delimiter = _delimiter(header_line, delimiter)
    spaced = header_line.count(delimiter) > 0 and header_line.count(delimiter) == header_line.count(delimiter + " ")
    literal = _unquoted_tsv(path, delimiter)
    done = 0
    with open_data(path, text=True) as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True, skipinitialspace=spaced,
                            quoting=csv.QUOTE_NONE if literal else csv.QUOTE_MINIMAL)  # fmt: skip
        header: list[str] | None = None
        index = False  # the first column is pandas' row index
        while True:
            line = reader.line_num + 1  # where the next record starts
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                unclosed = "end of data" in str(e)
                what = (
                    f"a quoted field that starts on line {line} is never closed"
                    if unclosed
                    else f"broken CSV on line {line} ({e})"
                )
                raise UserError(
                    what, where=f"{path}:{line}", fix='close the quote, or write a quote inside a field as ""'
                ) from None
            except UnicodeDecodeError:
                raise bad_utf8(path) from None
            if literal:
                record = [_as_written(cell) for cell in record]
            if header is None:
                index = len(record) > 1 and record[0].strip() in INDEX_NAMES
                if not looks_like_data(record[index:]):
                    header = [name.strip() for name in record[index:]]  # "question, answer": no space in a name
                    twice = sorted({n for n in header if header.count(n) > 1})
                    if twice:
                        raise UserError(f"the header names {', '.join(map(repr, twice))} more than once",
                                        where=f"{path}:{line}", fix="give each column its own name")  # fmt: skip
                    continue
                index = False
                header = headerless_names(len(record))  # no header line: this line is the first row
            if not any(cell.strip() for cell in record):
                continue
            record = record[index:]
            if len(record) != len(header):
                raise UserError(
                    f"line {line} has {len(record) + index} fields but the header has {len(header) + index} "
                    f"({', '.join(header)})",
                    where=f"{path}:{line}",
                    fix="check the quotes and delimiters on that line (a field with a comma needs quotes)",
                )
            done += sum(len(c) for c in record) + len(record)
            yield line, dict(zip(header, record, strict=True)), compressed_done(f, done)
