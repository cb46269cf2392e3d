"""What a resumed run keeps from its start: the checkpoint's weights were made for its model and method, so
another rank, method or model failed after the model loaded (a tensor size mismatch), and the changed spec,
saved by then, broke every later resume of a run that had been fine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.cache import CACHE_VERSION
from adapter_studio.engine.errors import UserError
from pydantic import BaseModel

if TYPE_CHECKING:
    from adapter_studio.engine.spec import RunSpec

# The fields whose value the checkpoint depends on, and why, in a person's words.
KEPT = {
    "model.source": "its base model",
    "model.task": "its task",
    "model.quantization": "its base model's quantization",
    "method": "its method and the method's settings",
    "objective": "its objective and the objective's settings",
    "data.label_names": "the label names its classifier head was trained with",
}
FIX = "train a new run to change it (Clone on the Runs page)"


def kept_field(dotted: str) -> str | None:
    """The kept field a `--set KEY` changes (KEY itself, a field under it, or a section above it), or None."""
    return next((k for k in KEPT if dotted == k or dotted.startswith(f"{k}.") or k.startswith(f"{dotted}.")), None)


def refuse_kept_overrides(overrides: list[str], saved: RunSpec, spec_file: str) -> None:
    """`train --resume RUN --set method.r=16`: refused before anything is read or written, with the command that
    trains a new run from the same spec with that change."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        field = kept_field(key)
        if field is not None:
            said = _said(saved, key) if _has(saved, key) else _said(saved, field)
            raise UserError(f"a resumed run keeps {KEPT[field]} ({said})", where=f"--set {key}",
                            fix=f"to train with another, start a new run from its spec: adapter-studio train "
                            f"{spec_file} --set {item}")  # fmt: skip


def check_kept(spec: RunSpec, saved: RunSpec) -> None:
    """A resume's spec (given through the API or the window) against the run's saved one, which holds what the
    run resolved (target modules, the task): a field the given spec leaves unset, None or auto is not a change."""
    for field in KEPT:
        if _changed(_node(spec, field), _node(saved, field)):
            raise UserError(f"a resumed run keeps {KEPT[field]} ({_said(saved, field)})", where=field, fix=FIX)


def _changed(given: Any, saved: Any) -> bool:
    if isinstance(given, BaseModel):
        if type(given) is not type(saved):  # another method or objective
            return True
        return any(_changed(getattr(given, name), getattr(saved, name)) for name in given.model_fields_set)
    return given not in (None, "auto") and given != saved


def _node(spec: RunSpec, dotted: str) -> Any:
    node: Any = spec
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _has(spec: RunSpec, dotted: str) -> bool:
    try:
        _node(spec, dotted)
    except AttributeError:
        return False
    return True


def _value(spec: RunSpec, dotted: str) -> Any:
    node = _node(spec, dotted)
    return node.model_dump(mode="json") if isinstance(node, BaseModel) else node


def _said(spec: RunSpec, field: str) -> str:
    value = _value(spec, field)
    if isinstance(value, dict) and "name" in value:  # a method or objective: its name
        return f"{field} {value['name']}"
    return f"{field} {value!r}" if isinstance(value, str) else f"{field} {value}"


def data_changes(state: dict[str, Any], stamps: dict[str, list[int]], checkpoint: str) -> list[str]:
    """What differs in the data a resume trains on from that of the checkpoint it resumes (`state`: the
    checkpoint's saved fields): a file changed or new, or an earlier data preparation (the split by label and the
    pair join changed held-out rows, unsaid)."""
    saved = state.get("data_files") or {}
    said = [f"data.path: {path} {'changed' if path in saved else 'is new'} since {checkpoint} was saved: the "
            "resumed steps train on its content as it is now"
            for path, stamp in stamps.items() if saved and saved.get(path) != stamp]  # fmt: skip
    if state.get("data_version") != CACHE_VERSION:
        said.append(f"{checkpoint} was saved by an earlier version of Adapter Studio, which may have read or split "
                    "the data differently: the resumed steps and held-out rows are this version's")
    return said
