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
- `memory_bytes`: what one training step holds at its peak, by part (weights, gradients, optimizer,
  activations, temporary, overhead, total) — defined and computed in `memory`. With a preference
  objective a step's batch of B pairs is 2·B rows (chosen and rejected; KTO's B answers and B mismatched
  rows for its KL estimate) whose answers' float32 logits are kept (pair log-probabilities are not a
  chunked loss), and a method that changes the base weights keeps a frozen copy of the model as the
  reference (in `weights`); peft methods switch their adapter off instead. benchmarks/preference_memory.py:
  0.86–1.52× what autograd keeps (high where long prompts are read once for both answers).

The meta models and their cache are in `meta_models`, the byte counts of files, quantised weights and
optimizer state in `sizes`, and the table for the CLI and the window in `table`.

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

from typing import TYPE_CHECKING, Any

from adapter_studio.engine.defaults import fill_method
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.estimate.memory import (
    CPU_HEAP_KEPT,
    CPU_PROCESS_BYTES,
    CUDA_CONTEXT_BYTES,
    MEMORY_PARTS,
    _activations,
    _first_flowing_block,
    _fsdp_world,
    _method_bytes,
    _per_process,
    _precision,
)
from adapter_studio.engine.estimate.meta_models import (
    _CACHE,
    _LOCK,
    _Applied,
    _Base,
    _blocks,
    _config_key,
    _inner,
    _meta_base,
    clone_meta,
)
from adapter_studio.engine.estimate.sizes import _optimizer_bytes, _quantized_bytes, adapter_bytes
from adapter_studio.engine.objectives.logps import keeps_reference_copy
from adapter_studio.engine.training.speed import SpeedOptions

if TYPE_CHECKING:
    from adapter_studio.engine.methods.base import MethodSpec
    from adapter_studio.engine.objectives import ObjectiveSpec
    from adapter_studio.engine.spec import TrainingSpec


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
    labelled_share: float | None = None,
    objective: ObjectiveSpec | None = None,
) -> dict[str, Any] | None:
    """One method's cost on one model: counts, adapter size and the memory of a training step.

    `seq_len` defaults to the run default (512, or less when the model is shorter); the batch size is
    `training_spec.batch_size` or the method's default. `device` is "cuda" or "cpu": it decides the
    auto dtypes and the overhead. A method that cannot work on this model gets `error` instead of numbers.
    With `cached_only`, None instead of applying a method whose structure is not cached yet (batch size,
    length, precision, optimizer and checkpointing only change the arithmetic, so the window can show
    those edits at once while the rest is computed).
    `labelled_share`: the share of tokens whose next token carries a label (the data's answers), where the
    engine's loss projects only those (one process, a plain output head); None counts every token, the
    upper bound for data not seen yet. `objective`: the run's (None: supervised).
    """
    with _LOCK:
        return _estimate(config, method_spec, training_spec, task=task, device_memory=device_memory,
                         weight_dtype=weight_dtype, quantization=quantization, seq_len=seq_len, device=device,
                         num_labels=num_labels, cached_only=cached_only, labelled_share=labelled_share,
                         objective=objective)


def _estimate(config: Any, method_spec: MethodSpec, training_spec: TrainingSpec, *, task: str,
              device_memory: int | None, weight_dtype: str, quantization: str, seq_len: int | None, device: str,
              num_labels: int, cached_only: bool, labelled_share: float | None = None,
              objective: ObjectiveSpec | None = None) -> dict[str, Any] | None:
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
        method = fill_method(method_spec, info)
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
                  device_memory=device_memory, seq_len=seq_len, quantization=quantization,
                  labelled_share=labelled_share, objective=objective)


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
    from adapter_studio.engine.models.construction import model_construction
    from adapter_studio.engine.training.fast_loss import causal_lm_parts, chunks_head

    cls = type(method)
    info = base.info
    base_names = {id(p): n for n, p in model.named_parameters()} if quantization != "none" else {}
    try:
        # New tensors go straight to meta: no real allocation and initialisation on the CPU (and peft's
        # later move to meta would re-wrap AdaLoRA's frozen `ranknum` as trainable, which a real model
        # does not do).
        with torch.device("meta"), model_construction():
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
        from adapter_studio.engine.models.loading import quantised_weights_refusal

        refused = quantised_weights_refusal(cls.title, quantization)
        return _Applied(error=f"{refused.what} — {refused.fix}")
    weights = 0
    for p in params:
        weights += _quantized_bytes(p, quantization) if id(p) in quantized else p.numel() * p.element_size()
    weights += sum(b.numel() * b.element_size() for b in adapted.buffers())
    ids = {id(p) for p in trainable}
    # LoRA's dropout keeps a bool mask on CUDA, and on a CPU too where the engine draws it from 16-bit lanes
    # (training.bits_dropout, on by default); torch's own CPU dropout keeps one in its input's dtype.
    bool_masks = device == "cuda" or SpeedOptions().bits_dropout_on_cpu
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
        per_block={c: tuple(_method_bytes(b, c, ids, 1 if bool_masks else c) for b in blocks) for c in (2, 4)},
        first_flowing=_first_flowing_block(adapted, info, len(blocks), ids),
        head_trains=head is not None and head.requires_grad,
        head_fp32_elements=head.numel() if fp32_head else 0,
        side_per_token={c: _side_network_bytes(_inner(adapted), c) for c in (2, 4)},
        projects_labelled=task == "causal_lm" and causal_lm_parts(adapted) is not None,
        chunks_head=output is not None and chunks_head(output),
    )


