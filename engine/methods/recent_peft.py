"""The newest weight-update tuners peft 0.21 carries that train these models, each declared once: rotations
(RoAd, PSOFT), wavelets (WaveFT), block, Hadamard, generalised, decompositional and non-linear updates
(GraLoRA, HiRA, GLoRA, DEFT, PEANuT), shared random bases (PVeRA), bias vectors (BEFT) and a sparse mask
chosen by magnitude (Super-Tuning).

Each starts as the base model (its update is zero at first) and was checked on tiny Llama and BERT
models (and GPT-2 where it takes Conv1D layers): gradients reach only its own parameters, the loss
falls, a saved adapter reloads to the same logits, and merging (where it is offered) gives the same
logits as the adapter.

Left out: UniLoRA (not the base model at the start, and its index bincount has no meta-device kernel for
the estimate), FRoD and AdaMSS (they decompose the base weights while building, which the meta-device
estimate cannot), Lily (its router averages over every token of the batch, so a row's output depends on
the other rows and on later tokens), SHADOW (a mirror backbone with an auxiliary loss inside peft's
forward, which the training loop's own loss skips), TinyLoRA (peft's benchmark: 1% accuracy after
supervised fine-tuning, against LoRA's 48%), OSF (a continual-learning method that trains half of each
weight's spectrum by default) and Trainable Tokens (it needs the ids of the tokens to train).

Learning rates are peft's for these methods: its MetaMathQA comparison on Llama-3.2-3B where it tuned
one, else its example script. They are not yet tuned here on real tasks; the automatic finder
(`training.learning_rate: auto`) checks them on a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, advanced
from adapter_studio.engine.methods.more_peft import LINEAR_ONLY, block_for
from adapter_studio.engine.methods.structured import StructuredUpdate
from pydantic import Field

if TYPE_CHECKING:
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec


def _fan_in_fan_out(ctx: MethodContext) -> bool:
    """GPT-2's Conv1D layers store their weight transposed: the tuners that take them need to know."""
    return bool(ctx.info.conv1d_names)


def _narrowest(info: ModelInfo) -> int:
    return min(info.linear_widths or [info.hidden_size])


class RoAd(StructuredUpdate):
    """RoAd (Liao & Monz, NeurIPS 2024, arXiv 2409.00119): each pair of outputs rotated and scaled by a 2×2."""

    name: Literal["road"] = "road"
    title = "RoAd"
    family = "orthogonal"
    description = "Rotates pairs of each layer's outputs by learned angles (and scales them): very few parameters."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "< 0.05%"
    default_lr = 1e-3  # peft's benchmark and docs: RoAd wants about 1e-3, more than LoRA

    variant: Literal["road_1", "road_2", "road_4"] = Field(
        "road_1", description="Angles and scales per output pair: road_1 one set, road_2 two, road_4 four."
    )
    group_size: int | None = Field(
        None, ge=2, le=4096, multiple_of=2, json_schema_extra=advanced(),
        description="Outputs grouped for rotation; divides the layer widths. Empty: the largest power of two up "
        "to 64 that divides every layer width.",
    )  # fmt: skip

    def fill_defaults(self, info: ModelInfo) -> RoAd:
        filled = super().fill_defaults(info)
        return filled.model_copy(update={"group_size": self.group_size or block_for(info, 64)})

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        size = self.group_size or block_for(info, 64)
        if size < 2 or any(w % size for w in info.linear_widths):
            raise UserError(f"RoAd's group size {size} does not divide this model's layer widths "
                            f"({', '.join(map(str, info.linear_widths))})", where="method.group_size",
                            fix="pick a power of two that divides them, e.g. 16")  # fmt: skip

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import RoadConfig

        return RoadConfig(**self.common(ctx), variant=self.variant,
                          group_size=self.group_size or block_for(ctx.info, 64))  # fmt: skip


class PSOFT(StructuredUpdate):
    """PSOFT ("Efficient Orthogonal Fine-Tuning with Principal Subspace Adaptation", arXiv 2505.11235): an r × r
    orthogonal rotation inside each weight's top-r singular subspace."""

    name: Literal["psoft"] = "psoft"
    title = "PSOFT"
    family = "orthogonal"
    description = "Rotates each weight within its r most important directions (from its SVD); only the rotation trains."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "< 0.05%"
    default_lr = 5e-4  # peft's PSOFT example

    r: int = Field(32, ge=1, le=4096, description="Size of the rotated subspace (at most the narrowest layer).")
    alpha: float = Field(32.0, gt=0, le=4096, description="Scale of the update (alpha / r multiplies it).",
                         json_schema_extra=advanced())  # fmt: skip

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        if self.r > _narrowest(info):
            raise UserError(f"PSOFT's r={self.r} is wider than this model's narrowest layer ({_narrowest(info)})",
                            where="method.r", fix=f"pick r of at most {_narrowest(info)}")  # fmt: skip

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import PsoftConfig

        return PsoftConfig(**self.common(ctx), r=self.r, psoft_alpha=self.alpha)


