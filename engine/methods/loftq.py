"""LoftQ (Li et al., 2023): LoRA started for a 4-bit base, so that the quantised weight plus the update is
the original weight as nearly as rank r allows.

A QLoRA run starts at Q, the NF4 weight the base holds, with the quantisation error W − Q built in;
LoftQ starts A and B from the top-r singular directions of W − Q instead (scaled by the layer's
alpha/r, so scaling·B·A is that best rank-r part), and training goes on from there. This is the
one-pass form (the paper's T = 1), which is what peft's `replace_lora_weights_loftq` computes — but
peft's routine runs only on a CUDA device, and bitsandbytes quantises on CPUs too; this one works on
whichever device holds the base, reading W one tensor at a time from the model's safetensors files.
The 4-bit base itself is left as bitsandbytes made it, so the trained adapter belongs to that base.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    import torch

ADAPTER = "default"


def refuse_where_unfit(quantization: str, objective: Any) -> None:
    """LoftQ before anything loads: it needs a 4-bit base, and it cannot serve an objective whose reference is
    the base with the adapter off (its start is not that model: it is nearer the unquantised one)."""
    if quantization != "4bit":
        base = "not quantised" if quantization == "none" else "8-bit"
        raise UserError(f"LoftQ starts LoRA for a 4-bit base; this run's base is {base}", where="method.init",
                        fix="set model.quantization to 4bit, or pick init default")  # fmt: skip
    if objective.needs_reference:
        raise UserError(f"{objective.title} compares with the model as training starts, and LoftQ's start is not "
                        "the base with the adapter off", where="method.init",
                        fix="pick init default for a preference objective")  # fmt: skip


def original_weights(folder: Path) -> Callable[[str], torch.Tensor]:
    """A reader of the unquantised weights in `folder`'s safetensors files (one file or shards), by the
    name the loaded model gives them; names saved without the model's prefix (`model.`, `bert.`) are
    found too."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError("LoftQ reads the original weights from the model's safetensors files; there are none",
                        where=f"model.source ({folder})",
                        fix="pick a model folder with .safetensors weights, or init default")  # fmt: skip
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        where = {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    else:
        where = {}
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                where.update(dict.fromkeys(f.keys(), file))

    def read(name: str) -> torch.Tensor:
        key = name if name in where else next((k for k in where if name.endswith("." + k)), None)
        if key is None:
            raise UserError(f"LoftQ found no original weight for {name} in the model's files",
                            where=f"model.source ({folder})", fix="pick init default")  # fmt: skip
        with safe_open(str(where[key]), framework="pt", device="cpu") as f:
            return f.get_tensor(key)

    return read


@dataclass(frozen=True)
class LoftQStart:
    layers: int  # LoRA layers started
    error: float  # ‖W − Q‖ over those layers (Frobenius): the quantisation error QLoRA starts with
    left: float  # ‖W − Q − scaling·BA‖: what LoftQ's start leaves of it

    def describe(self) -> str:
        removed = 1 - self.left / self.error if self.error else 0.0
        return (f"LoftQ started {self.layers} LoRA layers from the 4-bit base's quantisation error: "
                f"{self.error:.4g} → {self.left:.4g} at the start ({removed:.0%} removed)")  # fmt: skip


def loftq_start(model: torch.nn.Module, read: Callable[[str], torch.Tensor]) -> LoftQStart:
    """Set A and B of every LoRA layer over a 4-bit base layer from the top-r part of W − Q. Refuses a model
    with no 4-bit LoRA layer (the base was not loaded in 4-bit)."""
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from peft.tuners.lora.bnb import Linear4bit

    count, error, left = 0, 0.0, 0.0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, Linear4bit) or ADAPTER not in module.lora_A:
                continue
            base = module.get_base_layer()
            quantised = dequantize_4bit(base.weight.data, base.weight.quant_state).float()
            original = read(_base_weight_name(name)).to(quantised.device, torch.float32)
            u, s, vh = torch.linalg.svd(original - quantised, full_matrices=False)
            r = module.r[ADAPTER]
            # scaling·B·A = U_r S_r V_rᵀ, split evenly between the two factors
            root = (s[:r] / module.scaling[ADAPTER]).sqrt()
            a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
            a.copy_((root[:, None] * vh[:r]).to(a.dtype))
            b.copy_((u[:, :r] * root[None, :]).to(b.dtype))
            count += 1
            error += float(s.pow(2).sum())
            left += float(s[r:].pow(2).sum())
    if not count:
        raise UserError("LoftQ starts LoRA for a 4-bit base; this model has no 4-bit layers under LoRA",
                        where="method.init", fix="set model.quantization to 4bit, or init default")  # fmt: skip
    return LoftQStart(count, math.sqrt(error), math.sqrt(left))


def _base_weight_name(module_name: str) -> str:
    """peft's `base_model.model.<name>` → the loaded model's `<name>.weight`."""
    prefix = "base_model.model."
    return (module_name[len(prefix) :] if module_name.startswith(prefix) else module_name) + ".weight"
