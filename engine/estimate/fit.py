"""When a run will not fit in memory, the change that makes it fit: the estimate (`costs.estimate`) asked
again for each candidate, in the order that costs the run least.

1. a smaller micro-batch with more accumulation (the same effective batch, so the same training), from
   half the batch down to 1, and gradient checkpointing (the same training, about a third more
   compute): on a CPU the batch is split first (a small micro-batch costs it little), on a GPU
   checkpointing comes first with the largest micro-batch that fits (a small one wastes the GPU);
2. a 4-bit base (QLoRA, where bitsandbytes is installed; methods that keep the base frozen): slightly
   different numbers;
3. shorter sequences (the data's max length halved, down to 128): long rows are cut, so it trains on
   less of them; the last resort.

The first candidate whose estimated step fits the device's memory is the advice."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from adapter_studio.engine.estimate.costs import estimate
from adapter_studio.engine.estimate.table import _device, _device_memory, _load_model_config
from adapter_studio.engine.spec import RunSpec

SHORTEST = 128  # below this, most instruction rows lose their answer


@dataclass(frozen=True)
class FitAdvice:
    """`changes`: spec paths → values that make the step fit (empty: it fits already; None: nothing
    tried fits). `needed`: the estimate with the changes (or as it is, when nothing fits)."""

    changes: dict[str, Any] | None
    needed: int
    available: int
    text: str


def _candidates(spec: RunSpec, batch: int, seq_len: int, device: str) -> Iterator[dict[str, Any]]:
    t = spec.training
    halvings = []
    b = batch
    while b > 1:
        b //= 2
        halvings.append(
            {"training.batch_size": b, "training.gradient_accumulation": t.gradient_accumulation * (batch // b)}
        )
    can_checkpoint = type(spec.method).supports_gradient_checkpointing and t.gradient_checkpointing != "on"
    checkpointing = {"training.gradient_checkpointing": "on"} if can_checkpoint else {}
    # A CPU computes a small micro-batch about as fast per token, so it splits the batch before it pays a
    # third more compute for checkpointing; a GPU runs a small micro-batch far below its speed, so it
    # checkpoints first and keeps the micro-batch as large as fits.
    if device != "cuda":
        yield from halvings
    if checkpointing:
        yield checkpointing
        for h in halvings:
            yield {**checkpointing, **h}
    elif device == "cuda":
        yield from halvings
    lightest = {**checkpointing, **(halvings[-1] if halvings else {})}
    if spec.model.quantization == "none" and _quantizable(spec):
        for step in ({}, *halvings):
            yield {"model.quantization": "4bit", **checkpointing, **step}
        lightest = {"model.quantization": "4bit", **lightest}
    length = seq_len // 2
    while length >= SHORTEST:
        yield {**lightest, "data.max_length": length}
        length //= 2


def _quantizable(spec: RunSpec) -> bool:
    """A 4-bit base suits methods that leave the base frozen (peft's), where bitsandbytes is installed."""
    from adapter_studio.engine.models.loading import quantization_problem

    return spec.method.adapter_format == "peft" and quantization_problem("4bit", spec.model.device) is None


def by_section(changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"training.batch_size": 2, …}` → `{"training": {"batch_size": 2}, …}`."""
    sections: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        section, key = path.split(".", 1)
        sections.setdefault(section, {})[key] = value
    return sections


def with_changes(spec: RunSpec, changes: dict[str, Any]) -> RunSpec:
    """The spec with the advice's changes (`section.field` → value) made."""
    data = spec.model_dump()
    for section, fields in by_section(changes).items():
        data[section].update(fields)
    return RunSpec.model_validate(data)


def describe(changes: dict[str, Any]) -> str:
    """The changes in words, e.g. "gradient checkpointing on, batch 2 × 4 accumulated"."""
    words = []
    if changes.get("training.gradient_checkpointing") == "on":
        words.append("gradient checkpointing on")
    if "training.batch_size" in changes:
        words.append(
            f"batch {changes['training.batch_size']} × {changes['training.gradient_accumulation']} "
            "accumulated (the same effective batch)"
        )
    if changes.get("model.quantization") == "4bit":
        words.append("a 4-bit base (QLoRA)")
    if "data.max_length" in changes:
        words.append(f"max length {changes['data.max_length']} (longer rows are cut)")
    return ", ".join(words)


def fit_advice(spec: RunSpec, seq_len: int | None = None, labelled_share: float | None = None) -> FitAdvice | None:
    """What makes this run's step fit, by the same estimate as the Compare page; None when the device's
    memory is unknown or the method cannot be estimated on this model. `seq_len`: the tokens of the
    longest step when the data has been measured (the window's), else `data.max_length` is assumed;
    `labelled_share` likewise the measured share of tokens that carry a loss."""
    from adapter_studio.engine.models.loading import default_task

    config, _ = _load_model_config(spec.model.source)
    task = spec.model.task if spec.model.task != "auto" else default_task(config)
    device = _device(spec.model.device)
    memory = _device_memory(device)
    if spec.training.gradient_checkpointing == "auto":
        # The advice is the app's choice made in full: checkpointing is one candidate among the others,
        # in their order of cost (a CPU splits the batch first).
        spec = with_changes(spec, {"training.gradient_checkpointing": "off"})

    def row(s: RunSpec, length: int | None) -> dict[str, Any] | None:
        r = estimate(
            config,
            s.method,
            s.training,
            task=task,
            device_memory=memory,
            weight_dtype=s.model.dtype,
            quantization=s.model.quantization,
            seq_len=length,
            device=device,
            labelled_share=labelled_share,
            objective=s.objective,
        )
        return None if r is None or "error" in r or "fits" not in r else r

    now = row(spec, seq_len or spec.data.max_length)
    if now is None:
        return None
    available, needed = now["device_memory_bytes"], now["memory_bytes"]["total"]
    if now["fits"]:
        return FitAdvice({}, needed, available, "fits")
    batch, seq_len = now["assumptions"]["batch_size"], now["assumptions"]["seq_len"]
    filled = with_changes(spec, {"training.batch_size": batch})
    for changes in _candidates(filled, batch, seq_len, device):
        shorter = changes.get("data.max_length")
        candidate = row(with_changes(filled, changes), min(shorter, seq_len) if shorter else seq_len)
        if candidate is not None and candidate["fits"]:
            total = candidate["memory_bytes"]["total"]
            return FitAdvice(changes, total, available, f"fits with {describe(changes)}")
    return FitAdvice(
        None,
        needed,
        available,
        "nothing tried fits (checkpointing, batch 1, a 4-bit base on a GPU, "
        f"max length {SHORTEST}): pick a lighter method or a smaller model",
    )


def resolve_checkpointing(spec: RunSpec, config: Any, task: str, device: str, seq_len: int,
                          labelled_share: float | None) -> tuple[RunSpec, dict[str, str]]:
    """`training.gradient_checkpointing: auto` made on or off for this run, with the reason: on only where the
    estimate says the step does not fit this device without it (where it fits neither way, on still comes
    closest); `costs._costs` decides the same for the Compare page. `seq_len`: the tokens of the run's
    longest row."""
    t = spec.training
    if t.gradient_checkpointing != "auto":
        return spec, {}
    memory = _device_memory(device)

    def at(setting: str) -> dict[str, Any]:
        return estimate(config, spec.method, t.model_copy(update={"gradient_checkpointing": setting}), task=task,
                        device_memory=memory, weight_dtype=spec.model.dtype, quantization=spec.model.quantization,
                        seq_len=seq_len, device=device, labelled_share=labelled_share,
                        objective=spec.objective) or {}  # fmt: skip

    supported = type(spec.method).supports_gradient_checkpointing
    row = at("auto") if memory and supported else {}
    if "error" in row or "fits" not in row:
        why = ("the method does not work with it" if not supported
               else "this device's memory or the step's size is unknown, so the faster setting is kept")
        choice = "off"
    else:
        from adapter_studio.engine.estimate.table import human_bytes

        have = human_bytes(row["device_memory_bytes"])
        need = human_bytes(row["memory_bytes"]["total"])
        step = f"a step of {seq_len}-token rows"
        if row["assumptions"]["gradient_checkpointing"]:
            without = human_bytes(at("off")["memory_bytes"]["total"])
            choice, why = "on", (f"{step} needs about {without} without it, more than this device's {have}; about "
                                 f"{need} with it (about a third more compute)" if row["fits"] else
                                 f"{step} needs about {without} without it and about {need} with it, more than "
                                 f"this device's {have} either way: this run may run out of memory (the Compare "
                                 "page says what makes it fit)")  # fmt: skip
        elif row["fits"]:
            choice, why = "off", f"{step} needs about {need} of this device's {have}: no need to recompute"
        else:  # recomputing would save nothing here (the step's peak is elsewhere)
            choice, why = "off", (f"{step} needs about {need}, more than this device's {have}, and recomputing "
                                  "would not lower it: this run may run out of memory")
    training = t.model_copy(update={"gradient_checkpointing": choice})
    return spec.model_copy(update={"training": training}), {"training.gradient_checkpointing": why}