def _side_network_bytes(model: Any, c: int) -> float:
    """Bytes per token a ladder side network (engine.methods.side_tuning) saves: per block its rung's input
    (the backbone's hidden state), the rung output, LayerNorm input (float32) and the MLP's intermediates;
    then the up projection's input. 0 without one."""
    side = getattr(model, "side_network", None)
    if side is None:
        return 0.0
    w, h = side.up.in_features, side.up.out_features
    return len(side.blocks) * (h * c + 6 * w * c + 8 * w) + w * c


def _costs(row: dict[str, Any], applied: _Applied, base: _Base, method: MethodSpec, training: TrainingSpec, *,
           config: Any, task: str, dtype: Any, device: str, device_memory: int | None, seq_len: int | None,
           quantization: str, labelled_share: float | None = None,
           objective: ObjectiveSpec | None = None) -> dict[str, Any]:
    import torch
    from adapter_studio.engine.defaults import DEFAULT_MAX_LENGTH, batch_size, model_max_length

    batch = training.batch_size or batch_size(method, task).value
    pairwise = objective is not None and objective.pairwise
    rows = 2 * batch if pairwise else batch  # a pair is two rows; so is a KTO answer with its mismatched row
    reference = _reference_copy_bytes(base) if objective is not None and keeps_reference_copy(objective, method) else 0
    if seq_len is None:
        seq_len = min(DEFAULT_MAX_LENGTH, model_max_length(config))
    precision = _precision(training.precision, device, dtype)
    compute = 2 if precision in ("bf16", "fp16") or dtype in (torch.bfloat16, torch.float16) else 4

    def step_memory(checkpointing: bool) -> tuple[dict[str, int], int]:
        act = _activations(applied, base.shape, method, batch=rows, seq_len=seq_len, compute=compute,
                           residual=4 if dtype == torch.float32 else 2, device=device,
                           checkpointing=checkpointing, task=task,
                           projected_share=_projected_share(applied, training, labelled_share),
                           chunked_head=_engine_loss(applied, training) and applied.chunks_head and not pairwise)
        memory = {
            "weights": applied.weights_bytes + reference,
            "gradients": sum(n * size for n, size in applied.trainable_sizes),
            "optimizer": _optimizer_bytes(training.optimizer, applied.trainable_sizes),
            "activations": act["saved"],
            "temporary": act["temporary"],
            "overhead": (CUDA_CONTEXT_BYTES if device == "cuda"
                         else CPU_PROCESS_BYTES + int(CPU_HEAP_KEPT * act["saved"])),
        }
        processes = _per_process(memory, applied, base, training, device)
        memory["total"] = sum(memory[k] for k in MEMORY_PARTS)
        return memory, processes

    checkpointing = training.gradient_checkpointing == "on"
    memory, processes = step_memory(checkpointing)
    available = int(device_memory) // processes if device_memory else None
    if (training.gradient_checkpointing == "auto" and available and memory["total"] > available
            and type(method).supports_gradient_checkpointing):
        # auto: what the run will do (fit.resolve_checkpointing) — checkpoint only where the step does not
        # fit without it; where it fits neither way, it still comes closest.
        rechecked, _ = step_memory(True)
        if rechecked["total"] < memory["total"]:
            checkpointing, memory = True, rechecked
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
            "gradient_checkpointing": checkpointing, "task": task,
            "checkpointing_chosen": training.gradient_checkpointing == "auto",
            "devices": training.devices, "distributed": training.distributed,
            "labelled_share": labelled_share, "rows_per_step": rows,
            "objective": objective.name if objective is not None else "sft", "reference_copy_bytes": reference,
        },
    )
    if device_memory:
        # Several CPU processes share one machine's memory (each is judged against its share); GPUs
        # each have their own.
        row["device_memory_bytes"] = available
        row["fits"] = memory["total"] <= available
        if processes > 1:
            row["memory_shared_by"] = processes
    return row


def _reference_copy_bytes(base: _Base) -> int:
    """A preference objective's frozen copy of the model (`keeps_reference_copy`), as the session makes it."""
    import itertools

    tensors = itertools.chain(base.model.parameters(), base.model.buffers())  # deepcopy copies both
    return sum(t.numel() * t.element_size() for t in tensors)


def _projected_share(applied: _Applied, training: TrainingSpec, labelled_share: float | None) -> float:
    """The share of tokens the output head projects: the labelled ones where the engine's loss skips the
    rest (one process: several keep the model's own forward for DDP), else every token."""
    if labelled_share is None or not _engine_loss(applied, training):
        return 1.0
    return min(1.0, max(0.0, labelled_share))


def _engine_loss(applied: _Applied, training: TrainingSpec) -> bool:
    """Whether the step's loss is the engine's own (fast_loss): one process only, several keep the model's
    forward for DDP."""
    return applied.projects_labelled and training.devices <= 1 and training.machines.count <= 1


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
