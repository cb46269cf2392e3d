"""Encoders asked to write answers. transformers gives BERT-like encoders a language-model head, so all-MiniLM-L6-v2
trained on math problems as text generation, unsaid: each token sees the ones after it, and what it learns to
write is noise."""

from __future__ import annotations

from typing import Any

from adapter_studio.engine.errors import UserError

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text", "rembert",
                 "roc_bert", "megatron-bert", "big_bird", "xmod", "mpnet", "deberta", "deberta-v2",
                 "distilbert")  # fmt: skip


def refuse_an_encoder(config: Any, name: str) -> None:
    """A UserError for text generation on an encoder (one not made a decoder by its config)."""
    if config.model_type in ENCODER_TYPES and not getattr(config, "is_decoder", False):
        raise UserError(f"{name} is an encoder ({config.model_type}): it reads a text to classify it, and does not "
                        "write answers", where="model.source",
                        fix="for this data pick a model that generates text (embedded:smollm2-135m-instruct), or "
                        "load rows to classify (a text and its label)")  # fmt: skip
