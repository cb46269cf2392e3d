"""Importing torch, transformers, peft and accelerate once, safely and quickly, from whichever thread needs them.

transformers resolves its names lazily; two threads doing that at once can see a half-initialised
module ("cannot import name AutoConfig"). The window loads models from worker threads, so the first
import happens under a lock.

These imports create millions of objects, and Python's cycle collector ran over all of them again and
again while they were made: 1.2 s of a training process's 5.4 s before its first step (py-spy,
2026-12-06, this 2-core CPU). It is paused while they import. A process that runs one command and exits
(the `adapter-studio` CLI) also freezes them: later collections skip them, and so does the interpreter's
last one at exit, which took another second. Freezing is the process owner's choice
(`freeze_imports_in_this_process`): a library caller's or the window's own objects are never frozen.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

# How OpenMP's idle threads wait in a process that shares the CPU with a window or other work, set before torch
# loads (libgomp reads them once): passive, after a 0.3 ms spin. Spinning for libgomp's default 3 ms took the
# CPU the window needs to draw (18 s steps, 2.4 s passive, on a shared 2-core CPU); passive alone sleeps after
# every op, and a step's ops come microseconds apart (the demo at 175 tokens/s instead of 294; 289 with the
# spin). The window (gui.app.create_app) and `adapter-studio eval` set it.
OPENMP_WAITING = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"}

_lock = threading.Lock()
_imported = False
_done = False
_freeze = False


def wait_briefly_then_sleep() -> None:
    """OPENMP_WAITING for this process, where the person has not set them; before torch loads."""
    for name, value in OPENMP_WAITING.items():
        os.environ.setdefault(name, value)


def freeze_imports_in_this_process() -> None:
    """Let the heavy imports' objects be frozen out of the cycle collector (`gc.freeze`) once made.

    For a process that runs one command and exits; everything alive at that moment is frozen with them,
    so a long-lived process with objects of its own (the window, a caller's script) leaves this off."""
    global _freeze
    _freeze = True


def import_heavy_modules() -> None:
    """Import torch, bitsandbytes, transformers' model classes, peft and accelerate, the collector paused."""
    global _imported
    if _imported:
        return
    with _lock:
        if _imported:
            return
        collecting = gc.isenabled()
        gc.disable()
        try:
            import torch  # noqa: F401

            _import_bitsandbytes_compiling_on_first_call()
            import accelerate  # noqa: F401
            import peft  # noqa: F401
            import transformers.modeling_utils  # noqa: F401
            from transformers import (  # noqa: F401  resolve the lazy names while holding the lock
                AutoConfig,
                AutoModelForCausalLM,
                AutoModelForSequenceClassification,
                AutoTokenizer,
            )
        finally:
            if _freeze:
                gc.freeze()
            if collecting:
                gc.enable()
        _imported = True


def ensure_heavy_imports() -> None:
    """The window's workers: the heavy imports, and transformers' own warnings kept out of its log."""
    global _done
    if _done:
        return
    import_heavy_modules()
    import transformers

    transformers.logging.set_verbosity_error()
    _done = True


def _import_bitsandbytes_compiling_on_first_call() -> None:
    """Import bitsandbytes (peft imports it whenever it is installed) without building compilers early.

    As it is imported, bitsandbytes wraps four fallback kernels in `torch.compile`; making a compiled
    function imports inductor, 0.8–0.9 s of every process's start, though nothing compiles until a kernel
    is called (a CPU or CUDA run calls none: their backends have kernels of their own). Here each is made
    on its kernel's first call instead: the same compiled kernel, and the same fallback when compiling
    fails (bitsandbytes catches that on every call)."""
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    import torch

    real_compile = torch.compile
    torch.compile = compiled_on_first_call(real_compile)
    try:
        import bitsandbytes  # noqa: F401
    finally:
        torch.compile = real_compile


def compiled_on_first_call(compile_now: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for `torch.compile` (both its forms) whose functions call `compile_now` when first called."""

    def compile_later(model: Callable[..., Any] | None = None, **options: Any) -> Any:
        if model is None:  # used as @torch.compile(**options)
            return lambda fn: compile_later(fn, **options)
        compiled: list[Callable[..., Any]] = []

        @functools.wraps(model)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not compiled:
                compiled.append(compile_now(model, **options))
            return compiled[0](*args, **kwargs)

        return call

    return compile_later
