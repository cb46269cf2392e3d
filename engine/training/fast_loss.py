"""The language-model loss without the logits nobody needs, and without keeping any of them.

The output projection is a large share of a small model's work (SmolLM2: vocabulary 49,152 ×
hidden 576, about a fifth of the multiply-adds per position), yet only positions whose next token
carries a label contribute to the loss. This computes the decoder's hidden states, projects only
those positions, and takes the same mean cross-entropy the model's own loss would.

Where the head is frozen (every method but full fine-tuning and head training), the labelled positions
are projected a chunk at a time and each chunk's gradient with respect to the hidden states is taken at
once, in the forward pass (as Liger's fused linear cross-entropy does): the step never holds the
positions × vocabulary logits, their float32 copy, log-softmax and gradient (SmolLM2, 400 labelled
positions: 4 × 79 MB; the Llama-3.1-8B shape at 4k: 7 GiB), only one chunk's, and the backward pass only
scales the stored gradient. On a CPU a chunk stays under the C allocator's mmap threshold, so its memory
is reused instead of freshly mapped and page-faulted every step: the head's forward and backward for
400 positions of SmolLM2 take 100 ms instead of 155 (bf16, this project's CPU).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Families whose logits are exactly head(hidden): no soft-capping or scaling after the projection.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "smollm3", "olmo2"}
# Logits projected at once, by device type: 4 M float32 (16 MiB) on a CPU, under glibc's largest mmap
# threshold (32 MiB; 64-128 rows of SmolLM2 were fastest, 32 slower); on a GPU a chunk large enough to
# keep the matmuls efficient (1,000 rows of a 128k vocabulary).
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 27}
CHUNK_ELEMENTS_OTHER = 1 << 24


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


def chunks_head(head: Any) -> bool:
    """Whether `labelled_loss` projects through this head in chunks: a plain frozen linear layer without
    bias (a head that trains needs its own weight gradient, which the model's path computes)."""
    import torch

    weight = getattr(head, "weight", None)
    return type(head) is torch.nn.Linear and head.bias is None and weight is not None and not weight.requires_grad


def chunk_rows(vocab: int, device_type: str) -> int:
    return max(1, CHUNK_ELEMENTS.get(device_type, CHUNK_ELEMENTS_OTHER) // max(1, vocab))


def labelled_loss(parts: tuple[Any, Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions, projecting only those positions."""
    import torch
    import torch.nn.functional as F

    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    selected, targets = hidden[:, :-1][keep], targets[keep]
    if not chunks_head(head) or not len(targets):
        return F.cross_entropy(head(selected).float(), targets)
    device = selected.device.type
    autocast = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else selected.dtype
    weight = head.weight.to(dtype)  # what autocast would multiply with (no copy when it is already)
    with torch.autocast(device, enabled=False):
        return _chunked_head_loss().apply(selected.to(dtype), weight, targets, chunk_rows(weight.shape[0], device))


@functools.cache
def _chunked_head_loss() -> Any:
    """The autograd function, defined on first use (importing this module must not import torch)."""
    import torch

    class ChunkedHeadLoss(torch.autograd.Function):
        """mean cross-entropy(hidden @ weightᵀ, targets) with the weight frozen; d/d hidden computed chunk
        by chunk in the forward pass and kept (positions × hidden), scaled by the backward."""

        @staticmethod
        def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> Any:
            n = hidden.shape[0]
            grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, n, rows):
                h, t = hidden[start : start + rows], targets[start : start + rows]
                # as the model's path: logits in the compute dtype, the loss over them in float32
                log_probs = torch.log_softmax((h @ weight.t()).float(), dim=-1)
                total -= log_probs.gather(1, t[:, None]).sum()
                if grad is not None:
                    probs = log_probs.exp_()  # softmax, in place
                    probs[torch.arange(len(t), device=t.device), t] -= 1.0
                    grad[start : start + rows] = probs.mul_(1.0 / n).to(hidden.dtype) @ weight
            ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
            return total / n

        @staticmethod
        def backward(ctx: Any, grad_output: torch.Tensor) -> Any:
            (grad,) = ctx.saved_tensors
            # in float32, as the model's path scales its logits' gradient (exact for the usual 1)
            return (grad.float() * grad_output).to(grad.dtype), None, None, None

    return ChunkedHeadLoss
