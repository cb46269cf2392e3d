"""GGUF files converted once into a Hugging Face folder (config, safetensors weights, tokenizer) and
reused: reading a GGUF means parsing its whole header three times and dequantising every tensor in
Python (8–20 s for the 94 MB SmolLM2 file here, in long stretches that hold the interpreter lock and
freeze the window's plots), where the converted folder loads in about a second through mmap.

The folder lives under `$XDG_CACHE_HOME/adapter-studio/gguf-models/<key>` (key: the file's path, size
and modification time) and holds exactly what the GGUF load produced (float32 weights, the converted
tokenizer with its chat template), so a run from it is the same run. Files whose float32 weights would
exceed `MAX_CACHED_BYTES` are not kept (a dequantised 7B model is ~28 GB): they load from the GGUF
each time. The `KEEP` most recently used conversions are kept. A load in another dtype (a bf16 training
run) reads a file small enough to keep in float32 and casts (engine.models.loading), so it is kept too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapter_studio.engine.models.source import ModelSource

MAX_CACHED_BYTES = 3 * 2**30
KEEP = 4  # conversions kept; the least recently used beyond that are removed
DONE = ".complete"


def gguf_key(source: ModelSource) -> str:
    file = Path(source.path) / str(source.gguf_file)
    stat = file.stat()
    return hashlib.sha1(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _folder(source: ModelSource) -> Path:
    from adapter_studio.engine.app_cache import app_cache_dir

    return app_cache_dir() / "gguf-models" / gguf_key(source)


def converted_folder(source: ModelSource) -> Path | None:
    """The converted folder of this GGUF file, if one was written before."""
    folder = _folder(source)
    if not (folder / DONE).exists():
        return None
    with contextlib.suppress(OSError):
        (folder / DONE).touch()  # recently used: pruned last
    return folder


def converted_source(source: ModelSource) -> ModelSource:
    """A GGUF source already converted loads from its folder; any other source as it is."""
    folder = converted_folder(source) if source.kind == "gguf" else None
    return dataclasses.replace(source, kind="folder", path=str(folder), gguf_file=None) if folder else source


def converts_in_float32(source: ModelSource, task: str, quantization: str, dtype: Any) -> bool:
    """A GGUF file that `keep_conversion` would keep, asked for in another dtype (a bf16 training run)."""
    import torch

    if task != "causal_lm" or quantization != "none" or dtype in (None, torch.float32):
        return False
    # A GGUF file stores about 4 bits a weight or more (float32 is at most ~8× the file): a larger file is
    # not kept, so it is read in the dtype asked for, without a float32 copy in memory on the way.
    return (Path(source.path) / str(source.gguf_file)).stat().st_size * 8 <= MAX_CACHED_BYTES


def keep_conversion(source: ModelSource, model: Any, tokenizer: Any) -> Path | None:
    """Save a model just loaded from the GGUF (float32, unquantised) with its tokenizer for later loads.

    Best effort: a full or read-only disk, or a model too large to keep, just means the next load
    reads the GGUF again. Written to a temporary folder and renamed, so concurrent processes (several
    devices start at once) never see half a folder."""
    import torch

    params = sum(p.numel() for p in model.parameters())
    if params * 4 > MAX_CACHED_BYTES or any(p.dtype != torch.float32 for p in model.parameters()):
        return None
    final = _folder(source)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE).write_text(f"{Path(source.path) / str(source.gguf_file)}\n")
        if (final / DONE).exists():
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        else:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        _prune(final.parent)
        return final
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def _prune(root: Path) -> None:
    """Keep the KEEP most recently used conversions. Another process may remove one while this looks
    (it prunes too): that one is skipped, rather than failing the conversion just written."""
    done = []
    for marker in root.glob(f"*/{DONE}"):
        with contextlib.suppress(FileNotFoundError):
            done.append((marker.stat().st_mtime, marker))
    for _, marker in sorted(done, reverse=True)[KEEP:]:
        shutil.rmtree(marker.parent, ignore_errors=True)
