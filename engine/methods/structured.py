"""Other weight-update methods from peft: LoHa, LoKr (Hadamard / Kronecker products), VeRA, OFT."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext
from adapter_studio.engine.methods.low_rank import TARGETS_DESCRIPTION
from adapter_studio.engine.methods.peft_base import PeftMethod, peft_task_type
from pydantic import Field

if TYPE_CHECKING:
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec


class StructuredUpdate(PeftMethod):
    family = "structured updates"
    mergeable = True
    default_lr = 2e-4
    supports_conv1d: ClassVar[bool] = True  # peft's LoHa, LoKr and OFT reject GPT-2's Conv1D layers

    target_modules: list[str] | None = Field(
        None, description=TARGETS_DESCRIPTION, json_schema_extra={"widget": "targets"}
    )

    def fill_defaults(self, info: ModelInfo) -> StructuredUpdate:
        if self.target_modules:
            return self
        return self.model_copy(update={"target_modules": list(info.query_value_targets)})

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        conv1d = sorted(set(self.target_modules or info.query_value_targets) & set(info.conv1d_names))
        if conv1d and not self.supports_conv1d:
            raise UserError(
                f"{self.title} works on nn.Linear layers only, and {', '.join(conv1d)} in this "
                f"{info.model_type} model are Conv1D",
                where="method.name",
                fix="pick LoRA, IA3 or VeRA for this model",
            )

    def common(self, ctx: MethodContext) -> dict[str, Any]:
        return {"task_type": peft_task_type(ctx.info), "target_modules": self.target_modules}


class LoHa(StructuredUpdate):
    """LoHa (Hyeon-Woo et al., 2022): update = (B1 A1) ⊙ (B2 A2)."""

    name: Literal["loha"] = "loha"
    title = "LoHa"
    description = "Low-rank Hadamard product update: more expressive than LoRA at the same size."
    supported_models = "models built from nn.Linear layers (not GPT-2)"
    supports_conv1d = False
    typical_share = "0.2–2%"

    r: int = Field(8, ge=1, le=512, description="Rank of each of the two factor pairs.")
    alpha: float = Field(8.0, gt=0, le=4096, description="Scale of the update (alpha / r multiplies it).")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LoHaConfig

        return LoHaConfig(**self.common(ctx), r=self.r, alpha=self.alpha)


class LoKr(StructuredUpdate):
    """LoKr (Yeh et al., 2023): update = kron(C, BA)."""

    name: Literal["lokr"] = "lokr"
    title = "LoKr"
    description = "Kronecker-product update: very few parameters for large layers."
    supported_models = "models built from nn.Linear layers (not GPT-2)"
    supports_conv1d = False
    typical_share = "0.01–0.5%"

    r: int = Field(8, ge=1, le=512, description="Rank of the low-rank factor.")
    alpha: float = Field(8.0, gt=0, le=4096, description="Scale of the update (alpha / r multiplies it).")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LoKrConfig

        return LoKrConfig(**self.common(ctx), r=self.r, alpha=self.alpha)


class VeRA(StructuredUpdate):
    """VeRA (Kopiczko et al., 2024): frozen shared random matrices, trained scaling vectors."""

    name: Literal["vera"] = "vera"
    title = "VeRA"
    description = "Shares one frozen random low-rank pair across layers and trains only scaling vectors."
    typical_share = "< 0.05%"
    default_lr = 4e-3

    r: int = Field(256, ge=1, le=4096, description="Rank of the shared random matrices.")
    d_initial: float = Field(0.1, gt=0, le=10.0, description="Initial value of the d scaling vector.")

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import VeraConfig

        return VeraConfig(**self.common(ctx), r=self.r, d_initial=self.d_initial, save_projection=True)


class OFT(StructuredUpdate):
    """OFT (Qiu et al., 2023): learn a block-diagonal orthogonal rotation of each weight."""

    name: Literal["oft"] = "oft"
    title = "OFT"
    description = "Rotates each adapted weight by a learned block-diagonal orthogonal matrix."
    supported_models = "models built from nn.Linear layers (not GPT-2)"
    supports_conv1d = False
    typical_share = "0.1–1%"
    default_lr = 1e-4

    oft_block_size: int = Field(
        32, ge=2, le=1024, description="Size of each orthogonal block; must divide the layer's input width."
    )

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import OFTConfig

        return OFTConfig(**self.common(ctx), r=0, oft_block_size=self.oft_block_size)
