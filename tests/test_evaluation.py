"""Evaluating a run (issue 22): metrics checked against their libraries, the answer-extraction rule,
checkpoints, batched generation against one-at-a-time answers, the forgetting check, the report files,
classification with its feature baseline, and `adapter-studio eval` (JSON and one-line errors)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.evaluation import metrics as m
from adapter_studio.engine.evaluation.cases import resolve_checkpoint
from adapter_studio.engine.evaluation.forgetting import answer_text_only, general_set
from adapter_studio.engine.evaluation.report import markdown
from adapter_studio.engine.evaluation.run_eval import EvalSettings, EvaluationStopped, evaluate_run, regressions
from adapter_studio.engine.training.run import run

from tests.conftest import write_jsonl
from tests.test_preference import kto_rows, preference_rows

EXTRACT = r"####\s*(-?[\d.,]+)"

# --- metrics, each against its library and a value worked out by hand ---------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Answer is 1,000.", "answer is 1000"),
        ("2005-08-15", "2005-08-15"),
        ("  -7 apples!", "-7 apples"),
        ("3.5, then 4", "3.5 then 4"),
        ("A cat: the dog", "cat dog"),
        ("well-known", "well known"),
        ("(A)", "a"),  # a multiple-choice letter alone is the answer, not an article to drop
        (".5, then -.5", ".5 then -.5"),  # a decimal point that starts a number stays
        ("Ends here. 5 more", "ends here 5 more"),
    ],
)
def test_normalise(text: str, normalised: str) -> None:
    assert m.normalise(text) == normalised


@pytest.mark.parametrize(
    ("prediction", "reference", "em", "f1"),
    [
        ("2005-08-15", "2005-08-15", 1.0, 1.0),
        ("Paris.", "paris", 1.0, 1.0),
        ("2005-08-16", "2005-08-15", 0.0, 0.0),
        ("the big red dog", "a red dog", 0.0, 0.8),  # tokens big red dog vs red dog: P 2/3, R 1
        ("red dog runs fast", "red cat runs", 0.0, 4 / 7),  # common 2: P 1/2, R 2/3
        ("", "", 1.0, 1.0),
        ("", "dog", 0.0, 0.0),
        ("18.0", "18", 1.0, 0.0),  # the same number, written two ways
        (".5", "0.5", 1.0, 0.0),
        (".5", "5", 0.0, 0.0),
        ("", "A", 0.0, 0.0),  # no answer is not the letter A
        ("The", "A", 0.0, 0.0),
        ("-0.50", "-0.5", 1.0, 0.0),
        ("18.5", "18", 0.0, 0.0),
        ("nan", "nan", 1.0, 1.0),  # the same text, whatever float() makes of it
    ],
)
def test_exact_match_and_token_f1(prediction: str, reference: str, em: float, f1: float) -> None:
    assert m.exact_match(prediction, reference) == em
    assert m.token_f1(prediction, reference) == pytest.approx(f1)


ROUGE_CASES = [
    (["a b c d"], ["a c d"], 2 * 1 * 0.75 / 1.75),  # LCS 3: precision 3/4, recall 1
    (["the cat sat on the mat"], ["the cat sat on the mat"], 1.0),
    (["one two"], ["three four"], 0.0),
    (["x y z", "p q"], ["x z", "p q"], (0.8 + 1.0) / 2),
]


@pytest.mark.parametrize(("predictions", "references", "expected"), ROUGE_CASES)
def test_rouge_l_is_rouge_scores(predictions: list[str], references: list[str], expected: float) -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    library = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    assert m.rouge_l(predictions, references) == pytest.approx(sum(library) / len(library))
    assert m.rouge_l(predictions, references) == pytest.approx(expected)


SACRE_CASES = [
    (["2005-08-15", "1999-01-02"], ["2005-08-15", "1999-01-02"]),
    (["The cat sat on the mat."], ["The cat is on the mat."]),
    (["completely different"], ["nothing alike here"]),
    (["a b c d e f", "hello world"], ["a b c d e g", "hello there world"]),
]


@pytest.mark.parametrize(("predictions", "references"), SACRE_CASES)
def test_chrf_and_bleu_are_sacrebleus(predictions: list[str], references: list[str]) -> None:
    import sacrebleu

    assert m.chrf(predictions, references) == pytest.approx(
        sacrebleu.corpus_chrf(predictions, [references]).score / 100)
    assert m.bleu(predictions, references) == pytest.approx(
        sacrebleu.corpus_bleu(predictions, [references]).score / 100)


def test_chrf_and_bleu_ends() -> None:
    same = ["2005-08-15 is a date", "hello there world"]
    assert m.chrf(same, same) == pytest.approx(1.0)
    assert m.bleu(same, same) == pytest.approx(1.0)
    assert m.chrf(["xyz"], ["abc"]) == 0.0
    assert m.bleu(["xyz"], ["abc"]) == 0.0


@pytest.mark.parametrize(
    ("predicted", "expected", "labels", "accuracy", "macro_f1"),
    [
        ([0, 0, 1, 1], [0, 1, 1, 1], [0, 1], 0.75, (2 / 3 + 0.8) / 2),
        ([1, 1, 1, 1], [0, 1, 0, 1], [0, 1], 0.5, (0 + 2 / 3) / 2),  # class 0 never predicted: F1 0
        ([0, 1, 2], [0, 1, 2], [0, 1, 2, 3], 1.0, 3 / 4),  # a label absent from both counts as 0
        ([2, 2, 0], [0, 1, 2], [0, 1, 2], 0.0, 0.0),
    ],
)
def test_class_metrics_are_sklearns(predicted: list[int], expected: list[int], labels: list[int], accuracy: float,
                                    macro_f1: float) -> None:  # fmt: skip
    from sklearn.metrics import accuracy_score, f1_score

    got = m.class_metrics(predicted, expected, labels)
    assert got["accuracy"] == pytest.approx(accuracy_score(expected, predicted)) == pytest.approx(accuracy)
    library = f1_score(expected, predicted, labels=labels, average="macro", zero_division=0)
    assert got["macro_f1"] == pytest.approx(library) == pytest.approx(macro_f1)


# --- scores per class --------------------------------------------------------------------------------

NAMES = {0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}


@pytest.mark.parametrize(
    ("expected", "predicted", "confusions", "weakest"),
    [
        # Business twice read as Sci/Tech, Sports once as World; Sci/Tech never wrong
        ([0, 0, 1, 1, 2, 2, 2, 3, 3, 3], [0, 0, 1, 0, 3, 3, 2, 3, 3, 3],
         [("Business", "Sci/Tech", 2), ("Sports", "World", 1)], "Business"),
        ([0, 1, 2, 3], [0, 1, 2, 3], [], "World"),  # all right: a tie at F1 1, the first in label order
        ([0, 0, 1, 1], [0, 0, 1, 1], [], "World"),  # two labels without rows are never the weakest
        ([0, 1, 1, 1], [1, 0, 0, 1], [("Sports", "World", 2), ("World", "Sports", 1)], "World"),
    ],
)
def test_scores_per_class_are_sklearns(expected: list[int], predicted: list[int],
                                       confusions: list[tuple[str, str, int]], weakest: str) -> None:  # fmt: skip
    from adapter_studio.engine.evaluation.classes import class_scores
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    baseline = [0] * len(expected)
    c = class_scores(expected, predicted, NAMES, ("features", baseline))
    assert c.labels == list(NAMES.values()) and c.confusions() == confusions and c.weakest() == weakest
    assert c.confusion == confusion_matrix(expected, predicted, labels=[0, 1, 2, 3]).tolist()
    assert [sum(row) for row in c.confusion] == [c.per_class[label]["rows"] for label in c.labels]
    p, r, f, n = precision_recall_fscore_support(expected, predicted, labels=[0, 1, 2, 3], zero_division=0)
    for i, label in enumerate(c.labels):
        assert c.per_class[label] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "rows": n[i]})
    macro = sum(c.per_class[label]["f1"] for label in c.labels) / len(c.labels)
    assert macro == pytest.approx(m.class_metrics(predicted, expected, [0, 1, 2, 3])["macro_f1"])
    assert c.baseline == "features" and c.baseline_f1["World"] == pytest.approx(
        2 * expected.count(0) / (expected.count(0) + len(expected)))  # always World: precision share, recall 1


def test_the_class_sentence_names_the_weakest_class_and_the_mix_ups() -> None:
    from adapter_studio.engine.evaluation.classes import class_scores, summary

    c = class_scores([0, 0, 1, 1, 2, 2, 2, 3, 3, 3], [0, 0, 1, 0, 3, 3, 2, 3, 3, 3], NAMES)
    assert summary(c, lambda s: f"<{s}>") == (
        "classes: the weakest is 'Business' (F1 <0.500>, recall 0.333, 3 rows); most often confused: "
        "'Business' read as 'Sci/Tech' in 2 of 3 rows; 'Sports' read as 'World' in 1 of 2 rows")
    assert c.baseline is None and c.baseline_f1 == {}
    assert summary(class_scores([0, 1], [0, 1], NAMES)).endswith("; no row went to another class")


@pytest.mark.parametrize(
    ("references", "labels"),
    [
        (["Sports", "World", "sports.", "World", "Business", "business"], ["Business", "Sports", "World"]),
        (["positive", "negative"] * 3, ["negative", "positive"]),
        (["12", "7", "12", "7", "12", "7"], None),  # numbers: a math answer is no class
        (["yes", "no", "maybe"], None),  # fewer than two rows a label
        (["yes"] * 6, None),  # one label is no choice
        (["a long answer of many words", "another long answer of words"] * 3, None),
        ([f"label {i % 21}" for i in range(60)], None),  # 21 labels: free text
    ],
)
def test_short_repeated_answers_are_labels(references: list[str], labels: list[str] | None) -> None:
    from adapter_studio.engine.evaluation.classes import answer_labels

    assert answer_labels(references) == labels


def test_generated_answers_are_read_as_the_labels_they_spell() -> None:
    from adapter_studio.engine.evaluation.classes import OTHER, generated_label_scores

    references = ["Sports", "World", "Sports", "World"]
    answers = {"tuned": ["sports.", "The world", "World", "I think sports"], "base": ["World"] * 4}
    c = generated_label_scores(references, answers, ["Sports", "World"], "base")
    assert c.labels == ["Sports", "World", OTHER]  # an answer that is no label has a column of its own,
    assert c.expected_labels() == ["Sports", "World"]  # but no row: no answer is expected to be one
    assert c.confusion == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert c.baseline == "base" and c.baseline_f1["World"] == pytest.approx(2 / 3)
    same = generated_label_scores(references, {"tuned": references}, ["Sports", "World"], None)
    assert same.labels == ["Sports", "World"] and same.confusions() == [] and same.baseline_f1 == {}


# --- the answer-extraction rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "keep", "answer"),
    [
        (EXTRACT, "3 + 4 is 7.\n#### 7", False, "7"),
        (EXTRACT, "#### -3.5 and then #### 9", False, "-3.5"),  # the first match
        (EXTRACT, "#### 1,200", False, "1,200"),
        (EXTRACT, "I think it is 7", False, ""),  # no answer found: wrong, whatever the text says
        (EXTRACT, "7", True, "7"),  # an expected answer that is only the answer stays as it is
        (r"\d{4}-\d{2}-\d{2}", "The date is 2005-08-15.", False, "2005-08-15"),  # no group: the whole match
        (r"answer: (\w+)?", "answer: ", False, ""),  # an optional group that took nothing
        (None, "  as is  ", False, "as is"),
    ],
)
def test_extract_answer(pattern: str | None, text: str, keep: bool, answer: str) -> None:
    assert m.extract_answer(text, m.compile_extraction(pattern), keep_unmatched=keep) == answer


def test_extraction_scores_numbers_as_numbers() -> None:
    rule = m.compile_extraction(EXTRACT)
    got = [m.extract_answer(t, rule) for t in ("so #### 1,200", "#### 1200", "#### 12.00")]
    assert [m.exact_match(g, "1200") for g in got] == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("expected", "detected"),
    [
        (["4 + 3 = 7\n#### 7", "#### -2.5", "so #### 1,200"], "final"),
        (["#### 7"] * 9 + ["7"], "final"),  # nine in ten carry the marker
        (["#### 7"] * 8 + ["7", "8"], None),
        (["2005-08-15", "7"], None),
        (["#### seven"], None),  # the marker, but no number after it
        (["18 * 4 = 72. The answer is: 72", "The answer is: -2.5"], "answer is"),  # MetaMathQA's responses
        (["51.0", "7", "-2.5", "1,200", ".5"], "last"),  # SVAMP's gold answers: numbers only
        (["7"] * 9 + ["seven"], "last"),
        (["7"] * 8 + ["seven", "eight"], None),
        (["nan", "inf"], None),  # float() reads them; no one writes them as answers
        ([], None),
    ],
)
def test_a_number_rule_is_used_where_the_answers_carry_one(expected: list[str], detected: str | None) -> None:
    rule, note = m.detected_extraction(expected)
    assert (rule is not None, note is not None) == (detected is not None,) * 2
    if detected == "final":
        assert rule.pattern == m.FINAL_NUMBER and "after '####'" in note
    if detected == "answer is":
        assert rule.pattern == m.ANSWER_IS and "after 'The answer is'" in note
    if detected == "last":
        assert rule.pattern == m.LAST_NUMBER and "each answer's last number was compared" in note


@pytest.mark.parametrize(
    ("answer", "expected", "right"),
    [
        ("The answer is 51.", "51.0", True),
        ("Debby had 32 and her sister 42: 74 - 35 = 39 pieces left.", "39.0", True),
        ("They have 74 pieces, then eat 35.", "39.0", False),  # the last number is the answer given
        ("It costs 1,200 dollars", "1200.0", True),
        ("multiply 12 by 24, then", "24", True),  # a comma after a number is not part of it
        ("1, 2, 3", "3", True),
        ("-7", "-7.0", True),
        ("I do not know", "7.0", False),  # no number: wrong
        ("It is .5 of a cake", "0.5", True),
        ("The answer is .5", "5", False),
        ("1,0000", "0", False),  # not a number read from inside another
        ("On 2021-05-06", "6", False),
        ("5 - 8 = -3", "-3", True),
    ],
)
def test_a_worked_answer_is_read_by_its_last_number(answer: str, expected: str, right: bool) -> None:
    rule = re.compile(m.LAST_NUMBER)
    got = m.exact_match(m.extract_answer(answer, rule), m.extract_answer(expected, rule, keep_unmatched=True))
    assert got == float(right)


GSM8K, METAMATH = "18 * 4 = 72\n#### 72", "18 * 4 = 72. The answer is: 72"


@pytest.mark.parametrize(
    ("expected", "answer", "right"),
    [(GSM8K, "#### 72", True), (GSM8K, "so she makes 72 dollars.", True), (GSM8K, "18 a day, #### 126", False),
     (GSM8K, "I do not know", False), (METAMATH, "The answer is: 72", True), (METAMATH, "so the answer is 72.", True),
     (METAMATH, "she makes 72 dollars", True), (METAMATH, "18 a day. The answer is 126", False),
     (GSM8K, "#### 1. Read it\n18 * 4 = 72\n#### 2. Answer\n72", True),  # numbered headings, no marked number
     (GSM8K, "#### 2) Multiply\n#### 72", True), (GSM8K, "#### 72. That is all, 3 more than 69.", True),
     (GSM8K, "#### 72.\nQuestion: Weng earns $12 an hour", True), (GSM8K, "#### 72) Next: 4 apples", True),
     (GSM8K, "####\n1. Read it\n18 * 4 = 72", True), (GSM8K, "#### 1.\u00a0Read it\n72", True),
     (GSM8K, "#### 1. Multiply\n18 * 4 = 70", False)],
)  # fmt: skip
def test_a_marked_final_number_is_compared_and_an_answer_without_the_marker_by_its_last_number(
    expected: str, answer: str, right: bool
) -> None:
    """A base model that works the problem out in its own words is not wrong for leaving the marker out
    (lm-evaluation-harness's flexible extract)."""
    rule, _ = m.detected_extraction([expected])
    got = m.extract_answer(answer, rule, fallback=m.fallback_for(rule))
    assert m.exact_match(got, m.extract_answer(expected, rule, keep_unmatched=True)) == float(right)


@pytest.mark.parametrize(
    ("answers", "expected", "templated", "scored"),
    [
        (["39\n\nHow many apples does Tom have? 12"], ["39"], False, ["39"]),  # plain text writes on: cut
        (["39\n\nHow many apples does Tom have? 12"], ["39"], True, ["39\n\nHow many apples does Tom have? 12"]),
        (["First.\n\nThen 39"], ["a\n\nb"], False, ["First.\n\nThen 39"]),  # answers of paragraphs: whole
    ],
    ids=["plain text", "chat turn", "paragraph answers"],
)
def test_a_plain_text_answer_is_scored_up_to_its_first_blank_line(
    answers: list[str], expected: list[str], templated: bool, scored: list[str]
) -> None:
    assert m.scored_parts(answers, expected, templated) == scored


def test_a_broken_extraction_rule_says_where_and_what() -> None:
    with pytest.raises(UserError) as caught:
        m.compile_extraction("####(")
    assert caught.value.where == "--extract" and "does not compile" in caught.value.message


# --- runs of tiny models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_llama: Path, tiny_bert_cls: Path, alpaca_jsonl: Path, classification_csv: Path,
         make_spec: Any) -> dict[str, Path]:  # fmt: skip
    """A LoRA run of the reversal task (checkpoints at 15 and 30) and a LoRA classifier."""
    out = {}
    for name, model, data, lr in (("lora", tiny_llama, alpaca_jsonl, 1e-2),
                                  ("classifier", tiny_bert_cls, classification_csv, 1e-2)):  # fmt: skip
        spec = make_spec(model, data, "lora", learning_rate=lr, max_steps=30, save_every=15, eval_samples=0,
                         data={"eval_split": 0.1})  # fmt: skip
        result = run(spec)
        assert result.status == "completed", result.error
        out[name] = result.run_dir
    return out


