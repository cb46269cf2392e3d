"""`evaluate_run`: a run's base, tuned model and a no-training baseline on the same rows, scored with
the metrics that fit the data, per-example rows sorted by how much the score changed, the forgetting
check, and the report in the run folder.

Generation (free text): the baseline is the base model with k training rows before each prompt as
worked examples (in-context). Classification: base head vs tuned, and a logistic regression on the
base model's frozen mean-pooled features (a classifier's head takes no worked examples in its input; the base is
an encoder such as MiniLM, or a decoder such as SmolLM2 with a classification head).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.preference import as_conversation
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.evaluation import cases as case_lib
from adapter_studio.engine.evaluation import metrics as m
from adapter_studio.engine.evaluation.classes import ClassScores, class_scores, label_answer_scores
from adapter_studio.engine.evaluation.forgetting import Forgetting, check_forgetting, forgetting_steps
from adapter_studio.engine.evaluation.generation import (
    EvaluationStopped,
    autocast_for,
    batch_size_for,
    context_limit,
    generate_greedy,
    pooled_features,
    predict_labels,
)
from adapter_studio.engine.evaluation.pairs import PairScores, pair_steps, score_pairs
from adapter_studio.engine.methods.poly import answer_by_task

if TYPE_CHECKING:
    from adapter_studio.engine.inference.playground import Playground

Progress = Callable[[str, int, int], None]  # (stage, rows done over all stages, rows in all)
FEATURE_ROWS = 1000  # training rows the feature baseline learns from
MAX_NEW_TOKENS = 256
# New tokens at least where answers are read by their last number: the base and in-context answers work a
# word problem out before they give its number (SVAMP: 40-90 tokens), and longest answer + 8 (13 for
# '51.0') cut them off mid-sentence. A model that answers with the number alone stops there anyway.
WORKED_ANSWER_TOKENS = 128

__all__ = ["EvalSettings", "EvaluationResult", "EvaluationStopped", "evaluate_run", "latest_evaluation", "regressions"]


@dataclass
class EvalSettings:
    """What to evaluate and how; every field has the default the command line and the page use."""

    data: str | None = None  # a data file instead of the run's held-out rows
    checkpoint: str = "best"  # best | last | step-N
    in_context: int = 4  # training rows shown to the in-context baseline
    extract: str | None = None  # regular expression whose first group (or match) is the answer
    limit: int | None = 500  # rows at most
    batch_size: int = 16
    # default: the longest expected answer + 8 tokens, at most 256 (and at least WORKED_ANSWER_TOKENS where
    # answers are read by their last number)
    max_new_tokens: int | None = None
    forgetting: bool = True


@dataclass
class EvaluationResult:
    run_dir: Path
    checkpoint: str
    task: str
    data: str
    settings: EvalSettings
    precision: str
    metrics: dict[str, dict[str, float]]
    baselines: dict[str, str]  # what each column of `metrics` is, in words
    rows: list[dict[str, Any]]
    forgetting: Forgetting | None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    pairs: PairScores | None = None  # a preference run's held-out pairs, ranked by base and tuned
    classes: ClassScores | None = None  # where the answers are classes: scores per class, confusion matrix

    def to_json(self) -> dict[str, Any]:
        """The command line's `--json` object (docs/contract.md): rows, metrics, forgetting, report, and more."""
        return {
            "run_dir": str(self.run_dir), "checkpoint": self.checkpoint, "task": self.task, "data": self.data,
            "precision": self.precision, "metrics": self.metrics, "baselines": self.baselines,
            "forgetting": None if self.forgetting is None else self.forgetting.ratio,
            "forgetting_detail": None if self.forgetting is None else self.forgetting.to_json(),
            "report": None if self.report is None else str(self.report),
            "rows": self.rows, "notes": self.notes, "seconds": self.seconds, "settings": asdict(self.settings),
            "pairs": None if self.pairs is None else self.pairs.to_json(),
            "classes": None if self.classes is None else self.classes.to_json(),
        }  # fmt: skip


