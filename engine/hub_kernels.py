"""No code from the Hugging Face Hub at run time unless the person asks for it (USE_HUB_KERNELS=YES).

transformers honours USE_HUB_KERNELS itself (engine/__init__.py sets it to NO). bitsandbytes does not: on a
CPU with AVX-512 BF16, importing it — and peft imports it whenever it is installed, on every path that loads
peft — calls `kernels.get_kernel("kernels-community/quantization-bitsandbytes")`, which downloads and loads
code online, and offline writes a warning into every run's output. Here `kernels.get_kernel` refuses,
whoever imports `kernels` and whenever; bitsandbytes catches that and keeps its own CPU kernel."""

from __future__ import annotations

import importlib.abc
import os
import sys
from types import ModuleType
from typing import Any


def hub_kernels_asked() -> bool:
    return os.environ.get("USE_HUB_KERNELS", "").upper() in {"1", "ON", "YES", "TRUE"}


def refuse_hub_kernels() -> None:
    """Make `kernels.get_kernel` refuse from now on: at once if `kernels` is loaded, else as it loads."""
    if hub_kernels_asked():
        return
    loaded = sys.modules.get("kernels")
    if loaded is not None:
        _gate(loaded)
    elif not any(isinstance(f, _GateOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _GateOnImport())


def _refused(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("kernels from the Hugging Face Hub are off (USE_HUB_KERNELS=YES turns them on)")


def _gate(module: ModuleType) -> None:
    module.get_kernel = _refused  # type: ignore[attr-defined]


class _GateOnImport(importlib.abc.MetaPathFinder):
    """Finds `kernels` where the finders after it do, with a loader that gates the module once it has run. It
    answers until then (transformers and peft ask `find_spec("kernels")`, is it installed?, long before importing
    it), and stays in sys.meta_path: removing it while another thread walks the list could skip a finder."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "kernels" or "kernels" in sys.modules:
            return None
        for finder in sys.meta_path[sys.meta_path.index(self) + 1 :] if self in sys.meta_path else []:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _GatingLoader(spec.loader)
                return spec
        return None


class _GatingLoader(importlib.abc.Loader):
    """The finder's own loader, then the gate (a proxy: a loader one finder shares among modules stays as it is)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _gate(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, …
        return getattr(self.loader, name)