class WaveFT(StructuredUpdate):
    """WaveFT ("Wavelet Fine-Tuning", arXiv 2505.12532): learn a few wavelet coefficients of each weight update."""

    name: Literal["waveft"] = "waveft"
    title = "WaveFT"
    family = "spectral"
    description = "Learns n wavelet coefficients per layer; the update is their inverse wavelet transform."
    typical_share = "< 0.1%"
    default_lr = 3e-4  # peft's WaveFT example

    n_frequency: int = Field(1000, ge=1, le=1_000_000, description="Wavelet coefficients learnt per layer.")
    scaling: float = Field(25.0, gt=0, le=10_000, description="Scale of the update.")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import WaveFTConfig

        # init_weights=True: zero coefficients, so training starts from the base model
        return WaveFTConfig(**self.common(ctx), n_frequency=self.n_frequency, scaling=self.scaling,
                            fan_in_fan_out=_fan_in_fan_out(ctx), init_weights=True)  # fmt: skip


class GraLoRA(StructuredUpdate):
    """GraLoRA ("Granular Low-Rank Adaptation", NeurIPS 2025, arXiv 2505.20355): a k × k grid of small LoRAs."""

    name: Literal["gralora"] = "gralora"
    title = "GraLoRA"
    description = "A k × k grid of small LoRAs per weight, each on its own block: LoRA's size, finer-grained."
    typical_share = "0.1–2%"
    default_lr = 2e-4  # peft's benchmark

    r: int = Field(32, ge=1, le=1024, description="Total rank (as LoRA's r: the same parameter count); divisible by k.")
    alpha: float = Field(64.0, gt=0, le=4096, description="Scale of the update (alpha / r multiplies it).")
    gralora_k: int = Field(2, ge=1, le=16, description="Blocks per side of the grid; divides r and the layer widths.",
                           json_schema_extra=advanced())  # fmt: skip

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        k = self.gralora_k
        if self.r % k or any(w % k for w in info.linear_widths):
            raise UserError(f"GraLoRA's k={k} must divide r={self.r} and every layer width "
                            f"({', '.join(map(str, info.linear_widths))})", where="method.gralora_k",
                            fix="pick k=2, or an r that k divides")  # fmt: skip

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import GraloraConfig

        return GraloraConfig(**self.common(ctx), r=self.r, alpha=self.alpha, gralora_k=self.gralora_k,
                             fan_in_fan_out=_fan_in_fan_out(ctx))  # fmt: skip


class HiRA(StructuredUpdate):
    """HiRA ("Parameter-Efficient Hadamard High-Rank Adaptation", ICLR 2025): update = W ⊙ BA."""

    name: Literal["hira"] = "hira"
    title = "HiRA"
    description = "Multiplies each weight entry-wise by a low-rank matrix: LoRA's size, but a full-rank update."
    typical_share = "0.1–2%"
    default_lr = 4.5e-3  # peft's benchmark (its tuned run)

    r: int = Field(32, ge=1, le=1024, description="Rank of the low-rank factor.")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import HiraConfig

        return HiraConfig(**self.common(ctx), r=self.r, fan_in_fan_out=_fan_in_fan_out(ctx))


class GLoRA(StructuredUpdate):
    """GLoRA (Chavan et al., 2023, "One-for-All: Generalized LoRA", arXiv 2306.07967): W + W ⊙ A + B, and a
    matching update of the bias."""

    name: Literal["glora"] = "glora"
    title = "GLoRA"
    description = "Generalised LoRA: learns low-rank scalings and shifts of each weight and its bias."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "0.1–1%"
    default_lr = 3e-4  # peft's GLoRA example

    r: int = Field(8, ge=1, le=1024, description="Rank of each low-rank path.")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import GloraConfig

        # init_weights=True: zero down-projections, so training starts from the base model
        return GloraConfig(**self.common(ctx), r=self.r, init_weights=True)


