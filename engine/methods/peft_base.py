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


PREFIX_INIT_TEXT = "Answer the request precisely and briefly:"  # also Prompt Tuning's default start


def seed_prefix_from_text(peft_model: Any, tokenizer: Any, text: str) -> bool:
    """Start a direct prefix (peft's PrefixTuning without its MLP) as the keys and values the base model
    computes for `text`, repeated or cut to the prefix length: the model then reads any input exactly as
    the base model reads `text` followed by it (Li & Liang 2021 start from real words' activations too).
    peft's own start, N(0, 1) keys and values, drowns the real ones: P-Tuning v2 began the demo at a loss
    of 4.7 where the base model has 0.58, and was at 3.2 after 30 steps. Returns False where it kept
    peft's start (no text or tokenizer, the meta device, a cache of another shape)."""
    import torch

    config = peft_model.active_peft_config
    weight = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
    if not text or tokenizer is None or weight.is_meta or getattr(config, "prefix_projection", True):
        return False
    n = config.num_virtual_tokens
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [0]
    ids = (ids * (n // len(ids) + 1))[:n]
    base = peft_model.get_base_model()
    device = next(base.parameters()).device
    with torch.no_grad():
        out = base(input_ids=torch.tensor([ids], device=device), use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        layers = [(layer.keys, layer.values) for layer in getattr(cache, "layers", [])]
        if len(layers) != config.num_layers or any(k.shape != v.shape for k, v in layers):
            return False
        # peft reads the weight as (tokens, layers · 2, heads, head size): layer l's keys at 2l, values at 2l + 1.
        kv = torch.stack([torch.stack([k[0], v[0]]) for k, v in layers])  # (layers, 2, heads, tokens, head size)
        kv = kv.flatten(0, 1).permute(2, 0, 1, 3).reshape(n, -1)
        if kv.shape != weight.shape:
            return False
        weight.copy_(kv.to(weight.dtype))
    return True


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
