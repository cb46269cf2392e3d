"""The other weight-update tuners peft carries that train these models, each declared once: orthogonal
(HRA), spectral and circulant (FourierFT, C3A), shared bases (VB-LoRA, RandLoRA), sharded
(MiSS), decoupled low-rank (DeLoRA), and the two mask-tuning methods — SHiRA's unstructured sparse
mask over each weight and LayerNorm tuning's structured one (only the norm layers train).

peft's BOFT is left out: it keeps a dense width × width permutation matrix per factor in every adapted
layer (about 9 GB across an 8B model) and cannot be built on the meta device the estimate uses.

Learning rates follow each paper's setting for decoders of this size where it gives one; the
automatic finder (`training.learning_rate: auto`) is the way to check them on a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, advanced
from adapter_studio.engine.methods.peft_base import PeftMethod, peft_task_type
from adapter_studio.engine.methods.structured import StructuredUpdate
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec

LINEAR_ONLY = "models built from nn.Linear layers (not GPT-2)"


def block_for(info: ModelInfo, largest: int = 256) -> int:
    """The largest power of two up to `largest` that divides every input and output width of the
    blocks' linear layers: the block or vector size these tuners need."""
    size = largest
    while size > 1 and any(w % size for w in info.linear_widths or [info.hidden_size]):
        size //= 2
    return size


class HRA(StructuredUpdate):
    """HRA (Yuan et al., 2024): a chain of r Householder reflections applied to each weight."""

    name: Literal["hra"] = "hra"
    title = "HRA"
    family = "orthogonal"
    description = "Multiplies each weight by a chain of learned Householder reflections (orthogonal)."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "0.05–0.5%"
    default_lr = 2e-4

    r: int = Field(8, ge=2, le=256, multiple_of=2, description="Number of reflections (even).")
    apply_GS: bool = Field(
        False, description="Orthogonalise the reflections (Gram-Schmidt).", json_schema_extra=advanced()
    )

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import HRAConfig

        return HRAConfig(**self.common(ctx), r=self.r, apply_GS=self.apply_GS)


class FourierFT(StructuredUpdate):
    """FourierFT (Gao et al., 2024): learn a few spectral coefficients of each weight update."""

    name: Literal["fourierft"] = "fourierft"
    title = "FourierFT"
    family = "spectral"
    description = "Learns n spectral coefficients per layer; the update is their inverse Fourier transform."
    typical_share = "< 0.01%"
    default_lr = 5e-3

    n_frequency: int = Field(1000, ge=1, le=1_000_000, description="Spectral coefficients learnt per layer.")
    scaling: float = Field(150.0, gt=0, le=10_000, description="Scale of the update.")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import FourierFTConfig

        # init_weights=True: zero coefficients, so training starts from the base model (peft's default
        # random ones move SmolLM2's first loss from 0.50 to 1.27 at scaling 150)
        return FourierFTConfig(**self.common(ctx), n_frequency=self.n_frequency, scaling=self.scaling,
                               fan_in_fan_out=bool(ctx.info.conv1d_names), init_weights=True)  # fmt: skip


class C3A(StructuredUpdate):
    """C3A (Chen et al., 2024): the update is a block-circulant matrix, applied as a convolution."""

    name: Literal["c3a"] = "c3a"
    title = "C3A"
    family = "spectral"
    description = "Block-circulant update applied by circular convolution (FFT): high rank, few parameters."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "0.01–0.1%"
    default_lr = 5e-3

    block_size: int | None = Field(
        None, ge=1, le=4096,
        description="Circulant block size; divides the layer widths. Empty: the largest power of two up to 256 "
        "that divides every layer width.",
    )  # fmt: skip

    def fill_defaults(self, info: ModelInfo) -> C3A:
        filled = super().fill_defaults(info)
        return filled.model_copy(update={"block_size": self.block_size or block_for(info)})

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import C3AConfig

        # init_weights=True: a zero kernel, so training starts from the base model (peft's default is Xavier)
        return C3AConfig(**self.common(ctx), block_size=self.block_size or block_for(ctx.info), init_weights=True)


