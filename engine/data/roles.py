"""The roles a data shape's columns play, the names each is found under, and which a shape needs."""

from __future__ import annotations

# Role → the column names a role is found under when `data.columns` does not say.
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    # Math word problems: `problem` is the whole text where a file has both (SVAMP, MultiArith: `question` is
    # its last sentence only); `solution` (MATH), `gold_answer` (the SVAMP/MultiArith/AddSub collections),
    # `result` (Calc-X's MAWPS and GSM8K: beside `chain`, its worked calculation).
    # `input` last: a file of `input` and `output` (or `target`) alone asks its question in `input`.
    "instruction": ("instruction", "problem", "question", "query", "prompt_text", "input"),
    # Multiple-choice problems (AQuA, MathQA): the options are the input, the correct letter the output; a
    # word problem's story apart from its question (SVAMP and ASDiv on the Hub: Body, Question) is the input.
    "input": ("input", "context", "options", "choices", "body"),
    "output": ("output", "response", "answer", "solution", "target", "gold_answer", "correct", "result"),
    "system": ("system",),
    "messages": ("messages",),
    "conversations": ("conversations", "conversation"),
    "prompt": ("prompt",),
    "completion": ("completion",),
    "text": ("text", "sentence", "sentence1", "content", "document"),
    "text_pair": ("text_pair", "sentence2"),
    # A label's name before its number: datasets exported from the Hub carry both (`label` 2, `label_text`
    # "Business"), and the name is what the Try and Evaluate pages should say.
    "label": ("label_text", "label_name", "label", "labels", "class", "category", "class index", "topic",
              "sentiment"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
    # Preference pairs as two answers and which is better (PKU-SafeRLHF: response_0, response_1,
    # better_response_id; arena exports: response_a / conversation_a, …, winner). A pair of columns
    # is named alike: their last digit or letter is what the preferred column's values say.
    "answer_a": ("answer_a", "response_a", "response_0", "response1", "completion_a", "output_a", "human_ref_a",
                 "conversation_a"),
    "answer_b": ("answer_b", "response_b", "response_1", "response2", "completion_b", "output_b", "human_ref_b",
                 "conversation_b"),
    "preferred": ("preferred", "preference", "better_response_id", "better", "winner", "choice", "labels", "label"),
    "task": ("task",),  # which task a row belongs to: Poly routes by it, other methods ignore it
}
# An input read before its instruction: a story or passage comes before the question asked of it (SVAMP's Body,
# then its Question), where a task's `input` or a problem's options come after it.
STORY_FIRST = ("context", "body", "passage", "story")


def user_turn(instruction: str, extra: str, input_column: str) -> str:
    """An alpaca row's request: its instruction and input, in the order a person reads them."""
    if not extra.strip():
        return instruction
    return f"{extra}\n\n{instruction}" if input_column.strip().lower() in STORY_FIRST else f"{instruction}\n\n{extra}"


# Names a role is found under in one format only, after the usual ones. News and reviews to classify: a
# `title` with a `description` reads as the pair (AG News' own files), a `review` with its `sentiment`
# (IMDB's); a plain-text file with a `title` column is not trained on its titles.
# Preference pairs: the question answered under its alpaca-style names (Intel/orca_dpo_pairs: `system`,
# `question`, `chosen`, `rejected`), the answers under the names of Argilla's sets (`chosen_response`) and of
# StackExchange-paired (`question`, `response_j` the better answer, `response_k` the worse, as TRL's examples read it).
FORMAT_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "classification": {"text": ("title", "headline", "review", "description"),
                       "text_pair": ("description", "short_description")},  # the News Category set's
    "preference": {"prompt": ("instruction", "question", "query", "problem", "input", "history"),
                   "chosen": ("chosen_response", "response_j"), "rejected": ("rejected_response", "response_k")},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "classification": ("text", "label"),
    "preference": ("chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "alpaca": ("input", "system", "task"),
    "messages": ("task",),
    "sharegpt": ("task",),
    "prompt_completion": ("task",),
    "classification": ("text_pair", "task"),
    "preference": ("prompt", "system", "answer_a", "answer_b", "preferred"),
}
# The roles that stand in for a format's required ones: preference pairs as two answers and which is better.
ALTERNATIVE: dict[str, tuple[str, ...]] = {"preference": ("answer_a", "answer_b", "preferred")}


def roles_of(fmt: str) -> tuple[str, ...]:
    return REQUIRED[fmt] + OPTIONAL.get(fmt, ())


def required_roles(fmt: str, found: dict[str, str] | list[str]) -> tuple[str, ...]:
    """The roles a format needs: its own, or their alternative where any of that is found (or mapped) and
    not all of its own are."""
    other = ALTERNATIVE.get(fmt, ())
    if any(r in found for r in other) and not all(r in found for r in REQUIRED[fmt]):
        return other
    return REQUIRED[fmt]
