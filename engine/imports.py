"""Importing torch and transformers once, safely, from whichever thread needs them first.

transformers resolves its names lazily; two threads doing that at once can see a half-initialised
module ("cannot import name AutoConfig"). The window loads models from worker threads, so the first
import happens under a lock.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_done = False


def ensure_heavy_imports() -> None:
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        import torch  # noqa: F401
        import transformers
        from transformers import (  # noqa: F401  resolve the lazy names while holding the lock
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        transformers.logging.set_verbosity_error()
        _done = True
