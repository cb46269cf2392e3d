"""What the Data page shows before training: rows, the detected shape, and the exact training text
of a row with the tokens that carry loss marked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.data_files import read_all
from engine.data_prep import ChatRenderer, _render_pairs, tokenize_rendered
from engine.data_shapes import Example, detect_format, resolve_columns, to_examples

if TYPE_CHECKING:
    from engine.spec import DataSpec


@dataclass
class DataPreview:
    format: str
    columns: list[str]
    mapping: dict[str, str]
    rows: list[dict[str, Any]]
    examples: list[Example]
    total_rows: int
    dropped: list[str] = field(default_factory=list)


def preview_data(spec: DataSpec, max_rows: int = 200) -> DataPreview:
    """Read and check the data the way training will (errors are the same UserErrors)."""
    rows = read_all(spec.path)
    where = spec.path if isinstance(spec.path, str) else spec.path[0]
    columns = list(dict.fromkeys(k for row in rows[:100] for k in row))
    fmt = spec.format or detect_format(columns, spec.columns)
    mapping = resolve_columns(fmt, columns, spec.columns, where)
    examples, dropped = to_examples(rows, fmt, mapping, where)
    return DataPreview(fmt, columns, mapping, rows[:max_rows], examples[:max_rows], len(rows), dropped)


def render_tokens(spec: DataSpec, example: Example, fmt: str, tokenizer: Any) -> list[tuple[str, bool]]:
    """The example as the model sees it: (token text, carries loss) pairs in order."""
    max_length = spec.max_length or 512
    if fmt == "prompt_completion":
        rendered, special = _render_pairs([example], tokenizer), True
    elif fmt in ("alpaca", "messages", "sharegpt"):
        renderer = ChatRenderer(tokenizer, spec.system_prompt, spec.template)
        rendered, special = [renderer.render(example)], not renderer.use_chat_template
    else:
        text = example.text if fmt == "text" else f"{example.text} {example.text_pair or ''}".strip()
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
        return [(tokenizer.decode([i]), fmt == "text") for i in ids]
    tokens, _, _ = tokenize_rendered(rendered, tokenizer, max_length, special)
    if not tokens:
        return [(rendered[0].text, False)]
    t = tokens[0]
    return [(tokenizer.decode([i]), label != -100) for i, label in zip(t.input_ids, t.labels, strict=True)]
