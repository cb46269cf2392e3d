"""Rebuilding a run's trained model from its folder (spec + last checkpoint), for export and trying."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Started, iter_events
from adapter_studio.engine.runs import require_run_folder
from adapter_studio.engine.spec import RunSpec, load_spec_file
from adapter_studio.engine.training import checkpoints as ckpt

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo


@dataclass
class TrainedModel:
    model: torch.nn.Module
    tokenizer: Any
    spec: RunSpec
    info: ModelInfo
    checkpoint: Path
    task: str


def run_spec(run_dir: Path) -> RunSpec:
    require_run_folder(run_dir, "run folder")
    return load_spec_file(run_dir / "spec.yaml")


def run_task(spec: RunSpec) -> str:
    """The task a run's model was built for: its saved spec names it (older runs: a causal LM)."""
    return spec.model.task if spec.model.task != "auto" else "causal_lm"


def total_steps_of(run_dir: Path) -> int:
    started = [e for e in iter_events(run_dir / "events.jsonl") if isinstance(e, Started)]
    return started[-1].total_steps if started else 1


def load_base(spec: RunSpec) -> tuple[torch.nn.Module, Any, str]:
    """The run's base model and tokenizer in float32 on the CPU, as export and comparison need."""
    import torch
    from adapter_studio.engine.data.examples import load_examples
    from adapter_studio.engine.data.shapes import label_mapping
    from adapter_studio.engine.models.loading import load_model

    task = run_task(spec)
    id2label = None
    if task == "classification":
        _, _, examples, _ = load_examples(spec.data, spec.data.path)
        id2label = label_mapping(examples)
    model, tokenizer, _ = load_model(spec.model, task, dtype=torch.float32, id2label=id2label)
    return model, tokenizer, task


def load_trained(run_dir: Path, checkpoint: Path | None = None, *, dequantize: bool = False) -> TrainedModel:
    """The base model with the run's method applied and its latest (or given) checkpoint loaded.

    `dequantize` loads a 4-/8-bit base in full precision instead, so a QLoRA adapter merges into
    real weights rather than into a re-quantised copy — except LoftQ's, which was started against the
    4-bit weights (it holds part of their quantisation error): it merges into those, dequantised."""
    from adapter_studio.engine.methods import MethodContext
    from adapter_studio.engine.models.construction import model_construction
    from adapter_studio.engine.models.info import describe_model

    spec = run_spec(run_dir)
    from_quantised = dequantize and getattr(spec.method, "init", None) == "loftq"
    if dequantize and spec.model.quantization != "none" and not from_quantised:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"quantization": "none"})})
    checkpoint, tensors = _read_checkpoint(run_dir, checkpoint)
    model, tokenizer, task = load_base(spec)
    if from_quantised:
        model = model.dequantize()  # bitsandbytes' own 4-bit → float: exactly the weights LoftQ trained on
    info = describe_model(model)
    ctx = MethodContext(info=info, training=spec.training, total_steps=total_steps_of(run_dir), tokenizer=tokenizer)
    with model_construction():  # peft makes its modules in the process's default dtype
        model = spec.method.apply(model, ctx)
    ckpt.load_trainable(model, checkpoint, tensors)
    model.eval()
    return TrainedModel(model, tokenizer, spec, info, checkpoint, task)


def _read_checkpoint(run_dir: Path, given: Path | None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint (the given one, else the latest) and its trained tensors, read before the base model loads:
    a run still training keeps its last two checkpoints, and one picked as the latest was deleted while the base
    loaded (an export then failed on a FileNotFoundError). One gone as it is read: the latest again."""
    for _ in range(3):
        checkpoint = given or ckpt.latest_checkpoint(run_dir / "checkpoints")
        if checkpoint is None:
            raise UserError("this run has no checkpoint yet", where=str(run_dir),
                            fix="train it (or resume it) until a checkpoint is saved")  # fmt: skip
        try:
            return checkpoint, ckpt.read_trainable(checkpoint)
        except FileNotFoundError:
            if given is not None:
                raise
    raise UserError("the run's checkpoints were replaced faster than they could be read", where=str(run_dir),
                    fix="try again, or when the run has finished")  # fmt: skip