@pytest.fixture(scope="module")
def evaluated(runs: dict[str, Path]) -> Any:
    return evaluate_run(runs["lora"], EvalSettings(checkpoint="last", batch_size=4))


def test_checkpoints_by_name(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    run_dir = runs["lora"]
    folder = run_dir / "checkpoints"
    assert resolve_checkpoint(run_dir, "last") == folder / "step-0000030"
    assert resolve_checkpoint(run_dir, "step-15") == resolve_checkpoint(run_dir, "15") == folder / "step-0000015"
    assert resolve_checkpoint(run_dir, "best") == folder / "best"
    copy = shutil.copytree(run_dir, tmp_path / "run")
    shutil.rmtree(copy / "checkpoints" / "best")
    assert resolve_checkpoint(copy, "best") == copy / "checkpoints" / "step-0000030"  # kept no best: the last
    for choice, words in (("step-7", "no checkpoint at step 7"), ("newest", "unknown checkpoint")):
        with pytest.raises(UserError) as caught:
            resolve_checkpoint(run_dir, choice)
        assert words in caught.value.message and "step-0000015" in caught.value.message


def test_metrics_are_those_of_the_rows(evaluated: Any) -> None:
    """Every score in the table is the library's score of the answers listed per row."""
    rows = sorted(evaluated.rows, key=lambda r: r["index"])
    assert len(rows) == 20  # 10% of 200 held out
    references = [r["expected"] for r in rows]
    assert set(evaluated.metrics) == {"base", "tuned", "in_context"}
    for column in ("base", "tuned", "in_context"):
        answers = [r["answers"][column] for r in rows]
        assert evaluated.metrics[column] == pytest.approx(m.text_metrics(answers, references))
        exact = [m.exact_match(a, e) for a, e in zip(answers, references, strict=True)]
        assert [r["exact"][column] for r in rows] == exact


def test_rows_sorted_by_change_and_regressions_filtered(evaluated: Any) -> None:
    changes = [abs(r["change"]) for r in evaluated.rows]
    assert changes == sorted(changes, reverse=True)
    for r in evaluated.rows:
        assert r["change"] == pytest.approx(r["scores"]["tuned"] - r["scores"]["base"])
    assert regressions(evaluated.rows) == [r for r in evaluated.rows
                                           if r["exact"]["base"] == 1.0 and r["exact"]["tuned"] == 0.0]  # fmt: skip
    fake = [{"regression": False}, {"regression": True}]
    assert regressions(fake) == [fake[1]]


def test_batched_answers_equal_answers_one_at_a_time(runs: dict[str, Path], evaluated: Any) -> None:
    """Left padding and the KV cache change no answer: each equals the Try page's greedy answer alone."""
    from adapter_studio.engine.inference.playground import Playground

    pg = Playground.open(runs["lora"], runs["lora"] / "checkpoints" / "step-0000030", device="cpu")
    rows = sorted(evaluated.rows, key=lambda r: r["index"])[:6]
    longest = max(len(pg.tokenizer(r["expected"])["input_ids"]) for r in evaluated.rows) + 8
    for r in rows:
        for which in ("base", "tuned"):
            alone = "".join(pg.stream(which, r["input"], max_new_tokens=longest)).strip()
            assert r["answers"][which] == alone, (which, r["input"])


def test_forgetting_is_the_ratio_of_answer_losses(runs: dict[str, Path], evaluated: Any) -> None:
    """The base loss equals transformers' own loss over the tokens of each pair's answer text (the end of
    turn left out), weighted by tokens."""
    import torch
    from adapter_studio.engine.data.shapes import Example
    from adapter_studio.engine.data.tokenising import tokenize_rendered
    from adapter_studio.engine.inference.playground import Playground

    f = evaluated.forgetting
    assert f.pairs == len(general_set()) >= 30
    assert f.ratio == pytest.approx(f.loss_tuned / f.loss_base)
    pg = Playground.open(runs["lora"], runs["lora"] / "checkpoints" / "step-0000030", device="cpu")
    total = count = 0.0
    with pg.using("base") as model, torch.no_grad():
        for q, a in general_set():
            rendered = pg.renderer.render(Example(row=1, messages=[{"role": "user", "content": q},
                                                                   {"role": "assistant", "content": a}]))
            (item,), _, _ = tokenize_rendered([rendered], pg.tokenizer, 512, False)
            item = answer_text_only(item, set(pg.tokenizer.all_special_ids))
            assert pg.tokenizer.decode([t for t in item.labels if t != -100]) == a  # the answer, nothing else
            n = sum(label != -100 for label in item.labels[1:])
            loss = model(input_ids=torch.tensor([item.input_ids]), labels=torch.tensor([item.labels])).loss
            total, count = total + float(loss) * n, count + n
    assert f.loss_base == pytest.approx(total / count, rel=1e-4)
    assert [a["instruction"] for a in f.answers] == [q for q, _ in general_set()[:3]]


def test_report_files(evaluated: Any) -> None:
    report = evaluated.report
    assert report.name == "report.md" and report.parent.parent.name == "evaluations"
    text = report.read_text()
    for words in ("| metric | base | in-context | tuned |", "| exact match |", "| ROUGE-L |", "## Forgetting",
                  "![scores](chart.svg)", "checkpoint: `step-0000030`", "## Settings"):
        assert words in text, words
    assert f"| BLEU | {evaluated.metrics['base']['bleu']:.3f} |" in text
    assert (report.parent / "chart.svg").read_text().startswith("<svg")
    saved = json.loads((report.parent / "results.json").read_text())
    assert saved["metrics"] == evaluated.metrics and saved["report"] == str(report)
    assert saved["forgetting"] == pytest.approx(evaluated.forgetting.ratio)


def test_extraction_applies_to_answers_and_expected(runs: dict[str, Path]) -> None:
    result = evaluate_run(runs["lora"], EvalSettings(checkpoint="last", extract=r"^(\w)", in_context=0,
                                                     forgetting=False), write_report=False)  # fmt: skip
    assert set(result.metrics) == {"base", "tuned", "in_context"} and result.metrics["in_context"] == {}
    assert result.report is None and result.forgetting is None
    for r in result.rows:
        assert len(r["expected"]) == 1  # the first letter of the reversed word
        for column in ("base", "tuned"):
            first = r["answers"][column][:1]
            assert r["extracted"][column] == (first if first.isalnum() or first == "_" else "")
    found = sum(bool(r["extracted"]["tuned"]) for r in result.rows)
    counts = (f"matched {sum(bool(r['extracted']['base']) for r in result.rows)} of {len(result.rows)} base answers, "
              f"{found} of {len(result.rows)} tuned answers")
    assert any(counts in n for n in result.notes), result.notes


@pytest.mark.parametrize(("rule", "said"), [
    (r"ANSWER:(.*)", "it matched no answer, so every score is 0"),  # a typo: every score 0, nothing said
    (r"#### (\d+)", None),  # a marked number: read by the answer's last number where the marker is missing
])  # fmt: skip
def test_an_expression_that_finds_no_answer_says_so(runs: dict[str, Path], rule: str, said: str | None) -> None:
    result = evaluate_run(runs["lora"], EvalSettings(checkpoint="last", extract=rule, in_context=0, limit=4,
                                                     forgetting=False), write_report=False)  # fmt: skip
    assert any(f"the answer expression {rule!r} matched 0 of 4 base answers" in n for n in result.notes)
    assert (said is not None) == any(said in n for n in result.notes if said), result.notes


def test_final_numbers_are_compared_without_being_asked(runs: dict[str, Path], tmp_path: Path) -> None:
    """Expected answers in GSM8K's form: each side's number after '####' is compared, and a note says so."""
    rows = [{"instruction": f"{i} + 1?", "output": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(6)]
    data = write_jsonl(tmp_path / "sums.jsonl", rows)
    result = evaluate_run(runs["lora"], EvalSettings(data=str(data), in_context=0, forgetting=False),
                          write_report=False)  # fmt: skip
    assert sorted(r["expected"] for r in result.rows) == [str(i + 1) for i in range(6)]
    assert all("extracted" in r for r in result.rows)
    assert any("6 of 6 expected answers end in a final number" in n for n in result.notes)
    assert result.settings.extract == m.FINAL_NUMBER  # the report's settings name the rule it used
    assert result.settings.max_new_tokens == 128  # room to work it out, for answers read by their last number
    assert f"- answer extraction: `{m.FINAL_NUMBER}`" in markdown(result)


def test_number_answers_are_compared_by_each_answers_last_number(runs: dict[str, Path], tmp_path: Path) -> None:
    """SVAMP's form: the expected answer is a number alone; answers get room to work it out first."""
    rows = [{"problem": f"Ann has {i} apples and gets one more. How many now?", "gold_answer": i + 1.0}
            for i in range(6)]  # fmt: skip
    data = tmp_path / "svamp.json"
    data.write_text(json.dumps(rows))
    result = evaluate_run(runs["lora"], EvalSettings(data=str(data), in_context=0, forgetting=False),
                          write_report=False)  # fmt: skip
    assert sorted(r["expected"] for r in result.rows) == [f"{i + 1}" for i in range(6)]  # 2.0 is read as 2
    assert any("6 of 6 expected answers are a number" in n for n in result.notes)
    assert "answers could take 128 new tokens, to work the problem out before the number" in result.notes
    assert (result.settings.extract, result.settings.max_new_tokens) == (m.LAST_NUMBER, 128)
    assert "- max new tokens: 128" in markdown(result)
    asked = evaluate_run(runs["lora"], EvalSettings(data=str(data), in_context=0, forgetting=False, max_new_tokens=4,
                                                    limit=2), write_report=False)  # fmt: skip
    assert not any("new tokens" in n for n in asked.notes)  # a length asked for is kept


def test_a_generation_run_with_label_answers_is_scored_per_class(runs: dict[str, Path], tmp_path: Path) -> None:
    rows = [{"instruction": f"Is {w} a fruit?", "output": "yes" if w in ("apple", "pear") else "no"}
            for w in ("apple", "stone", "pear", "chair", "apple", "lamp")]  # fmt: skip
    data = write_jsonl(tmp_path / "fruit.jsonl", rows)
    result = evaluate_run(runs["lora"], EvalSettings(data=str(data), in_context=2, forgetting=False),
                          write_report=False)  # fmt: skip
    c = result.classes
    assert c is not None and c.labels[:2] == ["no", "yes"] and c.baseline == "in_context"
    assert [c.per_class[label]["rows"] for label in ("no", "yes")] == [3, 3]
    by_row = sorted(result.rows, key=lambda r: r["index"])
    chosen = [r["answers"]["tuned"].strip().lower().rstrip(".") for r in by_row]
    assert sum(map(sum, c.confusion)) == 6 and c.confusion[1][1] == sum(
        a == "yes" for a, r in zip(chosen, rows, strict=True) if r["output"] == "yes")
    assert "## Per class" in markdown(result) and "the expected answers are 2 labels" in result.notes[-1]
    # macro-F1 joins the text metrics of every column: the mean of the tuned model's F1 per class
    assert all(list(v) == [*m.TEXT_METRICS, "macro_f1"] for v in result.metrics.values())
    assert result.metrics["tuned"]["macro_f1"] == pytest.approx(sum(c.per_class[x]["f1"] for x in ("no", "yes")) / 2)


def test_another_data_file_in_another_shape(runs: dict[str, Path], messages_jsonl: Path,
                                            classification_csv: Path) -> None:  # fmt: skip
    result = evaluate_run(runs["lora"], EvalSettings(data=str(messages_jsonl), limit=5, in_context=2,
                                                     forgetting=False), write_report=False)  # fmt: skip
    assert len(result.rows) == 5 and result.data == str(messages_jsonl)
    stages: list[str] = []  # a file the run cannot take is refused before its model loads
    with pytest.raises(UserError) as caught:
        evaluate_run(runs["lora"], EvalSettings(data=str(classification_csv)), lambda stage, *_: stages.append(stage),
                     write_report=False)  # fmt: skip
    assert "classification rows" in caught.value.message and caught.value.where == "--data" and stages == []


def test_stop_before_the_end_writes_nothing(runs: dict[str, Path]) -> None:
    stop = threading.Event()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "tuned":
            stop.set()

    before = set((runs["lora"] / "evaluations").glob("*"))
    with pytest.raises(EvaluationStopped):
        evaluate_run(runs["lora"], EvalSettings(checkpoint="last"), progress, stop)
    assert set((runs["lora"] / "evaluations").glob("*")) == before


def test_classification_base_head_features_and_tuned(runs: dict[str, Path]) -> None:
    result = evaluate_run(runs["classifier"], EvalSettings(checkpoint="last"), write_report=False)
    assert set(result.metrics) == {"base", "tuned", "in_context", "features"}
    assert result.metrics["in_context"] == {} and result.forgetting is None
    assert result.metrics["tuned"]["accuracy"] >= 0.9  # three keywords of the class: learnt in 30 steps
    rows = sorted(result.rows, key=lambda r: r["index"])
    expected = [r["expected"] for r in rows]
    for column in ("base", "tuned", "features"):
        predicted = [r["answers"][column] for r in rows]
        labels = sorted(set(expected))
        ids = {label: i for i, label in enumerate(labels)}
        assert result.metrics[column] == pytest.approx(
            m.class_metrics([ids[p] for p in predicted], [ids[e] for e in expected], range(len(labels))))
    # per class: the tuned model's rows counted by expected and chosen label, F1 beside the feature baseline's
    c = result.classes
    assert c.labels == ["negative", "positive"] and c.baseline == "features"
    assert c.confusion == [[sum(r["expected"] == e and r["answers"]["tuned"] == p for r in rows) for p in c.labels]
                           for e in c.labels]  # fmt: skip
    assert sum(c.per_class[label]["f1"] for label in c.labels) / 2 == pytest.approx(result.metrics["tuned"]["macro_f1"])
    assert sum(c.baseline_f1.values()) / 2 == pytest.approx(result.metrics["features"]["macro_f1"])
    report = markdown(result)
    assert "## Per class" in report and "| expected ↓ chosen → | negative | positive |" in report
    assert evaluate_run(runs["lora"], EvalSettings(limit=2, in_context=0, forgetting=False),
                        write_report=False).classes is None  # fmt: skip


# --- the command line ---------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "adapter_studio.cli", "eval"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_cli_json(runs: dict[str, Path]) -> None:
    out = subprocess.run([*CLI, str(runs["lora"]), "--checkpoint", "step-15", "--json", "--limit", "6"],
                         capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["metrics"]) == {"base", "tuned", "in_context"}
    assert set(result["metrics"]["tuned"]) == set(m.TEXT_METRICS)
    assert len(result["rows"]) == 6 and result["checkpoint"] == "step-0000015"
    assert isinstance(result["forgetting"], float) and Path(result["report"]).exists()
    assert "[base]" in out.stderr  # progress goes to stderr, so stdout is the JSON alone


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["{tmp}"], "is not a run folder"),
        (["{lora}", "--checkpoint", "step-999"], "no checkpoint at step 999"),
        (["{lora}", "--extract", "(unclosed"], "--extract"),
        (["{lora}", "--data", "{tmp}/missing.jsonl"], "no such file"),
        (["{lora}", "--limit", "0"], "--limit: must be at least 1"),
    ],
)
def test_cli_errors_are_one_line(runs: dict[str, Path], tmp_path: Path, args: list[str], words: str) -> None:
    args = [a.format(tmp=tmp_path, lora=runs["lora"]) for a in args]
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    lines = [line for line in out.stderr.splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], out.stderr


