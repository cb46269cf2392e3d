"""Reading data files into rows, chunk by chunk, with errors that name the file, line and what to do.

JSONL, CSV/TSV, Parquet and saved `datasets` folders are streamed, so a file larger than memory
can be read; JSON and TXT files are read whole (their structure needs the whole text).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapter_studio.engine.data.class_names import named_classes, parquet_class_names
from adapter_studio.engine.data.csv_rows import csv_rows
from adapter_studio.engine.data.file_text import (
    GZIP,
    bad_utf8,
    check_not_blank,
    compressed_done,
    gzip_checked,
    open_data,
    read_text,
)
from adapter_studio.engine.errors import UserError

SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
CHUNK_ROWS = 2048


@dataclass
class RowChunk:
    """Consecutive rows of one file and where each starts (a line number in text files, else a row)."""

    path: str
    rows: list[dict[str, Any]]
    numbers: list[int]
    unit: str  # "line" or "row"
    first_of_file: bool
    done_bytes: int  # of all files together, for progress
    total_bytes: int


def locate(path: str, unit: str, number: int) -> str:
    """`data.jsonl:7` for a line, `data.parquet, row 7` for a row."""
    return f"{path}:{number}" if unit == "line" else f"{path}, row {number}"


def _no_rows(path: Path) -> UserError:
    return UserError("the file has no data rows", where=str(path), fix="add rows (below the header, for CSV)")


def file_format(path: Path) -> str:
    """The format a data file is read as: its suffix, or the one before `.gz` for a compressed file."""
    suffix = path.suffix.lower()
    return Path(path.stem).suffix.lower() if suffix == GZIP else suffix


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    """(line number, row, bytes read so far) for each non-blank line."""
    done = 0
    with open_data(path) as f:
        for number, raw in enumerate(f, start=1):
            done += len(raw)
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise bad_utf8(path) from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"line {number} is not valid JSON ({e.msg} at column {e.colno})",
                    where=f"{path}:{number}",
                    fix="fix or remove that line; each line must be one JSON object",
                ) from None
            if not isinstance(row, dict):
                raise UserError(
                    f"line {number} is a JSON {_json_kind(row)}, not an object",
                    where=f"{path}:{number}",
                    fix='each line must be an object such as {"instruction": ..., "output": ...}',
                )
            yield number, row, compressed_done(f, done)


def _json_rows(path: Path) -> list[dict[str, Any]] | None:
    """The rows of a JSON file, or None when it is really JSON Lines."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and _json_line(text):
            return None  # JSON Lines under a .json name
        raise UserError(
            f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
            where=f"{path}:{e.lineno}",
            fix="remove what follows the JSON value there, or write one object per line (JSON Lines)"
            if e.msg == "Extra data" else "fix the JSON syntax there",
        ) from None
    if isinstance(data, dict):
        data = _rows_of_object(data, path)
    if not isinstance(data, list):
        raise UserError("expected a list of objects", where=str(path), fix='use [{"instruction": ..., "output": ...}]')
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise UserError(
                f"item {number} is a JSON {_json_kind(row)}, not an object",
                where=f"{path}, row {number}",
                fix='every item must be an object such as {"instruction": ..., "output": ...}',
            )
    return data


def _json_kind(value: Any) -> str:
    """A JSON value's kind as JSON names it (null, array, string, …), not Python's type."""
    kinds = {type(None): "null", list: "array", str: "string", bool: "true/false", int: "number", float: "number"}
    return kinds.get(type(value), type(value).__name__)


