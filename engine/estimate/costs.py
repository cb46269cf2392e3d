"""See the cost before you train: parameters, adapter size and memory per method, without weights.

The model is built on the meta device (shapes only), each method is applied to a copy of it for
real (peft and our own injectors work on meta tensors), and everything is counted off the result:

- `trainable_params`: parameters with `requires_grad` after applying the method — the number peft
  and the training run report.
- `total_params`: base parameters + the parameters the method adds (every unique parameter of the
  adapted model, base counted once). A classifier head that peft copies into `modules_to_save`
  counts as added: the copy really exists beside the frozen original. VeRA's shared random
  projections are buffers, not parameters, so they are not in this count (they are in `weights`).
- `adapter_bytes`: the size of the adapter weights file an export writes — the same tensors
  (names, shapes, dtypes) that `save_pretrained` / the method's own saver writes, plus the exact
  safetensors header. Prefix tuning and P-tuning save the prompt embeddings their encoder produces,
  not the encoder; VeRA saves its projections (`save_projection=True`). The small JSON config
  written beside it is not counted.
- `memory_bytes`: what one training step holds at its peak, by part:
    weights     every parameter and buffer in the dtype it is loaded in (bf16 for a frozen base on a GPU
                and on a CPU computing in bf16, float32 on other CPUs; float32 when the method trains
                the base's own weights or modules injected beside them (selective and bottleneck
                methods); peft adapters float32). With
                `quantization` the linear layers inside the transformer blocks are 4-bit NF4 with
                double quantisation (0.5 byte/param + 1 byte per 64-block absmax + 4 bytes per 16384)
                or LLM.int8 (1 byte/param + a float32 scale per output row); the rest stays unquantised.
    gradients   one gradient per trainable parameter, in the parameter's dtype (4 bytes for adapters).
    optimizer   AdamW: two states per trainable parameter in its dtype (8 bytes for float32);
                8-bit AdamW: 2 bytes + block absmax (tensors under 4096 elements keep 32-bit states);
                SGD with momentum: one state. (The per-tensor step counters are ignored.)
    activations tensors saved for the backward pass, per token per layer (see `ACTIVATIONS` below),
                for every row at full `seq_len` (real batches padded to their longest row use less).
    temporary   buffers alive at the backward peak that are not saved activations: the logits kept
                by the step and the float32 gradients of the loss over the vocabulary.
    overhead    the CUDA context and allocator slack on a GPU (`CUDA_CONTEXT_BYTES`), the Python
                process with torch/transformers/peft imported on a CPU (`CPU_PROCESS_BYTES`).
    total       the sum of the parts above.

ACTIVATIONS (bytes per token, per transformer block the gradient flows through; c = bytes of the
compute dtype: 2 under bf16/fp16 autocast, 4 in float32; q = heads × head_dim; s = sequence length):
    norms        4·h per normalisation layer (RMSNorm/LayerNorm keep their input in float32)
    attention    fused SDPA: 4·q·c + 4·heads (q, k, v — k/v repeated to all heads when grouped-query
                 attention meets a padding mask — its output, a float32 logsumexp per head); eager
                 attention adds heads·s·2c for its probabilities; SDPA with attention dropout on a CPU
                 falls back to the math path, in float32: 3·q·4 + heads·s·12
    feed-forward 3·i·c for gated MLPs (gate, act(gate), up), 4·i·c for GPT-2's gelu_new (a chain of
                 elementwise ops), 1·i·c for a single native activation
    dropout      h per active hidden dropout: its mask (1 byte on CUDA, the input's dtype on a CPU)
    method       inputs of trainable linear layers (shared inputs once, e.g. q/k/v), LoRA's dropout mask
                 and rank-r intermediate, DoRA's base and LoRA outputs, IA3's scaled tensor, VeRA's
                 rank-r and output vectors, bottleneck inputs, LLaMA-Adapter's query and scores
  and per step, not per token: the padding mask as an additive float mask in every fused SDPA call
  (batch·s·s·c per block); under autocast a bf16 copy of every float32 linear weight in those blocks
  and of the output head (a CPU run keeps its base in float32; full fine-tuning on a GPU too); LoHa
  and LoKr their full out×in delta weight per adapted layer.
  The gradient flows through the blocks from the first one holding a trainable parameter upward (all
  of them when something trains before the blocks, such as a soft prompt or an embedding); blocks
  below it save nothing. After the blocks: 4·h for the final norm and 4·V for the float32
  log-softmax over the vocabulary V (causal LM). With gradient checkpointing each block keeps only its
  input (h in the residual dtype), plus one block's activations while it is recomputed. Soft prompts
  add their virtual tokens to every row; prefix methods lengthen keys and values.
Caching: applying a method (peft's injection) is the slow part, ~50–100 ms per method on this CPU, and
what it fixes — counts, adapter bytes, weights, which blocks the gradient reaches, per-block method
bytes — does not depend on batch, length, precision, optimizer or checkpointing; it is cached per
(config, task, dtype, method settings, quantisation, device), so those edits are answered by arithmetic
in about a millisecond a method (`estimate(..., cached_only=True)` answers only from the cache).
Measured (benchmarks/memory_check.py, gpu_check.py): saved activations within about ±10% of autograd's
on tiny Llama/GPT-2/BERT models; the whole step within 0.90–1.03 of torch.cuda.max_memory_allocated
for 20 methods on SmolLM2-135M (H200, batch 4 × 512).
"""

