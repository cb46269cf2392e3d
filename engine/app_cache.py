"""Where Adapter Studio keeps what it can recompute: $XDG_CACHE_HOME/adapter-studio (~/.cache/…)."""

from __future__ import annotations

import os
from pathlib import Path


def app_cache_dir() -> Path:
    """A relative XDG_CACHE_HOME is ignored, as the XDG spec says (it made ./cache in whatever folder the app
    was started from)."""
    configured = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(configured) if configured and Path(configured).is_absolute() else Path.home() / ".cache"
    return base / "adapter-studio"


def writable_cache_dir(name: str) -> Path | None:
    """The app's cache folder `name`, made if need be; None where it cannot be written (a read-only home, or
    none): what uses it then goes without."""
    try:
        folder = app_cache_dir() / name  # Path.home() raises RuntimeError where there is no home at all
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):
        return None
    return folder if os.access(folder, os.W_OK) else None