@pytest.mark.parametrize(
    ("labels", "kept"),
    [
        ([-100, -100, 5, 6, 2, 7], [-100, -100, 5, 6, -100, -100]),  # the end of turn (2) and what follows go
        ([-100, 5, 6], [-100, 5, 6]),  # no end of turn: all of it
        ([2, -100, 5], [-100, -100, -100]),  # a special label ends the answer wherever it is
    ],
)
def test_forgetting_scores_the_answer_text_only(labels: list[int], kept: list[int]) -> None:
    from adapter_studio.engine.data.tokenising import Tokenized

    assert answer_text_only(Tokenized(list(range(len(labels))), labels, 1), {0, 1, 2}).labels == kept


@pytest.mark.parametrize(
    ("room", "kept"),
    [(1000, 3), (25, 2), (15, 1), (5, 0)],  # prompt length: 5 + 10 per example
)
def test_in_context_examples_dropped_until_they_fit(room: int, kept: int) -> None:
    from adapter_studio.engine.evaluation.cases import fit_in_context

    prompt, used = fit_in_context(lambda shots: "q" * 5 + "x" * 10 * len(shots), ["a", "b", "c"], len, room)
    assert used == kept and len(prompt) == 5 + 10 * kept


def test_in_context_prompt_puts_worked_examples_before_the_question(runs: dict[str, Path]) -> None:
    """Chat data: the examples are earlier turns of the conversation, rendered with the chat template."""
    from adapter_studio.engine.evaluation import cases
    from adapter_studio.engine.inference.playground import Playground

    pg = Playground.open(runs["lora"], runs["lora"] / "checkpoints" / "step-0000030", device="cpu")
    fmt, rows = cases.held_rows(pg, 3)
    case = cases.generation_cases(pg.renderer, fmt, rows)[0]
    shots = cases.training_rows(pg.spec, 2)
    prompt = cases.in_context_prompt(pg, fmt, case, shots)
    turns = [m["content"] for s in shots for m in s.messages] + [case.shown]
    assert prompt == pg.renderer.prompt([{"role": r, "content": t} for r, t in
                                         zip(["user", "assistant"] * 2 + ["user"], turns, strict=True)])  # fmt: skip
    assert prompt.endswith(f"<|im_start|>user\n{case.shown}<|im_end|>\n<|im_start|>assistant\n")  # question last
    held = {r.row for r in rows}
    assert not {s.row for s in shots} & held  # examples come from the training rows, never the held-out ones


