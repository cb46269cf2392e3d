"""Adapter Studio's engine: fine-tuning without Qt, driven by a RunSpec and reporting Events.

Importing this package is cheap; torch and transformers load only when a run, an estimate or an
export needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from engine.train import run as run


def __getattr__(name: str) -> Any:
    # `engine.run` without paying for torch at `import engine`.
    if name == "run":
        from engine.train import run

        return run
    raise AttributeError(name)
