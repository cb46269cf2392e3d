"""Checkpoints: the trained tensors, optimizer, scheduler and RNG state at a step, enough to resume.

Only trainable parameters are saved (by name), so a checkpoint of a LoRA run is megabytes and the
same code serves every method: the model is rebuilt from the spec and the tensors loaded back.

Nothing in a checkpoint is a pickle: run folders are shared, and loading a pickle runs whatever code it
names. Tensors (weights, optimizer moments, RNG states) are safetensors; everything else (step counts,
the optimizer's parameter groups, the scheduler's counters, Python's RNG) is JSON in `state.json`,
which also records each file's size and SHA-256 so that a resume can tell a complete checkpoint from
one a crash cut short. Checkpoints of older versions (`state.pt`) load only through torch's
weights-only unpickler, which refuses code.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine import durable
from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    import torch

WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
RNG = "rng.safetensors"
STATE = "state.json"
LEGACY_STATE = "state.pt"
FORMAT = 2
KEEP_LAST = 2


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically and durably (temp folder, flushed, renamed) and prune old ones.

    `tensors` replaces the model's trainable tensors (a sharded run passes them gathered); with
    `optimizer` None the checkpoint holds no optimizer state and a resume starts AdamW afresh. A full,
    read-only or forbidden disk is a UserError that says where and how to go on; nothing is left behind."""
    final = folder / f"step-{step:07d}"
    tmp = folder / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, model, optimizer, scheduler, step, extra, tensors)
        durable.replace_folder(tmp, final)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)  # never a half-written checkpoint beside the good ones
        raise _disk_error(e, f"the checkpoint of step {step}", folder) from None
    for old in list_checkpoints(folder)[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _disk_error(error: Exception, what: str, folder: Path) -> Exception:
    """A write that failed for want of space or permission as a UserError saying where and what to do;
    any other error as it is."""
    code = durable.os_error_code(error)
    if code not in durable.DISK_ERRORS:
        return error
    kept = latest_checkpoint(folder)
    return UserError(
        f"{durable.DISK_ERRORS[code]}: could not write {what} in {folder}",
        where="checkpoints",
        fix=("free space on that disk (or make it writable), then resume: adapter-studio train --resume "
             f"{folder.parent}" + (f" continues from {kept.name}, which is intact" if kept else "")),
    )


def _write(
    tmp: Path,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None,
) -> None:
    import torch
    from safetensors.torch import save_file

    tmp.mkdir(parents=True)
    save_file(trainable_state(model) if tensors is None else tensors, str(tmp / WEIGHTS))
    optimizer_json = None
    if optimizer is not None:
        optimizer_tensors, optimizer_json = _split_state(optimizer.state_dict())
        save_file(optimizer_tensors, str(tmp / OPTIMIZER))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(tmp / RNG))
    state = {
        "format": FORMAT,
        "step": step,
        **extra,
        "optimizer": optimizer_json,
        "scheduler": scheduler.state_dict(),
        "python_rng": _python_rng_to_json(random.getstate()),
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())},
    }
    (tmp / STATE).write_text(json.dumps(state, indent=1, default=_json_value))  # last: marks it complete


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / STATE).exists())