def test_a_model_with_few_positions_gets_fewer_examples(tiny_gpt2: Path, alpaca_jsonl: Path, make_spec: Any) -> None:
    """GPT-2's learned positions end at 256: 40 examples do not fit, so each prompt keeps as many as fit."""
    result = run(make_spec(tiny_gpt2, alpaca_jsonl, "lora", learning_rate=1e-2, max_steps=2, eval_samples=0))
    assert result.status == "completed", result.error
    evaluated = evaluate_run(result.run_dir, EvalSettings(in_context=40, limit=4, forgetting=False,
                                                          max_new_tokens=8), write_report=False)  # fmt: skip
    assert len(evaluated.rows) == 4 and evaluated.metrics["in_context"]
    assert any("held fewer than 40 examples" in n and "256 positions" in n for n in evaluated.notes)


@pytest.mark.parametrize(
    "method",
    [{"name": "prompt_tuning", "num_virtual_tokens": 4}, {"name": "prefix_tuning", "num_virtual_tokens": 4},
     "adapter_h", "last_layers"],
    ids=["prompt_tuning", "prefix_tuning", "adapter_h", "last_layers"],
)  # fmt: skip
def test_every_kind_of_method_evaluates(method: Any, tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any,
                                        evaluated: Any) -> None:  # fmt: skip
    """Soft prompts (one row at a time, virtual tokens before the text), injected adapters and changed base
    weights (a second, untouched base): the base model's answers and forgetting loss are the LoRA run's."""
    result = run(make_spec(tiny_llama, alpaca_jsonl, method, learning_rate=3e-2, max_steps=3, eval_samples=0,
                           data={"eval_split": 0.1}))  # fmt: skip
    assert result.status == "completed", result.error
    other = evaluate_run(result.run_dir, EvalSettings(limit=5, in_context=0), write_report=False)
    lora_base = {r["index"]: r["answers"]["base"] for r in evaluated.rows}
    assert {r["index"]: r["answers"]["base"] for r in other.rows} == {i: lora_base[i] for i in range(5)}
    assert other.forgetting.loss_base == pytest.approx(evaluated.forgetting.loss_base, rel=1e-5)
    assert other.forgetting.loss_tuned > 0 and len(other.forgetting.answers) == 3


