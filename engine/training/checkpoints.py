"""Checkpoints: the trained tensors, optimizer, scheduler and RNG state at a step, enough to resume.

Only trainable parameters are saved (by name), so a checkpoint of a LoRA run is megabytes and the
same code serves every method: the model is rebuilt from the spec and the tensors loaded back.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

WEIGHTS = "trainable.safetensors"
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
    """Write a checkpoint atomically (temp folder, then rename) and prune old ones.

    `tensors` replaces the model's trainable tensors (a sharded run passes them gathered); with
    `optimizer` None the checkpoint holds no optimizer state and a resume starts AdamW afresh."""
    import torch
    from safetensors.torch import save_file

    final = folder / f"step-{step:07d}"
    tmp = folder / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model) if tensors is None else tensors, str(tmp / WEIGHTS))
    torch.save(
        {
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
        },
        tmp / "state.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(folder)[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").exists())


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_trainable(model: torch.nn.Module, checkpoint: Path) -> None:
    """Put a checkpoint's trained tensors into a freshly built model of the same spec."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / WEIGHTS))
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint {checkpoint} does not match the model: {missing[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))


def load_state(checkpoint: Path, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    import torch

    state = torch.load(checkpoint / "state.pt", weights_only=False)
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    return {**json.loads((checkpoint / "state.json").read_text()), "has_optimizer": state["optimizer"] is not None}


def copy_as_best(checkpoint: Path, folder: Path) -> Path:
    best = folder / "best"
    tmp = folder / ".tmp-best"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)
    shutil.rmtree(best, ignore_errors=True)
    tmp.rename(best)
    return best
