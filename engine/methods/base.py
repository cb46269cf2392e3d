"""The declaration every fine-tuning method makes, once: fields, facts, and how it changes a model.

A method is a pydantic model with a `name: Literal[...]` tag. Its fields (with description,
bounds, defaults) are the spec-file schema, the CLI overrides and the window's form; its ClassVars
are what the picker shows. `apply` turns a base model into a trainable one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from adapter_studio.engine.errors import UserError
from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec


@dataclass
class MethodContext:
    """What `apply` may need beyond the model: its facts, the training budget, the tokenizer."""

    info: ModelInfo
    training: TrainingSpec
    total_steps: int
    tokenizer: Any = None
    # Batches of training rows (of at least the given number of rows each), for methods whose start is
    # computed from the data (LoRA's EVA); None where no data is at hand (the estimate, loading a trained
    # run: its weights come from the checkpoint).
    sample_batches: Callable[[int], Iterable[dict[str, Any]]] | None = None
    # The folder of the base's unquantised safetensors weights, for a start computed from them under a
    # 4-bit base (LoRA's LoftQ); None where the start does not matter (the estimate, a trained run).
    weights_folder: Path | None = None
    log: Callable[[str], None] | None = None  # a line for the run's log: what a computed start did


def advanced(**extra: Any) -> dict[str, Any]:
    """`json_schema_extra` marking a field for the form's collapsible "Advanced" section."""
    return {"advanced": True, **extra}


