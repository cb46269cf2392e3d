"""Byte counts that need no activations: the adapter file an export writes (`adapter_bytes`, exact
to the safetensors header), quantised base weights, and optimizer state.

`adapter_bytes` counts the same tensors (names, shapes, dtypes) that `save_pretrained` / the method's
own saver writes, plus the exact safetensors header. Prefix tuning and P-tuning save the prompt
embeddings their encoder produces, not the encoder; VeRA saves its projections (`save_projection=True`).
The small JSON config written beside it is not counted.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.methods.base import MethodSpec

SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64", "int64": "I64",
                      "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
# The order safetensors lays equal-width tensors out in (checked: F32 before I32, BF16 before F16).
SAFETENSORS_ORDER = ["I64", "F64", "F32", "I32", "BF16", "F16", "I8", "U8", "BOOL"]
NF4_BLOCK, NF4_NESTED_BLOCK = 64, 256
BNB_8BIT_MIN_SIZE, BNB_8BIT_BLOCK = 4096, 256


# --- weights and optimizer state --------------------------------------------------------------------


def _quantized_bytes(p: torch.Tensor, quantization: str) -> int:
    n = p.numel()
    if quantization == "4bit":  # NF4, double quantisation (as adapter_studio.engine.models.loading sets it up)
        blocks = math.ceil(n / NF4_BLOCK)
        return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCK)
    if quantization == "8bit":  # LLM.int8: int8 weights + one float32 scale per output row
        return n + 4 * p.shape[0]
    return n * p.element_size()


def _optimizer_bytes(kind: str, trainable: tuple[tuple[int, int], ...]) -> int:
    """Optimizer state bytes for trainable tensors given as (elements, bytes per element)."""
    total = 0
    for n, size in trainable:
        if kind == "sgd":
            total += n * size
        elif kind == "adamw_8bit":
            total += 2 * n + 8 * math.ceil(n / BNB_8BIT_BLOCK) if n >= BNB_8BIT_MIN_SIZE else 8 * n
        else:
            total += 2 * n * size
    return total


# --- adapter file size ------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> int:
    """Exact size of the file `safetensors.torch.save_file(tensors, metadata=...)` writes.

    8-byte length, a JSON header padded with spaces to a multiple of 8, then the data, laid out by
    dtype (widest first, then safetensors' own order among equal widths) then name — the order decides
    the offsets and so the header's length.
    """
    def rank(t: Any) -> tuple[int, int]:  # safetensors orders by dtype (its enum), not just width
        dtype = SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."), "F32")
        return -t.element_size(), SAFETENSORS_ORDER.index(dtype) if dtype in SAFETENSORS_ORDER else 0

    items = sorted(tensors.items(), key=lambda kv: (*rank(kv[1]), kv[0]))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in items:
        size = t.numel() * t.element_size()
        dtype = SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."), "F32")
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    length = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + length + (-length % 8) + offset


def peft_saved_tensors(model: Any) -> dict[str, Any]:
    """The tensors `PeftModel.save_pretrained` writes, without writing (works on meta models)."""
    from peft.utils import get_peft_model_state_dict

    config = model.peft_config["default"]
    if config.is_prompt_learning and not config.inference_mode:
        # peft moves the prompt embeddings to the CPU before saving; on meta that copy fails, so
        # compute the same tensor (the encoder's output for the virtual tokens) in place.
        def prompt_embeddings(adapter_name: str) -> Any:
            encoder = model.prompt_encoder[adapter_name]
            tokens = model.prompt_tokens[adapter_name].unsqueeze(0).expand(1, -1).to(encoder.embedding.weight.device)
            if config.peft_type.value in ("PREFIX_TUNING", "CARTRIDGE"):
                tokens = tokens[:, : config.num_virtual_tokens]
            return encoder(tokens)[0].detach()

        model.get_prompt_embedding_to_save = prompt_embeddings
        try:
            return get_peft_model_state_dict(model, save_embedding_layers=False)
        finally:
            del model.get_prompt_embedding_to_save
    return get_peft_model_state_dict(model, save_embedding_layers=False)


def adapter_bytes(method: MethodSpec, model: Any) -> int:
    """Bytes of the adapter weights an export of this method writes (see the module docstring)."""
    fmt = type(method).adapter_format
    if fmt == "peft":
        return safetensors_bytes(peft_saved_tensors(model), {"format": "pt"})
    if fmt == "bottleneck":
        total = safetensors_bytes(dict(method.saved_parameters(model)))  # type: ignore[attr-defined]
        if hasattr(model, "peft_config"):  # MAM: peft's prefix file beside it
            total += safetensors_bytes(peft_saved_tensors(model), {"format": "pt"})
        return total
    return safetensors_bytes({n: p for n, p in model.named_parameters() if p.requires_grad})
