"""The model an estimate counts on: built on the meta device (shapes only, no weights), cached per
(config, task, dtype), and copied cheaply (`clone_meta`) so a method can be applied to the copy.

Also the records the rest of the estimate reads: `_Shape` (the sizes activation memory depends on,
read off the model once) and `_Applied` (what applying one method fixes, cached by `costs`), plus the
helpers that find the transformer blocks and the linear layers in a model, peft-wrapped or not.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo

GATED_MLP = ("gate_proj", "gate_up_proj", "w1", "w3", "wi_0")
MULTI_OP_ACTIVATIONS = ("gelu_new", "gelu_fast", "quick_gelu")


@dataclass
class _Shape:
    hidden: int
    intermediate: int
    heads: int
    q_dim: int
    vocab: int
    norms: int
    mlp_factor: int
    hidden_dropouts: int
    attention_dropout: float
    eager: bool
    sdpa: bool


@dataclass
class _Base:
    model: Any  # meta-device model in one dtype, never applied to
    info: ModelInfo
    quantizable: frozenset[str]  # names of weights bitsandbytes would quantise
    shape: _Shape  # the sizes activation memory depends on


_CACHE: dict[tuple[str, str, int, str], _Base] = {}
_LOCK = threading.RLock()  # the cached models are shared (and switched in place by selective methods)
_CACHE_SIZE = 6


def _config_key(config: Any) -> str:
    try:
        return config.to_json_string(use_diff=False)
    except Exception:  # a config that cannot serialise is cached by identity
        return f"id:{id(config)}"


def _meta_base(config: Any, task: str, num_labels: int, dtype: torch.dtype) -> _Base:
    """The meta model for (config, task, dtype), cached: building one takes tens of milliseconds."""
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.models.loading import build_meta_model

    key = (_config_key(config), task, num_labels, str(dtype))
    if key in _CACHE:
        return _CACHE[key]
    float_key = (key[0], task, num_labels, "any")
    if float_key not in _CACHE:
        model = build_meta_model(config, task, num_labels=num_labels)
        model.eval()
        info = describe_model(model)
        _CACHE[float_key] = _Base(model, info, frozenset(_quantizable_weights(model, info)),
                                  _shape(model, config, info))
    base = _CACHE[float_key]
    model = base.model
    if next(model.parameters()).dtype != dtype:
        model = build_meta_model(config, task, num_labels=num_labels, dtype=dtype)
        model.eval()
    entry = _Base(model, base.info, base.quantizable, base.shape)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = entry
    return entry


def clone_meta(model: Any) -> Any:
    """A copy of a meta-device module tree, several times faster than `copy.deepcopy`.

    Modules are copied attribute by attribute (containers one level deep, so a method that appends to
    a module's list or dict does not touch the original); parameters and buffers become new meta
    tensors of the same shape, dtype and `requires_grad`, with sharing (tied weights) kept; configs
    are deep-copied once. Anything that is not a meta tensor is deep-copied as usual.
    """
    import torch
    from transformers import PretrainedConfig

    memo: dict[int, Any] = {}
    immutable = (str, int, float, bool, type(None), tuple, frozenset, torch.dtype, torch.device)
    parameter = torch.nn.Parameter

    def tensor(t: Any) -> Any:
        if t is None:
            return None
        found = memo.get(id(t))
        if found is None:
            if not t.is_meta:
                found = copy.deepcopy(t)
            elif isinstance(t, parameter):  # a new meta tensor (detach: ~50× faster than empty_like on meta)
                found = torch.Tensor._make_subclass(type(t), t.detach(), t.requires_grad)
            else:
                found = t.detach()
            memo[id(t)] = found
        return found

    def value(v: Any) -> Any:
        if isinstance(v, immutable):
            return v
        if isinstance(v, dict):
            return v.copy()
        if isinstance(v, (list, set)):
            return type(v)(v)
        if isinstance(v, PretrainedConfig) or type(v).__name__ == "GenerationConfig":
            found = memo.get(id(v))
            if found is None:
                found = memo[id(v)] = copy.deepcopy(v)
            return found
        if isinstance(v, torch.Tensor):
            return tensor(v)
        return v

    def module(m: Any) -> Any:
        found = memo.get(id(m))
        if found is not None:
            return found
        new = object.__new__(type(m))
        memo[id(m)] = new
        state = {k: value(v) for k, v in m.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")}
        state["_parameters"] = {k: tensor(v) for k, v in m._parameters.items()}
        state["_buffers"] = {k: tensor(v) for k, v in m._buffers.items()}
        state["_modules"] = {k: None if v is None else module(v) for k, v in m._modules.items()}
        object.__setattr__(new, "__dict__", state)
        return new

    return module(model)


def _linear_like(module: Any) -> bool:
    from adapter_studio.engine.models.info import _linear_types

    return isinstance(module, _linear_types())


def _quantizable_weights(model: Any, info: ModelInfo) -> list[str]:
    """Weights of the linear layers inside the blocks (bitsandbytes leaves the head and embeddings)."""
    prefix = info.layers_path + "."
    return [f"{name}.weight" for name, m in model.named_modules() if name.startswith(prefix) and _linear_like(m)]


def clear_models() -> None:
    """Forget the cached meta models (the next estimate builds them again)."""
    with _LOCK:
        _CACHE.clear()


# --- the sizes activation memory depends on ---------------------------------------------------------


def _shape(model: Any, config: Any, info: ModelInfo) -> _Shape:
    import torch

    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = info.hidden_size
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 1)
    head_dim = int(getattr(cfg, "head_dim", 0) or h // heads)
    inter = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "n_inner", 0) or 4 * h)
    act = str(getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", "") or "")
    blocks = _blocks(model, info)
    norms, hidden_dropouts = 2, 0
    if blocks:
        block = blocks[0]
        norms = sum(1 for m in block.modules() if "norm" in type(m).__name__.lower()
                    and getattr(m, "weight", None) is not None and m.weight.shape[-1] == h) or 2
        for name, m in block.named_modules():
            if isinstance(m, torch.nn.Dropout) and m.p > 0 and not _is_attention_dropout(name):
                hidden_dropouts += 1
    attn_dropout = float(getattr(cfg, "attention_dropout", 0) or getattr(cfg, "attn_pdrop", 0)
                         or getattr(cfg, "attention_probs_dropout_prob", 0) or 0)
    gated = any(n in info.linear_names for n in GATED_MLP)
    return _Shape(
        hidden=h, intermediate=inter, heads=heads, q_dim=heads * head_dim,
        vocab=int(getattr(cfg, "vocab_size", 0) or 0), norms=norms,
        mlp_factor=3 if gated else (4 if act in MULTI_OP_ACTIVATIONS else 1),
        hidden_dropouts=hidden_dropouts, attention_dropout=attn_dropout,
        eager=getattr(model.config, "_attn_implementation", None) == "eager",
        sdpa=getattr(model.config, "_attn_implementation", None) == "sdpa",
    )


def _is_attention_dropout(name: str) -> bool:
    return name.endswith(("attn_dropout", "attention_dropout")) or ".self." in f".{name}"


def _blocks(model: Any, info: ModelInfo) -> list[Any]:
    from adapter_studio.engine.models.info import find_layers_path

    inner = _inner(model)
    path = info.layers_path or find_layers_path(inner)
    try:
        return list(inner.get_submodule(path)) if path else []
    except AttributeError:
        path = find_layers_path(inner)
        return list(inner.get_submodule(path)) if path else []


def _inner(model: Any) -> Any:
    """The transformers model inside a peft wrapper, or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


# --- what applying a method fixes -------------------------------------------------------------------


@dataclass(frozen=True)
class _Applied:
    """What applying a method to the meta model fixes, whatever the batch, length, precision and optimizer:
    computing it (peft's injection) is the slow part, so it is cached; the memory arithmetic is not."""

    error: str | None = None
    trainable_params: int = 0
    total_params: int = 0
    adapter_bytes: int = 0
    weights_bytes: int = 0
    trainable_sizes: tuple[tuple[int, int], ...] = ()  # (elements, bytes per element) per trainable tensor
    # `_method_bytes` of every block, for a 2-byte (bf16/fp16) and a 4-byte (float32) compute dtype
    per_block: dict[int, tuple[tuple[float, float, int], ...]] = field(default_factory=dict)
    first_flowing: int = 0  # lowest block the gradient reaches
    head_trains: bool = False
    head_fp32_elements: int = 0  # an output head kept in float32 (autocast copies it each step)
    side_per_token: dict[int, float] = field(default_factory=dict)  # a side network's bytes per token, by c
    projects_labelled: bool = False  # the engine's loss projects only labelled positions (fast_loss)
    chunks_head: bool = False  # ... a chunk at a time, keeping no logits (fast_loss.chunks_head)
