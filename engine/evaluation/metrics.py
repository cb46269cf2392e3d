"""Scores of generated answers and predicted labels, computed by the libraries people check against.

Free text: exact match and token F1 on normalised text (SQuAD's definitions, with numbers kept whole),
ROUGE-L (`rouge-score`), chrF and BLEU (`sacrebleu`). Classes: accuracy and macro-F1 (scikit-learn).
Every score is a fraction from 0 to 1 (chrF and BLEU are sacrebleu's 0-100 divided by 100), so one
chart holds them all.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from adapter_studio.engine.errors import UserError

TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "chrf", "bleu")
CLASS_METRICS = ("accuracy", "macro_f1")
METRIC_TITLES = {
    "exact_match": "exact match",
    "token_f1": "token F1",
    "rouge_l": "ROUGE-L",
    "chrf": "chrF",
    "bleu": "BLEU",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
# Punctuation goes, except inside a number (2005-08-15, 3.5), a decimal point that starts one (.5, -.5) and a
# minus sign before one (-7).
_PUNCTUATION = re.compile(
    rf"(?!(?<=\d)[.\-/:](?=\d))(?!(?<!\w)\.(?=\d))(?!-(?=\.?\d))[{re.escape(string.punctuation)}]"
)
# GSM8K's convention for a worked solution's result ("... = 72\n#### 72"): where the expected answers end
# in it, the number after it is what is right or wrong, not the wording of the working before it. A markdown
# heading that numbers a step ("#### 1. Read the problem", "#### 2) Add": one digit, then words on its line) is
# not one: base models write them. "#### 72. That is all" and "#### 72.\nNext question" are answers.
FINAL_NUMBER = r"####(?!\s*\d[.)][^\S\n]+[^\W\d])\s*(-?[\d.,]*\d)(?!\d)"
# MetaMathQA's (and many chain-of-thought sets'): "... The answer is: 18".
ANSWER_IS = r"(?i)the answer is:?\s*\$?(-?[\d.,]*\d)"
MARKED = {FINAL_NUMBER: "'####'", ANSWER_IS: "'The answer is'"}  # a final number after a marker
# Where the expected answers are only numbers (SVAMP's and MultiArith's `gold_answer`), a worked answer is
# right when its last number is ("... so 74 - 35 = 39."): how math evaluations read free-form answers
# (lm-evaluation-harness's flexible extract). Without it the base and in-context answers, which explain
# before they answer, scored 0 however right they were. Commas only in thousands ("24," is 24); a number is
# read whole, not from inside another (1,0000; 2021-05-06).
LAST_NUMBER = r"(?<![\d.,\-])(-?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+))(?![\s\S]*\d)"
_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d*)?|\.\d+)")  # 51, 51.0, -2.5, 1,200, .5 (not nan or inf)
_UNIT = re.compile(r"\s*\([^()\d]*\)")  # ASDiv's "9 (apples)": the number is the answer
# Share of expected answers that must carry the marker (or be numbers) before a rule is used unasked.
FINAL_NUMBER_SHARE = 0.9


def normalise(text: str) -> str:
    """Lower case, no punctuation (numbers kept whole: thousands separators go, decimal points stay),
    no articles, single spaces: the text that exact match and token F1 compare."""
    text = _THOUSANDS.sub("", text.lower())
    words = _PUNCTUATION.sub(" ", text).split()
    # An article alone is the answer, not a word to drop: multiple-choice letter A (SQuAD drops it everywhere).
    return " ".join(words if len(words) == 1 else _ARTICLES.sub(" ", " ".join(words)).split())


def compile_extraction(pattern: str | None) -> re.Pattern[str] | None:
    """The answer-extraction rule as a compiled expression; a broken one is a UserError."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UserError(f"the answer-extraction expression {pattern!r} does not compile ({e})", where="--extract",
                        fix=r"write a Python regular expression, e.g. '####\s*(-?[\d.,]+)'") from None  # fmt: skip


def extract_answer(text: str, rule: re.Pattern[str] | None, *, keep_unmatched: bool = False,
                   fallback: re.Pattern[str] | None = None) -> str:  # fmt: skip
    """The part of `text` that is the answer: the rule's first group (or whole match) at its first match.

    Without a rule the text itself. With one that does not match, the `fallback` rule's answer, else ""
    (an answer that cannot be found is wrong), or the text itself when `keep_unmatched` (for expected answers
    that hold only the answer)."""
    text = text.strip()
    if rule is None:
        return text
    found = rule.search(text)
    if found is None and fallback is not None:
        return extract_answer(text, fallback)
    if found is None:
        return text if keep_unmatched else ""
    value = found.group(1) if rule.groups else found.group(0)
    return (value or "").strip()