def _json_line(text: str) -> bool:
    """Whether the first non-blank line of a text is a JSON object by itself (the text is JSON Lines)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _columns_with_objects(values: list[list[Any]]) -> bool:
    """Whether lists of one length, some of objects, are a table's columns rather than rows beside other
    lists ({"data": [rows], "splits": ["train"]}): their objects are messages, or two or more columns are not
    objects (PKU-SafeRLHF's to_dict: text columns beside its harm categories)."""
    objects = [v for v in values if v and all(isinstance(r, dict) for r in v)]
    messages = all({"role", "content"} <= r.keys() or {"from", "value"} <= r.keys() for v in objects for r in v)
    return len(values) > len(objects) and (messages or len(values) - len(objects) >= 2)


def _rows_of_object(data: dict[str, Any], path: Path) -> list[Any]:
    """The rows of a JSON file whose top level is an object, in the layouts people save tables in:
    {"train": [rows]} or {"data": [rows], "version": ...} (the first list of objects); pandas' `to_json`
    by columns (its default: {"text": {"0": ..., "1": ...}, ...}), by index ({"0": {"text": ...}, ...}) and
    split ({"columns": [...], "data": [[...], ...]}); and columns as lists ({"text": [...], "label": [...]},
    as `datasets`' `to_dict` writes them). Anything else is one row."""
    values = list(data.values())
    if not values:
        return []  # {}: no rows
    columns = all(isinstance(v, list) for v in values)  # as lists, if of one length
    same = columns and len({len(v) for v in values}) == 1
    if columns and same and _columns_with_objects(values):
        return [dict(zip(data, row, strict=True)) for row in zip(*values, strict=True)]
    records = next((v for v in values if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)), None)
    if records is not None:
        return records
    if isinstance(data.get("columns"), list) and isinstance(data.get("data"), list):  # pandas' split
        columns = data["columns"]
        return [dict(zip(columns, r, strict=True)) if isinstance(r, list) and len(r) == len(columns) else r
                for r in data["data"]]  # fmt: skip
    if values and all(isinstance(v, dict) and v.keys() == values[0].keys() for v in values):
        # Row ids are pandas' numbers where one side has them; where both or neither do (numbered columns,
        # named rows), the rows are the more numerous side.
        outer_ids, inner_ids = (all(k.isdigit() for k in keys) for keys in (data, values[0]))
        if (outer_ids and not inner_ids) or (outer_ids == inner_ids and len(data) > len(values[0])):
            return values  # by index: the rows outside
        return [{column: data[column][i] for column in data} for i in values[0]]  # by columns: inside
    if columns and not same:
        raise UserError(
            f"the columns have different lengths ({', '.join(f'{c} {len(v)}' for c, v in data.items())})",
            where=str(path),
            fix="give every column one value per row",
        )
    if columns:
        return [dict(zip(data, row, strict=True)) for row in zip(*values, strict=True)]
    return [data]


def _txt_rows(path: Path) -> list[dict[str, Any]]:
    # Blank lines separate documents; a file without them is one document per line.
    text = read_text(path).replace("\r\n", "\n")
    parts = [p.strip() for p in text.split("\n\n")] if "\n\n" in text else text.splitlines()
    return [{"text": p} for p in parts if p.strip()]


