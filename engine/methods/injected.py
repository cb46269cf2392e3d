"""Methods that inject their own modules beside the frozen base (not peft's): their adapter is every
trained tensor, named relative to the transformers model, and loading injects the same modules into a
fresh base before filling them. Export format "injected": `adapter_model.safetensors` plus the
method's fields in the export's `adapter_studio.json` (engine.export.run_export)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodSpec, freeze_all
from adapter_studio.engine.methods.selective import ADAPTER_WEIGHTS

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo


class InjectedMethod(MethodSpec):
    adapter_format = "injected"

    def inject(self, model: torch.nn.Module, info: ModelInfo) -> Any:
        """Add the method's modules to `model` (untrained, not yet trainable)."""
        raise NotImplementedError

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out / ADAPTER_WEIGHTS))

    def inject_saved(self, base: torch.nn.Module, folder: Path) -> None:
        """Inject the modules an export holds (by default as the method's fields say; AdapterFusion reads
        the fused runs' settings from the export)."""
        from adapter_studio.engine.models.info import describe_model

        self.inject(base, describe_model(base))

    def load_adapter(self, base: torch.nn.Module, folder: Path) -> torch.nn.Module:
        """Inject the modules into a fresh base model and fill them from an exported adapter (frozen)."""
        from safetensors.torch import load_file

        before = {id(p) for p in base.parameters()}  # by identity: wrapping renames the base's own (….base_layer.…)
        self.inject_saved(base, folder)
        tensors = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
        missing, unexpected = base.load_state_dict(tensors, strict=False)
        params = dict(base.named_parameters())
        added = [n for n in missing if n in params and id(params[n]) not in before]  # the injected ones, all there
        if unexpected or added:
            raise UserError(f"the adapter does not fit this model: unknown {unexpected[:3]}, missing {added[:3]}",
                            where=str(folder), fix="load it onto the base model it was trained on")  # fmt: skip
        freeze_all(base)
        return base
