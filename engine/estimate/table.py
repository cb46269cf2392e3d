"""The table for `adapter-studio params` and the window's compare page: `estimate_table` reads a model
and `--set` overrides, picks the device, and estimates every chosen method (`costs.estimate`);
`format_table` and `human_bytes`/`human_count` turn the rows into text. `clear_caches` forgets every
cache of the estimate (benchmarks measure the cold path with it).
"""

from __future__ import annotations

import difflib
import gc
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.estimate.baselines import BASELINES, baseline_row
from adapter_studio.engine.estimate.costs import _APPLIED, estimate
from adapter_studio.engine.estimate.meta_models import _LOCK, clear_models
from adapter_studio.engine.spec_errors import sentence_case


def _selected_methods(methods: str) -> list[str]:
    from adapter_studio.engine.methods import METHODS, method_class

    text = (methods or "all").strip()
    if text == "all":
        return list(METHODS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in BASELINES:
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
                   cached_only: bool = False, labelled_share: float | None = None,
                   refuse_all_failed: bool = False, num_labels: int | None = None) -> list[dict[str, Any]]:
    """Rows for `adapter-studio params`: every chosen method's cost on `model`.

    `overrides` are `--set` items: `training.*`, `data.max_length`, `model.*` apply to every row;
    `method.<field>` applies to each method that has that field (a field no chosen method has is an
    error naming it). A value a method rejects gives that row an `error`. With `cached_only`, a method
    whose structure is not cached yet gets a `pending` row instead of being computed. `labelled_share`:
    the data's share of tokens that carry a loss, where known (see `costs.estimate`). With
    `refuse_all_failed` (the command line), method settings that no chosen method can take are a UserError.
    `num_labels`: a classifier's head and feature baseline for the data's labels (else 2, or the model's own).
    """

    from adapter_studio.engine.methods import METHODS
    from adapter_studio.engine.models.loading import default_task
    from adapter_studio.engine.spec import RunSpec, apply_overrides, parse_spec
    from adapter_studio.engine.spec_errors import check_truth_values

    names = _selected_methods(methods)
    data: dict[str, Any] = {"model": {"source": model}, "data": {"path": "-"}, "training": {}, "method": {}}
    apply_overrides(data, list(overrides or []))
    method_fields = data.pop("method") or {}
    if not isinstance(method_fields, dict):
        raise UserError("--set method needs a field, e.g. method.r=8", where="--set")
    if "name" in method_fields:
        names = _selected_methods(str(method_fields.pop("name")))
    baselines = [n for n in names if n in BASELINES]
    classes = [METHODS[n] for n in names if n not in BASELINES]
    for key in method_fields:
        if not any(key in cls.model_fields for cls in classes):
            valid = sorted({f for cls in classes for f in cls.model_fields if f != "name"})
            near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            fix = f"did you mean {', '.join(near)}?" if near else f"valid keys: {', '.join(valid)}"
            raise UserError(f"unknown key 'method.{key}' (no chosen method has it)", where="--set", fix=fix)
    for cls in classes:  # true for r=1 and the like, said as for a spec
        given = {k: v for k, v in method_fields.items() if k in cls.model_fields}
        check_truth_values({"method": {"name": cls.model_fields["name"].default, **given}}, "--set", None, RunSpec)
    spec = parse_spec({**data, "method": {"name": "lora"}}, origin="--set")
    config, _ = _load_model_config(spec.model.source)
    task = spec.model.task if spec.model.task != "auto" else default_task(config)
    device = _device(spec.model.device)
    memory = _device_memory(device)
    rows = []
    collecting = gc.isenabled()
    gc.disable()  # copying module trees makes many objects; collections in the loop cost more than they free
    try:
        _rows(rows, classes, method_fields, config, spec, task, device, memory, cached_only=cached_only,
              labelled_share=labelled_share, num_labels=num_labels)
    finally:
        if collecting:
            gc.enable()
    failed = [r["error"] for r in rows if "error" in r]
    if refuse_all_failed and method_fields and rows and len(failed) == len(rows):  # fits no chosen method
        raise UserError(failed[0], where="--set", fix="change the value given with --set")
    rows += [_baseline(name, config, spec, task, device, memory, num_labels) for name in baselines]
    return rows


