"""Methods that train a chosen subset of the model's own weights: BitFit, last N layers, full.

Their "adapter" is the trained tensors saved as safetensors; merging writes them into the base.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, MethodSpec, freeze_all
from adapter_studio.engine.models.info import FINAL_NORM_NAMES
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def unfreeze_head(model: torch.nn.Module, info: ModelInfo) -> None:
    """A classifier's new head always trains: it starts random."""
    if info.task != "classification":
        return
    for name, p in model.named_parameters():
        if name.split(".")[0] in ("classifier", "score") or ".classifier." in name:
            p.requires_grad_(True)


class SelectiveMethod(MethodSpec):
    family = "selective"
    mergeable = True
    adapter_format = "selective"

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        from pathlib import Path

        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(Path(out_dir) / ADAPTER_WEIGHTS))

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # the trained weights are already the model's own


class BitFit(SelectiveMethod):
    """BitFit (Ben Zaken et al., 2022): train only the bias terms."""

    name: Literal["bitfit"] = "bitfit"
    title = "BitFit"
    description = "Trains only the bias vectors (plus a classifier head); needs a model that has biases."
    typical_share = "≈ 0.1%"
    default_lr = 1e-3
    supported_models = "models with bias terms (GPT-2, BERT, Qwen2); not Llama, Mistral or SmolLM2"

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        if not info.has_bias:
            raise UserError(
                f"BitFit trains bias terms, and this {info.model_type} model has none",
                where="method.name",
                fix="pick LoRA or IA3, or a model with biases such as GPT-2, BERT or Qwen2",
            )

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        freeze_all(model)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
        unfreeze_head(model, ctx.info)
        return model


class LastLayers(SelectiveMethod):
    """"Finetuning I": the last N blocks, the final norm and an untied head."""

    name: Literal["last_layers"] = "last_layers"
    title = "Last layers (head + last N blocks)"
    description = "Trains the last N transformer blocks, the final norm and the output head."
    typical_share = "5–30%"
    default_lr = 5e-5

    num_layers: int = Field(2, ge=0, le=1024, description="How many of the last transformer blocks train.")
    train_head: bool = Field(
        True, description="Also train the output head (skipped when it is tied to the input embeddings)."
    )

    def fill_defaults(self, info: ModelInfo) -> LastLayers:
        return self.model_copy(update={"num_layers": min(self.num_layers, info.num_layers)})

    def trainable_prefixes(self, model: torch.nn.Module, info: ModelInfo) -> list[str]:
        blocks = model.get_submodule(info.layers_path)
        count = min(self.num_layers, len(blocks))  # type: ignore[arg-type]
        prefixes = [f"{info.layers_path}.{i}." for i in range(len(blocks) - count, len(blocks))]  # type: ignore[arg-type]
        base_prefix = info.layers_path.rsplit(".", 1)[0] + "." if "." in info.layers_path else ""
        # The final norm sits beside the blocks (model.norm, transformer.ln_f).
        prefixes += [base_prefix + n + "." for n in FINAL_NORM_NAMES]
        if self.train_head and not info.tied_embeddings:
            prefixes += ["lm_head.", "embed_out."]
        prefixes += ["classifier.", "score.", "bert.pooler."]
        return prefixes

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        freeze_all(model)
        prefixes = tuple(self.trainable_prefixes(model, ctx.info))
        for name, p in model.named_parameters():
            if name.startswith(prefixes):
                p.requires_grad_(True)
        unfreeze_head(model, ctx.info)
        return model

    def notes(self, info: ModelInfo) -> list[str]:
        if self.train_head and info.tied_embeddings and info.task == "causal_lm":
            return ["the output head is tied to the input embeddings in this model, so it stays frozen"]
        return []


class FullFineTuning(SelectiveMethod):
    """"Finetuning II": every weight trains."""

    name: Literal["full"] = "full"
    title = "Full fine-tuning"
    description = "Trains every weight of the model: most capable, most memory (weights ×4 for AdamW)."
    typical_share = "100%"
    default_lr = 2e-5
    default_batch_size = 2

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def notes_for(method: MethodSpec, info: ModelInfo) -> list[str]:
    """Things worth telling the person about this method on this model (logged at start)."""
    getter: Any = getattr(method, "notes", None)
    return getter(info) if getter else []


def load_selective_adapter(base: torch.nn.Module, folder: Any) -> torch.nn.Module:
    """Write an exported BitFit / last-layers / full adapter's tensors into a fresh base model."""
    from pathlib import Path

    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    _missing, unexpected = base.load_state_dict(tensors, strict=False)
    if unexpected:
        raise UserError(f"the adapter has tensors this model lacks: {unexpected[:3]}", where=str(folder))
    return base
