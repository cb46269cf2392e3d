"""Reading data files into rows, with errors that name the file, line and what to do."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from engine.errors import UserError

SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError("the file is empty", where=str(path), fix="pick a file with data rows")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"not UTF-8 text (byte {e.start} on line {line})",
            where=f"{path}:{line}",
            fix="save the file as UTF-8 (most editors offer this under 'Save as' / 'Encoding')",
        ) from None


def _read_jsonl(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
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
                f"line {number} is a JSON {type(row).__name__}, not an object",
                where=f"{path}:{number}",
                fix='each line must be an object such as {"instruction": ..., "output": ...}',
            )
        rows.append(row)
    return rows


def _read_json(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a .json file that is really JSON Lines
            return _read_jsonl(path, text)
        raise UserError(
            f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
            where=f"{path}:{e.lineno}",
            fix="fix the JSON syntax there",
        ) from None
    if isinstance(data, dict):
        # {"train": [...]} or {"data": [...]}: take the first list of objects.
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if lists else [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(
            "expected a list of objects", where=str(path), fix='use [{"instruction": ..., "output": ...}, ...]'
        )
    return data


def _read_csv(path: Path, text: str, delimiter: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        rows = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise UserError(
                    f"row has {len(record)} fields but the header has {len(header)}",
                    where=f"{path}:{reader.line_num}",
                    fix="check quotes and delimiters on that line",
                )
            rows.append(dict(zip(header, record, strict=True)))
    except csv.Error as e:
        raise UserError(
            f"broken CSV ({e})", where=f"{path}:{reader.line_num}", fix="close the quote or escape it as \"\""
        ) from None
    return rows


def _read_txt(path: Path, text: str) -> list[dict[str, Any]]:
    # Blank lines separate documents; a file without them is one document per line.
    parts = [p.strip() for p in text.split("\n\n")] if "\n\n" in text else text.splitlines()
    return [{"text": p} for p in parts if p.strip()]


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise UserError(f"cannot read Parquet file ({e})", where=str(path), fix="re-export the file") from None


def _read_saved_dataset(path: Path) -> list[dict[str, Any]]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    return loaded.to_list()


def read_rows(path_text: str) -> list[dict[str, Any]]:
    """All rows of one data file or `datasets.save_to_disk` folder."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise UserError(f"data file not found: {path}", where="data.path", fix="check the path")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _read_saved_dataset(path)
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise UserError(f"no data files in {path}", where="data.path", fix=f"use one of {', '.join(SUFFIXES)}")
        return [row for f in files for row in read_rows(str(f))]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix not in SUFFIXES:
        raise UserError(f"unsupported file type '{suffix}'", where=str(path), fix=f"use {', '.join(SUFFIXES)}")
    text = _read_text(path)
    readers = {
        ".jsonl": lambda: _read_jsonl(path, text),
        ".json": lambda: _read_json(path, text),
        ".csv": lambda: _read_csv(path, text, ","),
        ".tsv": lambda: _read_csv(path, text, "\t"),
        ".txt": lambda: _read_txt(path, text),
    }
    rows = readers[suffix]()
    if not rows:
        raise UserError("the file has no data rows", where=str(path), fix="add rows below the header")
    return rows


def read_all(paths: str | list[str]) -> list[dict[str, Any]]:
    return [row for p in ([paths] if isinstance(paths, str) else paths) for row in read_rows(p)]
