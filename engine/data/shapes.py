"""Dataset shapes: detect them from the columns and turn rows into one common example form."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from adapter_studio.engine.data.by_values import classification_by_values
from adapter_studio.engine.data.files import locate
from adapter_studio.engine.data.roles import (
    ALTERNATIVE,
    FORMAT_ALIASES,
    REQUIRED,
    ROLE_ALIASES,
    required_roles,
    roles_of,
    user_turn,
)
from adapter_studio.engine.errors import UserError, a_or_an

LABEL_NAMES = ("target", "y")  # labels under scikit-learn's names, found by their values beside a text

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "model": "assistant",
}


@dataclass
class Example:
    """One row in the common form: a conversation, a prompt/completion pair, plain text or a label."""

    row: int  # 1-based line (text files) or row number in its file, for messages
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""
    completion: str = ""
    text: str = ""
    text_pair: str | None = None
    label: Any = None
    chosen: str = ""  # preference pairs: `messages` is the prompt, these the two answers
    rejected: str = ""
    path: str = ""  # the file the row came from
    unit: str = "row"  # whether `row` counts lines or rows
    task: str | None = None  # the row's task (data.columns.task), for methods that route by it

    @property
    def where(self) -> str:
        """`data.jsonl:7` or `data.parquet, row 7`: where a person finds this row."""
        return locate(self.path, self.unit, self.row) if self.path else f"row {self.row}"


def _find(columns: list[str], role: str, mapping: dict[str, str], fmt: str = "") -> str | None:
    if role in mapping:
        return mapping[role]
    lower = {c.lower(): c for c in columns}
    aliases = ROLE_ALIASES[role] + FORMAT_ALIASES.get(fmt, {}).get(role, ())
    return next((lower[a] for a in aliases if a in lower), None)


class ColumnsNotMapped(UserError):
    """The columns do not say which holds what. Carries what the Data page needs to let a person map them
    in place: the file's columns and first rows, the format to map for (the one asked for, else the most
    likely), the roles found so far, and each missing role's likely column in the file (`guess`; "<what it holds>"
    where no column looks like it)."""

    def __init__(self, what: str, *, where: str, fix: str, columns: list[str], fmt: str,
                 found: dict[str, str], guess: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(what, where=where, fix=fix)
        self.columns, self.format, self.found = columns, fmt, found
        self.guess = {r: c for r, c in (guess or {}).items() if r not in found and (c in columns or c[:1] == "<")}
        self.rows: list[dict[str, Any]] = []  # filled in by the reader, which has them


def suggest_shape(columns: list[str], mapping: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The most likely shape of columns no shape's usual names fit, and a role → column guess for it."""
    label = _find(columns, "label", mapping)
    others = [c for c in columns if c != label]
    instruction = _find(columns, "instruction", mapping)
    chosen, rejected = (next((c for c in columns if word in c.lower()), None) for word in ("chosen", "rejected"))
    if chosen and rejected:  # the two answers of a pair under longer names (chosen_response, ...)
        prompt = next((c for c in columns if c not in (chosen, rejected)), None)
        return "preference", {**({"prompt": prompt} if prompt else {}), "chosen": chosen, "rejected": rejected}
    answers = [_find(columns, role, mapping) for role in ("answer_a", "answer_b")]
    if all(answers):  # two answers, and no column found that says which is better
        prompt = _find(columns, "prompt", mapping, "preference")
        which = "<the column that says which is better>"
        return "preference", {**({"prompt": prompt} if prompt else {}), "answer_a": answers[0],
                              "answer_b": answers[1], "preferred": which}  # fmt: skip
    if label and others:  # a label column: most likely rows to classify
        return "classification", {"text": others[0], "label": label}
    if instruction and len(columns) > 1:  # a question found, its answer under a name we do not know
        return "alpaca", {"instruction": instruction, "output": next(c for c in columns if c != instruction)}
    return "alpaca", {"instruction": "question", "output": "answer"}


def detect_format(columns: list[str], mapping: dict[str, str] | None = None, where: str = "data.columns") -> str:
    """The shape whose required roles are all present (mapped or by their usual names)."""
    mapping = mapping or {}
    for fmt in ("preference", "kto", "messages", "sharegpt", "classification", "prompt_completion", "alpaca", "text"):
        found = [r for r in roles_of(fmt) if _find(columns, r, mapping, fmt)]
        if all(r in found for r in required_roles(fmt, found)):
            if fmt == "classification" and _find(columns, "output", mapping):
                continue
            return fmt
    fmt, guess = suggest_shape(columns, mapping)
    example = f"data.format: {fmt}, data.columns: {{{', '.join(f'{r}: {c}' for r, c in guess.items())}}}"
    raise ColumnsNotMapped(
        f"cannot tell the data's shape from its columns ({', '.join(columns) or 'none'})",
        where=where,
        fix=f"name the shape and map its columns, e.g. {example}",
        columns=columns, fmt=fmt, found=_found(fmt, columns, mapping), guess=guess,
    )  # fmt: skip


