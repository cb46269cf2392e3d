"""Dataset shapes: detect them from the columns and turn rows into one common example form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import UserError

# Role → the column names a role is found under when `data.columns` does not say.
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "question", "query", "prompt_text"),
    "input": ("input", "context"),
    "output": ("output", "response", "answer", "target"),
    "system": ("system",),
    "messages": ("messages",),
    "conversations": ("conversations", "conversation"),
    "prompt": ("prompt",),
    "completion": ("completion",),
    "text": ("text", "sentence", "sentence1", "content", "document"),
    "text_pair": ("text_pair", "sentence2"),
    "label": ("label", "labels", "class", "category"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "classification": ("text", "label"),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "alpaca": ("input", "system"),
    "classification": ("text_pair",),
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "model": "assistant"}


@dataclass
class Example:
    """One row in the common form: a conversation, a prompt/completion pair, plain text or a label."""

    row: int  # 1-based row number in its file, for messages
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""
    completion: str = ""
    text: str = ""
    text_pair: str | None = None
    label: Any = None


def roles_of(fmt: str) -> tuple[str, ...]:
    return REQUIRED[fmt] + OPTIONAL.get(fmt, ())


def _find(columns: list[str], role: str, mapping: dict[str, str]) -> str | None:
    if role in mapping:
        return mapping[role]
    lower = {c.lower(): c for c in columns}
    return next((lower[a] for a in ROLE_ALIASES[role] if a in lower), None)


def detect_format(columns: list[str], mapping: dict[str, str] | None = None) -> str:
    """The shape whose required roles are all present (mapped or by their usual names)."""
    mapping = mapping or {}
    for fmt in ("messages", "sharegpt", "classification", "prompt_completion", "alpaca", "text"):
        if all(_find(columns, role, mapping) for role in REQUIRED[fmt]):
            if fmt == "classification" and _find(columns, "output", mapping):
                continue
            return fmt
    raise UserError(
        f"cannot tell the data's shape from its columns ({', '.join(columns) or 'none'})",
        where="data.columns",
        fix="map the columns (e.g. instruction → question, output → answer) or set data.format",
    )


def resolve_columns(fmt: str, columns: list[str], mapping: dict[str, str], where: str) -> dict[str, str]:
    """Role → column for a format; a missing required column lists the columns that exist."""
    unknown = set(mapping) - set(roles_of(fmt))
    if unknown:
        raise UserError(
            f"data.columns has roles {sorted(unknown)} that the {fmt} format does not use",
            where="data.columns",
            fix=f"{fmt} uses: {', '.join(roles_of(fmt))}",
        )
    resolved: dict[str, str] = {}
    for role in roles_of(fmt):
        column = _find(columns, role, mapping)
        if column is not None and column in columns:
            resolved[role] = column
        elif role in REQUIRED[fmt]:
            raise UserError(
                f"the {fmt} format needs a '{role}' column; the columns found are {', '.join(columns)}",
                where=where,
                fix=f"map one of them in data.columns (e.g. {role}: <column>) or pick another format",
            )
    return resolved


def _text(row: dict[str, Any], column: str, role: str, where: str, number: int) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise UserError(
            f"row {number}, field '{column}' ({role}) is a {type(value).__name__}, expected text",
            where=f"{where}, row {number}",
            fix=f"make '{column}' a string in every row",
        )
    return value


def _turns(value: Any, column: str, where: str, number: int, sharegpt: bool) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise UserError(
            f"row {number}, field '{column}' must be a non-empty list of turns",
            where=f"{where}, row {number}",
            fix='use [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]',
        )
    turns = []
    for turn in value:
        key_role, key_text = ("from", "value") if sharegpt else ("role", "content")
        if not isinstance(turn, dict) or key_role not in turn or key_text not in turn:
            raise UserError(
                f"row {number}, field '{column}': each turn needs '{key_role}' and '{key_text}'",
                where=f"{where}, row {number}",
                fix=f"check the turns of row {number}",
            )
        role = SHAREGPT_ROLES.get(str(turn[key_role]).lower(), str(turn[key_role])) if sharegpt else turn[key_role]
        turns.append({"role": role, "content": str(turn[key_text])})
    return turns


def to_examples(
    rows: list[dict[str, Any]], fmt: str, columns: dict[str, str], where: str
) -> tuple[list[Example], list[str]]:
    """Rows → Examples, plus one note per dropped row (e.g. an empty output)."""
    out: list[Example] = []
    dropped: list[str] = []
    for number, row in enumerate(rows, start=1):
        def text(role: str, row: dict[str, Any] = row, number: int = number) -> str:
            return _text(row, columns[role], role, where, number) if role in columns else ""

        if fmt == "alpaca":
            instruction, extra, output = text("instruction"), text("input"), text("output")
            if not output.strip():
                dropped.append(f"row {number}: empty '{columns['output']}'")
                continue
            user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            messages = [{"role": "system", "content": text("system")}] if text("system").strip() else []
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
            out.append(Example(row=number, messages=messages, prompt=instruction, text=extra))
        elif fmt in ("messages", "sharegpt"):
            key = "messages" if fmt == "messages" else "conversations"
            turns = _turns(row.get(columns[key]), columns[key], where, number, fmt == "sharegpt")
            if not any(t["role"] == "assistant" and t["content"].strip() for t in turns):
                dropped.append(f"row {number}: no assistant answer")
                continue
            out.append(Example(row=number, messages=turns))
        elif fmt == "prompt_completion":
            completion = text("completion")
            if not completion.strip():
                dropped.append(f"row {number}: empty '{columns['completion']}'")
                continue
            out.append(Example(row=number, prompt=text("prompt"), completion=completion))
        elif fmt == "text":
            body = text("text")
            if not body.strip():
                dropped.append(f"row {number}: empty '{columns['text']}'")
                continue
            out.append(Example(row=number, text=body))
        elif fmt == "classification":
            label = row.get(columns["label"])
            if label is None or (isinstance(label, str) and not label.strip()):
                dropped.append(f"row {number}: no label")
                continue
            pair = text("text_pair") if "text_pair" in columns else None
            out.append(Example(row=number, text=text("text"), text_pair=pair, label=label))
    return out, dropped


def label_mapping(examples: list[Example]) -> dict[int, str]:
    """Integers 0..K-1 are taken as given; any other labels map to ids in sorted order."""
    labels = {e.label for e in examples}
    ints = {int(v) for v in labels if _is_int(v)}
    if len(ints) == len(labels) and ints == set(range(len(ints))):
        return {i: str(i) for i in range(len(ints))}
    names = sorted(str(v) for v in labels)
    return dict(enumerate(names))


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()