def remove_checkpoints(run_dir: Path) -> int:
    """Delete a run's checkpoints (its events, spec and the rest of the folder stay); the bytes freed."""
    freed = 0
    for checkpoint in run_dir.glob("checkpoints/*"):
        freed += sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
        shutil.rmtree(checkpoint, ignore_errors=True)
    return freed


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a resume of the run goes on from a checkpoint (without one it starts again from step 0)."""
    return bool(list_checkpoints(run_dir / "checkpoints"))


def weights_bytes(run_dir: Path) -> int | None:
    """The size of the trained weights the run's latest checkpoint holds (what an adapter export writes, near
    enough), or None without one."""
    latest = latest_checkpoint(run_dir / "checkpoints")
    weights = latest / WEIGHTS if latest else None
    return weights.stat().st_size if weights and weights.exists() else None


def check_steps_ahead(training: Any, saved: Any, total_steps: int, reached: int) -> None:
    """A resume given another length (`training`, against the run's `saved` one) that ends at or before the
    step its newest checkpoint `reached` would train nothing and call the run completed (a cancelled 200-step
    run "finished" at step 70 for max_steps 30): refused."""
    from adapter_studio.engine.errors import ResumeRefused

    if (training.max_steps, training.epochs) == (saved.max_steps, saved.epochs):
        return
    if reached and total_steps <= reached:
        given = "training.max_steps" if training.max_steps is not None else "training.epochs"  # what sets it now
        raise ResumeRefused(
            f"it would end at step {total_steps}, not past step {reached}, where the run's checkpoint is",
            where=given, fix=f"give it more than {reached} steps, or resume it as it is",
        )


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def problem(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be trusted (a file missing, cut short or changed), or None."""
    try:
        state = json.loads((checkpoint / STATE).read_text())
    except (OSError, ValueError) as e:
        return f"{STATE} unreadable ({e})"
    if "files" not in state:  # an older version's checkpoint: no record to check against
        return None if (checkpoint / WEIGHTS).exists() else f"{WEIGHTS} missing"
    for name, record in state["files"].items():
        path = checkpoint / name
        if not path.exists():
            return f"{name} missing"
        if path.stat().st_size != record["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {record['bytes']} were written"
        if _sha256(path) != record["sha256"]:
            return f"{name} does not match its checksum"
    return None


def newest_sound_checkpoint(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and a line for each newer one skipped (which, and why)."""
    skipped = []
    for checkpoint in reversed(list_checkpoints(folder)):
        reason = problem(checkpoint)
        if reason is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint.name}: {reason}")
    return None, skipped


def read_trainable(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / WEIGHTS))


def load_trainable(model: torch.nn.Module, checkpoint: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Put a checkpoint's trained tensors (`tensors`, read from it beforehand) into a freshly built model of the
    same spec."""
    import torch

    tensors = read_trainable(checkpoint) if tensors is None else tensors
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint {checkpoint} does not match the model: {missing[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))


def load_state(checkpoint: Path, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG states; returns state.json's fields and `has_optimizer`."""
    import torch
    from safetensors.torch import load_file

    info = json.loads((checkpoint / STATE).read_text())
    if info.get("format", 1) < FORMAT:
        return {**info, **_load_legacy_state(checkpoint, optimizer, scheduler)}
    if info["optimizer"] is not None:
        optimizer.load_state_dict(_join_state(load_file(str(checkpoint / OPTIMIZER)), info["optimizer"]))
    schedule = _load_scheduler(scheduler, info["scheduler"])
    rng = load_file(str(checkpoint / RNG))
    torch.set_rng_state(rng["torch"])
    cuda = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_python_rng_from_json(info["python_rng"]))
    return {**info, "has_optimizer": info["optimizer"] is not None, "schedule_note": schedule}


def _load_scheduler(scheduler: Any, saved: dict[str, Any]) -> str | None:
    """Restore the scheduler's step, keeping the schedule's shape the spec asks for now: LambdaLR's state holds
    its multiplier's fields, so a resume given more (or fewer) steps decayed on the old total and trained its
    new steps at the old floor. A note when the total changed."""
    shapes = [dict(vars(f)) for f in getattr(scheduler, "lr_lambdas", [])]
    scheduler.load_state_dict(saved)
    before = [s.get("total_steps") for s in saved.get("lr_lambdas") or [] if isinstance(s, dict)]
    for f, shape in zip(getattr(scheduler, "lr_lambdas", []), shapes, strict=True):
        # The warmup stays as it ran (recomputed from a longer total it would start again mid-run), but for a
        # shorter total's (stopped at step 3 of 50 warming up, resumed to 6 steps: they trained at 6 % of the rate).
        warmed = vars(f).get("warmup_steps")
        vars(f).update({k: v for k, v in shape.items() if k != "warmup_steps" or warmed is None or v < warmed})
    now = [shape.get("total_steps") for shape in shapes]
    if not (before and now and before[0] != now[0]):
        return None
    for group, base, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas,
                              strict=True):  # the next step's rate on the new shape, not the old one's
        group["lr"] = base * f(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # what get_last_lr says
    return f"the learning-rate schedule now runs over {now[0]} steps (it was saved for {before[0]})"


def checkpoint_label(checkpoint: Path) -> str:
    """How a page names a checkpoint folder: 'best (step 30)', 'step 30'; the folder's name where its state
    cannot be read (the step is what a person compares with the curves)."""
    try:
        step = int(json.loads((checkpoint / STATE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return checkpoint.name
    return f"best (step {step})" if checkpoint.name == "best" else f"step {step}"


def copy_as_best(checkpoint: Path, folder: Path) -> Path:
    """Keep a copy of `checkpoint` as `folder/best` (one process writes it: the main one)."""
    best = folder / "best"
    tmp = folder / ".tmp-best"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(checkpoint, tmp)
        durable.replace_folder(tmp, best)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(e, "the best checkpoint", folder) from None
    return best


def _split_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict as (tensors by `index.key`, the rest as JSON); `_join_state` undoes it.

    A value may be a dict of tensors one level down (bitsandbytes' 8-bit optimizers keep their
    quantised moments under `__bnb_optimizer_quant_state__`): those go by `index.key.inner`."""
    import torch

    tensors, per_param, seen = {}, {}, set()

    def own(tensor: torch.Tensor) -> torch.Tensor:
        # safetensors refuses tensors that share memory: bitsandbytes gives every parameter's state the same
        # quantisation maps (qmap1, qmap2), so 8-bit AdamW on a real model failed at its first checkpoint.
        tensor = tensor.detach().contiguous().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            return tensor.clone()
        seen.add(storage)
        return tensor

    for index, values in state["state"].items():
        plain, names, nested = {}, [], {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = own(value)
                names.append(key)
            elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                for inner, tensor in value.items():
                    tensors[f"{index}.{key}.{inner}"] = own(tensor)
                nested[key] = list(value)
            else:
                plain[key] = value
        per_param[str(index)] = {"tensors": names, "nested": nested, "values": plain}
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def _join_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    state = {
        int(index): {
            **entry["values"],
            **{key: tensors[f"{index}.{key}"] for key in entry["tensors"]},
            **{
                key: {inner: tensors[f"{index}.{key}.{inner}"] for inner in inners}
                for key, inners in entry.get("nested", {}).items()
            },
        }
        for index, entry in saved["state"].items()
    }
    return {"state": state, "param_groups": saved["param_groups"]}


def _json_value(value: Any) -> Any:
    """A value json cannot write by itself: a one-element tensor (e.g. a learning rate kept as one)."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
        return value.item()
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__} outside safetensors")


def _python_rng_to_json(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(saved: list[Any]) -> tuple[Any, ...]:
    return saved[0], tuple(saved[1]), saved[2]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _load_legacy_state(checkpoint: Path, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """An older version's `state.pt`, read with the weights-only unpickler (tensors, numbers, containers)."""
    import pickle

    import torch

    try:
        state = torch.load(checkpoint / LEGACY_STATE, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise UserError(
            f"{checkpoint / LEGACY_STATE} holds more than tensors and numbers (it would run code to load), so it "
            f"is not opened ({str(e).splitlines()[0][:160]})",
            where=str(checkpoint),
            fix="resume only run folders you made yourself, or start a new run from the same spec",
        ) from None
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    return {"has_optimizer": state["optimizer"] is not None}