def detect_shape(
    columns: list[str], mapping: dict[str, str], where: str, rows: list[dict[str, Any]]
) -> tuple[str, dict[str, str]]:
    """The shape, and role → column hints for it: by the columns' names, else by their values (a label
    column beside text, as in a CSV without a header line, or a plain-text file with one column of labels)."""
    try:
        fmt = detect_format(columns, mapping, where)
    except ColumnsNotMapped:
        found = classification_by_values(columns, rows)
        if found is None or not set(mapping) <= set(roles_of("classification")):  # mapped for another shape
            raise
        return "classification", {**found, **mapping}
    if fmt == "text" and not mapping:
        found = classification_by_values(columns, rows)
        # Labels beside the text: in the only other column, or in one named as scikit-learn names its labels
        # (20 Newsgroups saved with an id or a file name beside `text` and `target`); a corpus's other columns
        # (a source, a language) are not labels to learn.
        labels = found is not None and (len(columns) == 2 or found["label"].lower() in LABEL_NAMES)
        if labels and found is not None and found["text"] == _find(columns, "text", mapping):
            return "classification", found
    return fmt, mapping


def _found(fmt: str, columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """Role → column for the roles of a format found among the columns, by mapping or usual name."""
    found: dict[str, str] = {}
    for role in roles_of(fmt):
        column = _find(columns, role, mapping, fmt)
        if role not in REQUIRED[fmt] + ALTERNATIVE.get(fmt, ()) and role not in mapping and column in found.values():
            continue  # found under a name a required role already took (a lone `description`)
        if column is not None and column in columns:
            found[role] = column
    return found


def resolve_columns(fmt: str, columns: list[str], mapping: dict[str, str], where: str) -> dict[str, str]:
    """Role → column for a format; a missing required column lists the columns that exist."""
    unknown = set(mapping) - set(roles_of(fmt))
    if unknown:
        raise UserError(
            f"{', '.join(sorted(unknown))}: not {'a role' if len(unknown) == 1 else 'roles'} of the {fmt} format",
            where="data.columns",
            fix=f"{fmt} uses: {', '.join(roles_of(fmt))}",
        )
    resolved = _found(fmt, columns, mapping)
    for role in (r for r in required_roles(fmt, resolved) if r not in resolved):
        if role in mapping:  # mapped to a column the file does not have
            raise UserError(f"data.columns maps {role} to '{mapping[role]}', which this file does not have; its "
                            f"columns are {', '.join(columns)}", where=where,
                            fix=f"map {role} to one of those columns")  # fmt: skip
        raise ColumnsNotMapped(
            f"the {fmt} format needs {a_or_an(role).split()[0]} '{role}' column; the columns found are "
            f"{', '.join(columns)}",
            where=where,
            fix=f"map one of them in data.columns (e.g. {role}: <column>) or pick another format",
            columns=columns, fmt=fmt, found=resolved,
        )  # fmt: skip
    return resolved


def _text(value: Any, column: str, where: str, options: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # JSON's NaN: an empty field
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 5.0, as JSON writers and pandas write a whole number: the answer a model learns is 5
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if options and isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return "\n".join(map(str, value))  # a multiple-choice problem's options, one per line
    raise UserError(
        f"field '{column}' is a {_kind(value)}, expected text",
        where=where,
        fix=f"make '{column}' a string in every row (or map another column in data.columns)",
    )


def _kind(value: Any) -> str:
    return {list: "list", dict: "JSON object", bool: "true/false value"}.get(type(value), type(value).__name__)


def label_value(value: Any) -> str | int | None:
    """A class name or id as a row's label (and `data.label_names`' key) is read: 1.0 is the id 1, true the class
    `true`; None when there is none; a ValueError for a value that names no class."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):  # a yes/no class (is_spam: true)
        return str(value).lower()
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+\.0+", text):  # pandas writes a label column with a gap in it as floats: 3.0
            return int(float(text))
        return text or None
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    raise ValueError(f"a {_kind(value)}, expected a class name or id")


def _label(value: Any, column: str, where: str) -> str | int | None:
    try:
        return label_value(value)
    except ValueError as e:
        fix = "use one label per row, such as positive or 0"
        raise UserError(f"field '{column}' is {e}", where=where, fix=fix) from None


def _task_name(value: Any) -> str | None:
    """A row's task as text; None for an empty cell or a value that names nothing (a list, true/false): only
    Poly reads the task column, and it names the rows without a task, so no load fails on this column."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            value = int(value)
    return str(value).strip() or None


CHAT_ROLES = ("system", "user", "assistant")


def _content(value: Any, where: str, index: int) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    # Multi-part content ([{"type": "text", "text": ...}]): the text parts, in order.
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise UserError(
        f"turn {index} has {_kind(value)} content, expected text",
        where=where,
        fix="make every turn's content a string",
    )


_WRITTEN_TURNS = re.compile(r"""\s*\[\s*\{.*?['"](?:role|from)['"]\s*:.*\]\s*$""", re.S)


def written_turns(value: Any) -> Any:
    """A message list that a CSV cell holds as text (JSON, or Python's repr as pandas writes a list: numpy's,
    from a Parquet file, without commas between the messages) as the list; any other value as it is."""
    if not isinstance(value, str) or not _WRITTEN_TURNS.match(value):
        return value
    text = value.strip()
    for parse in (json.loads, ast.literal_eval):
        for candidate in (text, re.sub(r"\}\s*\n\s*\{", "}, {", text)):
            try:
                parsed = parse(candidate)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(parsed, list) and parsed and all(isinstance(t, dict) for t in parsed):
                return parsed
    return value


def _turns(value: Any, column: str, where: str) -> list[dict[str, str]]:
    value = written_turns(value)
    if not isinstance(value, list) or not value:
        raise UserError(
            f"field '{column}' must be a non-empty list of turns, got {_kind(value)}",
            where=where,
            fix='use [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]',
        )
    turns = []
    for index, turn in enumerate(value, start=1):
        # Either style in either column: {"role", "content"} or ShareGPT's {"from", "value"}.
        keys = ("from", "value") if isinstance(turn, dict) and "from" in turn else ("role", "content")
        if not isinstance(turn, dict) or keys[0] not in turn or keys[1] not in turn:
            raise UserError(
                f"turn {index} of '{column}' needs 'role' and 'content' (or 'from' and 'value')",
                where=where,
                fix=f"check turn {index} of that row",
            )
        raw_role = str(turn[keys[0]])
        role = SHAREGPT_ROLES.get(raw_role.lower(), raw_role)
        if role not in CHAT_ROLES:
            raise UserError(
                f"turn {index} has role '{raw_role}'",
                where=where,
                fix=f"use one of {', '.join(CHAT_ROLES)} (ShareGPT: human, gpt, system)",
            )
        turns.append({"role": role, "content": _content(turn[keys[1]], where, index)})
    return turns


def to_examples(
    rows: list[dict[str, Any]],
    fmt: str,
    columns: dict[str, str],
    where: str,
    numbers: list[int] | None = None,
    unit: str = "row",
) -> tuple[list[Example], list[str]]:
    """Rows → Examples, plus one note per dropped row (e.g. an empty output) that says where and why.

    `where` is the file; `numbers` its line (unit "line") or row numbers, counted from 1 by default.
    """
    out: list[Example] = []
    dropped: list[str] = []
    numbers = numbers if numbers is not None else list(range(1, len(rows) + 1))
    for number, row in zip(numbers, rows, strict=True):
        here = locate(where, unit, number)

        def text(role: str, row: dict[str, Any] = row, here: str = here) -> str:
            return _text(row.get(columns[role]), columns[role], here, role == "input") if role in columns else ""

        example = Example(row=number, path=where, unit=unit)
        if "task" in columns:
            example.task = _task_name(row.get(columns["task"]))
        if fmt == "alpaca":
            instruction, extra, output, system = text("instruction"), text("input"), text("output"), text("system")
            if not output.strip():
                dropped.append(f"{here}: empty '{columns['output']}' (nothing to learn)")
                continue
            if not (instruction.strip() or extra.strip()):
                dropped.append(f"{here}: empty '{columns['instruction']}'")
                continue
            user = user_turn(instruction, extra, columns.get("input", ""))
            example.messages = [{"role": "system", "content": system}] if system.strip() else []
            example.messages += [
                {"role": "user", "content": user, "instruction": instruction, "input": extra},
                {"role": "assistant", "content": output},
            ]
            example.prompt, example.text = instruction, extra
        elif fmt in ("messages", "sharegpt"):
            key = columns["messages" if fmt == "messages" else "conversations"]
            example.messages = _turns(row.get(key), key, here)
            if not any(t["role"] == "assistant" and t["content"].strip() for t in example.messages):
                dropped.append(f"{here}: no assistant answer (nothing to learn)")
                continue
        elif fmt == "prompt_completion":
            example.prompt, example.completion = text("prompt"), text("completion")
            if not example.completion.strip():
                dropped.append(f"{here}: empty '{columns['completion']}' (nothing to learn)")
                continue
        elif fmt == "text":
            example.text = text("text")
            if not example.text.strip():
                dropped.append(f"{here}: empty '{columns['text']}'")
                continue
        elif fmt == "classification":
            label = _label(row.get(columns["label"]), columns["label"], here)
            if label is None:
                dropped.append(f"{here}: no label in '{columns['label']}'")
                continue
            example.label = label
            example.text = text("text")
            example.text_pair = text("text_pair") if "text_pair" in columns else None
            if not example.text.strip():
                dropped.append(f"{here}: empty '{columns['text']}'")
                continue
        out.append(example)
    return out, dropped


def label_mapping(examples: list[Example]) -> dict[int, str]:
    """Integers 0..K-1 are taken as given; any other labels map to ids in sorted order."""
    return mapping_for_labels(e.label for e in examples)


def mapping_for_labels(values: Iterable[Any]) -> dict[int, str]:
    """id → label name for a set of labels (see `label_mapping`); numbers sort as numbers."""
    labels = {str(v) for v in values}
    if all(_is_int(v) for v in labels):  # ids as written ("01" stays "01": a code, as the rows name it)
        return dict(enumerate(sorted(labels, key=lambda v: (int(v), v))))
    return dict(enumerate(sorted(labels)))


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()