def _parquet_batches(path: Path, size: int) -> Iterator[list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
        names = parquet_class_names(source)
        for batch in source.iter_batches(batch_size=size):
            yield named_classes(batch.to_pylist(), names)
    except (OSError, ValueError) as e:  # pyarrow's errors for a damaged or non-Parquet file
        raise UserError(f"cannot read the Parquet file ({e})", where=str(path), fix="re-export the file") from None


def _saved_dataset_batches(path: Path, size: int) -> Iterator[list[dict[str, Any]]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise UserError(f"cannot open the saved data set ({e})", where=str(path), fix="save it again") from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    names = {c: f.names for c, f in loaded.features.items() if isinstance(f, datasets.ClassLabel)}
    for batch in loaded.iter(batch_size=size):
        keys = list(batch)
        rows = [dict(zip(keys, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        yield named_classes(rows, names)


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("dataset_info.json", "dataset_dict.json", "state.json"))


def local_path(text: str) -> Path:
    """A data path as a shell reads it ($HOME/data.jsonl, ~/data.jsonl), unless a file or folder has that very
    name: `runs/a$b/d.jsonl` picked in a file dialog read as `runs/a/d.jsonl`, not found."""
    literal = Path(text).expanduser()
    return literal if literal.exists() else Path(os.path.expandvars(text)).expanduser()


def path_list(text: str, base: Path | None = None) -> str | list[str]:
    """data.path as typed in one line: files separated by commas (`a.jsonl, b.jsonl`), a name with a comma in it
    kept whole where such a file exists (`a,b.jsonl`), here or beside `base` (a spec file's folder)."""

    def exists(part: str) -> bool:
        return local_path(part).exists() or (base is not None and (base / part).exists())

    whole = text.strip()
    if "," not in whole or exists(whole):
        return whole
    parts, pending = [], ""
    for piece in whole.split(","):
        pending = f"{pending},{piece}" if pending else piece
        if exists(pending.strip()):
            parts.append(pending.strip())
            pending = ""
    parts += [p.strip() for p in pending.split(",") if p.strip()]  # not found: each named in the error
    return parts[0] if len(parts) == 1 else parts


def data_files(paths: str | list[str], field: str = "data.path") -> list[Path]:
    """The files (and saved data set folders) that data.path (or `field`) names, in reading order."""
    out: list[Path] = []
    texts = [paths] if isinstance(paths, str) else paths
    if not any(str(t).strip() for t in texts):
        raise UserError(f"{field} is empty", where=field, fix="give a data file, a folder of them or a list of files")
    if not all(str(t).strip() for t in texts):  # "" is the current folder: every file in it, read unasked
        raise UserError(f"{field} lists an empty path", where=field, fix="remove the empty entry")
    for text in texts:
        path = local_path(text)
        if not path.exists():
            raise UserError(f"data file not found: {path}", where=field, fix="check the path")
        if path.is_dir() and not is_saved_dataset(path):
            files = _folder_files(path)
            if not files:
                notes = sorted(p.name for p in path.iterdir() if _is_notes(p))  # "use .txt" beside a README.txt
                said = f" ({', '.join(notes)}: the folder's notes, not data)" if notes else ""
                raise UserError(f"no data files in {path}{said}", where=field, fix=f"use one of {', '.join(SUFFIXES)}")
            out += files
            continue
        if path.is_file() and (file_format(path) not in SUFFIXES or _gzipped_parquet(path)):
            raise UserError(
                f"unsupported file type '{''.join(path.suffixes[-2:]) or path.name}'",
                where=str(path),
                fix=f"use {', '.join(SUFFIXES)}, or a text format gzipped (.jsonl.gz, .csv.gz)",
            )
        out.append(path)
    return out


def _folder_files(folder: Path) -> list[Path]:
    """A folder's data files in name order, without its notes: a README.txt beside train.jsonl was read first, as
    rows of plain text, and the JSONL then failed for want of a 'text' column. README and LICENSE files are not
    data, nor are .txt files beside files of rows."""
    files = sorted(p for p in folder.iterdir() if file_format(p) in SUFFIXES and not _gzipped_parquet(p)
                   and not _is_notes(p))  # fmt: skip
    rows = [p for p in files if file_format(p) != ".txt"]
    return rows or files


def _is_notes(path: Path) -> bool:
    return path.name.lower().startswith(("readme", "license", "licence"))


def _gzipped_parquet(path: Path) -> bool:
    return path.suffix.lower() == GZIP and file_format(path) == ".parquet"  # parquet compresses itself


@gzip_checked
def _file_rows(path: Path, size: int) -> Iterator[tuple[list[int], list[dict[str, Any]], str, int]]:
    """(numbers, rows, unit, bytes done in this file) per chunk of one file."""
    suffix = file_format(path)
    if is_saved_dataset(path) or suffix == ".parquet":
        batches = _saved_dataset_batches(path, size) if path.is_dir() else _parquet_batches(path, size)
        total = path.stat().st_size
        first = 1
        for rows in batches:
            yield list(range(first, first + len(rows))), rows, "row", total
            first += len(rows)
        return
    if suffix in (".json", ".txt"):
        rows = _txt_rows(path) if suffix == ".txt" else _json_rows(path)
        if rows is not None:
            total = path.stat().st_size
            for i in range(0, len(rows), size):
                part = rows[i : i + size]
                yield list(range(i + 1, i + 1 + len(part))), part, "row", total * (i + len(part)) // len(rows)
            return
    if suffix in (".csv", ".tsv"):
        stream = csv_rows(path, "," if suffix == ".csv" else "\t")
    else:
        check_not_blank(path)
        stream = _jsonl_rows(path)
    numbers: list[int] = []
    rows = []
    done = 0
    for number, row, done in stream:
        numbers.append(number)
        rows.append(row)
        if len(rows) == size:
            yield numbers, rows, "line", done
            numbers, rows = [], []
    if rows:
        yield numbers, rows, "line", done


def iter_chunks(
    paths: str | list[str],
    size: int = CHUNK_ROWS,
    progress: Callable[[float], None] | None = None,
    field: str = "data.path",
) -> Iterator[RowChunk]:
    """The rows of every file data.path (or `field`) names, `size` at a time; every file must have rows."""
    files = data_files(paths, field)
    sizes = [_bytes(f) for f in files]
    total = sum(sizes) or 1
    before = 0
    for path, file_bytes in zip(files, sizes, strict=True):
        first = True
        for numbers, rows, unit, done in _file_rows(path, size):
            if progress is not None:
                progress(min(1.0, (before + done) / total))
            yield RowChunk(str(path), rows, numbers, unit, first, before + done, total)
            first = False
        if first:
            raise _no_rows(path)
        before += file_bytes


def _bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def read_rows(path_text: str) -> list[dict[str, Any]]:
    """All rows of one data file or `datasets.save_to_disk` folder."""
    return [row for chunk in iter_chunks(path_text) for row in chunk.rows]


def read_all(paths: str | list[str]) -> list[dict[str, Any]]:
    """All rows of every file data.path names, in order."""
    return [row for chunk in iter_chunks(paths) for row in chunk.rows]
