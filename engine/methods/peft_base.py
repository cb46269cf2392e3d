"""Shared plumbing for the methods peft implements: build a config, wrap, save, merge."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapter_studio.engine.methods.base import MethodContext, MethodSpec

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo


def peft_task_type(info: ModelInfo) -> Any:
    from peft import TaskType

    return TaskType.SEQ_CLS if info.task == "classification" else TaskType.CAUSAL_LM


def keep_generation_cache(model: Any) -> Any:
    """Let a prompt-learning peft model generate with its KV cache under transformers 5.2x.

    peft 0.21 looks for the cache under `past_key_values`, which transformers now passes as `cache`;
    missing it, peft re-inserts the virtual tokens before every generated token (wrong answers, and an
    index error once GPT-2 runs past its position table). The key is renamed on the way into peft's
    step and back on the way out. Other models are returned untouched.
    """
    config = getattr(model, "active_peft_config", None)
    generates = hasattr(model, "base_model_prepare_inputs_for_generation")  # causal LMs, not classifiers
    if not getattr(config, "is_prompt_learning", False) or not generates:
        return model
    into_peft = model.base_model_prepare_inputs_for_generation
    peft_step = model.prepare_inputs_for_generation

    def base_step(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = into_peft(*args, **kwargs)
        if "cache" in inputs and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    def step(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = peft_step(*args, **kwargs)
        if "past_key_values" in inputs and "cache" not in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    model.base_model_prepare_inputs_for_generation = base_step
    model.prepare_inputs_for_generation = step
    return model


def compute_lora_inputs_in_autocast_dtype(model: Any) -> int:
    """Under autocast, let LoRA layers take their bf16/fp16 input as it comes; returns how many.

    By default a LoRA layer casts its input to its float32 weights' dtype, dropout runs on that copy,
    and autocast casts it back to bf16 for the matmul: two copies of the activation per adapted layer,
    forward and backward (dtype casts were 13% of a CPU step). The matmuls run in the autocast dtype
    either way. This is peft's own switch (`peft.helpers.disable_input_dtype_casting`); every forward
    pass of the training model then must run under autocast, as the training session's do.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


class PeftMethod(MethodSpec):
    """A method whose model surgery, saving and merging peft does."""

    def peft_config(self, ctx: MethodContext) -> Any:
        raise NotImplementedError

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        from peft import get_peft_model

        return keep_generation_cache(get_peft_model(model, self.peft_config(ctx)))

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        model.save_pretrained(out_dir)  # type: ignore[operator]

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.mergeable:
            return super().merge(model)
        return model.merge_and_unload()  # type: ignore[operator]