class DEFT(StructuredUpdate):
    """DEFT ("Decompositional Efficient Fine-Tuning", NeurIPS 2025): remove a learnt low-rank subspace from each
    weight and inject a learnt low-rank update into it."""

    name: Literal["deft"] = "deft"
    title = "DEFT"
    description = "Replaces a small learnt subspace of each weight with new content: adapts while forgetting less."
    typical_share = "0.1–2%"
    default_lr = 3e-4  # peft's DEFT example

    r: int = Field(32, ge=1, le=1024, description="Rank of the replaced subspace.")
    alpha: float = Field(64.0, gt=0, le=4096, description="Scale of the injected update (alpha / r multiplies it).")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import DeftConfig

        return DeftConfig(**self.common(ctx), r=self.r, alpha=self.alpha, fan_in_fan_out=_fan_in_fan_out(ctx))


class PEANuT(StructuredUpdate):
    """PEANuT ("Parameter-Efficient Adaptation with Weight-aware Neural Tweakers", arXiv 2410.01870): a small
    non-linear network computes each weight's update from the weight itself."""

    name: Literal["peanut"] = "peanut"
    title = "PEANuT"
    description = "A small non-linear network reads each frozen weight and computes its update."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "0.1–1%"
    default_lr = 1e-4  # peft's benchmark and example

    r: int = Field(32, ge=1, le=1024, description="Width of the network (as LoRA's rank).")
    scaling: float = Field(2.0, gt=0, le=1000, description="Scale of the update.")
    depth: int = Field(0, ge=0, le=8, description="Hidden layers between the network's input and output.",
                       json_schema_extra=advanced())  # fmt: skip

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import PeanutConfig

        return PeanutConfig(**self.common(ctx), r=self.r, scaling=self.scaling, depth=self.depth)


class PVeRA(StructuredUpdate):
    """PVeRA (arXiv 2512.07703): VeRA with a learnt distribution over its scaling vectors (the mean at inference)."""

    name: Literal["pvera"] = "pvera"
    title = "PVeRA"
    family = "shared bases"
    description = "VeRA that learns a distribution over its scaling vectors (frozen shared random matrices)."
    typical_share = "< 0.1%"
    default_lr = 3e-3  # peft's benchmark

    r: int = Field(256, ge=1, le=4096, description="Rank of the shared random matrices.")
    d_initial: float = Field(0.1, gt=0, le=10.0, description="Initial value of the d scaling vector.",
                             json_schema_extra=advanced())  # fmt: skip

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import PveraConfig

        return PveraConfig(**self.common(ctx), r=self.r, d_initial=self.d_initial, save_projection=True,
                           fan_in_fan_out=_fan_in_fan_out(ctx))  # fmt: skip


class BEFT(StructuredUpdate):
    """BEFT ("Bias-Efficient Fine-Tuning of Language Models", arXiv 2509.15974): train a bias vector on the
    value projections only."""

    name: Literal["beft"] = "beft"
    title = "BEFT"
    family = "selective"
    description = "Trains one bias vector per value projection (BitFit narrowed to the biases that matter most)."
    mergeable = False  # Llama-style layers have no bias to fold it into
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "< 0.02%"
    default_lr = 8e-3  # peft's BEFT example

    def fill_defaults(self, info: ModelInfo) -> BEFT:
        # the paper's choice: the value projection (v_proj, value), last of the query/value pair
        value = info.query_value_targets[-1:]
        return self if self.target_modules else self.model_copy(update={"target_modules": value})

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import BeftConfig

        targets = self.target_modules or ctx.info.query_value_targets[-1:]
        return BeftConfig(**{**self.common(ctx), "target_modules": targets})


class SuperTuning(StructuredUpdate):
    """Super-Tuning (arXiv 2607.09287): train only the largest-magnitude entries of each weight."""

    name: Literal["supertuning"] = "supertuning"
    title = "Super-Tuning (magnitude mask)"
    family = "mask tuning"
    description = "Mask-tuning by magnitude: only each weight's largest entries (1% by default) train."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "0.05–0.3%"
    default_lr = 1e-4  # peft's Super-Tuning example

    sparsity: float = Field(0.99, ge=0.5, lt=1.0, description="Share of each weight's entries that stay frozen.")
    select_top: bool = Field(True, description="Train the largest entries (off: the smallest).",
                             json_schema_extra=advanced())  # fmt: skip

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import SupertuningConfig

        # the chosen entries' indices are saved with the adapter, so a reload trains and loads the same ones
        return SupertuningConfig(**self.common(ctx), sparsity=self.sparsity, select_top=self.select_top,
                                 save_precomputed_indices=True)  # fmt: skip
