"""Ladder side-tuning (LST, Sung et al. 2022): a small side network beside a frozen decoder, fed by the
backbone's intermediate states, with no gradient through the backbone.

Side network, width d = hidden / reduction_factor: for block i, zᵢ = σ(gᵢ)·downᵢ(hᵢ) + (1 − σ(gᵢ))·sᵢ₋₁
(s₋₁ = 0; a learned gate gᵢ between the "ladder" rung from the backbone's block output hᵢ and the side state
below), then sᵢ = zᵢ + W₂·silu(W₁·LayerNorm(zᵢ)), a residual MLP block; at the top, up(s_L) is added to
the backbone's last hidden state before its final norm, and the frozen head reads it. `up` starts at
zero, so training starts at the base model. The paper's side blocks are small transformer layers;
these are MLP blocks over states that have already attended (a per-position side network also keeps
generation with the KV cache exact), which keeps the point of the method: nothing in the backbone
trains and nothing in it needs gradients, so the backbone keeps no activations for a backward pass —
only the side network does (one hidden state per block, its rungs' input).

Hooks carry it: each block's output feeds its rung; a decoder's final norm gets the side output as its
input, and an encoder, whose blocks end in their own norms (BERT and the like), gets it added to the last
block's output, which its pooler and classifier read (the classifier, new, trains as well). Saved like the
mixture of LoRA experts ("injected": trained tensors + the method's fields).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, freeze_all
from adapter_studio.engine.methods.injected import InjectedMethod
from adapter_studio.engine.methods.selective import unfreeze_head
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo



@functools.cache
def _modules() -> Any:
    """The nn.Module classes, built on first use so importing the method library stays torch-free."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    class SideBlock(nn.Module):
        def __init__(self, hidden: int, width: int, **kw: Any) -> None:
            super().__init__()
            self.down = nn.Linear(hidden, width, **kw)  # the rung from the backbone
            self.gate = nn.Parameter(torch.zeros(1, **kw))  # σ(0) = ½: rung and side state alike at first
            self.norm = nn.LayerNorm(width, **kw)
            self.fc1 = nn.Linear(width, 2 * width, **kw)
            self.fc2 = nn.Linear(2 * width, width, **kw)

        def forward(self, h: torch.Tensor, below: torch.Tensor | None) -> torch.Tensor:
            rung = self.down(h.to(self.down.weight.dtype))
            g = torch.sigmoid(self.gate)
            z = g * rung if below is None else g * rung + (1 - g) * below  # below the first block: s = 0
            return z + self.fc2(nn.functional.silu(self.fc1(self.norm(z))))

    class SideNetwork(nn.Module):
        def __init__(self, hidden: int, width: int, layers: int, like: torch.Tensor) -> None:
            super().__init__()
            kw = {"device": like.device, "dtype": torch.float32 if like.dtype in (torch.float16,
                                                                                  torch.bfloat16) else like.dtype}
            self.blocks = nn.ModuleList(SideBlock(hidden, width, **kw) for _ in range(layers))
            self.up = nn.Linear(width, hidden, **kw)
            with torch.no_grad():
                self.up.weight.zero_()
                self.up.bias.zero_()
            self.state: torch.Tensor | None = None  # the side state of the forward pass under way

    return SimpleNamespace(SideNetwork=SideNetwork)


def _final_norm(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    import torch

    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is model:
        return None
    from adapter_studio.engine.models.info import FINAL_NORM_NAMES

    for name in FINAL_NORM_NAMES:
        norm = getattr(decoder, name, None)
        if isinstance(norm, torch.nn.Module):
            return name, norm
    return None


class SideTuning(InjectedMethod):
    """Ladder side-tuning: a small side network on the frozen backbone's block outputs."""

    name: Literal["side_tuning"] = "side_tuning"
    title = "Ladder side-tuning"
    family = "side-tuning"
    description = (
        "A small side network reads every block's output through gated 'ladder' rungs and adds its result before "
        "the final norm (a classifier: to the last block's output); no gradient goes through the backbone, so "
        "training needs far less memory."
    )
    typical_share = "≈ 1–2%"
    default_lr = 1e-3
    supports_gradient_checkpointing = False  # nothing in the backbone keeps activations to recompute
    supported_models = "decoders (Llama, Mistral, Qwen2, GPT-2 and the like), encoder classifiers (BERT and the like)"

    reduction_factor: int = Field(
        8, ge=1, le=1024, description="The side network's width is the hidden size divided by this."
    )

    def inject(self, model: torch.nn.Module, info: ModelInfo) -> torch.nn.Module:
        """Attach `side_network` and the hooks that feed it and read it; return the side network."""
        found = _final_norm(model)  # None for an encoder: its blocks end in their own norms
        blocks = model.get_submodule(info.layers_path) if info.layers_path else None
        if blocks is None:
            raise UserError(f"{self.title}: no blocks found in this {info.model_type} model",
                            where="method.name", fix="pick LoRA for this model")  # fmt: skip
        width = max(1, info.hidden_size // self.reduction_factor)
        side = _modules().SideNetwork(info.hidden_size, width, len(blocks), next(model.parameters()))
        model.side_network = side  # a submodule: its tensors are named side_network.… in the model

        def rung(index: int) -> Any:
            def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
                h = output[0] if isinstance(output, tuple) else output
                side.state = side.blocks[index](h, None if index == 0 else side.state)

            return hook

        def with_side(h: torch.Tensor) -> torch.Tensor:
            state, side.state = side.state, None
            return h if state is None else h + side.up(state).to(h.dtype)  # None: a forward that skipped the blocks

        def join(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:  # the final norm's input
            return (with_side(args[0]), *args[1:])

        last = len(side.blocks) - 1
        last_rung = rung(last)

        def join_last(module: torch.nn.Module, inputs: Any, output: Any) -> Any:  # no final norm: after the blocks
            last_rung(module, inputs, output)
            if isinstance(output, tuple):
                return (with_side(output[0]), *output[1:])
            return with_side(output)

        for index, block in enumerate(blocks):  # type: ignore[arg-type]
            block.register_forward_hook(join_last if found is None and index == last else rung(index))
        if found is not None:
            found[1].register_forward_pre_hook(join)
        return side

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        freeze_all(model)
        side = self.inject(model, ctx.info)
        for p in side.parameters():
            p.requires_grad_(True)
        unfreeze_head(model, ctx.info)
        return model
