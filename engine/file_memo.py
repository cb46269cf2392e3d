"""Results read from files, kept until the files change (their size or modification time): the Runs page read
every run's log on each refresh (151 runs: 0.9 s, the window held), and every log again to plot them. With a
`DiskLayer` they are also kept on disk for the next process: the window read every log as it opened (154
runs of 3,000 steps: 10 s before it showed)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int] | None, ...]:
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
            stamps.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


@dataclass(frozen=True)
class DiskLayer(Generic[T]):
    """Where a FileMemo keeps its results between processes: one JSON file per key in the app's cache folder
    `folder`, read back only while the files' stamps and `version` (raise it when the result's fields or their
    reading change) are those it was saved with. A cache that cannot be read or written is gone without."""

    folder: str
    version: int
    dump: Callable[[T], dict[str, Any]]
    load: Callable[[dict[str, Any]], T]

    def _file(self, key: object) -> Path | None:
        from adapter_studio.engine.app_cache import writable_cache_dir

        folder = writable_cache_dir(self.folder)
        return None if folder is None else folder / f"{hashlib.sha256(str(key).encode()).hexdigest()[:32]}.json"

    def get(self, key: object, stamp: object) -> T | None:
        file = self._file(key)
        try:
            saved = json.loads(file.read_text(encoding="utf-8")) if file is not None and file.exists() else None
            if saved and [saved["key"], saved["version"], saved["stamp"]] == [str(key), self.version, _plain(stamp)]:
                return self.load(saved["result"])
        except (OSError, ValueError, KeyError, TypeError):  # cut short, or another version's fields: read again
            pass
        return None

    def put(self, key: object, stamp: object, result: T) -> None:
        from adapter_studio.engine.durable import write_text

        file = self._file(key)
        if file is not None:
            with contextlib.suppress(OSError):
                record = {"key": str(key), "version": self.version, "stamp": stamp, "result": self.dump(result)}
                write_text(file, json.dumps(record))


def _plain(stamp: object) -> object:
    return json.loads(json.dumps(stamp))  # as JSON gives it back: lists for tuples


class FileMemo(Generic[T]):
    """`get(key, paths, read)`: read()'s result, again while `paths` are unchanged and `keep(result)` holds."""

    def __init__(self, limit: int = 4096, keep: Callable[[T], bool] = lambda _r: True,
                 disk: DiskLayer[T] | None = None) -> None:  # fmt: skip
        self._entries: dict[object, tuple[tuple[tuple[int, int] | None, ...], T]] = {}
        self._limit, self._keep, self._disk = limit, keep, disk
        self._lock = threading.Lock()  # the window's thread and a search's or sweep's read at once

    def get(self, key: object, paths: Sequence[Path], read: Callable[[], T]) -> T:
        stamp = _stamp(paths)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        result = self._disk.get(key, stamp) if self._disk is not None else None
        if result is None:
            result = read()
            if self._disk is not None and self._keep(result):
                self._disk.put(key, stamp, result)
        with self._lock:
            if self._keep(result):
                if len(self._entries) >= self._limit:
                    self._entries.pop(next(iter(self._entries)), None)  # the oldest
                self._entries[key] = (stamp, result)
            else:
                self._entries.pop(key, None)
        return result
