"""Mixture of LoRA experts (MoLoRA, Zadouri et al. 2023; top-k routing as in MixLoRA, Li et al. 2024).

Beside each chosen linear layer sit E LoRA experts (Aₑ: r×in, Bₑ: out×r) and a router (E×in). For
each token the router's softmax gives gates; the top-k are kept and renormalised (k = E: every expert,
softly mixed, as MoLoRA), and the layer returns W·x + (alpha/r)·Σₑ gₑ(x)·Bₑ·Aₑ·x. The B matrices start
at zero, so the model is the base model until the first step. Gates depend on the input, so the
update cannot be folded into W: the method is not mergeable, and the base model answers from a second
copy on the Try page (as for bottleneck adapters).

Saved and loaded as an "injected" adapter (engine.methods.injected).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, advanced, freeze_all
from adapter_studio.engine.methods.injected import InjectedMethod
from adapter_studio.engine.methods.low_rank import TARGETS_DESCRIPTION
from adapter_studio.engine.methods.selective import unfreeze_head
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec


@functools.cache
def _modules() -> Any:
    """The nn.Module class, built on first use so importing the method library stays torch-free."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    class MixtureLoRALinear(nn.Module):
        """base(x) + (alpha/r)·Σₑ gₑ(x)·Bₑ·Aₑ·x over the top-k experts of a learned router."""

        def __init__(self, base_layer: nn.Module, in_f: int, out_f: int, spec: MixtureOfLoRA) -> None:
            super().__init__()
            like = next(base_layer.parameters())
            kw = {"device": like.device, "dtype": torch.float32 if like.dtype in (torch.float16,
                                                                                  torch.bfloat16) else like.dtype}
            self.base_layer = base_layer
            self.experts, self.top_k, self.scaling = spec.experts, spec.top_k or spec.experts, spec.alpha / spec.r
            self.router = nn.Linear(in_f, spec.experts, bias=False, **kw)
            self.lora_A = nn.Parameter(torch.empty(spec.experts, spec.r, in_f, **kw))
            self.lora_B = nn.Parameter(torch.zeros(spec.experts, out_f, spec.r, **kw))
            self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
            with torch.no_grad():
                for a in self.lora_A:  # each expert as peft initialises LoRA's A
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = self.base_layer(x, *args, **kwargs)
            h = self.dropout(x).to(self.lora_A.dtype)
            gates = torch.softmax(self.router(h).float(), dim=-1)
            if self.top_k < self.experts:
                top, index = gates.topk(self.top_k, dim=-1)
                gates = torch.zeros_like(gates).scatter(-1, index, top / top.sum(dim=-1, keepdim=True))
            z = torch.einsum("...i,eri->...er", h, self.lora_A) * gates.to(h.dtype).unsqueeze(-1)
            delta = torch.einsum("...er,eor->...o", z, self.lora_B) * self.scaling
            return out + delta.to(out.dtype)

    return SimpleNamespace(MixtureLoRALinear=MixtureLoRALinear)


def _widths(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer (nn.Linear, or GPT-2's Conv1D whose weight is in×out); None otherwise."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


class MixtureOfLoRA(InjectedMethod):
    """Several LoRA experts per layer under a learned top-k router."""

    name: Literal["mixture_lora"] = "mixture_lora"
    title = "Mixture of LoRA experts"
    family = "mixture of experts"
    description = (
        "Several LoRA experts beside each chosen layer and a router that sends every token to its top-k experts, "
        "which specialise; the base stays frozen."
    )
    mergeable = False  # the gates depend on the input
    typical_share = "≈ 0.5–2%"
    default_lr = 1e-3

    experts: int = Field(4, ge=2, le=64, description="LoRA experts beside each chosen layer.")
    top_k: int = Field(2, ge=0, le=64, description="Experts each token uses, by the router's gates (0: all of "
                       "them, mixed softly).")  # fmt: skip
    r: int = Field(4, ge=1, le=512, description="Rank of each expert.")
    alpha: float = Field(8.0, gt=0, le=4096, description="Scale of the update (alpha / r multiplies it).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the experts' input while training.",
                           json_schema_extra=advanced())  # fmt: skip
    target_modules: list[str] | None = Field(None, description=TARGETS_DESCRIPTION,
                                             json_schema_extra={"widget": "targets"})  # fmt: skip

    def fill_defaults(self, info: ModelInfo) -> MixtureOfLoRA:
        if self.target_modules:
            return self
        return self.model_copy(update={"target_modules": list(info.query_value_targets)})

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        if self.top_k > self.experts:
            raise UserError(f"{self.title}: top_k {self.top_k} is more than its {self.experts} experts",
                            where="method.top_k", fix=f"pick 1 to {self.experts}, or 0 for all of them")  # fmt: skip

    def inject(self, model: torch.nn.Module, info: ModelInfo) -> list[str]:
        """Wrap every chosen linear layer inside the blocks; return their names."""
        targets = set(self.target_modules or info.query_value_targets)
        wrapper = _modules().MixtureLoRALinear
        chosen = []
        for name, module in list(model.named_modules()):
            widths = _widths(module)
            if widths is None or name.rsplit(".", 1)[-1] not in targets or ".base_layer" in name:
                continue
            if info.layers_path and not name.startswith(info.layers_path + "."):
                continue  # the blocks' layers, not a classifier head that happens to share a name
            model.set_submodule(name, wrapper(module, widths[0], widths[1], self))
            chosen.append(name)
        if not chosen:
            raise UserError(f"{self.title}: no linear layer named {', '.join(sorted(targets))} in the blocks",
                            where="method.target_modules", fix="pick other layers, e.g. those LoRA offers")  # fmt: skip
        return chosen

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        freeze_all(model)
        self.inject(model, ctx.info)
        for m in model.modules():
            if isinstance(m, _modules().MixtureLoRALinear):
                for name, p in m.named_parameters():
                    if not name.startswith("base_layer."):
                        p.requires_grad_(True)
        unfreeze_head(model, ctx.info)
        return model
