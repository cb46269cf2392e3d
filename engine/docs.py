"""Generated documentation: the user guide's methods table comes from the method declarations.

`python -m adapter_studio.engine.docs --write` rewrites the block between docs/user-guide.md's markers;
the trainable-parameter column is counted on SmolLM2-135M (and MiniLM for classification) built on the
meta device.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from adapter_studio.engine.defaults import rate_for_size
from adapter_studio.engine.methods import METHOD_CLASSES

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "user-guide.md"  # in a checkout
SMOLLM2_PARAMS = 134_515_008  # SmolLM2-135M: its rates by engine.defaults (batch 4)
BEGIN, END = "<!-- methods-table:begin -->", "<!-- methods-table:end -->"


def trainable_counts(model: str) -> dict[str, str]:
    from adapter_studio.engine.estimate.table import estimate_table

    counts = {}
    for row in estimate_table(model, "all", []):
        if "error" in row:
            counts[row["method"]] = "n/a"
        else:
            counts[row["method"]] = f"{row['trainable_params']:,} ({100 * row['trainable_share']:.3g}%)"
    return counts


def methods_table() -> str:
    smol = trainable_counts("smollm2-135m")
    lines = [
        "| method (`method.name`) | family | what it trains | mergeable | trainable on SmolLM2-135M | default lr there "
        "| models |",
        "|---|---|---|---|---|---|---|",
    ]
    for cls in METHOD_CLASSES:
        name = cls.model_fields["name"].default
        lines.append(
            f"| {cls.title} (`{name}`) | {cls.family} | {cls.description} | {'yes' if cls.mergeable else 'no'} "
            f"| {smol.get(name, 'n/a')} | {rate_for_size(cls(), SMOLLM2_PARAMS, 'causal_lm').value:g} "
            f"| {cls.supported_models} |"
        )
    return "\n".join(lines)


def update_guide() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{methods_table()}\n{END}"
    GUIDE.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), block, text, flags=re.S), encoding="utf-8")


if __name__ == "__main__":
    update_guide() if "--write" in sys.argv else print(methods_table())
