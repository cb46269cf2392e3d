"""Shared plumbing for the methods peft implements: build a config, wrap, save, merge."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.methods.base import MethodContext, MethodSpec

if TYPE_CHECKING:
    import torch

    from engine.model_info import ModelInfo


def peft_task_type(info: ModelInfo) -> Any:
    from peft import TaskType

    return TaskType.SEQ_CLS if info.task == "classification" else TaskType.CAUSAL_LM


class PeftMethod(MethodSpec):
    """A method whose model surgery, saving and merging peft does."""

    def peft_config(self, ctx: MethodContext) -> Any:
        raise NotImplementedError

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(ctx))

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        model.save_pretrained(out_dir)  # type: ignore[operator]

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.mergeable:
            return super().merge(model)
        return model.merge_and_unload()  # type: ignore[operator]