class MethodSpec(BaseModel):
    """Base of all methods. Subclasses declare `name: Literal["..."]` and their fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str

    title: ClassVar[str] = ""
    family: ClassVar[str] = ""
    target_kind: ClassVar[str] = "linear"  # what `target_modules` names: linear layers, or "norms"
    description: ClassVar[str] = ""
    mergeable: ClassVar[bool] = False
    typical_share: ClassVar[str] = ""
    default_lr: ClassVar[float] = 2e-4
    default_batch_size: ClassVar[int] = 4
    supported_models: ClassVar[str] = "all decoder and encoder models"
    supports_classification: ClassVar[bool] = True
    supports_gradient_checkpointing: ClassVar[bool] = True
    adapter_format: ClassVar[str] = "peft"
    uses_total_steps: ClassVar[bool] = False  # `apply` reads MethodContext.total_steps (a schedule in the method)
    routes_by_task: ClassVar[bool] = False  # reads each row's task (data.columns.task): engine.methods.poly

    @model_validator(mode="before")
    @classmethod
    def _split_comma_lists(cls, data: Any) -> Any:
        # `--set method.target_modules=q_proj,v_proj` arrives as one string.
        if isinstance(data, dict):
            for key, value in list(data.items()):
                info = cls.model_fields.get(key)
                if info is not None and isinstance(value, str) and "list" in str(info.annotation):
                    data[key] = [part.strip() for part in value.split(",") if part.strip()]
        return data

    # --- facts for the picker and `adapter-studio methods` -------------------------------------
    @classmethod
    def summary(cls) -> dict[str, Any]:
        return {
            "name": cls.model_fields["name"].default,
            "title": cls.title,
            "family": cls.family,
            "mergeable": cls.mergeable,
            "description": cls.description,
            "typical_share": cls.typical_share,
            "default_learning_rate": cls.default_lr,
            "supported_models": cls.supported_models,
            "supports_classification": cls.supports_classification,
            "fields": [n for n in cls.model_fields if n != "name"],
        }

    # --- fitting the model ---------------------------------------------------------------------
    def fill_defaults(self, info: ModelInfo) -> MethodSpec:
        """A copy with every model-dependent default (target modules, layer counts) filled in."""
        return self

    @property
    def changes_base(self) -> bool:
        """Whether applying the method rewrites the base weights it adapts (PiSSA, OLoRA: the base keeps a
        residual), so that the adapter switched off is not the base model: the base for comparisons and
        the preference reference then come from the untouched weights."""
        return False

    @property
    def reads_data(self) -> bool:
        """Whether `apply` reads training batches (ctx.sample_batches) to start the adapter (LoRA's EVA)."""
        return False

    def with_tasks(self, names: list[str] | None, packing: bool, where: str) -> MethodSpec:
        """This method for data with these task names (`routes_by_task` methods record them)."""
        return self

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        """Raise UserError when this method cannot work with this model or these settings."""
        if info.task == "classification" and not self.supports_classification:
            raise UserError(
                f"{self.title} does not apply to classification models",
                where="method.name",
                fix="pick LoRA, IA3 or BitFit for a classifier",
            )
        if training.gradient_checkpointing == "on" and not self.supports_gradient_checkpointing:
            raise UserError(
                f"{self.title} does not work with gradient checkpointing",
                where="training.gradient_checkpointing",
                fix="turn gradient checkpointing off, or pick LoRA",
            )
        targets = getattr(self, "target_modules", None)
        # peft matches a target by the end of a module's name and fails only deep inside, with the names
        # it looked for: say here which layer names this model has.
        names, kind = (info.norm_names, "norm") if self.target_kind == "norms" else (info.linear_names, "linear")
        # A name among known ones was dropped unsaid (q_proj,vv_proj trained q_proj alone). peft also takes a
        # module's path (self_attn.q_proj: its last part is the layer's name) and the output head.
        known = {*names, *(info.head_names if kind == "linear" else [])}
        unknown = [t for t in targets or [] if isinstance(t, str) and t.rsplit(".", 1)[-1] not in known]
        if isinstance(targets, list) and unknown and names:
            raise UserError(
                _not_targets(unknown, info, kind, self.title),
                where="method.target_modules",
                fix=f"pick from its {kind} layers: {', '.join(names)}",
            )

    # --- training ------------------------------------------------------------------------------
    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        """Return the model with only this method's parameters trainable."""
        raise NotImplementedError

    def build_optimizer(self, model: torch.nn.Module, lr: float, weight_decay: float) -> Any:
        """A method-specific optimizer, or None for the default AdamW over trainable parameters."""
        return None

    def on_step(self, model: torch.nn.Module, step: int) -> None:
        """Called after each optimizer step (AdaLoRA reallocates its ranks here)."""

    # --- saving --------------------------------------------------------------------------------
    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        raise NotImplementedError

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """The base model with the trained change folded into its weights."""
        raise UserError(
            f"{self.title} cannot be merged into the base weights",
            where="export",
            fix="export the adapter only",
        )


def _not_targets(unknown: list[str], info: ModelInfo, kind: str, title: str) -> str:
    """What the names a method cannot adapt are: embed_tokens was "no layer named", yet the model has one."""
    others = {**dict.fromkeys(info.embedding_names, "an embedding"), **dict.fromkeys(info.norm_names, "a norm layer"),
              **dict.fromkeys(info.linear_names, "a linear layer")}
    known = [t for t in unknown if t.rsplit(".", 1)[-1] in others]
    if not known:
        return f"this model has no layer named {', '.join(unknown)}"
    what = "; ".join(f"{t} is {others[t.rsplit('.', 1)[-1]]}" for t in known)
    missing = [t for t in unknown if t not in known]
    return (f"{what}, not a {kind} layer: {title} adapts {kind} layers"
            + (f"; this model has no layer named {', '.join(missing)}" if missing else ""))


def subclass_named(root: type[MethodSpec], name: str) -> type[MethodSpec] | None:
    """The subclass of `root` (at any depth) whose `name` tag is `name`, or None. For modules the method
    registry (engine.methods) imports, which therefore cannot import it."""
    todo = [root]
    while todo:
        for sub in todo.pop().__subclasses__():
            field = sub.model_fields.get("name")
            if field is not None and field.default == name:
                return sub
            todo.append(sub)
    return None


def freeze_all(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def trainable_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