def extraction_notes(rule: re.Pattern[str], answers: dict[str, list[str]]) -> list[str]:
    """How often a rule the person gave found an answer, per column; a rule that found none in any column
    scores every answer 0, which read as a model that learnt nothing (a typo in the expression)."""
    found = {column: sum(rule.search(a.strip()) is not None for a in texts) for column, texts in answers.items()}
    counts = ", ".join(f"{n} of {len(answers[c])} {c.replace('_', '-')} answers" for c, n in found.items())
    notes = [f"the answer expression {rule.pattern!r} matched {counts}"]
    if not any(found.values()) and fallback_for(rule) is None:  # no last number to fall back on either
        notes.append("it matched no answer, so every score is 0 — check the expression against an answer in the "
                     "report, or leave it empty")  # fmt: skip
    return notes


def detected_extraction(expected: Sequence[str]) -> tuple[re.Pattern[str] | None, str | None]:
    """The rule to use when none was given, with a note that says so: a MARKED final number where nearly every
    expected answer ends in one, LAST_NUMBER where nearly every one is a number, else none."""
    needed = FINAL_NUMBER_SHARE * len(expected)
    for pattern, marker in MARKED.items():
        rule = re.compile(pattern)
        found = sum(rule.search(e) is not None for e in expected)
        if expected and found >= needed:
            return rule, (f"{found} of {len(expected)} expected answers end in a final number after {marker}: "
                          f"answers were compared by that number, an answer without "
                          f"{marker} by its last number; give an extraction rule to compare otherwise")  # fmt: skip
    numbers = sum(is_number(e) for e in expected)
    if expected and numbers >= needed:
        return re.compile(LAST_NUMBER), (
            f"{numbers} of {len(expected)} expected answers are a number: each answer's last number was compared; "
            "give an extraction rule to compare otherwise")  # fmt: skip
    return None, None


def scored_parts(answers: list[str], expected: Sequence[str], templated: bool) -> list[str]:
    """What of each generated answer is scored. Plain text has no end of turn: after its answer a model writes
    on, a blank line and another example, as an in-context prompt lays its examples out. Where the expected
    answers are one paragraph each, an answer is its first (lm-evaluation-harness stops few-shot answers at a
    blank line); an answer in a chat template's turn ends with the turn, and is scored whole."""
    if templated or any("\n\n" in e for e in expected):
        return answers
    return [a.split("\n\n", 1)[0] for a in answers]


def fallback_for(rule: re.Pattern[str] | None) -> re.Pattern[str] | None:
    """The rule a generated answer is read by where `rule` finds nothing: its last number, where the expected
    answers end in a marked number, GSM8K's '#### N' or 'The answer is: N' (lm-evaluation-harness's flexible
    extract: a base model that works the problem out in its own words is not wrong for leaving out the marker)."""
    return re.compile(LAST_NUMBER) if rule is not None and rule.pattern in MARKED else None


def is_number(text: str) -> bool:
    """A number as answers write one: 51, 51.0, -2.5, 1,200 or .5 (not nan or inf), its unit in brackets after
    it or not (ASDiv: "9 (apples)")."""
    text = text.strip()
    unit = _UNIT.search(text)
    return _NUMBER.fullmatch(text[: unit.start()] if unit and unit.end() == len(text) else text) is not None


def exact_match(prediction: str, reference: str) -> float:
    """Equal normalised text, or equal numbers however written (18 and 18.0)."""
    predicted, expected = normalise(prediction), normalise(reference)
    if predicted == expected:
        return 1.0
    try:
        return float(float(predicted) == float(expected))
    except ValueError:  # not both numbers
        return 0.0


def answers_matched(answers: Sequence[str], expected: Sequence[str]) -> float:
    """The share of generated answers that match, read as Evaluate reads them (the final number of GSM8K's
    '#### 42', the last number where every answer is one, normalised text otherwise): training's held-out exact
    match compared whole texts, so a math run's eval events said 0 where Evaluate found the numbers right."""
    rule, _ = detected_extraction(expected)
    references = [extract_answer(e, rule, keep_unmatched=True) for e in expected]
    parts = scored_parts(list(answers), expected, templated=False)
    found = [extract_answer(a, rule, fallback=fallback_for(rule)) for a in parts]
    return sum(exact_match(a, e) for a, e in zip(found, references, strict=True)) / max(len(expected), 1)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1: harmonic mean of token precision and recall over normalised words."""
    predicted, expected = normalise(prediction).split(), normalise(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure per answer (rouge-score's default tokeniser, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2), as a fraction."""
    import sacrebleu

    return sacrebleu.corpus_chrf(list(predictions), [list(references)]).score / 100


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenisation, 4-grams, exponential smoothing), as a fraction."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score / 100


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Every free-text metric over the answers (extracted already where a rule applies)."""
    n = max(len(predictions), 1)
    return {
        "exact_match": sum(map(exact_match, predictions, references)) / n,
        "token_f1": sum(map(token_f1, predictions, references)) / n,
        "rouge_l": rouge_l(predictions, references),
        "chrf": chrf(predictions, references),
        "bleu": bleu(predictions, references),
    }


def class_metrics(predicted: Sequence[int], expected: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-F1 over every label of the task (a label never predicted counts as F1 0)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(expected, predicted)),
        "macro_f1": float(f1_score(expected, predicted, labels=list(labels), average="macro", zero_division=0)),
    }
