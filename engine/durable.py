"""Files that survive a power cut: written beside their place, flushed to disk, then renamed into it.

A rename is atomic but not durable by itself: without an fsync of the data first, a crash can leave the
new name pointing at empty files; without an fsync of the parent folder after, the rename itself can be
lost. Checkpoints, the best checkpoint, exports, saved specs and sweep tables are written through here,
so after any crash a path holds either its old content or its complete new content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush one file's (or folder's) content and metadata to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except (IsADirectoryError, PermissionError):  # folders cannot be opened on some systems (Windows)
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on folders (EINVAL): best effort
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder`, and `folder` itself."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` at `final` (replacing what is there), durably."""
    fsync_tree(tmp)
    if final.exists():
        # Move the old one aside first: between the two renames `final` is missing, never half-written.
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fsync_path(final.parent)


def _umask() -> int | None:
    """This process's umask, read without setting it (os.umask sets it, for every thread, meanwhile); None
    where it cannot be read so (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return None


def plain_modes(folder: Path) -> None:
    """Every file under `folder` with the mode a plain open() gives (0666 less the umask): safetensors and
    mkstemp write 0600, which the other users of a shared folder cannot read. Left as written where the umask
    is unknown (a guess could open files a person's umask 077 keeps private)."""
    mask = _umask()
    if mask is None:
        return
    mode = 0o666 & ~mask
    for path in folder.rglob("*") if folder.is_dir() else [folder]:
        if path.is_file():
            os.chmod(path, mode)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically and durably (a temporary file beside it, flushed, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        plain_modes(Path(name))  # mkstemp's 0600, as open() would have made it
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    fsync_path(path.parent)


DISK_ERRORS = {errno.ENOSPC: "the disk is full", getattr(errno, "EDQUOT", 122): "the disk quota is used up",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}


def os_error_code(error: BaseException) -> int | None:
    """The errno behind a failed write: an OSError's own, or the `(os error N)` that safetensors' Rust
    writer puts in its SafetensorError (a full disk there is not an OSError)."""
    if isinstance(error, shutil.Error):  # copytree's: (source, target, "[Errno 28] No space …") for each file
        found = re.search(r"\[Errno (\d+)\]", str(error))
        return int(found.group(1)) if found else None
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"\(os error (\d+)\)", str(error))
    return int(found.group(1)) if found and type(error).__name__ == "SafetensorError" else None