class VBLoRA(StructuredUpdate):
    """VB-LoRA (Li et al., 2024): every LoRA factor is mixed from one shared bank of vectors."""

    name: Literal["vblora"] = "vblora"
    title = "VB-LoRA"
    family = "shared bases"
    description = "LoRA whose factors are top-k mixtures of one shared vector bank: a tiny adapter file."
    typical_share = "0.01–0.1%"
    default_lr = 2e-3

    r: int = Field(4, ge=1, le=256, description="Rank of each layer's update.")
    num_vectors: int = Field(256, ge=2, le=65536, description="Vectors in the shared bank.")
    vector_length: int | None = Field(None, ge=1, le=4096, description="Length of each bank vector; divides the "
                                      "layer widths. Empty: the largest power of two up to 256 that divides the "
                                      "model width.")  # fmt: skip
    topk: int = Field(2, ge=1, le=16, description="Bank vectors mixed into each piece.", json_schema_extra=advanced())

    def fill_defaults(self, info: ModelInfo) -> VBLoRA:
        filled = super().fill_defaults(info)
        return filled.model_copy(update={"vector_length": self.vector_length or block_for(info)})

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import VBLoRAConfig

        return VBLoRAConfig(**self.common(ctx), r=self.r, num_vectors=self.num_vectors, topk=self.topk,
                            vector_length=self.vector_length or block_for(ctx.info),
                            fan_in_fan_out=bool(ctx.info.conv1d_names), save_only_topk_weights=False)  # fmt: skip


class RandLoRA(StructuredUpdate):
    """RandLoRA (Albert et al., 2025): full-rank updates from frozen random bases and trained scales."""

    name: Literal["randlora"] = "randlora"
    title = "RandLoRA"
    family = "shared bases"
    description = "Full-rank update from frozen shared random bases; only small scaling matrices train."
    typical_share = "0.01–0.5%"
    default_lr = 2e-3

    r: int = Field(32, ge=1, le=1024, description="Size of each random basis (smaller: more bases, more parameters).")
    alpha: float = Field(640.0, gt=0, le=100_000, description="Scale of the update.", json_schema_extra=advanced())

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import RandLoraConfig

        return RandLoraConfig(**self.common(ctx), r=self.r, randlora_alpha=self.alpha, save_projection=True,
                              fan_in_fan_out=bool(ctx.info.conv1d_names))  # fmt: skip


class MiSS(StructuredUpdate):
    """MiSS (Kang & Yin, 2024; peft's successor of Bone): one small shard shared across each weight."""

    name: Literal["miss"] = "miss"
    title = "MiSS"
    family = "structured updates"
    description = "Trains one small shard per layer that is repeated across the weight (Bone's successor)."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "0.1–1%"
    default_lr = 2e-4

    r: int = Field(64, ge=1, le=4096, description="Shard size; divides the layers' output widths.")

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        if info.hidden_size % self.r:
            raise UserError(
                f"MiSS's shard size r={self.r} does not divide the model width {info.hidden_size}",
                where="method.r",
                fix=f"pick r that divides {info.hidden_size}, e.g. {block_for(info, 64)}",
            )

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import MissConfig

        return MissConfig(**self.common(ctx), r=self.r)


class DeLoRA(StructuredUpdate):
    """DeLoRA (Bini et al., 2025): LoRA whose update's strength is decoupled from its direction."""

    name: Literal["delora"] = "delora"
    title = "DeLoRA"
    family = "decoupled low-rank"  # not "low-rank": LoRA's rate table diverged it (SmolLM2 loss 0.50 → 23 at 2e-3)
    description = "Low-rank update normalised to a bounded strength (lambda): robust to the learning rate."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "0.1–1%"
    default_lr = 2e-4

    r: int = Field(8, ge=1, le=1024, description="Rank of the update.")
    # peft's default bound, 15, threw SmolLM2's loss from 0.50 to 7.7 on the first step; 1 trains
    # (0.50 → 0.11 in 6 steps at 2e-4).
    delora_lambda: float = Field(1.0, gt=0, le=1000, description="Bound on the update's strength.")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import DeloraConfig

        return DeloraConfig(**self.common(ctx), r=self.r, delora_lambda=self.delora_lambda)


