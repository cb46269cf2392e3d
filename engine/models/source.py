"""Where a base model comes from, as `model.source` was resolved (engine.models.loading.resolve_source)."""

from __future__ import annotations

from dataclasses import dataclass


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
