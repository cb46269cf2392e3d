"""The optimizer a run's settings name (AdamW, SGD, 8-bit AdamW) when the method brings none of its own,
and its learning-rate schedule."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    import torch


def build_optimizer(kind: str, params: list[torch.nn.Parameter], lr: float, t: Any) -> Any:
    import torch

    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=t.weight_decay)
    if kind == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError(
                "8-bit AdamW needs the bitsandbytes package",
                where="training.optimizer",
                fix="pip install bitsandbytes (CUDA only), or use adamw",
            ) from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=t.weight_decay)
    # looked up per call: LoRA+'s optimizer asks the same function, and tests switch it there
    from adapter_studio.engine.training import devices

    return torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay, **devices.adamw_implementation(params))




def build_scheduler(optimizer: Any, t: Any, total_steps: int) -> Any:
    """The learning-rate schedule over the run's steps, warmup included (training.scheduler)."""
    from transformers import get_scheduler

    return get_scheduler(
        t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=math.ceil(t.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