from __future__ import annotations

import copy
import difflib
import gc
import json
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.defaults import CPU_EAGER_MAX_WIDTH
from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.methods.base import MethodSpec
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec

MiB = 2**20
CUDA_CONTEXT_BYTES = 500 * MiB  # CUDA context + cuBLAS/cuDNN handles, outside torch's allocator stats
CPU_PROCESS_BYTES = 512 * MiB  # Python + torch + transformers + peft imported: ~410 MiB RSS measured, + slack
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64", "int64": "I64",
                      "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "temporary", "overhead")
NF4_BLOCK, NF4_NESTED_BLOCK = 64, 256
BNB_8BIT_MIN_SIZE, BNB_8BIT_BLOCK = 4096, 256
# Linear layers that read the same input tensor (saved once when their weights train).
SHARED_INPUT = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "query": "qkv", "key": "qkv", "value": "qkv",
                "gate_proj": "mlp_in", "up_proj": "mlp_in", "w1": "mlp_in", "w3": "mlp_in"}
GATED_MLP = ("gate_proj", "gate_up_proj", "w1", "w3", "wi_0")
MULTI_OP_ACTIVATIONS = ("gelu_new", "gelu_fast", "quick_gelu")


# --- the model, built once per configuration --------------------------------------------------------


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


# --- the estimate -----------------------------------------------------------------------------------


def estimate(
    config: Any,
    method_spec: MethodSpec,
    training_spec: TrainingSpec,
    *,
    task: str,
    device_memory: int | None = None,
    weight_dtype: str = "auto",
    quantization: str = "none",
    seq_len: int | None = None,
    device: str = "cuda",
    num_labels: int = 2,
    cached_only: bool = False,
) -> dict[str, Any] | None:
    """One method's cost on one model: counts, adapter size and the memory of a training step.

    `seq_len` defaults to the run default (512, or less when the model is shorter); the batch size is
    `training_spec.batch_size` or the method's default. `device` is "cuda" or "cpu": it decides the
    auto dtypes and the overhead. A method that cannot work on this model gets `error` instead of numbers.
    With `cached_only`, None instead of applying a method whose structure is not cached yet (batch size,
    length, precision, optimizer and checkpointing only change the arithmetic, so the window can show
    those edits at once while the rest is computed).
    """
    with _LOCK:
        return _estimate(config, method_spec, training_spec, task=task, device_memory=device_memory,
                         weight_dtype=weight_dtype, quantization=quantization, seq_len=seq_len, device=device,
                         num_labels=num_labels, cached_only=cached_only)


