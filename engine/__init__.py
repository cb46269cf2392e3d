"""Adapter Studio's engine: fine-tuning without Qt, driven by a RunSpec and reporting Events.

Importing this package is cheap; torch and transformers load only when a run, an estimate or an
export needs them.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.app_cache import writable_cache_dir
from adapter_studio.engine.hub_kernels import refuse_hub_kernels

# transformers 5 (with the `kernels` package it depends on) swaps in kernels fetched from the Hugging Face
# Hub on CUDA (rotary embeddings for every Llama-family model); offline that fetch raises a ValueError it
# does not catch, so loading or training fails on a workstation without network — seen on an H200,
# 2026-12-04. The app never fetches code at run time; USE_HUB_KERNELS=YES opts back in.
os.environ.setdefault("USE_HUB_KERNELS", "NO")
refuse_hub_kernels()  # bitsandbytes fetches one regardless (engine.hub_kernels)
# torch.compile's inductor caches what it builds, by default under /tmp, which a restart may empty. Kept with
# the app's other caches, a later run of the same model and method compiles in seconds instead of half a
# minute (engine.training.compile_cost). Set before torch is imported: importing bitsandbytes already writes
# inductor's default here. A place the person chose wins; where the app's cache cannot be written (a read-only
# home) inductor keeps its default: importing transformers made the folder and failed every run and estimate.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ and (compile_cache := writable_cache_dir("torch-compile")):
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache)
# peft 0.21's get_peft_model reads transformers 5's deprecated `is_gradient_checkpointing` on every LoRA-family
# model it wraps: a FutureWarning in every run's output that is neither the person's nor ours to act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
# peft's warnings about what the method library already says: BEFT on layers without a bias cannot be merged (it
# is not mergeable here, and says so), and LN tuning on a norm class peft does not list (Llama's RMSNorm, BERT's
# LayerNorm), which trains, saves and merges here (tests/test_methods.py). Raw, they read as errors.
warnings.filterwarnings("ignore", message="Detected that the base layer has no bias term", category=UserWarning)
warnings.filterwarnings("ignore", message=r"Unsupported layer type .*(RMSNorm|LayerNorm)", category=UserWarning)
# bitsandbytes (which peft imports whenever it is installed) looks for a faster CPU 4-bit kernel on the Hub
# as it loads and warns when it may not fetch it (offline, or not trusted); it then uses its own kernels,
# so the warning — in every run's output, quantised or not — says nothing a person can act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

if TYPE_CHECKING:
    from adapter_studio.engine.training.run import run as run


def __getattr__(name: str) -> Any:
    # `adapter_studio.engine.run` without paying for torch at `import adapter_studio.engine`.
    if name == "run":
        from adapter_studio.engine.training.run import run

        return run
    raise AttributeError(name)
