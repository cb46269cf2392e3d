"""The folder that holds a run's base weights unquantised, for a start computed from them under a 4-bit
base (LoRA's LoftQ reads W there, one tensor at a time)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.models.loading import ModelSource
    from adapter_studio.engine.spec import ModelSpec


def unquantised_folder(spec: ModelSpec, source: ModelSource, task: str) -> Path:
    """A model folder is its own; a hub id's is its snapshot in the local cache; a GGUF file's weights are
    themselves quantised, and its original here is the app's float32 conversion of it (gguf_cache: what
    a run without quantisation loads), written now if it was not yet."""
    if source.kind == "folder":
        return Path(source.path)
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(source.path, "config.json")
        if isinstance(config, str):
            return Path(config).parent
    if source.kind == "gguf":
        import torch
        from adapter_studio.engine.models.gguf_cache import converted_folder
        from adapter_studio.engine.models.loading import load_model

        folder = converted_folder(source)
        if folder is None and task == "causal_lm":
            load_model(spec.model_copy(update={"quantization": "none"}), task, dtype=torch.float32)  # keeps one
            folder = converted_folder(source)
        if folder is not None:
            return folder
        raise UserError(
            "LoftQ needs the GGUF's weights as a float32 copy, which the app keeps only for generation models "
            "up to 3 GiB of float32 weights",
            where=f"model.source ({source.display_name})",
            fix="pick the model's Hugging Face folder (safetensors) instead, or init default",
        )
    raise UserError(f"LoftQ reads the original weights from files; {source.display_name} has none here",
                    where="model.source", fix="pick a model folder, or init default")  # fmt: skip
