"""The user guide's methods table is generated from the method declarations: it must match them."""

from __future__ import annotations

import re

from adapter_studio.engine import docs


def test_the_user_guides_methods_table_matches_the_declarations() -> None:
    text = docs.GUIDE.read_text(encoding="utf-8")
    block = re.search(re.escape(docs.BEGIN) + "\n(.*?)\n" + re.escape(docs.END), text, flags=re.S)
    assert block is not None, f"no methods-table markers in {docs.GUIDE}"
    assert block.group(1) == docs.methods_table(), "run `python -m adapter_studio.engine.docs --write`"
