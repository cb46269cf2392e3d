"""A classification row's text and its pair (a title and its description) as a tokenizer should read them.

BERT-style tokenizers put a separator between the two ([SEP]); GPT-2 and SmolLM2's put nothing, so AG News'
"DEFOE DRIVES SPURS HOME" and "Jermain Defoe underlined…" became "…HOMEJermain", tokenised across the join
(' HO', 'ME', 'J', 'erm', …). For those the two are one text with a line break between them. Training, the
Data page, Try and Evaluate all read a pair through here, so the classifier sees what it was trained on."""

from __future__ import annotations

from typing import Any, overload

PAIR_JOIN = "\n"


def separates_pairs(tokenizer: Any) -> bool:
    """Whether the tokenizer puts special tokens between a text and its pair ([SEP], or a second BOS)."""
    try:
        pair, single = tokenizer.num_special_tokens_to_add(pair=True), tokenizer.num_special_tokens_to_add(pair=False)
        return int(pair) > int(single)
    except (AttributeError, NotImplementedError, TypeError):
        return True  # a tokenizer that cannot say: its own pair encoding, as before


@overload
def pair_inputs(tokenizer: Any, texts: str, pairs: str | None) -> tuple[str, str | None]: ...
@overload
def pair_inputs(tokenizer: Any, texts: list[str], pairs: list[str] | None) -> tuple[list[str], list[str] | None]: ...
def pair_inputs(tokenizer: Any, texts: Any, pairs: Any) -> tuple[Any, Any]:
    """(texts, pairs) to pass to the tokenizer: as they are, or joined into the texts where it would glue them."""
    if pairs is None or separates_pairs(tokenizer):
        return texts, pairs
    if isinstance(texts, str):
        return (f"{texts}{PAIR_JOIN}{pairs}" if pairs else texts), None
    return [f"{t}{PAIR_JOIN}{p}" if p else t for t, p in zip(texts, pairs, strict=True)], None
