"""Results read from files, kept until the files change (their size or modification time): the Runs page read
every run's log on each refresh (151 runs: 0.9 s, the window held), and every log again to plot them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

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


class FileMemo(Generic[T]):
    """`get(key, paths, read)`: read()'s result, again while `paths` are unchanged and `keep(result)` holds."""

    def __init__(self, limit: int = 4096, keep: Callable[[T], bool] = lambda _r: True) -> None:
        self._entries: dict[object, tuple[tuple[tuple[int, int] | None, ...], T]] = {}
        self._limit, self._keep = limit, keep
        self._lock = threading.Lock()  # the window's thread and a search's or sweep's read at once

    def get(self, key: object, paths: Sequence[Path], read: Callable[[], T]) -> T:
        stamp = _stamp(paths)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        result = read()
        with self._lock:
            if self._keep(result):
                if len(self._entries) >= self._limit:
                    self._entries.pop(next(iter(self._entries)), None)  # the oldest
                self._entries[key] = (stamp, result)
            else:
                self._entries.pop(key, None)
        return result
