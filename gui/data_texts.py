"""The Data page's texts made from the engine's plain values: a preview cell, the rows dropped, and the
lengths panel (apart from the page, which is about its widgets and their work)."""

from __future__ import annotations

import html
import json
from typing import Any

from adapter_studio.engine.data.roles import required_roles
from adapter_studio.engine.errors import UserError

# The spec's names for the page's boxes, as the page labels them ("raise data.max_length to at least 53");
# the longer first ("map another column in data.columns": under the Columns boxes).
PAGE_NAMES = {"data.max_length": "Max length", "max_length": "max length", "data.eval_split": "Held out",
              "in data.columns": "under Columns", "data.columns maps": "Columns map", "data.columns": "Columns",
              "data.format": "Format"}  # fmt: skip


def in_page_words(error: BaseException) -> BaseException:
    """A UserError as the Data page says it: its boxes by their labels, not the spec's field names."""
    if not isinstance(error, UserError):
        return error

    def words(text: str | None) -> str | None:
        for name, label in PAGE_NAMES.items():
            text = text.replace(name, label) if text else text
        return text

    return UserError(words(error.what) or "", where=words(error.where), fix=words(error.fix))


def pick_columns(error: Any) -> str:
    """What the page says under a ColumnsNotMapped: the roles to pick a column for, each with its likely column
    where one is known ("Pick the column for text (likely body) under Columns, or another format.")."""
    def hint(guess: str | None) -> str:
        if guess is None:
            return ""
        return f" ({html.escape(guess.strip('<>'))})" if guess.startswith("<") else f" (likely {html.escape(guess)})"

    missing = [r for r in required_roles(error.format, error.found) if r not in error.found]
    named = [f"<b>{html.escape(r)}</b>{hint(error.guess.get(r))}" for r in missing]
    roles = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
    return f"Pick the column{'s' * (len(named) > 1)} for {roles} under Columns, or another format."


def cell_text(value: Any) -> str:
    """A field as the preview table shows it: a list of messages as its turns ("user: …", one a
    paragraph), other lists and objects as JSON (not Python's repr), None as nothing."""
    if value is None:
        return ""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        turns = [(m.get("role", m.get("from")), m.get("content", m.get("value"))) for m in value]
        if all(isinstance(role, str) and content is not None for role, content in turns):
            return "\n\n".join(f"{role}: {content}" for role, content in turns)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def dropped_text(dropped: list[str], total: int) -> str:
    if not dropped:
        return ""
    first = html.escape(dropped[0])
    more = f" and {len(dropped) - 1:,} more" if len(dropped) > 1 else ""
    return f"; <span style='color:#b9770e'><b>{len(dropped):,}</b> of {total:,} dropped ({first}{more})</span>"


def describe_stats(stats: dict[str, Any], packing: bool) -> str:
    """The lengths panel's text: rows, tokens, what is dropped or truncated, and what packing saves."""
    lengths = stats["lengths"]
    longest = max(lengths) if lengths else 0
    dropped = stats["dropped"]
    lines = [
        f"<b>{stats['rows']:,}</b> rows read · <b>{stats['train_examples']:,}</b> train · "
        f"<b>{stats['eval_examples']:,}</b> held out",
        f"<b>{stats['total_tokens']:,}</b> tokens per epoch · longest row {longest:,} tokens",
    ]
    if dropped:
        reasons = "<br>".join(html.escape(d) for d in dropped[:3])
        more = f"<br>… and {len(dropped) - 3:,} more" if len(dropped) > 3 else ""
        rows = "row" if len(dropped) == 1 else "rows"
        lines.append(f"<span style='color:#b9770e'><b>{len(dropped):,}</b> {rows} dropped:<br>{reasons}{more}</span>")
    if stats["truncated"]:
        lines.append(
            f"<span style='color:#b9770e'><b>{stats['truncated']:,}</b> "
            f"{'row is' if stats['truncated'] == 1 else 'rows are'} longer than max length "
            f"{stats['max_length']:,} and will be truncated</span>"
        )
    else:
        lines.append(f"no row is longer than max length {stats['max_length']:,}")
    padded, packed = stats["padding_share_padded"], stats["padding_share_packed"]
    if stats["packing_applies"]:
        used = "packing is on" if packing else "packing is off"
        lines.append(  # said in one breath it read as a riddle: what is padded, and what packing would change
            f"padding: {padded:.0%} of computed tokens with batch padding to the longest row; packed, "
            f"{packed:.0%}: packing saves {max(padded - packed, 0):.0%} ({used})"
        )
    else:
        lines.append(f"padding: {padded:.0%} of computed tokens")
    return "<br>".join(lines)
