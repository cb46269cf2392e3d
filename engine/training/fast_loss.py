"""The language-model loss without the logits nobody needs.

The output projection is a large share of a small model's work (SmolLM2: vocabulary 49,152 ×
hidden 576, about a fifth of the multiply-adds per position), yet only positions whose next token
carries a label contribute to the loss. This computes the decoder's hidden states, projects only
those positions, and takes the same mean cross-entropy the model's own loss would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Families whose logits are exactly head(hidden): no soft-capping or scaling after the projection.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "smollm3", "olmo2"}


def causal_lm_parts(model: torch.nn.Module) -> tuple[Any, Any] | None:
    """(decoder, output head) when the loss may be computed from hidden states, else None."""
    base = model
    config = getattr(getattr(model, "active_peft_config", None), "peft_type", None)
    if config is not None:
        if model.active_peft_config.is_prompt_learning or str(config).endswith("ADALORA"):
            return None  # virtual tokens live in the wrapper; AdaLoRA adds its penalty there
        base = model.get_base_model()
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def labelled_loss(parts: tuple[Any, Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions, projecting only those positions."""
    import torch.nn.functional as F

    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])