def test_the_latest_saved_evaluation_reads_back(evaluated: Any, tmp_path: Path) -> None:
    import shutil

    from adapter_studio.engine.evaluation.run_eval import latest_evaluation

    assert latest_evaluation(tmp_path) is None
    good = shutil.copytree(evaluated.report.parent, tmp_path / "evaluations" / "20000101-000000")
    broken = tmp_path / "evaluations" / "20990101-000000"
    broken.mkdir()
    (broken / "results.json").write_text("{")  # newer, but cut short: skipped
    back = latest_evaluation(tmp_path)
    assert back.report == good / "report.md"
    assert back.to_json() | {"report": None} == evaluated.to_json() | {"report": None}


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_a_preference_run_is_judged_by_its_answers(objective: str, tiny_llama: Path, make_spec: Any,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The chosen (KTO: desirable) answer is the one to match; in-context examples are the chosen answers."""
    from adapter_studio.engine.objectives import OBJECTIVES

    rows = kto_rows(60) if objective == "kto" else preference_rows(60)
    spec = make_spec(tiny_llama, write_jsonl(tmp_path / "pairs.jsonl", rows), max_steps=2, eval_samples=0,
                     data={"eval_split": 0.2})  # fmt: skip
    result = run(spec.model_copy(update={"objective": OBJECTIVES[objective]()}))
    assert result.status == "completed", result.error
    evaluation = evaluate_run(result.run_dir, EvalSettings(in_context=2, forgetting=False, batch_size=4),
                              write_report=False)  # fmt: skip
    held = case_rows(result.run_dir)
    wanted = [e for e in held if objective != "kto" or e.label]
    assert len(evaluation.rows) == len(wanted) > 0
    assert sorted(r["expected"] for r in evaluation.rows) == sorted(e.chosen.strip() for e in wanted)
    undesirable = f"{len(held) - len(wanted)} of the {len(held)} KTO rows read are answers marked undesirable"
    assert any(n.startswith(undesirable) for n in evaluation.notes) == (objective == "kto")  # --limit 4: 1 row
    assert set(evaluation.metrics) == {"base", "tuned", "in_context"} and evaluation.metrics["in_context"]
    # The Try page offers the same prompts, the chosen answer as the expected one.
    from adapter_studio.engine.inference.playground import Playground

    pg = Playground.open(result.run_dir)
    offered = pg.held_out_examples(100)
    assert sorted(x[2] for x in offered) == sorted(e.chosen.strip() for e in wanted)
    assert all(x[0].strip() and x[1].strip() for x in offered)
    # a message typed on the Try page is rendered as the run trained (with the chat template), and a held-out
    # conversation's earlier turns go before its message
    assert offered[0].prompt == pg.prompt_text(offered[0].message) and "<|im_start|>user" in offered[0].prompt
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "reverse ab"}]  # fmt: skip
    pg._held_out = [replace(wanted[0], messages=turns)]
    (example,) = pg.held_out_examples(1)
    assert example.message == "reverse ab" and example.earlier == 2 and example.prompt == pg.renderer.prompt(turns)
    read: list[str] = []  # the texts the model is given
    tokenize = type(pg.tokenizer).__call__
    monkeypatch.setattr(type(pg.tokenizer), "__call__",
                        lambda tok, text, **kw: read.append(text) or tokenize(tok, text, **kw))
    list(pg.stream("tuned", example.message, max_new_tokens=2, rendered=example.prompt))
    assert read == [example.prompt]
    # the GGUF export's checks answer the held-out prompts (the pairs' chosen answers), not none
    from adapter_studio.engine.export.gguf_checks import Checks

    checks = Checks.build(pg.tuned, pg.renderer, 4)
    assert len(checks.prompts) == min(4, len(wanted)) > 0


def test_a_preference_run_is_ranked_on_its_held_out_pairs(tiny_llama: Path, make_spec: Any, tmp_path: Path) -> None:
    """Reward accuracy equals the run's own held-out preference accuracy at the same step; each model's own
    ranking equals log-probabilities summed by hand, one pair at a time; the report, JSON and saved result
    carry them."""
    import torch
    from adapter_studio.engine.evaluation.pairs import PAIR_METRICS, pair_items
    from adapter_studio.engine.evaluation.run_eval import latest_evaluation
    from adapter_studio.engine.inference.playground import Playground
    from adapter_studio.engine.objectives import OBJECTIVES

    spec = make_spec(tiny_llama, write_jsonl(tmp_path / "pairs.jsonl", preference_rows(80)), max_steps=6,
                     learning_rate=5e-3, eval_samples=0, data={"eval_split": 0.25})  # fmt: skip
    result = run(spec.model_copy(update={"objective": OBJECTIVES["dpo"]()}))
    assert result.status == "completed", result.error
    seen: list[tuple[int, int]] = []
    settings = EvalSettings(checkpoint="last", in_context=0, forgetting=False, batch_size=6)
    evaluation = evaluate_run(result.run_dir, settings, lambda _s, d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == 4 * 20  # the answers of both models, then both models' ranking
    p = evaluation.pairs
    held = case_rows(result.run_dir)
    assert p is not None and p.pairs + p.skipped == len(held) == 20 and p.skipped == 0
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    final = [e for e in events if e["type"] == "eval"][-1]
    assert final["step"] == 6 and p.tuned["reward_accuracy"] == pytest.approx(final["preference_accuracy"])
    assert p.base["reward_accuracy"] == 0.0  # the base's margins over itself are all 0
    pg = Playground.open(result.run_dir, result.run_dir / "checkpoints" / "step-0000006", device="cpu")
    items, _ = pair_items(pg, held)
    for which in ("base", "tuned"):
        sums, means = [], []
        with pg.using(which) as model, torch.no_grad():
            for item in items:
                side = []
                for ids, labels in item.sides:
                    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
                    picked = torch.log_softmax(logits, -1)[range(len(ids) - 1), torch.tensor(ids[1:])]
                    mask = torch.tensor(labels[1:]) != -100
                    side.append((float(picked[mask].sum()), float(picked[mask].mean())))
                sums.append(side[0][0] - side[1][0])
                means.append(side[0][1] > side[1][1])
        shares = getattr(p, which)
        assert shares["prefers_chosen"] == pytest.approx(sum(m > 0 for m in sums) / len(sums))
        assert shares["prefers_chosen_per_token"] == pytest.approx(sum(means) / len(means))
        assert getattr(p, f"margin_{which}") == pytest.approx(sum(sums) / len(sums), rel=1e-4)
    report = evaluation.report.read_text()
    assert "## Preference pairs" in report and f"| {PAIR_METRICS['reward_accuracy']} | — |" in report  # the base: none
    assert evaluation.to_json()["pairs"] == p.to_json() and latest_evaluation(result.run_dir).pairs == p


def case_rows(run_dir: Path) -> list[Any]:
    """The run's held-out rows as the evaluation reads them."""
    from adapter_studio.engine.inference.playground import Playground, held_out_rows

    return held_out_rows(Playground.open(run_dir).tuned)[1]


def test_soft_prompt_models_answer_one_row_at_a_time_only_with_the_adapter_on(tiny_llama: Path) -> None:
    """The base answers of a soft-prompt run come from the base model itself (peft hands generation over when
    the adapter is off), which keeps position ids: batched like any model (test_every_kind_of_method_evaluates
    checks they equal a LoRA run's base answers)."""
    from adapter_studio.engine.evaluation.generation import batch_size_for
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert batch_size_for(plain, 16) == 16
    prompted = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                              PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4))  # fmt: skip
    assert batch_size_for(prompted, 16) == 1
    assert batch_size_for(prompted, 16, adapter_on=False) == 16


@pytest.mark.parametrize(
    ("answers", "expected", "share"),
    [
        (["She has 3 + 4 = 7 apples.\n#### 7", "#### 12", "so 5"], ["3+4=7\n#### 7", "#### 11", "#### 5"], 2 / 3),
        (["39", "so 74 - 35 = 39.", "40"], ["39", "39.0", "39"], 2 / 3),  # SVAMP's numbers: the last one read
        (["2021-03-14", "2021-03-15"], ["2021-03-14", "2021-03-14"], 1 / 2),  # text: as Evaluate normalises it
        (["9", "She has 12 apples", "4"], ["9 (apples)", "12 (apples)", "5 (pears)"], 2 / 3),  # ASDiv's units
    ],
    ids=["gsm8k final number", "numbers", "text", "numbers with units"],
)
def test_training_exact_match_reads_answers_as_evaluate_does(answers: list[str], expected: list[str],
                                                             share: float) -> None:  # fmt: skip
    """Training's held-out exact match compared whole texts: GSM8K answers scored 0 in the eval events while
    Evaluate found the numbers right."""
    from adapter_studio.engine.evaluation.metrics import answers_matched

    assert answers_matched(answers, expected) == pytest.approx(share)
