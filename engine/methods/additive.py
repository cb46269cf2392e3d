"""Small additive modules from peft: LLaMA-Adapter (gated adaption prompts) and IA3 (rescaling)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext
from adapter_studio.engine.methods.peft_base import PeftMethod, peft_task_type
from pydantic import Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec

LLAMA_ADAPTER_MODELS = ("llama", "mistral", "gpt2")


class LlamaAdapter(PeftMethod):
    """LLaMA-Adapter (Zhang et al., 2023): adaption prompts in the top layers, zero-init gate."""

    name: Literal["llama_adapter"] = "llama_adapter"
    title = "LLaMA-Adapter"
    family = "other additive"
    description = "Trained prompts in the top layers' attention, mixed in by a zero-initialised gate."
    mergeable = False
    typical_share = "< 0.1%"
    default_lr = 9e-3
    supported_models = "Llama, Mistral and GPT-2 style decoders"
    supports_classification = False

    adapter_len: int = Field(10, ge=1, le=256, description="Number of adaption-prompt tokens per layer.")
    adapter_layers: int | None = Field(
        None, ge=1, le=1024, description="How many top layers get prompts (empty: all, at most 30)."
    )

    def fill_defaults(self, info: ModelInfo) -> LlamaAdapter:
        layers = min(self.adapter_layers or 30, info.num_layers)
        return self.model_copy(update={"adapter_layers": layers})

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        if info.model_type not in LLAMA_ADAPTER_MODELS:
            raise UserError(
                f"LLaMA-Adapter supports {', '.join(LLAMA_ADAPTER_MODELS)} models, not {info.model_type}",
                where="method.name",
                fix="pick LoRA or IA3 for this model",
            )

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import AdaptionPromptConfig

        return AdaptionPromptConfig(
            task_type=peft_task_type(ctx.info),
            adapter_len=self.adapter_len,
            adapter_layers=min(self.adapter_layers or 30, ctx.info.num_layers),
        )


class IA3(PeftMethod):
    """IA3 (Liu et al., 2022): learned vectors rescale keys, values and feed-forward activations."""

    name: Literal["ia3"] = "ia3"
    title = "IA3"
    family = "other additive"
    description = "Learns vectors that rescale keys, values and feed-forward activations."
    mergeable = True
    typical_share = "< 0.05%"
    default_lr = 3e-3

    target_modules: list[str] | None = Field(
        None,
        description="Layers whose outputs (or inputs, for feed-forward ones) are rescaled. "
        "Empty: keys, values and the feed-forward output.",
        json_schema_extra={"widget": "targets"},
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="Which of the targets are feed-forward layers (their input is rescaled).",
        json_schema_extra={"widget": "targets", "advanced": True},
    )

    def fill_defaults(self, info: ModelInfo) -> IA3:
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        )
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
        )

        targets = self.target_modules or TARGETS.get(info.model_type) or list(info.query_value_targets)
        feedforward = self.feedforward_modules
        if feedforward is None:
            known = FEEDFORWARD.get(info.model_type, [])
            feedforward = [m for m in known if m in targets]
        return self.model_copy(update={"target_modules": list(targets), "feedforward_modules": list(feedforward)})

    @field_validator("feedforward_modules")
    @classmethod
    def _feedforward_among_targets(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        targets = info.data.get("target_modules")
        outside = _outside(targets, value or []) if targets else None
        if outside:  # said with the spec's line; with the default targets, by check() once they are known
            raise ValueError(outside)
        return value

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        filled = self.fill_defaults(info)
        outside = _outside(filled.target_modules or [], filled.feedforward_modules or [])
        if outside:  # peft said "`feedforward_modules` should be a subset of `target_modules`" after the model loaded
            raise UserError(outside, where="method.feedforward_modules", fix=FEEDFORWARD_FIX)

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import IA3Config

        filled = self.fill_defaults(ctx.info)
        return IA3Config(
            task_type=peft_task_type(ctx.info),
            target_modules=filled.target_modules,
            feedforward_modules=filled.feedforward_modules,
        )


FEEDFORWARD_FIX = "add it to method.target_modules, or take it out of method.feedforward_modules"


def _outside(targets: list[str], feedforward: list[str]) -> str | None:
    outside = [m for m in feedforward if m not in targets]
    verb = "is" if len(outside) == 1 else "are"
    return f"{', '.join(outside)} {verb} not among the target modules ({', '.join(targets)})" if outside else None
