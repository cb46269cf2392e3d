"""Where Adapter Studio keeps what it can recompute: $XDG_CACHE_HOME/adapter-studio (~/.cache/…)."""

from __future__ import annotations

import os
from pathlib import Path


def app_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adapter-studio"
