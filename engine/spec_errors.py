"""What is wrong with a spec, said as a person fixes it: the dotted field, the file's line, what would be
taken and, for an unknown key, the keys that were probably meant."""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

import yaml
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods import METHODS
from adapter_studio.engine.objectives import OBJECTIVES
from pydantic import BaseModel, ValidationError

# Tagged sections: the spec key, its registry, the tag a section without `name` gets.
TAGGED = {"method": (METHODS, "lora"), "objective": (OBJECTIVES, "sft")}
Model = type[BaseModel]


def check_truth_values(data: dict[str, Any], origin: str, text: str | None, root: Model,
                       overridden: frozenset[str] = frozenset()) -> None:  # fmt: skip
    """pydantic takes true for the number 1: `max_steps: yes` trained one step, unsaid."""
    truth = _truth_for_number(data, data, root)
    if truth:
        dotted = ".".join(truth)
        given = _by_set(dotted, overridden)  # the value --set gave, not the file's
        line = line_of(text, truth, exact=True) if text and not given else None
        where = "--set" if given else f"{origin}:{line}" if line else origin
        raise UserError(f"{dotted}: true/false is not a number (YAML reads yes, no, on and off as true/false)",
                        where=where, fix=f"write a number for {dotted}")  # fmt: skip


def _by_set(dotted: str, overridden: frozenset[str]) -> bool:
    """Whether the field at `dotted` holds a value a `--set KEY=VALUE` gave: KEY, a section above it, or an entry
    of it (`--set data.label_names.1=World` fails as data.label_names)."""
    return any(dotted == key or dotted.startswith(f"{key}.") or key.startswith(f"{dotted}.") for key in overridden)


def _truth_for_number(node: Any, data: dict[str, Any], root: Model, path: tuple[str, ...] = ()) -> list[str] | None:
    """The path of the first true/false given to a field that takes a number and not true/false."""
    model = _model_at(list(path), data, root)
    if model is None or not isinstance(node, dict):
        return None
    for key, value in node.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        if isinstance(value, bool) and _takes(field.annotation, (int, float)) and not _takes(field.annotation, (bool,)):
            return [*path, key]
        found = _truth_for_number(value, data, root, (*path, key)) if isinstance(value, dict) else None
        if found:
            return found
    return None


def _takes(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a field's type is one of `kinds`, or has one among its members (`int | None`)."""
    return annotation in kinds or any(_takes(a, kinds) for a in get_args(annotation))


_UNION_MEMBER = re.compile(r"(constrained-)?(float|int|str|bool)|literal\[.*\]|(list|dict)\[.*\]")


def _field_path(loc: tuple[Any, ...], data: dict[str, Any]) -> list[str]:
    # A union field puts the member that failed in the location (learning_rate.constrained-float): drop it.
    parts = [str(p) for p in loc if not (isinstance(p, str) and _UNION_MEMBER.fullmatch(p))]
    # A discriminated union puts the tag in the location: method.<tag>.field → method.field.
    if len(parts) >= 2 and parts[0] in TAGGED and parts[1] in TAGGED[parts[0]][0]:
        parts = [parts[0], *parts[2:]]
    return parts


def _valid_keys(path: list[str], data: dict[str, Any], root: Model) -> list[str]:
    model = _model_at(path[:-1], data, root)
    return list(model.model_fields) if model else []


def _model_at(path: list[str], data: dict[str, Any], root: Model) -> Model | None:
    """The section's model at `path` (the method's class by its name), None where there is none."""
    model: Model | None = root
    for part in path:
        if model is root and part in TAGGED:
            registry, default = TAGGED[part]
            name = data.get(part, {}).get("name", default) if isinstance(data.get(part), dict) else default
            model = registry.get(name) if isinstance(name, str) else None  # a list or mapping names nothing
            continue
        field = model.model_fields.get(part) if model else None
        annotation = getattr(field, "annotation", None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def explain(error: ValidationError, data: dict[str, Any], origin: str, text: str | None, root: Model,
            overridden: frozenset[str] = frozenset()) -> UserError:  # fmt: skip
    errors = error.errors()
    # A misspelt key also leaves the right one missing (`Model:`): the misspelling is the one to say.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = _field_path(first["loc"], data)
    dotted = ".".join(path)
    if _by_set(dotted, overridden):  # the value --set gave, not the file's
        text = None
        origin = "--set"
    line = line_of(text, path) if text else None
    where = f"{origin}:{line}" if line else origin
    if first["type"] == "extra_forbidden":
        near = difflib.get_close_matches(path[-1], _valid_keys(path, data, root), n=3, cutoff=0.5)
        valid = _valid_keys(path, data, root)
        fix = f"did you mean {', '.join(near)}?" if near else f"valid keys here: {', '.join(valid)}"
        return UserError(f"unknown key {dotted!r}", where=where, fix=fix)  # repr: a key may hold a line break
    if first["type"] == "missing":
        return UserError(f"'{dotted}' is required", where=where, fix=f"add {dotted} to the spec")
    if first["type"] == "union_tag_invalid":
        section = str(first["loc"][0])
        registry = TAGGED[section][0]
        bad = data.get(section, {}).get("name")
        near = difflib.get_close_matches(str(bad).lower(), registry, n=3)
        fix = f"did you mean {', '.join(near)}?" if near else f"known {section}s: {', '.join(registry)}"
        return UserError(f"unknown {section} '{bad}'", where=f"{where} ({section}.name)", fix=fix)
    got = first.get("input")
    if first["type"] in ("model_type", "model_attributes_type", "dict_type"):
        keys = _valid_keys([*path, ""], data, root)
        # A list (`- max_steps: 1`) or nothing under the key, said as written, not as Python's [{…}] or None.
        given = repr(got) if not isinstance(got, list) else "a list" if origin == "--set" else \
            "a list ('- ' before its lines)"  # fmt: skip
        what = "entries" if not keys else "settings"  # a mapping of the person's own keys (data.label_names)
        named = f" ({', '.join(keys[:4])}, …)" if keys else ""
        each = f"--set {dotted}.KEY=VALUE for each{named}" if origin == "--set" else \
            f"a 'key: value' line each under it{named}"  # fmt: skip
        return UserError(f"{dotted} holds {what}, not {given}", where=where, fix=f"give them as {each}")
    # A union field fails once per member: say what each would have taken ("greater than 0 or 'auto'").
    wanted = [sentence_case(e["msg"]) for e in errors if _field_path(e["loc"], data) == path]
    what = " or ".join(dict.fromkeys(wanted))
    place = "the --set value" if origin == "--set" else "the spec"
    shown = "" if isinstance(got, dict) else f" (got {got!r})"  # a section's own check: its message names the values
    return UserError(f"{dotted}: {what}{shown}", where=where, fix=f"change {dotted} in {place}")


def sentence_case(message: str) -> str:
    """A pydantic message read mid-sentence: "Input should be …" → "input should be …", without the "Value
    error, " of a validator's own; a name it quotes keeps its capitals."""
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def line_of(text: str, path: list[str], exact: bool = False) -> int | None:
    """1-based line of a dotted key in YAML text, or of its nearest existing parent (None with `exact`)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            return None if exact else line
        for key, value in node.value:
            if key.value == part:
                line, node = key.start_mark.line + 1, value
                break
        else:
            return None if exact else line
    return line
