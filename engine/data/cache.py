"""The token store and the data cache: tokenised examples written as flat arrays on disk
(`ids.bin`, `loss.bin` and per-example arrays) and read back memory-mapped, under a key made of the
files' paths, sizes and modification times, the data settings and the tokenizer, so that opening the
same data again reads no row; the newest entries are kept within CACHE_BYTES.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from adapter_studio.engine.data.files import data_files
from adapter_studio.engine.data.tokenising import _backend, _Encoded

if TYPE_CHECKING:
    from adapter_studio.engine.spec import DataSpec

# The key holds the spec's columns as given, not how the files were read into examples: a change to the reading
# (a column found by another name or by its values, a value written otherwise) must raise this number.
# 2: each example's task (tasks.npy); 3: the readings of 2026-12-06 (headerless CSVs, labels found by their
# values, a story or a description read with its question or headline, a whole-number answer 5.0 as 5); 4: those
# of 2026-12-07 (pair prompts without their repeats, columns first seen after row 100, TSVs read unquoted,
# pandas' index column left out, header names trimmed, a NaN answer empty, zero-padded class ids as written);
# 5: answers after an HH transcript prompt trimmed, pandas' JSON of numbered columns or named rows; 6: message
# lists written as text in a CSV; 7: to_dict columns beside a column of objects, a header naming a column twice;
# 8: a label whose rows all fell to the held-out split keeps one for training; 9: labels named `target` beside
# a text and more columns; 10: a text and its pair joined by a line break for tokenizers without a separator,
# held-out rows to classify stratified by label; 11: a word problem's story before its question; 12: `result`
# read as the answer (Calc-X's files were read as labels to classify by their `id`).
CACHE_VERSION = 12
CACHE_BYTES = 8 * 2**30  # the data cache keeps its newest entries within this size


class _StoreWriter:
    """Appends tokenised examples to `ids.bin`/`loss.bin` and keeps their per-example arrays."""

    def __init__(self, folder: Path, id_dtype: Any) -> None:
        folder.mkdir(parents=True)
        self.folder, self.id_dtype = folder, np.dtype(id_dtype)
        self.ids = (folder / "ids.bin").open("wb")
        self.loss = (folder / "loss.bin").open("wb")
        self.arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("lengths", "full", "first_loss", "rows", "files")}
        self.labels: list[int] = []
        self.tasks: list[int] = []  # index into the data's task names, -1 for none; empty without a task column

    def add(self, enc: _Encoded, rows: list[int], file_index: int, full: np.ndarray | None = None) -> None:
        if len(enc.ids) and int(enc.ids.max()) > np.iinfo(self.id_dtype).max:
            raise RuntimeError(f"token id {int(enc.ids.max())} does not fit {self.id_dtype}")
        self.ids.write(enc.ids.astype(self.id_dtype).tobytes())
        self.loss.write(enc.loss.astype(np.uint8).tobytes())
        self.arrays["lengths"].append(enc.lengths)
        self.arrays["full"].append(enc.lengths if full is None else full)
        self.arrays["first_loss"].append(enc.first_loss)
        self.arrays["rows"].append(np.asarray(rows, np.int64))
        self.arrays["files"].append(np.full(len(rows), file_index, np.int32))

    def close(self) -> None:
        self.ids.close()
        self.loss.close()
        for name, parts in self.arrays.items():
            np.save(self.folder / f"{name}.npy", np.concatenate(parts) if parts else np.zeros(0, np.int64))
        np.save(self.folder / "labels.npy", np.asarray(self.labels, np.int64))
        np.save(self.folder / "tasks.npy", np.asarray(self.tasks, np.int64))


@dataclass
class _Store:
    ids: np.ndarray
    loss: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    full: np.ndarray
    first_loss: np.ndarray
    rows: np.ndarray
    files: np.ndarray
    labels: np.ndarray
    tasks: np.ndarray

    @classmethod
    def load(cls, folder: Path, id_dtype: str, in_memory: bool) -> _Store:
        def flat(name: str, dtype: Any) -> np.ndarray:
            path = folder / name
            if path.stat().st_size == 0:
                return np.zeros(0, dtype)
            return np.fromfile(path, dtype) if in_memory else np.memmap(path, dtype, mode="r")

        names = ("lengths", "full", "first_loss", "rows", "files", "labels", "tasks")
        small = {n: np.load(folder / f"{n}.npy") for n in names}
        offsets = np.concatenate([[0], np.cumsum(small["lengths"])]).astype(np.int64)
        return cls(flat("ids.bin", np.dtype(id_dtype)), flat("loss.bin", np.uint8), offsets, **small)


def repeated_rows(train: _Store, held_out: _Store) -> int:
    """How many held-out rows are a training row token for token (with its label, for a classifier): a file that
    repeats its rows scores the model on answers it learnt by heart."""
    import hashlib

    def keys(store: _Store) -> list[bytes]:
        bounds = zip(store.offsets[:-1].tolist(), store.offsets[1:].tolist(), strict=True)
        labels = store.labels.tolist() if len(store.labels) == len(store.lengths) else [None] * len(store.lengths)
        return [hashlib.blake2b(store.ids[a:b].tobytes() + str(label).encode(), digest_size=8).digest()
                for (a, b), label in zip(bounds, labels, strict=True)]  # fmt: skip

    if not len(held_out.lengths):
        return 0
    seen = set(keys(train))
    return sum(key in seen for key in keys(held_out))


def cache_root() -> Path | None:
    """Where prepared data is cached: ADAPTER_STUDIO_DATA_CACHE (a folder, or 0 for none), else
    $XDG_CACHE_HOME/adapter-studio/data (~/.cache/adapter-studio/data)."""
    from adapter_studio.engine.app_cache import app_cache_dir

    setting = os.environ.get("ADAPTER_STUDIO_DATA_CACHE", "")
    if setting.lower() in ("0", "off", "none", "false"):
        return None
    return Path(setting).expanduser() if setting else app_cache_dir() / "data"


def _file_stamp(path: Path) -> list[Any]:
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def data_stamps(spec: DataSpec) -> dict[str, list[int]]:
    """Each data file's [size, modification time in ns] by path: what a checkpoint records of the data
    it was trained on, so that a resume can tell when a file changed since."""
    paths = data_files(spec.path) + (data_files(spec.eval_path, "data.eval_path") if spec.eval_path else [])
    return {name: [size, mtime] for stamp in map(_file_stamp, paths) for name, size, mtime in stamp}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes its output."""
    backend = _backend(tokenizer)
    body = backend.to_str() if backend is not None else f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}"
    parts = [type(tokenizer).__name__, body, str(getattr(tokenizer, "chat_template", None)),
             str(tokenizer.eos_token), str(tokenizer.bos_token), str(len(tokenizer))]  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _cache_key(spec: DataSpec, tokenizer: Any, task: str | None, seed: int) -> str:
    material = {
        "version": CACHE_VERSION,
        "files": [_file_stamp(p) for p in data_files(spec.path)],
        "eval_files": [_file_stamp(p) for p in data_files(spec.eval_path, "data.eval_path")] if spec.eval_path
        else None,
        "data": spec.model_dump(
            mode="json", include={"format", "columns", "system_prompt", "template", "max_rows", "label_names"}
        ),
        "split": None if spec.eval_path else [spec.eval_split, seed],
        "task": task,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def _prune_cache(root: Path, keep: Path) -> None:
    """Drop the least recently used entries beyond CACHE_BYTES, and leftovers of interrupted writes.
    Other processes (the ranks of a multi-device run, the window's preview) write and rename entries
    meanwhile: one that vanishes while it is looked at is theirs, and is skipped."""
    entries = []
    for entry in root.iterdir():
        try:
            if ".tmp-" in entry.name:
                if time.time() - entry.stat().st_mtime > 86_400:
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            meta = entry / "meta.json"
            if meta.exists():
                size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                entries.append((meta.stat().st_mtime, size, entry))
        except FileNotFoundError:
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= CACHE_BYTES:
            break
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size


def _cached(root: Path, key: str, max_length: int) -> tuple[dict[str, Any], Path] | None:
    # Classification entries also depend on max_length (the tokenizer truncates text pairs itself).
    for folder in (root / key, root / f"{key}-{max_length}"):
        meta = _read_meta(folder)
        if meta is not None:
            os.utime(folder / "meta.json")  # for the least-recently-used pruning
            return meta, folder
    return None


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if meta.get("version") == CACHE_VERSION else None
