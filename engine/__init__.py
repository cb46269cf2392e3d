"""Adapter Studio's engine: fine-tuning without Qt, driven by a RunSpec and reporting Events.

Importing this package is cheap; torch and transformers load only when a run, an estimate or an
export needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapter_studio.engine.training.run import run as run


def __getattr__(name: str) -> Any:
    # `adapter_studio.engine.run` without paying for torch at `import adapter_studio.engine`.
    if name == "run":
        from adapter_studio.engine.training.run import run

        return run
    raise AttributeError(name)
