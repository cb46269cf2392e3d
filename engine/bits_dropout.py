"""Dropout whose keep mask is drawn 16 random bits per element, four elements per 64-bit draw.

torch's dropout draws a float per element on a CPU (`bernoulli_`): for LoRA's 60 input masks a
step of the demo (SmolLM2, q and v) that was 8% of an eager step on this project's CPU, ~770 µs for
a 290 × 576 bf16 activation. A 64-bit draw split in four 16-bit lanes costs ~130 µs for the same
mask; dropout with its matmul, forward and backward, runs 1.8× faster. Compiled code keeps torch's
dropout (dynamo cannot trace the in-place `random_`, and inductor's own 64-bit draws are slower).
The drop probability is rounded to a multiple of 1/65536 (0.05 → 0.050003); the kept values are
scaled by the exact 1 / (1 - rounded p), so the expected activation is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

LEVELS = 1 << 16  # values of a 16-bit lane


class BitsDropout(torch.nn.Dropout):
    """nn.Dropout(p) for 0 < p < 1, its mask from 16-bit random lanes (see the module)."""

    def __init__(self, p: float) -> None:
        if not 0 < p < 1:
            raise ValueError(f"BitsDropout needs 0 < p < 1, not {p}")
        super().__init__(p)
        dropped = min(max(round(p * LEVELS), 1), LEVELS - 1)
        self.threshold = dropped - LEVELS // 2  # a lane (signed) below it drops its element
        self.scale = LEVELS / (LEVELS - dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if torch.compiler.is_compiling():  # inductor draws its own numbers; random_ would break the graph
            return super().forward(x)
        n = x.numel()
        # random_(-2**63, None) draws all 64 bits; the default range [0, 2**63) leaves the top lane >= 0
        draws = torch.empty(-(-n // 4), dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = draws.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * keep * self.scale  # bool and Python scale keep x's dtype (bf16 stays bf16)


def use_bits_dropout_for_lora(model: Any) -> int:
    """Swap the dropout on every LoRA layer's input for BitsDropout (same p); returns how many."""
    from peft.tuners.lora import LoraLayer

    swapped = 0
    for layer in (m for m in model.modules() if isinstance(m, LoraLayer)):
        for name, dropout in layer.lora_dropout.items():
            if type(dropout) is torch.nn.Dropout and 0 < dropout.p < 1:
                layer.lora_dropout[name] = BitsDropout(dropout.p)
                swapped += 1
    return swapped
