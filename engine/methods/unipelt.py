"""UniPELT (Mao et al., 2022): LoRA, prefix tuning and a bottleneck adapter in every block, the LoRA and
adapter contributions each under a learned gate.

- LoRA on the query and value projections (GPT-2: its fused c_attn), with a gate σ(W_g·x) per token read
  from the projection's input: x·W + σ(W_g·x)·(α/r)·x·A·B. B starts at zero.
- A serial bottleneck adapter after the feed-forward block (Pfeiffer's place), with a gate read from its
  input: h + σ(W_g·h)·up(act(down(h))). Its up projection starts at zero.
- Prefix tuning on every attention layer through peft (as in the MAM adapter, without reparameterisation).

The paper gates the prefix too; here it is not. peft's prefix enters attention as cached keys and
values, where a per-token gate cannot reach without rewriting each model's attention, and a gate read
from the mean over the sequence (AdapterHub's) would let a decoder's prediction depend on tokens it has
not seen yet. The gates start at σ(0) = ½ with zero weights, so training decides how much of each
module a token uses, which is the point of the method: the best mix differs by task and data size.

Saved in the bottleneck adapters' format (engine.methods.bottleneck) plus peft's prefix files; trained
names read `….self_attn.q_proj.adapter.lora_A.weight` and `….mlp.adapter.gate.weight`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.methods.base import advanced
from adapter_studio.engine.methods.bottleneck import PrefixBottleneck, _modules, bottleneck_size
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo


@functools.cache
def _gated() -> Any:
    """The gated modules, built on first use so importing the method library stays torch-free."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    mods = _modules()

    def gate(width: int, like: torch.Tensor) -> nn.Linear:
        layer = nn.Linear(width, 1, device=like.device, dtype=like.dtype)
        with torch.no_grad():  # σ(0) = ½: every module starts half open
            layer.weight.zero_()
            layer.bias.zero_()
        return layer

    class GatedBottleneck(mods.Bottleneck):  # type: ignore[misc, name-defined]
        def __init__(self, hidden: int, size: int, non_linearity: str, like: torch.Tensor) -> None:
            super().__init__(hidden, size, non_linearity, like)
            self.gate = gate(hidden, like)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.gate(x)) * super().forward(x)

    class GatedLowRank(nn.Module):
        """σ(gate(x))·(α/r)·B(A(x)); A is Kaiming-uniform (as in LoRA), B zero."""

        def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, like: torch.Tensor) -> None:
            super().__init__()
            kw = {"device": like.device, "dtype": like.dtype}
            self.lora_A = nn.Linear(in_features, rank, bias=False, **kw)
            self.lora_B = nn.Linear(rank, out_features, bias=False, **kw)
            self.gate = gate(in_features, like)
            self.scaling = alpha / rank
            with torch.no_grad():
                self.lora_B.weight.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.gate(x)) * self.scaling * self.lora_B(self.lora_A(x))

    class BesideLinear(mods.AdapterWrapper):  # type: ignore[misc, name-defined]
        """base(x) + adapter(x): the adapter reads the projection's input."""

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self.base_layer(x, *args, **kwargs) + self.adapter(x)

    return SimpleNamespace(GatedBottleneck=GatedBottleneck, GatedLowRank=GatedLowRank, BesideLinear=BesideLinear)


def _features(layer: torch.nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear or of transformers' Conv1D, whose weight is stored (in, out)."""
    if hasattr(layer, "in_features"):
        return int(layer.in_features), int(layer.out_features)
    rows, cols = layer.weight.shape  # type: ignore[union-attr]
    return int(rows), int(cols)


class UniPELT(PrefixBottleneck):
    """UniPELT: gated LoRA on query and value, a gated adapter after the FFN, and prefix tuning."""

    name: Literal["unipelt"] = "unipelt"
    title = "UniPELT"
    description = (
        "LoRA on the query and value projections, a bottleneck adapter after the feed-forward block and "
        "prefix tuning, in every block; learned per-token gates decide how much LoRA and the adapter add."
    )
    typical_share = "≈ 1%"
    positions = ("ffn",)

    num_virtual_tokens: int = Field(10, ge=1, le=512, description="Trained prefix length per layer (10, as in "
                                    "the AdapterHub UniPELT configuration).")  # fmt: skip
    lora_rank: int = Field(8, ge=1, le=1024, description="Rank of the LoRA update on the query and value projections.")
    lora_alpha: float = Field(16.0, gt=0.0, le=4096.0, description="LoRA scaling numerator (the update is "
                              "multiplied by alpha / rank).", json_schema_extra=advanced())  # fmt: skip

    def new_adapter(self, hidden: int, size: int, like: torch.Tensor, shared: dict[str, Any]) -> torch.nn.Module:
        return _gated().GatedBottleneck(hidden, size, self.non_linearity, like)

    def inject(self, model: torch.nn.Module, info: ModelInfo) -> list[str]:
        """The gated adapters after every FFN (the bottleneck injection), then gated LoRA beside each block's
        query and value projections; returns every wrapped path in module order."""
        gated = _gated()
        super().inject(model, info)
        blocks = model.get_submodule(info.layers_path)
        for block in blocks:  # type: ignore[union-attr]
            paths = [n for n, m in block.named_modules() if n.rsplit(".", 1)[-1] in info.query_value_targets
                     and not isinstance(m, _modules().AdapterWrapper)]  # fmt: skip
            for path in paths:
                base = block.get_submodule(path)
                in_features, out_features = _features(base)
                adapter = gated.GatedLowRank(in_features, out_features, self.lora_rank, self.lora_alpha,
                                             next(base.parameters()))
                block.set_submodule(path, gated.BesideLinear(base, adapter))
        wrapper = _modules().AdapterWrapper
        return [n for n, m in model.named_modules() if isinstance(m, wrapper)]

    def added_parameters(self, info: ModelInfo, kv_dim: int) -> int:
        """Per block: the adapter 2·h·b + b + h and its gate h + 1; per LoRA target r·(in + out) and a gate
        in + 1 (targets: q (h → h) and v (h → kv_dim), or GPT-2's c_attn (h → 3h)); the prefix
        tokens × 2 × kv_dim. No classifier head (encoders are refused)."""
        h, r = info.hidden_size, self.lora_rank
        b = bottleneck_size(h, self.reduction_factor)
        outs = [3 * h] if info.query_value_targets == ["c_attn"] else [h, kv_dim]
        lora = sum(r * (h + out) + h + 1 for out in outs)
        per_block = (2 * h * b + b + h) + (h + 1) + lora + self.num_virtual_tokens * 2 * kv_dim
        return info.num_layers * per_block