def _estimate(config: Any, method_spec: MethodSpec, training_spec: TrainingSpec, *, task: str,
              device_memory: int | None, weight_dtype: str, quantization: str, seq_len: int | None, device: str,
              num_labels: int, cached_only: bool) -> dict[str, Any] | None:
    cls = type(method_spec)
    row: dict[str, Any] = {"method": method_spec.name, "title": cls.title, "family": cls.family,
                           "mergeable": cls.mergeable}
    from adapter_studio.engine.models.loading import trains_in_base_dtype, weights_dtype
    from adapter_studio.engine.training.devices import pick_precision

    # FSDP flattens adapters and frozen weights into one dtype: the engine loads the base in float32 then.
    base_trains = trains_in_base_dtype(method_spec) or _fsdp_world(training_spec, device) > 1
    dtype = weights_dtype(weight_dtype, device, base_trains, pick_precision(training_spec.precision, device))
    if cached_only and (_config_key(config), task, num_labels, str(dtype)) not in _CACHE:
        return None
    try:
        base = _meta_base(config, task, num_labels, dtype)
    except Exception as e:  # an architecture transformers cannot build
        raise UserError(f"cannot build this model's structure: {type(e).__name__}: {e}", where="model") from None
    info = base.info
    try:
        method = method_spec.fill_defaults(info)
        method.check(info, training_spec)
    except UserError as e:
        return {**row, "error": e.message}
    steps = training_spec.max_steps or 1000
    key = (_config_key(config), task, num_labels, str(dtype), method.model_dump_json(), quantization, device,
           steps if cls.uses_total_steps else 0)
    applied = _APPLIED.get(key)
    if applied is None and cached_only:
        return None
    if applied is None:
        applied = _apply(base, method, training_spec, steps=steps, device=device, quantization=quantization,
                         task=task)
        if len(_APPLIED) >= _APPLIED_SIZE:
            _APPLIED.pop(next(iter(_APPLIED)))
        _APPLIED[key] = applied
    if applied.error:
        return {**row, "error": applied.error}
    return _costs(row, applied, base, method, training_spec, config=config, task=task, dtype=dtype, device=device,
                  device_memory=device_memory, seq_len=seq_len, quantization=quantization)


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


_APPLIED: dict[tuple[Any, ...], _Applied] = {}
_APPLIED_SIZE = 512


