"""The folder that holds a run's base weights unquantised, for a start computed from them under a 4-bit
base (LoRA's LoftQ reads W there, one tensor at a time)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.models.source import ModelSource


def unquantised_folder(source: ModelSource) -> Path:
    """A model folder is its own; a hub id's is its snapshot in the local cache; a GGUF file's weights are
    themselves quantised, and its original here is the app's float32 conversion of it (gguf_cache: what
    a run without quantisation loads, and what a 4-bit base from that file is quantised from)."""
    if source.kind == "folder":
        return Path(source.path)
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(source.path, "config.json")
        if isinstance(config, str):
            return Path(config).parent
    if source.kind == "gguf":
        from adapter_studio.engine.models.gguf_cache import converted_folder

        folder = converted_folder(source)  # a 4-bit base from a GGUF file is quantised from this copy
        if folder is not None:
            return folder
    raise UserError(f"LoftQ reads the original weights from files; {source.display_name} has none here",
                    where="model.source", fix="pick a model folder, or init default")  # fmt: skip
