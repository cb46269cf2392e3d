"""The method library: every method class, found by its `name` tag."""

from __future__ import annotations

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.additive import IA3, LlamaAdapter
from adapter_studio.engine.methods.base import MethodContext, MethodSpec
from adapter_studio.engine.methods.bottleneck import AdapterH, AdapterP, MAMAdapter, ParallelAdapter
from adapter_studio.engine.methods.compacter import Compacter, CompacterPlusPlus
from adapter_studio.engine.methods.fusion import AdapterFusion
from adapter_studio.engine.methods.low_rank import AdaLoRA, DoRA, DyLoRA, LoRA, LoRAPlus, RsLoRA
from adapter_studio.engine.methods.mixture import MixtureOfLoRA
from adapter_studio.engine.methods.more_peft import (
    C3A,
    HRA,
    DeLoRA,
    FourierFT,
    LNTuning,
    MiSS,
    RandLoRA,
    SHiRA,
    VBLoRA,
)
from adapter_studio.engine.methods.poly import PolyRouting
from adapter_studio.engine.methods.recent_peft import (
    BEFT,
    DEFT,
    PSOFT,
    GLoRA,
    GraLoRA,
    HiRA,
    PEANuT,
    PVeRA,
    RoAd,
    SuperTuning,
    WaveFT,
)
from adapter_studio.engine.methods.selective import BitFit, FullFineTuning, LastLayers
from adapter_studio.engine.methods.side_tuning import SideTuning
from adapter_studio.engine.methods.soft_prompts import PrefixTuning, PromptTuning, PTuning, PTuningV2
from adapter_studio.engine.methods.structured import OFT, LoHa, LoKr, VeRA
from adapter_studio.engine.methods.unipelt import UniPELT

# Picker order: the families people reach for first come first.
_DECLARED: tuple[type[MethodSpec], ...] = (
    LoRA, DoRA, RsLoRA, LoRAPlus, AdaLoRA, DyLoRA,
    AdapterH, AdapterP, ParallelAdapter, Compacter, CompacterPlusPlus,
    PromptTuning, PTuning, PrefixTuning, PTuningV2,
    LlamaAdapter, IA3,
    BitFit, BEFT, LastLayers, FullFineTuning,
    LoHa, LoKr, VeRA, OFT,
    HRA, FourierFT, C3A, VBLoRA, RandLoRA, MiSS, DeLoRA,
    GraLoRA, HiRA, GLoRA, DEFT, PEANuT, RoAd, PSOFT, WaveFT, PVeRA,
    SHiRA, LNTuning, SuperTuning,
    MAMAdapter, UniPELT,
    MixtureOfLoRA, PolyRouting, SideTuning, AdapterFusion,
)  # fmt: skip
# Each family's methods together, families in the order they first appear: the picker, the sweep's list and
# the Compare chart show one heading per family (interleaved, "structured updates" came three times).
_FAMILIES = list(dict.fromkeys(cls.family for cls in _DECLARED))
METHOD_CLASSES: tuple[type[MethodSpec], ...] = tuple(sorted(_DECLARED, key=lambda cls: _FAMILIES.index(cls.family)))

METHODS: dict[str, type[MethodSpec]] = {cls.model_fields["name"].default: cls for cls in METHOD_CLASSES}


def method_class(name: str) -> type[MethodSpec]:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method '{name}'", where="method.name", fix=method_hint([name])) from None


def method_hint(names: list[str]) -> str:
    """What to say of method names not in the library: the near ones, else all of them."""
    import difflib

    near = sorted({m for name in names for m in difflib.get_close_matches(name, METHODS, n=3)})
    return f"did you mean {', '.join(near)}?" if near else f"known methods: {', '.join(METHODS)}"


__all__ = ["METHODS", "METHOD_CLASSES", "MethodContext", "MethodSpec", "method_class", "method_hint"]
