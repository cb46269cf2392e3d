"""What a failed run tells a person: the message for an error that is not one of theirs."""

from __future__ import annotations


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite: the run stops with the setting to change."""


def explain_failure(error: Exception) -> str:
    import torch

    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
        return (
            "out of memory — try a smaller batch size (training.batch_size), gradient checkpointing "
            "(training.gradient_checkpointing), shorter sequences (data.max_length) or a lighter method"
        )
    return f"training failed: {type(error).__name__}: {error}"