def _baseline(name: str, config: Any, spec: Any, task: str, device: str, memory: int | None,
              num_labels: int | None = None) -> dict[str, Any]:
    """A no-training baseline's row, in the dtype and precision an evaluation on this device uses."""
    from adapter_studio.engine.defaults import DEFAULT_MAX_LENGTH, model_max_length
    from adapter_studio.engine.estimate.meta_models import _meta_base
    from adapter_studio.engine.evaluation.ranking import IN_CONTEXT_K
    from adapter_studio.engine.models.loading import weights_dtype
    from adapter_studio.engine.training.devices import pick_precision

    precision = pick_precision(spec.training.precision, device)
    dtype = weights_dtype(spec.model.dtype, device, False, precision)
    with _LOCK:
        base = _meta_base(config, task, 2, dtype)
    seq_len = spec.data.max_length or min(DEFAULT_MAX_LENGTH, model_max_length(config))
    return baseline_row(name, base, config, task=task, device=device, device_memory=memory, dtype=dtype,
                        precision=precision, seq_len=seq_len, k=IN_CONTEXT_K, num_labels=num_labels)


def _rows(rows: list[dict[str, Any]], classes: list[Any], method_fields: dict[str, Any], config: Any, spec: Any,
          task: str, device: str, memory: int | None, *, cached_only: bool = False,
          labelled_share: float | None = None, num_labels: int | None = None) -> None:
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
                         "error": f"method.{field}: {sentence_case(first['msg'])}"})
            continue
        row = estimate(config, method, spec.training, task=task, device_memory=memory,
                       weight_dtype=spec.model.dtype, quantization=spec.model.quantization,
                       seq_len=spec.data.max_length, device=device, cached_only=cached_only,
                       labelled_share=labelled_share, objective=spec.objective,
                       **({"num_labels": num_labels} if num_labels else {}))
        rows.append(row or {"method": name, "title": cls.title, "family": cls.family, "mergeable": cls.mergeable,
                            "pending": True})


def clear_caches(*, keep_models: bool = False) -> None:
    """Forget applied methods and, unless `keep_models`, configs and meta models (benchmarks measure
    the cold path with this)."""
    with _LOCK:
        _APPLIED.clear()
        if not keep_models:
            clear_models()
            _CONFIGS.clear()


def _device(choice: str) -> str:
    from adapter_studio.engine.training.devices import pick_device

    # Estimated as a CPU anywhere but CUDA; a CUDA run is estimated on any machine (planning for a GPU).
    return "cuda" if choice == "cuda" or (choice == "auto" and pick_device() == "cuda") else "cpu"


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
    first = next((r for r in rows if "assumptions" in r and not r.get("baseline")), None)
    if first:
        a = first["assumptions"]
        quant = f", {a['quantization']} base" if a["quantization"] != "none" else ""
        checkpointing = ((", gradient checkpointing (auto: needed to fit)" if a.get("checkpointing_chosen")
                          else ", gradient checkpointing") if a["gradient_checkpointing"] else "")
        out += ["", f"one training step: {a['seq_len']} tokens per row, {a['device']}, base weights "
                    f"{a['weight_dtype']}{quant}, compute {a['precision']}, {a['optimizer']}{checkpointing}",
                f"memory = weights + grads + optimizer + activ (saved for backward + logits) + "
                f"{human_bytes(first['memory_bytes']['overhead'])} overhead"]
        if "device_memory_bytes" in first:
            out.append(f"device memory {human_bytes(first['device_memory_bytes'])}; ! marks what does not fit")
    for r in rows:
        if r.get("baseline") and "assumptions" in r:
            out += ["", f"{r['method']} ({r['title']}): nothing trains in the model; memory of an evaluation pass, "
                        f"batch {r['assumptions']['batch_size']} — {r['note']}"]
    if errors:
        out += ["", "not available:", *errors]
    return "\n".join(out)
