"""The names a `datasets` file keeps for its class ids (ClassLabel features: in a saved folder's features,
and in the schema metadata of the Parquet files it writes, as the Hub serves them)."""

from __future__ import annotations

import json
from typing import Any


def named_classes(rows: list[dict[str, Any]], names: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Class ids replaced by the names a `datasets` file keeps for them (its ClassLabel features), so pages
    say Business rather than 2; an id without a name stays as it is."""
    for row in rows:
        for column, labels in names.items():
            value = row.get(column)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
                row[column] = labels[value]
    return rows


def parquet_class_names(source: Any) -> dict[str, list[str]]:
    """ClassLabel names from the schema metadata that `datasets` writes into its Parquet files."""
    meta = (source.schema_arrow.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(meta)["info"]["features"] if meta else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return {c: f["names"] for c, f in features.items()
            if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list)}  # fmt: skip
