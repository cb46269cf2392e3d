"""The Data page's one-line form of `data.label_names`: "1=World, 2=Sports"."""

from __future__ import annotations

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.spec import DataSpec
from adapter_studio.engine.spec_errors import sentence_case
from pydantic import ValidationError
from PySide6.QtWidgets import QLineEdit

FIELD = "Label names"


def parse_label_names(text: str) -> dict[str, str]:
    """"1=World, 2=Sports" → {"1": "World", "2": "Sports"}; a UserError names the part that is not label=name,
    or the name given twice (the spec's own check)."""
    names: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        label, sep, name = part.partition("=")
        if not sep or not label.strip() or not name.strip():
            raise UserError(f"'{part}' is not label=name", where=FIELD, fix="write e.g. 1=World, 2=Sports")
        names[label.strip()] = name.strip()
    try:
        return DataSpec(path="-", label_names=names).label_names
    except ValidationError as e:
        raise UserError(sentence_case(e.errors()[0]["msg"]), where=FIELD,
                        fix="give each label its own name") from None  # fmt: skip


def parsed_or(text: str, fallback: dict[str, str]) -> dict[str, str]:
    """The names typed, or `fallback` while they are not label=name (said as typed, not here)."""
    try:
        return parse_label_names(text)
    except UserError:
        return fallback


def label_names_box() -> QLineEdit:
    box = QLineEdit()
    box.setObjectName("labelNames")
    box.setPlaceholderText("optional, e.g. 1=World, 2=Sports: names for labels the data writes as ids")
    box.setToolTip(DataSpec.model_fields["label_names"].description or "")
    return box


def label_names_text(names: dict[str, str]) -> str:
    return ", ".join(f"{label}={name}" for label, name in names.items())