class SHiRA(StructuredUpdate):
    """SHiRA (Bhardwaj et al., 2024): an unstructured sparse mask; only those entries of each weight train."""

    name: Literal["shira"] = "shira"
    title = "SHiRA (sparse mask)"
    family = "mask tuning"
    description = "Unstructured mask-tuning: a fixed sparse subset of each weight's entries trains directly."
    supported_models = LINEAR_ONLY
    supports_conv1d = False
    typical_share = "0.1–1%"
    default_lr = 5e-4

    r: int = Field(8, ge=1, le=4096, description="Trained entries per layer = r × (rows + columns), as LoRA of rank r.")
    mask_type: Literal["random"] = Field(
        "random", description="How the entries are chosen.", json_schema_extra=advanced()
    )

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import ShiraConfig

        config = ShiraConfig(**self.common(ctx), r=self.r, mask_type=self.mask_type, random_seed=ctx.training.seed)
        config.mask_fn = random_mask_on_cpu  # the indices are saved with the adapter: any mask reloads
        return config


def random_mask_on_cpu(base_layer: torch.nn.Module, r: int, random_seed: int | None = None, **_: Any) -> torch.Tensor:
    """peft's random SHiRA mask (the same entries for the same seed), made on the CPU even when the layer
    is on the meta device, where the Compare page's estimate builds it: peft's own needs real values."""
    import torch

    out_features, in_features = base_layer.weight.shape
    count = r * (in_features + out_features)
    generator = torch.Generator()
    if random_seed is not None:
        generator.manual_seed(random_seed)
    chosen = torch.randperm(out_features * in_features, generator=generator, device="cpu")[:count]
    mask = torch.zeros(out_features * in_features, device="cpu", dtype=torch.bool)
    mask[chosen] = True
    device = base_layer.weight.device
    return mask.view(out_features, in_features).to("cpu" if device.type == "meta" else device)


class LNTuning(PeftMethod):
    """LN tuning (Zhao et al., 2024): a structured mask — only the normalisation layers' weights train."""

    name: Literal["ln_tuning"] = "ln_tuning"
    title = "LayerNorm tuning"
    family = "mask tuning"
    description = "Structured mask-tuning: only the normalisation layers' scales (and biases) train."
    mergeable = True
    typical_share = "< 0.05%"
    default_lr = 3e-3
    target_kind = "norms"

    target_modules: list[str] | None = Field(
        None, description="Norm layers that train, by name (input_layernorm, post_attention_layernorm on Llama; "
        "LayerNorm on BERT). Empty: every norm layer in the blocks.", json_schema_extra={"widget": "targets"},
    )  # fmt: skip

    def fill_defaults(self, info: ModelInfo) -> LNTuning:
        return self if self.target_modules else self.model_copy(update={"target_modules": list(info.norm_names)})

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        if not (self.target_modules or info.norm_names):
            raise UserError(f"no normalisation layers found in this {info.model_type} model", where="method.name",
                            fix="pick BitFit or LoRA for this model")  # fmt: skip

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LNTuningConfig

        targets = self.target_modules or ctx.info.norm_names
        return LNTuningConfig(task_type=peft_task_type(ctx.info), target_modules=targets)

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """peft's LN-tuning merge leaves the trained classifier head wrapped (its modules_to_save):
        put the trained copy in the wrapper's place, as the other tuners' merges do."""
        from peft.utils import ModulesToSaveWrapper

        merged = super().merge(model)
        for name, module in list(merged.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                parent_name, _, leaf = name.rpartition(".")
                parent = merged.get_submodule(parent_name) if parent_name else merged
                setattr(parent, leaf, module.modules_to_save[module.active_adapter])
        return merged
