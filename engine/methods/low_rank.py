"""Low-rank updates W + BA through peft: LoRA, DoRA, rsLoRA, LoRA+ and AdaLoRA."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.methods.base import MethodContext, advanced
from adapter_studio.engine.methods.peft_base import PeftMethod, peft_task_type
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo

TARGETS_DESCRIPTION = (
    "Layers that get an update, by their names in the model (q_proj, v_proj on Llama; c_attn on GPT-2; "
    "query, value on BERT). Empty means the method's usual choice for this model."
)


class LowRankFields(PeftMethod):
    family = "low-rank"
    mergeable = True
    typical_share = "0.1–1%"
    default_lr = 2e-4

    r: int = Field(8, ge=1, le=1024, description="Rank of the update: higher learns more, costs more.")
    alpha: float = Field(16.0, gt=0, le=4096, description="Scale of the update (alpha / r multiplies it).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input while training.")
    target_modules: list[str] | None = Field(
        None, description=TARGETS_DESCRIPTION, json_schema_extra={"widget": "targets"}
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Also train biases: none, all, or those of adapted layers.",
        json_schema_extra=advanced(),
    )

    def fill_defaults(self, info: ModelInfo) -> LowRankFields:
        if self.target_modules:
            return self
        return self.model_copy(update={"target_modules": list(info.query_value_targets)})

    def lora_kwargs(self, ctx: MethodContext) -> dict[str, Any]:
        return {
            "task_type": peft_task_type(ctx.info),
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules or ctx.info.query_value_targets,
            "bias": self.bias,
        }

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LoraConfig

        return LoraConfig(**self.lora_kwargs(ctx))


class LoRA(LowRankFields):
    """LoRA (Hu et al., 2021)."""

    name: Literal["lora"] = "lora"
    title = "LoRA"
    description = "Adds a trainable low-rank update BA beside chosen weight matrices; the base stays frozen."


class DoRA(LowRankFields):
    """DoRA (Liu et al., 2024): LoRA on the direction, plus a trained magnitude per output."""

    name: Literal["dora"] = "dora"
    title = "DoRA"
    description = "Splits each adapted weight into magnitude and direction; LoRA updates the direction."

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LoraConfig

        return LoraConfig(**self.lora_kwargs(ctx), use_dora=True)


class RsLoRA(LowRankFields):
    """rsLoRA (Kalajdzievski, 2023): scale alpha/sqrt(r) so high ranks keep learning."""

    name: Literal["rslora"] = "rslora"
    title = "rsLoRA"
    description = "LoRA scaled by alpha/√r instead of alpha/r, so higher ranks train stably."

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LoraConfig

        return LoraConfig(**self.lora_kwargs(ctx), use_rslora=True)


class LoRAPlus(LowRankFields):
    """LoRA+ (Hayou et al., 2024): the B matrices learn `loraplus_lr_ratio` times faster."""

    name: Literal["loraplus"] = "loraplus"
    title = "LoRA+"
    description = "LoRA whose B matrices get a higher learning rate than A, for faster convergence."

    loraplus_lr_ratio: float = Field(
        16.0, ge=1.0, le=256.0, description="Learning-rate multiplier for the B matrices (about 16 works)."
    )

    def build_optimizer(self, model: torch.nn.Module, lr: float, weight_decay: float) -> Any:
        import torch
        from adapter_studio.engine.training.devices import adamw_implementation
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model=model,
            optimizer_cls=torch.optim.AdamW,
            lr=lr,
            loraplus_lr_ratio=self.loraplus_lr_ratio,
            weight_decay=weight_decay,
            **adamw_implementation([p for p in model.parameters() if p.requires_grad]),
        )


class AdaLoRA(LowRankFields):
    """AdaLoRA (Zhang et al., 2023): SVD-shaped updates whose ranks are pruned by importance."""

    name: Literal["adalora"] = "adalora"
    title = "AdaLoRA"
    uses_total_steps = True
    description = "Starts every update at init_r and moves rank budget to the layers that matter most."

    init_r: int = Field(12, ge=1, le=1024, description="Starting rank of every update.")
    target_r: int = Field(8, ge=1, le=1024, description="Average rank left after pruning.")
    warmup_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of steps before rank pruning starts.", json_schema_extra=advanced()
    )
    final_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of final steps with the ranks held fixed.",
        json_schema_extra=advanced(),
    )
    orth_reg_weight: float = Field(
        0.5, ge=0.0, le=10.0, description="Weight of the orthogonality penalty.", json_schema_extra=advanced()
    )

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import AdaLoraConfig

        kwargs = self.lora_kwargs(ctx)
        kwargs.pop("r")
        total = max(ctx.total_steps, 3)
        tinit = int(total * self.warmup_fraction)
        tfinal = int(total * self.final_fraction)
        tfinal = min(tfinal, total - tinit - 1)  # peft needs tinit < total - tfinal
        return AdaLoraConfig(
            **kwargs,
            init_r=self.init_r,
            target_r=min(self.target_r, self.init_r),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=max(1, (total - tinit - tfinal) // 10),
            orth_reg_weight=self.orth_reg_weight,
            total_step=total,
        )

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        adapted = super().apply(model, ctx)
        # `ranknum` is a constant (the rank the scaling divides by). peft makes it a trainable
        # Parameter again when it casts adapters of a bf16/fp16 base to float32, and AdamW would then
        # change the scaling: keep it frozen whatever the base's dtype.
        for name, param in adapted.named_parameters():
            if name.endswith("ranknum.default"):
                param.requires_grad_(False)
        return adapted

    def on_step(self, model: torch.nn.Module, step: int) -> None:
        model.base_model.update_and_allocate(step)  # type: ignore[union-attr,operator]
