"""Opening a data file as bytes or text, gzipped or not, with errors that say what is wrong with the file
itself: not UTF-8 (on which line), not gzip data or cut short, or empty."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import IO, Any, TypeVar

from adapter_studio.engine.errors import UserError

GZIP = ".gz"  # any of the text formats gzip-compressed: data.jsonl.gz, reviews.csv.gz, ...
T = TypeVar("T")


def open_data(path: Path, text: bool = False) -> IO[Any]:
    """The file, decompressed on the fly when it is gzipped."""
    if path.suffix.lower() == GZIP:
        if text:
            return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
        return gzip.open(path, "rb")
    return path.open("r", encoding="utf-8-sig", newline="") if text else path.open("rb")


def bad_utf8(path: Path) -> UserError:
    """The first line that is not UTF-8, found by a second, byte-level read of the (decompressed) text."""
    with open_data(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return UserError(
                    f"not UTF-8 text (byte {e.start + 1} of line {number} is {raw[e.start : e.start + 1]!r})",
                    where=f"{path}:{number}",
                    fix="save the file as UTF-8 (most editors offer this under 'Save as' / 'Encoding')",
                )
    return UserError("not UTF-8 text", where=str(path), fix="save the file as UTF-8")


def empty(path: Path) -> UserError:
    return UserError("the file is empty", where=str(path), fix="pick a file with data rows, or add rows to it")


def compressed_done(f: Any, done: int) -> int:
    """Bytes of the file on disk read so far: progress is measured against the file's size on disk."""
    raw = getattr(getattr(f, "buffer", f), "fileobj", None)  # a GzipFile (or the text wrapper around one)
    return raw.tell() if raw is not None else done


def check_not_blank(path: Path) -> None:
    with open_data(path) as f:
        while block := f.read(1 << 16):
            if block.strip():
                return
    raise empty(path)


def read_text(path: Path) -> str:
    check_not_blank(path)
    try:
        with open_data(path) as f:
            return f.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_utf8(path) from None


def gzip_checked(read: Callable[[Path, int], Iterator[T]]) -> Callable[[Path, int], Iterator[T]]:
    """`read` with gzip's own errors (not gzip data, a bad checksum, cut short) as UserErrors naming the file."""

    @wraps(read)
    def checked(path: Path, size: int) -> Iterator[T]:
        try:
            yield from read(path, size)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            if path.suffix.lower() != GZIP:
                raise
            cut = isinstance(e, EOFError)
            raise UserError(
                "the compressed file ends early (an unfinished download or copy)" if cut
                else f"not readable as gzip-compressed data ({e})",
                where=str(path),
                fix="download or copy the file again" if cut
                else "download or copy it again; a file that is not compressed must not end in .gz",
            ) from None  # fmt: skip

    return checked
