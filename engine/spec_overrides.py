"""`--set KEY=VALUE`: a value read as YAML (`[q_proj,v_proj]` is a list, `3` a number), where a person means it so,
and as the text typed where YAML would read it otherwise (`Q: {instruction}` is a prompt template, not a mapping)."""

from __future__ import annotations

from typing import Any

import yaml
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.machines import MachinesSpec
from adapter_studio.engine.spec_errors import TAGGED

# Sections below the top level that a lone value stands for (`machines: 2`): kept when --set goes below them.
NESTED_SHORTHANDS = {("training", "machines"): MachinesSpec.as_mapping}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """`a.b=v` sets a nested key (creating levels)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set needs key=value, got '{item}'", fix="e.g. --set training.max_steps=3")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):  # `machines: 2` in the file, `--set training.machines.rank=1`
                expand = NESTED_SHORTHANDS.get(tuple(parts[: depth + 1]))
                node[part] = expand(node[part]) if expand and node.get(part) is not None else {}
                node[part] = node[part] if isinstance(node[part], dict) else {}
            node = node[part]
        node[parts[-1]] = read_value(key.strip(), raw)


def read_value(key: str, raw: str) -> Any:
    """What `--set KEY=raw` gives: YAML, but text where YAML would make a mapping or list of words that were not
    written as one (`Q: {instruction}`, `- be brief`), or drop them as a comment (`#1 rule`)."""
    if raw == "":
        return None
    text = raw.strip()
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        if text[:1] == "[":  # `[q_proj, v_proj` read as the two names '[q_proj' and 'v_proj'
            raise UserError(f"the list is not closed ({raw})", where=f"--set {key}",
                            fix=f"end it with ], e.g. --set '{key}=[a, b]'") from None  # fmt: skip
        if text[:1] == "{":
            raise UserError(f"the mapping is not closed ({raw})", where=f"--set {key}",
                            fix=f"end it with }}, or give each entry as --set {key}.NAME=VALUE") from None  # fmt: skip
        return raw
    if isinstance(value, dict | list) and text[:1] not in "[{":
        return raw
    if value is None and text.startswith("#"):
        return raw
    return value


def drop_the_other_kinds_fields(data: dict[str, Any], overridden: frozenset[str]) -> None:
    """`--set method.name=dora` on a spec written for LoRA (a run's saved spec.yaml lists every field): LoRA's own
    fields (`init`) were refused as unknown keys of the file's, though they were the method left behind."""
    for section, (registry, _) in TAGGED.items():
        node = data.get(section)
        kind = registry.get(node.get("name")) if isinstance(node, dict) and f"{section}.name" in overridden else None
        if kind is not None:
            data[section] = {k: v for k, v in node.items() if k in kind.model_fields or f"{section}.{k}" in overridden}
