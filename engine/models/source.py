"""Where a base model comes from, as `model.source` was resolved (engine.models.loading.resolve_source)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapter_studio.resources import FOLDER

MODEL_CONFIGS = FOLDER / "model_configs"  # architectures without weights, for comparing costs


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. `kind`: folder, gguf, config (architecture only) or hub."""

    kind: str
    path: str
    gguf_file: str | None = None
    display_name: str = ""
    note: str = ""  # said where the model is shown: which copy of a hub id was used

    @property
    def has_weights(self) -> bool:
        return self.kind != "config"

    @property
    def location(self) -> Path:
        """The file a GGUF model is read from, else the folder (or hub id) itself."""
        return Path(self.path) / self.gguf_file if self.gguf_file else Path(self.path)


def shipped_config(name: str, display_name: str = "", note: str = "") -> ModelSource | None:
    """The architecture `name` under resources/model_configs as a source without weights; None if none ships."""
    folder = MODEL_CONFIGS / name
    if not (folder / "config.json").exists():
        return None
    return ModelSource("config", str(folder), None, display_name or name, note)