def _apply(base: _Base, method: MethodSpec, training: TrainingSpec, *, steps: int, device: str, quantization: str,
           task: str) -> _Applied:
    """Apply the method to a copy of the meta model (in place, switched back, for selective methods)."""
    in_place = type(method).adapter_format == "selective"
    model = base.model if in_place else clone_meta(base.model)
    flags = [(p, p.requires_grad) for p in model.parameters()] if in_place else []
    try:
        return _apply_to(base, model, method, training, steps=steps, device=device, quantization=quantization,
                         task=task)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _apply_to(base: _Base, model: Any, method: MethodSpec, training: TrainingSpec, *, steps: int, device: str,
              quantization: str, task: str) -> _Applied:
    import torch
    from adapter_studio.engine.methods import MethodContext

    cls = type(method)
    info = base.info
    base_names = {id(p): n for n, p in model.named_parameters()} if quantization != "none" else {}
    try:
        # New tensors go straight to meta: no real allocation and initialisation on the CPU (and peft's
        # later move to meta would re-wrap AdaLoRA's frozen `ranknum` as trainable, which a real model
        # does not do).
        with torch.device("meta"):
            adapted = method.apply(model, MethodContext(info=info, training=training, total_steps=steps))
    except UserError as e:
        return _Applied(error=e.message)
    except Exception as e:
        return _Applied(error=f"{cls.title} cannot be applied to this {info.model_type} model: "
                              f"{type(e).__name__}: {_first_line(e)}")
    problem = _prefix_problem(adapted, cls.title)
    if problem:
        return _Applied(error=problem)
    params = list(adapted.parameters())  # unique: shared (tied) parameters appear once
    trainable = [p for p in params if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    if n_trainable == 0:
        return _Applied(error=f"{cls.title} leaves nothing to train on this {info.model_type} model")
    quantized = {id(p) for p in params if base_names.get(id(p)) in base.quantizable}
    if any(id(p) in quantized for p in trainable):
        return _Applied(error=f"{cls.title} trains base weights, which cannot train while quantised to "
                              f"{quantization} — set model.quantization to none, or pick LoRA (QLoRA)")
    weights = 0
    for p in params:
        weights += _quantized_bytes(p, quantization) if id(p) in quantized else p.numel() * p.element_size()
    weights += sum(b.numel() * b.element_size() for b in adapted.buffers())
    ids = {id(p) for p in trainable}
    mask_bytes = 1 if device == "cuda" else 4
    output = _inner(adapted).get_output_embeddings() if task == "causal_lm" else None
    head = getattr(output, "weight", None)
    fp32_head = head is not None and head.dtype.is_floating_point and head.element_size() == 4
    blocks = _blocks(adapted, info)
    return _Applied(
        trainable_params=n_trainable,
        total_params=sum(p.numel() for p in params),
        adapter_bytes=adapter_bytes(method, adapted),
        weights_bytes=weights,
        trainable_sizes=tuple((p.numel(), p.element_size()) for p in trainable),
        per_block={c: tuple(_method_bytes(b, c, ids, mask_bytes) for b in blocks) for c in (2, 4)},
        first_flowing=_first_flowing_block(adapted, info, len(blocks), ids),
        head_trains=head is not None and head.requires_grad,
        head_fp32_elements=head.numel() if fp32_head else 0,
    )


def _costs(row: dict[str, Any], applied: _Applied, base: _Base, method: MethodSpec, training: TrainingSpec, *,
           config: Any, task: str, dtype: Any, device: str, device_memory: int | None, seq_len: int | None,
           quantization: str) -> dict[str, Any]:
    import torch
    from adapter_studio.engine.defaults import DEFAULT_MAX_LENGTH, model_max_length

    batch = training.batch_size or method.default_batch_size
    if seq_len is None:
        seq_len = min(DEFAULT_MAX_LENGTH, model_max_length(config))
    precision = _precision(training.precision, device, dtype)
    compute = 2 if precision in ("bf16", "fp16") or dtype in (torch.bfloat16, torch.float16) else 4
    act = _activations(applied, base.shape, method, batch=batch, seq_len=seq_len, compute=compute,
                       residual=4 if dtype == torch.float32 else 2, device=device,
                       checkpointing=training.gradient_checkpointing, task=task)
    memory = {
        "weights": applied.weights_bytes,
        "gradients": sum(n * size for n, size in applied.trainable_sizes),
        "optimizer": _optimizer_bytes(training.optimizer, applied.trainable_sizes),
        "activations": act["saved"],
        "temporary": act["temporary"],
        "overhead": CUDA_CONTEXT_BYTES if device == "cuda" else CPU_PROCESS_BYTES,
    }
    processes = _per_process(memory, applied, base, training, device)
    memory["total"] = sum(memory[k] for k in MEMORY_PARTS)
    n_total = applied.total_params
    row.update(
        trainable_params=applied.trainable_params,
        total_params=n_total,
        trainable_share=applied.trainable_params / n_total if n_total else 0.0,
        adapter_bytes=applied.adapter_bytes,
        memory_bytes=memory,
        assumptions={
            "device": device, "weight_dtype": str(dtype).removeprefix("torch."), "quantization": quantization,
            "precision": precision, "batch_size": batch, "seq_len": seq_len, "optimizer": training.optimizer,
            "gradient_checkpointing": training.gradient_checkpointing, "task": task,
            "devices": training.devices, "distributed": training.distributed,
        },
    )
    if device_memory:
        # Several CPU processes share one machine's memory (each is judged against its share); GPUs
        # each have their own.
        row["device_memory_bytes"] = int(device_memory) // processes
        row["fits"] = memory["total"] <= row["device_memory_bytes"]
        if processes > 1:
            row["memory_shared_by"] = processes
    return row


def _fsdp_world(training: TrainingSpec, device: str) -> int:
    """How many GPUs an FSDP run shards over (1: not sharded; one device trains in-process)."""
    return training.devices if device == "cuda" and training.distributed == "fsdp" else 1


def _per_process(memory: dict[str, int], applied: _Applied, base: _Base, training: TrainingSpec, device: str) -> int:
    """Turn one process's memory into one device's for a run on `training.devices` devices (in place);
    returns how many processes share the machine's memory (CPU processes do, GPUs do not)."""
    n = training.devices
    if n <= 1:
        return 1
    if device != "cuda" or training.distributed == "ddp":
        # DDP keeps a full copy per device and all-reduces gradients through buckets of their size.
        memory["temporary"] += memory["gradients"]
        return n if device != "cuda" else 1
    # ZeRO-2 shards gradients and optimizer state; FSDP also the weights, and gathers one block's
    # weights (in the compute dtype, the next one prefetched) at a time.
    for part in ("gradients", "optimizer") + (("weights",) if training.distributed == "fsdp" else ()):
        memory[part] = math.ceil(memory[part] / n)
    if training.distributed == "fsdp":
        layers = max(1, base.info.num_layers)
        block = max(0, applied.total_params - base.shape.vocab * base.shape.hidden) / layers
        memory["temporary"] += int(2 * 2 * block)
    return 1


def _prefix_problem(model: Any, title: str) -> str | None:
    """Prefix-style methods feed `past_key_values`; peft refuses at the first forward pass when the
    model cannot take them (BERT-style encoders in transformers 5). Say so now instead."""
    import inspect

    configs = getattr(model, "peft_config", None)
    if not configs or configs["default"].peft_type.value != "PREFIX_TUNING":
        return None
    if type(model).__name__ != "PeftModelForSequenceClassification":
        return None  # decoders take past_key_values; peft checks only on the classification path
    params = inspect.signature(model.base_model.forward).parameters
    if "past_key_values" in params:
        return None
    name = getattr(model, "transformer_backbone_name", None)
    if name:
        backbone = model.base_model.get_submodule(name)
        if "past_key_values" in inspect.signature(backbone.forward).parameters:
            return None
    kind = type(model.get_base_model()).__name__
    return (f"{title} hands every layer trained keys and values through past_key_values, which {kind} "
            "does not take — pick LoRA, IA3 or prompt tuning for this model")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""


def _precision(choice: str, device: str, dtype: torch.dtype) -> str:
    import torch
    from adapter_studio.engine.training.devices import pick_precision

    if choice != "auto":
        return choice
    if device == "cuda" and not torch.cuda.is_available():
        return "bf16"  # estimating for a GPU this machine lacks: the usual modern card
    return pick_precision("auto", device)


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
    dtype (widest first) then name — the order decides the offsets and so the header's length.
    """
    items = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
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


# --- activations ------------------------------------------------------------------------------------


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


def _virtual_tokens(method: MethodSpec) -> tuple[int, int]:
    """(tokens added to every row, tokens added to keys/values only)."""
    n = int(getattr(method, "num_virtual_tokens", 0) or 0)
    if method.name in ("prompt_tuning", "p_tuning"):
        return n, 0
    if method.name in ("prefix_tuning", "p_tuning_v2", "mam"):
        return 0, n
    return 0, 0


def _activations(applied: _Applied, shape: _Shape, method: MethodSpec, *, batch: int, seq_len: int, compute: int,
                 residual: int, device: str, checkpointing: bool, task: str) -> dict[str, int]:
    extra_tokens, extra_kv = _virtual_tokens(method)
    s = seq_len + extra_tokens
    s_kv = s + extra_kv
    tokens = batch * s
    c = compute
    h, q = shape.hidden, shape.q_dim
    cuda = device == "cuda"
    per_block = applied.per_block[c]  # (bytes per token, bytes per step, float32 linear weights) per block

    flow = shape.norms * (4 * h + 4)
    # A CPU run switches SDPA to eager attention for short batches (adapter_studio.engine.defaults.CPU_EAGER_MAX_WIDTH).
    eager = shape.eager or (not cuda and task == "causal_lm" and shape.sdpa and s <= CPU_EAGER_MAX_WIDTH)
    math_path = shape.attention_dropout > 0 and not cuda and not eager
    materialised = eager or math_path
    if math_path:  # SDPA with dropout on a CPU: the math fallback, in float32 even under autocast
        flow += 3 * q * 4 * s_kv / s + shape.heads * s_kv * 12  # q, k, v; probabilities, mask, dropped
    else:  # fused SDPA keeps q, k, v, its output and a logsumexp; eager attention its probabilities too
        flow += (2 * q + 2 * q * s_kv / s) * c + 4 * shape.heads
        if eager:
            flow += shape.heads * s_kv * (2 * c + (0 if shape.attention_dropout <= 0 else 1 if cuda else c))
    flow += shape.mlp_factor * shape.intermediate * c
    flow += shape.hidden_dropouts * h * (1 if cuda else c)  # dropout masks: bool on CUDA, the input's dtype on CPU
    # The padding mask becomes an additive float mask in every fused SDPA call, which keeps it.
    mask_per_block = 0 if materialised else batch * s * s_kv * c
    # Under autocast, float32 weights are cast to bf16 for every matmul and the copies are kept too.
    copies = 2 if c == 2 else 0

    first = applied.first_flowing
    if checkpointing:
        first = 0  # enable_input_require_grads: every block keeps its input
    flowing = range(first, len(per_block))
    per_token = 0.0
    per_step = 0.0
    if checkpointing and flowing:
        per_token += len(flowing) * h * residual
        worst = max(flowing, key=lambda i: per_block[i][0])
        per_token += flow + per_block[worst][0]
        per_step += mask_per_block + copies * per_block[worst][2]
        per_step += sum(per_block[i][1] for i in flowing)
    else:
        for i in flowing:
            per_token += flow + per_block[i][0]
            per_step += per_block[i][1] + mask_per_block + copies * per_block[i][2]
    temporary = 0.0
    if task == "causal_lm":
        per_token += 4 * h + 4 * shape.vocab  # final norm; float32 log-softmax over the vocabulary
        if applied.head_trains:
            per_token += h * c
        temporary = tokens * shape.vocab * (c + 8)  # the step's logits; float32 loss gradients
    else:
        per_token += 4 * h
    per_step += copies * applied.head_fp32_elements
    saved = tokens * per_token + per_step
    return {"saved": int(saved), "temporary": int(temporary)}


def _is_head(name: str) -> bool:
    leaf = name.split(".")
    return any(part in ("lm_head", "embed_out", "score", "classifier") for part in leaf)


def _first_flowing_block(model: Any, info: ModelInfo, count: int, trainable: set[int]) -> int:
    """Index of the lowest block the gradient reaches; 0 if anything before the blocks trains."""
    inner = _inner(model)
    encoder = getattr(model, "prompt_encoder", None) if inner is not model else None
    if encoder is not None and any(id(p) in trainable for p in encoder.parameters()):
        return 0  # a soft prompt enters below the first block
    prefix = (info.layers_path or "") + "."
    first = count
    for name, p in inner.named_parameters():
        if id(p) not in trainable:
            continue
        if name.startswith(prefix):
            index = name[len(prefix):].split(".", 1)[0]
            if index.isdigit():
                first = min(first, int(index))
        elif not _is_head(name) and not _after_blocks(name, info):
            return 0  # embeddings and anything else before the blocks
    return first


def _inner(model: Any) -> Any:
    """The transformers model inside a peft wrapper, or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _after_blocks(name: str, info: ModelInfo) -> bool:
    base = info.layers_path.rsplit(".", 1)[0] + "." if "." in info.layers_path else ""
    rest = name[len(base):] if name.startswith(base) else name
    return rest.split(".")[0] in ("norm", "ln_f", "final_layernorm", "final_layer_norm", "pooler") or \
        name.startswith(("bert.pooler.", "pooler."))


def _method_bytes(block: Any, c: int, trainable: set[int], mask_bytes: int) -> tuple[float, float, int]:
    """What one block saves because of what trains in it: (bytes per token, bytes per step), and the
    number of float32 linear weights in it (autocast keeps a bf16 copy of each)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    per_token, per_step, fp32_weights = 0.0, 0.0, 0
    shared: set[tuple[str, str]] = set()
    skip: tuple[str, ...] = ()
    for name, m in block.named_modules():
        if skip and name.startswith(skip):
            continue
        kind = type(m).__name__
        weight = m._parameters.get("weight")
        if weight is not None and weight.element_size() == 4 and _linear_like(m):
            fp32_weights += weight.numel()
        if isinstance(m, BaseTunerLayer):
            skip += (name + ".",)
            fp32_weights += sum(x.weight.numel() for x in m.modules()
                                if _linear_like(x) and x.weight.element_size() == 4)
            if any(id(p) in trainable for p in m.parameters()):
                t, st = _peft_layer_bytes(m, c, mask_bytes)
                per_token += t
                per_step += st
            continue
        if kind == "AdaptedAttention":  # LLaMA-Adapter: the query again, scores over the adapter tokens
            heads = int(getattr(m.model.config, "num_attention_heads", 1))
            per_token += 2 * int(m.model.config.hidden_size) * c + heads * int(m.adapter_len) * (4 + c)
            continue
        if weight is None or id(weight) not in trainable:
            continue
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if _linear_like(m):
            key = (parent, SHARED_INPUT.get(leaf, leaf))
            if key not in shared:
                shared.add(key)
                per_token += (getattr(m, "in_features", None) or weight.shape[0]) * c
        elif "norm" in kind.lower():
            per_token += weight.shape[-1] * 4  # the normalised input, float32
    return per_token, per_step, fp32_weights


def _peft_layer_bytes(m: Any, c: int, mask_bytes: int) -> tuple[float, float]:
    """Saved activations of one peft-adapted layer (beyond what the frozen base saves)."""
    base = m.get_base_layer()
    in_f = getattr(m, "in_features", None) or getattr(base, "in_features", 0) or 0
    out_f = getattr(m, "out_features", None) or getattr(base, "out_features", 0) or 0
    per_token, per_step = 0.0, 0.0
    if hasattr(m, "lora_A") and "default" in m.lora_A:  # LoRA, DoRA, rsLoRA, LoRA+, AdaLoRA
        r = m.r.get("default", 0) if isinstance(m.r, dict) else m.r
        drop = m.lora_dropout["default"] if hasattr(m, "lora_dropout") else None
        per_token += in_f * c + r * c
        if drop is not None and getattr(drop, "p", 0) > 0:
            per_token += in_f * mask_bytes  # the dropout mask (bool on CUDA, float32 on a CPU)
        if hasattr(m, "lora_E"):  # AdaLoRA: x·A, then ·E
            per_token += r * c
        if getattr(m, "use_dora", {}).get("default", False):
            per_token += 2 * out_f * c  # base output and LoRA output, scaled by the magnitude
    elif hasattr(m, "ia3_l"):
        per_token += (in_f if m.is_feedforward else out_f) * c
    elif hasattr(m, "vera_lambda_d"):
        r = m.vera_lambda_d["default"].shape[0]
        per_token += (r + out_f) * c
    elif hasattr(m, "hada_w1_a") or hasattr(m, "lokr_w1") or hasattr(m, "lokr_w1_a"):
        per_token += in_f * c
        per_step += in_f * out_f * c  # the full delta weight, in the compute dtype
    elif hasattr(m, "oft_R"):
        per_token += 2 * in_f * c  # input and rotated input
    else:  # other peft layers: their input
        per_token += in_f * c
    return per_token, per_step


# --- the table for the CLI and the window -----------------------------------------------------------


def _selected_methods(methods: str) -> list[str]:
    from adapter_studio.engine.methods import METHODS, method_class

    text = (methods or "all").strip()
    if text == "all":
        return list(METHODS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        method_class(name)  # unknown names raise a UserError with suggestions
    return names


def _load_model_config(model: str) -> tuple[Any, str]:
    from adapter_studio.engine.models.loading import load_config, resolve_source

    source = resolve_source(model)
    if source.kind == "hub":
        raise UserError(f"'{model}' is not a local model", where="--model",
                        fix="give a model folder, a .gguf file, embedded:… or a shipped config name")
    key = f"{source.kind}:{source.path}:{source.gguf_file}"
    if key not in _CONFIGS:
        _CONFIGS[key] = load_config(source)
    return _CONFIGS[key], source.display_name


_CONFIGS: dict[str, Any] = {}


def estimate_table(model: str, methods: str = "all", overrides: list[str] | None = None, *,
                   cached_only: bool = False) -> list[dict[str, Any]]:
    """Rows for `adapter-studio params`: every chosen method's cost on `model`.

    `overrides` are `--set` items: `training.*`, `data.max_length`, `model.*` apply to every row;
    `method.<field>` applies to each method that has that field (a field no chosen method has is an
    error naming it). A value a method rejects gives that row an `error`. With `cached_only`, a method
    whose structure is not cached yet gets a `pending` row instead of being computed.
    """

    from adapter_studio.engine.methods import METHODS
    from adapter_studio.engine.models.loading import default_task
    from adapter_studio.engine.spec import apply_overrides, parse_spec

    names = _selected_methods(methods)
    data: dict[str, Any] = {"model": {"source": model}, "data": {"path": "-"}, "training": {}, "method": {}}
    apply_overrides(data, list(overrides or []))
    method_fields = data.pop("method") or {}
    if not isinstance(method_fields, dict):
        raise UserError("--set method needs a field, e.g. method.r=8", where="--set")
    if "name" in method_fields:
        names = _selected_methods(str(method_fields.pop("name")))
    classes = [METHODS[n] for n in names]
    for key in method_fields:
        if not any(key in cls.model_fields for cls in classes):
            valid = sorted({f for cls in classes for f in cls.model_fields if f != "name"})
            near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            fix = f"did you mean {', '.join(near)}?" if near else f"valid keys: {', '.join(valid)}"
            raise UserError(f"unknown key 'method.{key}' (no chosen method has it)", where="--set", fix=fix)
    spec = parse_spec({**data, "method": {"name": "lora"}}, origin="--set")
    config, _ = _load_model_config(spec.model.source)
    task = spec.model.task if spec.model.task != "auto" else default_task(config)
    device = _device(spec.model.device, spec.model.quantization)
    memory = _device_memory(device)
    rows = []
    collecting = gc.isenabled()
    gc.disable()  # copying module trees makes many objects; collections in the loop cost more than they free
    try:
        _rows(rows, classes, method_fields, config, spec, task, device, memory, cached_only=cached_only)
    finally:
        if collecting:
            gc.enable()
    return rows


def _rows(rows: list[dict[str, Any]], classes: list[Any], method_fields: dict[str, Any], config: Any, spec: Any,
          task: str, device: str, memory: int | None, *, cached_only: bool = False) -> None:
    from pydantic import ValidationError

    for cls in classes:
        name = cls.model_fields["name"].default
        fields = {k: v for k, v in method_fields.items() if k in cls.model_fields}
        try:
            method = cls.model_validate({"name": name, **fields})
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            rows.append({"method": name, "title": cls.title, "family": cls.family, "mergeable": cls.mergeable,
                         "error": f"method.{field}: {first['msg'].lower()}"})
            continue
        row = estimate(config, method, spec.training, task=task, device_memory=memory,
                       weight_dtype=spec.model.dtype, quantization=spec.model.quantization,
                       seq_len=spec.data.max_length, device=device, cached_only=cached_only)
        rows.append(row or {"method": name, "title": cls.title, "family": cls.family, "mergeable": cls.mergeable,
                            "pending": True})


def clear_caches(*, keep_models: bool = False) -> None:
    """Forget applied methods and, unless `keep_models`, configs and meta models (benchmarks measure
    the cold path with this)."""
    with _LOCK:
        _APPLIED.clear()
        if not keep_models:
            _CACHE.clear()
            _CONFIGS.clear()


def _device(choice: str, quantization: str) -> str:
    from adapter_studio.engine.training.devices import pick_device

    if choice != "auto":
        return "cuda" if choice == "cuda" else "cpu"
    if quantization != "none":
        return "cuda"  # quantised bases only train on CUDA
    picked = pick_device("auto")
    return "cuda" if picked == "cuda" else "cpu"


def _device_memory(device: str) -> int | None:
    import torch
    from adapter_studio.engine.training.devices import device_memory_bytes

    if device == "cuda" and not torch.cuda.is_available():
        return None
    try:
        return device_memory_bytes(device)
    except Exception:
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A readable text table of `estimate_table` rows (methods that cannot run listed below it)."""
    head = ("method", "trainable", "share", "total", "adapter", "batch", "weights", "grads", "optim", "activ",
            "memory")
    lines = [head]
    errors = []
    for r in rows:
        if "error" in r:
            errors.append(f"  {r['method']}: {r['error']}")
            lines.append((r["method"], "-", "-", "-", "-", "-", "-", "-", "-", "-", "n/a"))
            continue
        m, a = r["memory_bytes"], r["assumptions"]
        mark = " !" if r.get("fits") is False else ""
        lines.append((
            r["method"], f"{r['trainable_params']:,}", f"{100 * r['trainable_share']:.3g}%",
            human_count(r["total_params"]), human_bytes(r["adapter_bytes"]), str(a["batch_size"]),
            human_bytes(m["weights"]), human_bytes(m["gradients"]), human_bytes(m["optimizer"]),
            human_bytes(m["activations"] + m["temporary"]), human_bytes(m["total"]) + mark,
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for j, line in enumerate(lines):
        cells = [str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i]) for i, v in enumerate(line)]
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    first = next((r for r in rows if "assumptions" in r), None)
    if first:
        a = first["assumptions"]
        quant = f", {a['quantization']} base" if a["quantization"] != "none" else ""
        checkpointing = ", gradient checkpointing" if a["gradient_checkpointing"] else ""
        out += ["", f"one training step: {a['seq_len']} tokens per row, {a['device']}, base weights "
                    f"{a['weight_dtype']}{quant}, compute {a['precision']}, {a['optimizer']}{checkpointing}",
                f"memory = weights + grads + optimizer + activ (saved for backward + logits) + "
                f"{human_bytes(first['memory_bytes']['overhead'])} overhead"]
        if "device_memory_bytes" in first:
            out.append(f"device memory {human_bytes(first['device_memory_bytes'])}; ! marks what does not fit")
    if errors:
        out += ["", "not available:", *errors]
    return "\n".join(out)
