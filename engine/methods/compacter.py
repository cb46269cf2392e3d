"""Compacter and Compacter++ (Karimi Mahabadi et al., 2021): bottleneck adapters whose projections are
parameterised hypercomplex multiplication (PHM) layers.

Each projection's weight is a sum of n Kronecker products, W = Σᵢ Aᵢ ⊗ Bᵢ: the n×n "rules" Aᵢ are
shared by every adapter of the model (slow weights), and each Bᵢ ((out/n)×(in/n)) is the product of
two rank-r factors sᵢ·tᵢ (fast weights, per layer). An adapter thus trains r·(in + out) + out weights
per projection instead of in·out + out, plus n³ rules for the whole model. Compacter places adapters
where Houlsby does (after attention and after the feed-forward block), Compacter++ only after the
feed-forward block, as in the paper. The up projection's factors sᵢ start at zero, so the model is
exactly the base model until the first step (like the other bottleneck adapters).

Saved in the bottleneck adapters' format (engine.methods.bottleneck): the shared rules once, under
the name of the first adapter that holds them.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import advanced
from adapter_studio.engine.methods.bottleneck import BottleneckMethod, bottleneck_size
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec


@functools.cache
def _phm() -> Any:
    """The PHM modules, built on first use so importing the method library stays torch-free."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    class PHMLinear(nn.Module):
        """y = x·Wᵀ + b with W = Σᵢ rule[i] ⊗ (s[i] @ t[i])."""

        def __init__(self, in_features: int, out_features: int, rule: nn.Parameter, rank: int, zero: bool) -> None:
            super().__init__()
            n = rule.shape[0]
            kw = {"device": rule.device, "dtype": rule.dtype}
            self.rule = rule  # shared: the same Parameter in every PHM layer of the model
            self.s = nn.Parameter(torch.zeros(n, out_features // n, rank, **kw))
            self.t = nn.Parameter(torch.zeros(n, rank, in_features // n, **kw))
            self.bias = nn.Parameter(torch.zeros(out_features, **kw))
            with torch.no_grad():
                # W's entries then have nn.Linear's variance, 1/(3·in), with rules of variance 1/n.
                self.t.normal_(0.0, math.sqrt(1.0 / (3 * in_features * rank)))
                if not zero:
                    self.s.normal_(0.0, 1.0)

        def weight(self) -> torch.Tensor:
            n, p, q = self.rule.shape[0], self.s.shape[1], self.t.shape[2]
            blocks = self.s @ self.t  # (n, out/n, in/n)
            return torch.einsum("iab,icd->acbd", self.rule, blocks).reshape(n * p, n * q)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, self.weight(), self.bias)

    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

    class PHMBottleneck(nn.Module):
        """up(act(down(x))) with PHM projections; the up projection starts at zero."""

        def __init__(self, hidden: int, size: int, non_linearity: str, rule: nn.Parameter, rank: int) -> None:
            super().__init__()
            self.down = PHMLinear(hidden, size, rule, rank, zero=False)
            self.act = activations[non_linearity]()
            self.up = PHMLinear(size, hidden, rule, rank, zero=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(self.act(self.down(x)))

    def new_rule(n: int, like: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(torch.empty(n, n, n, device=like.device, dtype=like.dtype).normal_(0.0, math.sqrt(1 / n)))

    return SimpleNamespace(PHMLinear=PHMLinear, PHMBottleneck=PHMBottleneck, new_rule=new_rule)


class Compacter(BottleneckMethod):
    """Compacter: Kronecker-factored (PHM) bottleneck adapters after attention and after the FFN."""

    name: Literal["compacter"] = "compacter"  # type: ignore[assignment]
    title = "Compacter"
    description = (
        "Bottleneck adapters whose projections are sums of Kronecker products of small shared rules and "
        "low-rank per-layer factors: a Houlsby adapter's placement at a fraction of its parameters."
    )
    typical_share = "≈ 0.05–0.1%"
    default_lr = 3e-3
    positions = ("attention", "ffn")

    phm_dim: int = Field(
        4, ge=2, le=64, description="n: Kronecker products per projection (the rules are n×n); must divide the "
        "hidden size and the bottleneck width."
    )  # fmt: skip
    phm_rank: int = Field(1, ge=1, le=64, description="Rank of each per-layer factor (1 in the paper).",
                          json_schema_extra=advanced())  # fmt: skip

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        size = bottleneck_size(info.hidden_size, self.reduction_factor)
        if info.hidden_size % self.phm_dim or size % self.phm_dim:
            fits = [n for n in (2, 4, 8, 16) if not info.hidden_size % n and not size % n]
            raise UserError(
                f"{self.title}: phm_dim {self.phm_dim} must divide the hidden size {info.hidden_size} and the "
                f"bottleneck width {size} (hidden size / reduction_factor {self.reduction_factor})",
                where="method.phm_dim",
                fix=f"pick phm_dim {' or '.join(map(str, fits))}" if fits else "change reduction_factor",
            )

    def added_parameters(self, info: ModelInfo, kv_dim: int) -> int:
        """Trainable parameters added (no classifier head): per adapter r·(h + b) + b for the down projection
        and r·(b + h) + h for the up one; the n³ shared rules once."""
        h, b, r = info.hidden_size, bottleneck_size(info.hidden_size, self.reduction_factor), self.phm_rank
        return info.num_layers * len(self.positions) * (2 * r * (h + b) + b + h) + self.phm_dim**3

    def new_adapter(self, hidden: int, size: int, like: torch.Tensor, shared: dict[str, Any]) -> torch.nn.Module:
        phm = _phm()
        if "rule" not in shared:
            shared["rule"] = phm.new_rule(self.phm_dim, like)
        return phm.PHMBottleneck(hidden, size, self.non_linearity, shared["rule"], self.phm_rank)


class CompacterPlusPlus(Compacter):
    """Compacter++: one PHM adapter per block, after the feed-forward block."""

    name: Literal["compacter_pp"] = "compacter_pp"  # type: ignore[assignment]
    title = "Compacter++"
    description = "Compacter with one adapter per block, after the feed-forward block: half the adapters."
    typical_share = "≈ 0.03–0.05%"
    positions = ("ffn",)
