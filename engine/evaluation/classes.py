"""A classifier's scores class by class: precision, recall, F1 and rows for each label, the tuned model's
confusion matrix (expected × predicted), and the F1 per class of a baseline beside the tuned model's.

Accuracy and macro-F1 say how good a classifier is; these say where it is wrong: the class it misses
(a news topic whose rows go to another), and which two classes it mixes up. Computed with scikit-learn
over every label of the task, so the matrix is square and in the model's label order.

A text-generation run whose expected answers are a few short labels (a topic or sentiment written as
the answer) is a classifier too: `generated_label_scores` reads each answer as the label it equals
after exact match's normalising, and an answer that is no label as OTHER.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from adapter_studio.engine.evaluation.metrics import class_metrics, is_number, normalise

CONFUSIONS_SHOWN = 3  # most frequent mix-ups named by `summary`
OTHER = "(no label)"  # a generated answer that is none of the labels
MAX_LABELS = 20  # more distinct expected answers than this are free text, not classes
LABEL_WORDS = 4  # nor are expected answers longer than this


@dataclass
class ClassScores:
    labels: list[str]  # the task's labels, in the model's order (text answers: sorted, then OTHER)
    confusion: list[list[int]]  # [expected][predicted]: rows of labels[i] the tuned model called labels[j]
    per_class: dict[str, dict[str, float]]  # label → precision, recall, f1 (0 to 1) and rows (held-out rows)
    baseline: str | None  # the column whose F1 per class `baseline_f1` holds ("features"), if any
    baseline_f1: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def expected_labels(self) -> list[str]:
        """The labels a row can be expected to have: every one but OTHER (a column only, never a row's label)."""
        return [label for label in self.labels if label != OTHER]

    def confusions(self, n: int = CONFUSIONS_SHOWN) -> list[tuple[str, str, int]]:
        """The n most frequent mix-ups as (expected, predicted, rows), largest first, then in label order."""
        off = [(self.labels[i], self.labels[j], count) for i, row in enumerate(self.confusion)
               for j, count in enumerate(row) if i != j and count]  # fmt: skip
        return sorted(off, key=lambda c: -c[2])[:n]

    def weakest(self) -> str | None:
        """The label with held-out rows whose F1 is lowest (the first in label order on a tie)."""
        seen = [label for label in self.labels if self.per_class[label]["rows"]]
        return min(seen, key=lambda label: self.per_class[label]["f1"]) if seen else None


def class_scores(expected: Sequence[int], predicted: Sequence[int], names: dict[int, str],
                 baseline: tuple[str, Sequence[int]] | None = None) -> ClassScores:  # fmt: skip
    """Scores per class of `predicted` against `expected` (label ids; `names` gives every id of the task its
    label), and the F1 per class of `baseline` = (column, its predictions) where there is one."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    ids = sorted(names)
    precision, recall, f1, rows = precision_recall_fscore_support(expected, predicted, labels=ids,
                                                                  zero_division=0)  # fmt: skip
    per_class = {names[i]: {"precision": float(p), "recall": float(r), "f1": float(f), "rows": int(n)}
                 for i, p, r, f, n in zip(ids, precision, recall, f1, rows, strict=True)}  # fmt: skip
    baseline_f1: dict[str, float] = {}
    if baseline is not None:
        scores = f1_score(expected, baseline[1], labels=ids, average=None, zero_division=0)
        baseline_f1 = {names[i]: float(s) for i, s in zip(ids, scores, strict=True)}
    matrix = confusion_matrix(expected, predicted, labels=ids)
    return ClassScores(labels=[names[i] for i in ids], confusion=matrix.tolist(), per_class=per_class,
                       baseline=baseline[0] if baseline else None, baseline_f1=baseline_f1)  # fmt: skip


def answer_labels(references: Sequence[str]) -> list[str] | None:
    """The labels when the expected answers look like classes (2 to MAX_LABELS distinct short texts, each
    seen at least twice on average, not numbers: a math answer is no class), else None. Each label is
    its first spelling in the data, in sorted order."""
    first: dict[str, str] = {}
    for r in references:
        first.setdefault(normalise(r), r.strip())
    keys = set(first)
    if not 2 <= len(keys) <= MAX_LABELS or len(references) < 2 * len(keys) or "" in keys:
        return None
    if any(len(k.split()) > LABEL_WORDS for k in keys) or all(is_number(k) for k in keys):
        return None
    return sorted(first.values(), key=str.lower)


def generated_label_scores(references: Sequence[str], answers: dict[str, Sequence[str]], labels: list[str],
                           baseline: str | None) -> ClassScores:  # fmt: skip
    """Scores per class of `answers["tuned"]`, each answer read as the label it normalises to (else OTHER),
    with the F1 per class of `answers[baseline]` beside them."""
    read = {column: read_labels(answers[column], labels) for column in ("tuned", *([baseline] if baseline else []))}
    return _read_label_scores(read_labels(references, labels), read, labels, baseline)


def _read_label_scores(expected: list[int], read: dict[str, list[int]], labels: list[str],
                       baseline: str | None) -> ClassScores:  # fmt: skip
    """`generated_label_scores` of answers already read as label ids (`read_labels`)."""
    other = len(labels)
    compared = read[baseline] if baseline else []
    names = dict(enumerate(labels))
    if other in read["tuned"] or other in compared:
        names[other] = OTHER
    return class_scores(expected, read["tuned"], names, (baseline, compared) if baseline else None)


def label_answer_scores(references: Sequence[str], answers: dict[str, Sequence[str]], baseline: str | None,
                        ) -> tuple[ClassScores, dict[str, float], str] | None:  # fmt: skip
    """For expected answers that are labels (`answer_labels`): the tuned model's scores per class (with
    `baseline`'s F1), each answer column's macro-F1 over the labels, and a note for the evaluation;
    None for other answers."""
    labels = answer_labels(references)
    if labels is None:
        return None
    expected = read_labels(references, labels)
    read = {column: read_labels(texts, labels) for column, texts in answers.items()}  # each column once
    macro_f1 = {column: class_metrics(ids, expected, range(len(labels)))["macro_f1"] for column, ids in read.items()}
    note = (f"the expected answers are {len(labels)} labels: scored per class too, with macro-F1; BLEU counts runs "
            "of up to 4 words, so it says little of one- or two-word answers")  # fmt: skip
    return _read_label_scores(expected, read, labels, baseline), macro_f1, note


def read_labels(texts: Sequence[str], labels: list[str]) -> list[int]:
    """Each text as the index of the label it equals after exact match's normalising; len(labels) (OTHER)
    where it is none of them."""
    ids = {normalise(label): i for i, label in enumerate(labels)}
    return [ids.get(normalise(t), len(labels)) for t in texts]


def summary(scores: ClassScores, strong: Callable[[str], str] = str) -> str:
    """One sentence for the command line and the Evaluate page: the weakest class and the commonest mix-ups
    (the page passes `strong` to set the weakest class's F1 in bold)."""
    weakest = scores.weakest()
    if weakest is None:
        return "classes: no held-out rows"
    w = scores.per_class[weakest]
    text = (f"classes: the weakest is {weakest!r} (F1 {strong(format(w['f1'], '.3f'))}, recall {w['recall']:.3f}, "
            f"{w['rows']} rows)")  # fmt: skip
    mixed = scores.confusions()
    if not mixed:
        return text + "; no row went to another class"
    said = "; ".join(f"{expected!r} read as {predicted!r} in {count} of {scores.per_class[expected]['rows']} rows"
                     for expected, predicted, count in mixed)  # fmt: skip
    return f"{text}; most often confused: {said}"