def latest_evaluation(run_dir: str | Path) -> EvaluationResult | None:
    """The run's newest saved evaluation (its results.json), or None when it has none that reads."""
    import json

    for results in sorted(Path(run_dir).glob("evaluations/*/results.json"), reverse=True):
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
            detail = data["forgetting_detail"]
            return EvaluationResult(
                run_dir=Path(data["run_dir"]), checkpoint=data["checkpoint"], task=data["task"], data=data["data"],
                settings=EvalSettings(**data["settings"]), precision=data["precision"], metrics=data["metrics"],
                baselines=data["baselines"], rows=data["rows"], forgetting=Forgetting(**detail) if detail else None,
                notes=data["notes"], seconds=data["seconds"], report=results.parent / "report.md",
                pairs=PairScores(**data["pairs"]) if data.get("pairs") else None,
                classes=ClassScores(**data["classes"]) if data.get("classes") else None,
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue  # cut short or from another version: the one before it, if any
    return None


def regressions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the base model got right and the tuned model got wrong."""
    return [r for r in rows if r["regression"]]


def evaluate_run(
    run_dir: str | Path,
    settings: EvalSettings | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    *,
    write_report: bool = True,
) -> EvaluationResult:
    """Evaluate a run (see the module's docstring). Raises UserError for input a person can fix and
    EvaluationStopped when `stop` is set before the end."""
    from adapter_studio.engine.evaluation.report import write_evaluation
    from adapter_studio.engine.inference.playground import Playground
    from adapter_studio.engine.inference.trained import run_spec, run_task
    from adapter_studio.engine.training.devices import pick_precision

    settings = settings or EvalSettings()
    run_dir = Path(run_dir)
    if settings.in_context < 0:
        raise UserError(f"the in-context baseline needs 0 or more examples, not {settings.in_context}", where="--k")
    rule = m.compile_extraction(settings.extract)
    spec = run_spec(run_dir)  # a folder that is no run says so before anything loads
    if settings.data is not None and not Path(settings.data).exists():
        raise UserError(f"no such file or folder: {settings.data}", where="--data", fix="give the path of a data file")
    given = None  # a file's rows, read before the model so that a file that cannot be read is said at once
    if settings.data is not None:
        given = case_lib.file_rows(spec, run_task(spec), settings.data, settings.limit)
    checkpoint = case_lib.resolve_checkpoint(run_dir, settings.checkpoint)
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    tell = progress or (lambda stage, done, total: None)
    tell("loading", 0, 1)
    playground = Playground.open(run_dir, checkpoint)
    seconds["loading"] = time.perf_counter() - clock
    fmt, rows = given or case_lib.held_rows(playground, settings.limit)
    precision = pick_precision(playground.spec.training.precision, playground.device)
    with autocast_for(precision, playground.device):
        if playground.task == "classification":
            scored = _classification(playground, rows, settings, tell, stop, seconds)
        else:
            scored = _generation(playground, fmt, rows, settings, rule, tell, stop, seconds)
    used = scored.pop("settings", settings)
    result = EvaluationResult(
        run_dir=run_dir, checkpoint=checkpoint.name, task=playground.task, precision=precision,
        data=settings.data or "held-out rows of the run", settings=used, **scored, seconds=seconds,
    )  # fmt: skip
    seconds["total"] = time.perf_counter() - clock
    if write_report:
        result.report = write_evaluation(result)
    return result


class _Counter:
    """Rows done over every stage, handed to `progress` as each batch ends."""

    def __init__(self, report: Progress, total: int) -> None:
        self.report, self.total, self.done, self.stage = report, total, 0, ""

    def at(self, stage: str) -> Callable[[int], None]:
        self.stage = stage
        self.report(stage, self.done, self.total)
        return self.tick

    def tick(self, n: int) -> None:
        self.done += n
        self.report(self.stage, self.done, self.total)


def _timed(seconds: dict[str, float], stage: str, start: float) -> None:
    seconds[stage] = time.perf_counter() - start


def _generation(
    playground: Playground, fmt: str, rows: list[Any], settings: EvalSettings, rule: Any, report: Progress,
    stop: threading.Event | None, seconds: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    tokenizer = playground.tokenizer
    pairs = rows if fmt == "preference" else []  # also ranked: what a preference run was trained for
    read, kto = len(rows), fmt == "kto"
    fmt, rows = case_lib.as_conversations(fmt, rows)
    cases = case_lib.generation_cases(playground.renderer, fmt, rows)
    if not cases:
        raise UserError("none of the rows ends in an answer to compare with",
                        where=settings.data or "held-out rows",
                        fix="give rows with an expected answer (an assistant turn, a completion or an output)")
    # The same choice data preparation makes when it tokenises the training rows.
    chat = fmt in case_lib.CHAT_FORMATS
    special = (not playground.renderer.use_chat_template) if chat else fmt == "prompt_completion"

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=special)["input_ids"]

    notes: list[str] = []
    if kto and len(rows) < read:  # --limit 4 scored 1 row, unsaid
        notes.append(f"{read - len(rows)} of the {read} KTO rows read are answers marked undesirable: the "
                     f"{len(rows)} marked desirable are the answers to match")
    if rule is None:
        rule, detected = m.detected_extraction([c.expected for c in cases])
        notes += [detected] if detected else []
    longest = max(len(tokenizer(c.expected, add_special_tokens=False)["input_ids"]) for c in cases)
    max_new = settings.max_new_tokens or min(MAX_NEW_TOKENS, longest + 8)
    if rule is not None and (rule.pattern == m.LAST_NUMBER or rule.pattern in m.MARKED) and not settings.max_new_tokens:
        max_new = max(max_new, WORKED_ANSWER_TOKENS)  # room to work it out: an answer cut short has no result
        notes.append(f"answers could take {max_new} new tokens, to work the problem out before the number")
    limit = context_limit(playground.tuned.model)
    room = (limit - max_new) if limit else 10**9
    prompts = [encode(c.prompt) for c in cases]
    cut = sum(len(p) > room for p in prompts)
    if cut:
        notes.append(f"{cut} prompts were longer than the model's {limit} positions allow: their start was cut")
    prompts = [p[-room:] if len(p) > room else p for p in prompts]
    shots = case_lib.training_rows(playground.spec, settings.in_context) if settings.in_context else []
    shots = [c for c in map(as_conversation, shots) if c is not None]
    columns = ["base", "tuned"] + (["in_context"] if shots else [])
    in_context: list[list[int]] = []
    if shots:
        used = []
        for c in cases:
            text, k = case_lib.fit_in_context(lambda s, c=c: case_lib.in_context_prompt(playground, fmt, c, s),
                                              shots, lambda t: len(encode(t)), room)  # fmt: skip
            in_context.append(encode(text)[-room:])
            used.append(k)
        if min(used) < len(shots):
            fewer = sum(k < len(shots) for k in used)
            notes.append(f"the in-context prompt of {fewer} rows held fewer than "
                         f"{len(shots)} examples (down to {min(used)}) to fit the model's {limit} positions")
    stop_ids = playground.stop_token_ids()
    pad_id = playground.pad_token_id()
    counter = _Counter(report, len(cases) * len(columns) + (forgetting_steps() if settings.forgetting else 0)
                       + pair_steps(pairs))  # fmt: skip
    answers: dict[str, list[str]] = {}
    tasks = case_lib.case_tasks(playground, cases)
    for column in columns:
        start = time.perf_counter()
        which = "tuned" if column == "tuned" else "base"
        source = in_context if column == "in_context" else prompts
        tick = counter.at(column)

        def generate(task: str | None, chosen: list[int], which: str = which, source: list[list[int]] = source,
                     tick: Callable[[int], None] = tick) -> list[list[int]]:  # fmt: skip
            with playground.using(which, task) as model:  # type: ignore[arg-type]
                batch_size = batch_size_for(model, settings.batch_size, adapter_on=which == "tuned")
                return generate_greedy(
                    model, [source[i] for i in chosen], pad_id=pad_id, stop_ids=stop_ids, max_new_tokens=max_new,
                    batch_size=batch_size, device=playground.device, tick=tick, stop=stop,
                )  # fmt: skip

        ids = answer_by_task(tasks if which == "tuned" else None, len(source), generate)
        answers[column] = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids]
        _timed(seconds, column, start)
    forgetting = None
    if settings.forgetting:
        start = time.perf_counter()
        forgetting = check_forgetting(playground, counter.at("forgetting"), stop)
        _timed(seconds, "forgetting", start)
        if playground.tasks:
            notes.append(f"the forgetting check read its general text as the task {playground.tasks[0]!r} (the "
                         "run answers as one of its tasks)")
    scores = None
    if pairs:
        start = time.perf_counter()
        scores = score_pairs(playground, pairs, settings.batch_size, counter.at("pairs"), stop)
        _timed(seconds, "pairs", start)
    references = [m.extract_answer(c.expected, rule, keep_unmatched=True) for c in cases]
    templated = chat and playground.renderer.use_chat_template  # the answer ends with its turn
    scored = {k: m.scored_parts(v, [c.expected for c in cases], templated) for k, v in answers.items()}
    extracted = {k: [m.extract_answer(a, rule, fallback=m.fallback_for(rule)) for a in v] for k, v in scored.items()}
    notes += m.extraction_notes(rule, scored) if settings.extract and rule is not None else []
    metrics = {k: m.text_metrics(v, references) for k, v in extracted.items()}
    classes = None
    labelled = label_answer_scores(references, extracted, "in_context" if shots else "base")
    if labelled is not None:  # answers that are a few labels (a topic, a sentiment): scored per class too
        classes, macro_f1, note = labelled
        for column, value in macro_f1.items():
            metrics[column]["macro_f1"] = value  # beside the text metrics: sweeps and searches can rank by it
        notes.append(note)
    metrics.setdefault("in_context", {})
    table = []
    for i, c in enumerate(cases):
        exact = {k: m.exact_match(extracted[k][i], references[i]) for k in columns}
        score = {k: m.token_f1(extracted[k][i], references[i]) for k in columns}
        table.append({
            "index": c.index, "where": c.where, "input": c.shown, "expected": references[i],
            "answers": {k: answers[k][i] for k in columns},
            **({"extracted": {k: extracted[k][i] for k in columns}} if rule is not None else {}),
            "exact": exact, "scores": score, "change": score["tuned"] - score["base"],
            "differs": extracted["tuned"][i] != extracted["base"][i],
            "regression": exact["base"] == 1.0 and exact["tuned"] == 0.0,
        })  # fmt: skip
    baselines = {
        "base": "the base model, no training",
        "tuned": f"the tuned model ({playground.tuned.checkpoint.name})",
        "in_context": (f"the base model with {len(shots)} training rows before each prompt as examples"
                       if shots else "off (--k 0, or no training rows to show)"),
    }  # fmt: skip
    # The settings as used, for the report: the rule found in the expected answers and the answers' token budget.
    used = replace(settings, extract=rule.pattern if rule is not None else None, max_new_tokens=max_new)
    return {"metrics": metrics, "baselines": baselines, "rows": _sorted(table), "forgetting": forgetting,
            "notes": notes, "pairs": scores, "classes": classes, "settings": used}  # fmt: skip


def _classification(
    playground: Playground, rows: list[Any], settings: EvalSettings, report: Progress,
    stop: threading.Event | None, seconds: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    id2label = {int(k): str(v) for k, v in playground.tuned.model.config.id2label.items()}
    label_ids = {v: k for k, v in id2label.items()}
    cases = case_lib.classification_cases(rows, label_ids)
    texts = [(c.example.text, c.example.text_pair) for c in cases if c.example is not None]
    expected = [label_ids[c.expected] for c in cases]
    train = case_lib.training_rows(playground.spec, FEATURE_ROWS)
    train = [e for e in train if str(e.label) in label_ids]
    counter = _Counter(report, 3 * len(cases) + len(train))
    shared = {"tokenizer": playground.tokenizer, "max_length": playground.spec.data.max_length or 512,
              "batch_size": settings.batch_size, "device": playground.device, "stop": stop}  # fmt: skip
    predicted: dict[str, list[int]] = {}
    tasks = case_lib.case_tasks(playground, [c for c in cases if c.example is not None])
    for which in ("base", "tuned"):
        start = time.perf_counter()
        tick = counter.at(which)

        def predict(task: str | None, chosen: list[int], which: str = which,
                    tick: Callable[[int], None] = tick) -> list[int]:  # fmt: skip
            with playground.using(which, task) as model:  # type: ignore[arg-type]
                return predict_labels(model, texts=[texts[i] for i in chosen], tick=tick, **shared)

        predicted[which] = answer_by_task(tasks if which == "tuned" else None, len(texts), predict)
        _timed(seconds, which, start)
    notes = ["the base model's classification head is untrained (random): its scores are chance, for reference",
             "no forgetting check: it measures how a text generator's answers to general instructions changed, and "
             "a classifier answers with labels"]  # fmt: skip
    start = time.perf_counter()
    train_labels = [label_ids[str(e.label)] for e in train]
    if len(set(train_labels)) >= 2:
        from sklearn.linear_model import LogisticRegression

        with playground.using("base") as model:
            features = pooled_features(model, texts=[(e.text, e.text_pair) for e in train],
                                       tick=counter.at("features"), **shared)  # fmt: skip
            held = pooled_features(model, texts=texts, tick=counter.at("features"), **shared)
        classifier = LogisticRegression(max_iter=2000).fit(features, train_labels)
        predicted["features"] = [int(p) for p in classifier.predict(held)]
    else:
        notes.append("no feature baseline: the training rows hold fewer than two labels")
    _timed(seconds, "features", start)
    metrics = {k: m.class_metrics(v, expected, sorted(id2label)) for k, v in predicted.items()}
    baseline = ("features", predicted["features"]) if "features" in predicted else None
    classes = class_scores(expected, predicted["tuned"], id2label, baseline)
    table = []
    for i, c in enumerate(cases):
        scores = {k: float(v[i] == expected[i]) for k, v in predicted.items()}
        table.append({
            "index": c.index, "where": c.where, "input": c.shown, "expected": c.expected,
            "answers": {k: id2label[v[i]] for k, v in predicted.items()}, "exact": scores, "scores": scores,
            "change": scores["tuned"] - scores["base"], "differs": predicted["tuned"][i] != predicted["base"][i],
            "regression": scores["base"] == 1.0 and scores["tuned"] == 0.0,
        })  # fmt: skip
    baselines = {
        "base": "the base model with its new, untrained head",
        "tuned": f"the tuned model ({playground.tuned.checkpoint.name})",
        "in_context": "not applicable: a classifier's head takes no worked examples in its input",
        "features": f"logistic regression on the base model's mean-pooled features of {len(train)} training rows",
    }
    metrics = {"base": metrics["base"], "tuned": metrics["tuned"], "in_context": {},
               **({"features": metrics["features"]} if "features" in metrics else {})}  # fmt: skip
    return {"metrics": metrics, "baselines": baselines, "rows": _sorted(table), "forgetting": None, "notes": notes,
            "classes": classes}  # fmt: skip


def _sorted(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Largest change first (either way), then the data's order."""
    return sorted(table, key=lambda r: (-abs(r["change"]), r["index"]))
