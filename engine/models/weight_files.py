"""Which weight files a model may be loaded from: a hub id only from this machine's cache, and
safetensors only unless the person allowed pickles (which can run code when loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.models.source import ModelSource

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
NO_WEIGHTS = "holds a config.json but no weight files (.safetensors or .bin)"


def has_weight_files(folder: Path) -> bool:
    return any(p for pattern in ("*.safetensors", *PICKLE_WEIGHTS) for p in folder.glob(pattern))


def folder_source(path: Path) -> ModelSource:
    """A model folder; one without weight files is an architecture, its costs shown (the Model page said
    "Ready" for a folder holding only config.json, and training failed on transformers' missing file)."""
    from adapter_studio.engine.models.source import ModelSource

    if has_weight_files(path):
        return ModelSource("folder", str(path.resolve()), None, path.name)
    return ModelSource("config", str(path.resolve()), None, path.name, f"{path.name} {NO_WEIGHTS}")


def in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError as e:  # a space, two dots…: say what the hub allows
        raise UserError(f"'{repo_id}' is not a folder, a .gguf file or a valid hub id: {e}",
                        where="model.source", fix="check the path or the id (owner/name)") from None


def not_in_hub_cache(repo_id: str) -> UserError:
    """What to say about a hub id that this machine's Hugging Face cache does not hold."""
    return UserError(
        f"'{repo_id}' is not in this machine's Hugging Face cache, and nothing is downloaded while training",
        where="model.source",
        fix=f"download it once (`hf download {repo_id}`, on a machine with internet) or give a model folder",
    )


def check_safetensors(source: ModelSource) -> None:
    """Refuse a model whose weights exist only as pickles, which can run code when loaded."""
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        names = ("model.safetensors", "model.safetensors.index.json")
        if any(isinstance(try_to_load_from_cache(source.path, n), str) for n in names):
            return
        folder = None
    else:
        folder = Path(source.path)
        if any(folder.glob("*.safetensors")):
            return
        if not any(p for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)):
            return  # none at all: a folder made elsewhere (embedded, converted) whose files went; transformers says
    raise UserError(
        f"{folder or source.path} has its weights only as pickles (.bin/.pt), which can run code when loaded",
        where="model.source",
        fix="use a copy saved as safetensors, or tick 'allow pickle weights' (model.allow_pickle_weights: true) "
        "for a model you trust",
    )
