"""What an evaluation asks: the checkpoint, the rows (the run's held-out rows or any data file), the
prompt each model is given, and the in-context baseline's prompt with k training rows as examples.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.examples import load_examples, split_examples
from adapter_studio.engine.data.rendering import CHAT_FORMATS
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.training import checkpoints as ckpt

if TYPE_CHECKING:
    from adapter_studio.engine.data.rendering import ChatRenderer
    from adapter_studio.engine.data.shapes import Example
    from adapter_studio.engine.inference.playground import Playground
    from adapter_studio.engine.spec import RunSpec


@dataclass
class Case:
    """One evaluated row: where it is, what a person reads, the answer in the data, and the prompts."""

    index: int
    where: str
    shown: str  # the user's message (or the text to classify)
    expected: str
    prompt: str = ""  # what the base and tuned model are given (generation)
    example: Example | None = None


def resolve_checkpoint(run_dir: Path, choice: str) -> Path:
    """`best`, `last` or `step-N` of a run as a checkpoint folder; `best` falls back to the last
    checkpoint when the run kept no best one (it evaluated never, or on no held-out rows)."""
    folder = run_dir / "checkpoints"
    saved = ckpt.list_checkpoints(folder)
    if not saved:
        raise UserError("this run has no checkpoint yet", where=str(run_dir),
                        fix="train it (or resume it) until a checkpoint is saved")  # fmt: skip
    names = ", ".join(["best"] * (folder / "best" / ckpt.STATE).exists() + ["last"] + [p.name for p in saved])
    if choice == "best":
        best = folder / "best"
        return best if (best / ckpt.STATE).exists() else saved[-1]
    if choice == "last":
        return saved[-1]
    number = choice.removeprefix("step-").removeprefix("step")
    if number.isdigit():
        found = folder / f"step-{int(number):07d}"
        if found in saved:
            return found
        raise UserError(f"the run has no checkpoint at step {int(number)}", where="--checkpoint",
                        fix=f"pick one of: {names}")  # fmt: skip
    raise UserError(f"unknown checkpoint {choice!r}", where="--checkpoint", fix=f"give best, last or step-N ({names})")


def held_rows(playground: Playground, limit: int | None) -> tuple[str, list[Example]]:
    """The rows to evaluate without a data file: the run's held-out rows."""
    from adapter_studio.engine.inference.playground import held_out_rows

    fmt, rows = held_out_rows(playground.tuned)
    if not rows:
        raise UserError("this run held out no rows (data.eval_split 0 and no data.eval_path)", where="eval",
                        fix="give a data file to evaluate on with --data FILE")  # fmt: skip
    return fmt, rows if limit is None else rows[:limit]


def file_rows(spec: RunSpec, task: str, data: str | Path, limit: int | None) -> tuple[str, list[Example]]:
    """The rows to evaluate from a data file: every row of `data`, read with the run's column names where they
    fit, else detected afresh; their task must be the run's. Needs only the run's spec, so a bad file is said
    before a model loads."""
    try:
        fmt, _, rows, _ = load_examples(spec.data, str(data))
    except UserError:  # another shape than the run's: detect it from its own columns
        fmt, _, rows, _ = load_examples(spec.data.model_copy(update={"format": None, "columns": {}}), str(data))
    if not rows:
        raise UserError(f"no usable rows in {data}", where="--data", fix="check the file's columns")
    if (fmt == "classification") != (task == "classification"):
        wanted = "labelled texts (text, label)" if task == "classification" else "prompts and answers"
        raise UserError(f"{data} holds {fmt} rows, but this run's model needs {wanted}", where="--data",
                        fix="give a file in the shape the run trained on")  # fmt: skip
    return fmt, rows if limit is None else rows[:limit]


def training_rows(spec: RunSpec, count: int, seed: int = 0) -> list[Example]:
    """Up to `count` rows the run trained on, a seeded choice (the in-context examples, the feature baseline)."""
    fmt, _, examples, _ = load_examples(spec.data, spec.data.path)
    if spec.data.max_rows:
        examples = examples[: spec.data.max_rows]
    data = spec.data
    train = examples if data.eval_path else split_examples(examples, data.eval_split, spec.training.seed, fmt)[0]
    return random.Random(seed).sample(train, min(count, len(train)))


def as_conversations(fmt: str, rows: list[Example]) -> tuple[str, list[Example]]:
    """`as_conversation` over rows of one shape, and the shape they then have."""
    from adapter_studio.engine.data.preference import as_conversation

    if fmt not in ("preference", "kto"):
        return fmt, rows
    return "messages", [c for c in map(as_conversation, rows) if c is not None]


def generation_cases(renderer: ChatRenderer, fmt: str, rows: list[Example]) -> list[Case]:
    """A case per row that has an answer to compare with; the prompt is rendered as the run trained."""
    cases = []
    for i, e in enumerate(rows):
        if fmt in CHAT_FORMATS:
            if len(e.messages) < 2 or e.messages[-1]["role"] != "assistant":
                continue
            users = [m["content"] for m in e.messages[:-1] if m["role"] == "user"]
            if not users:
                continue
            prompt = renderer.prompt(e.messages[:-1])
            cases.append(Case(i, e.where, users[-1], e.messages[-1]["content"].strip(), prompt, e))
        elif fmt == "prompt_completion":
            cases.append(Case(i, e.where, e.prompt, e.completion.strip(), e.prompt, e))
        elif fmt == "text":  # the first half prompts, the rest is what the data goes on to say
            half = len(e.text) // 2
            cases.append(Case(i, e.where, e.text[:half], e.text[half:].strip(), e.text[:half], e))
    return cases


def case_tasks(playground: Playground, cases: list[Case]) -> list[str | None]:
    """Each case's task, for a run that routes by task (Poly); None for every case of any other run."""
    known = playground.tasks
    if not known:
        return [None] * len(cases)
    tasks = [c.example.task if c.example is not None else None for c in cases]
    for case, task in zip(cases, tasks, strict=True):
        if task not in known:
            what = "the row names no task" if task is None else f"task {task!r} is not one of the run's"
            raise UserError(
                f"{what} (the run routes by task: {', '.join(known)})",
                where=case.where,
                fix="give every row one of the run's tasks in its task column",
            )
    return tasks


def classification_cases(rows: list[Example], label_ids: dict[str, int]) -> list[Case]:
    """A case per labelled row; a label the run never saw is a UserError that lists the ones it knows."""
    unknown = sorted({str(e.label) for e in rows} - set(label_ids))
    if unknown:
        raise UserError(f"labels the run did not train on: {', '.join(unknown[:5])}", where="--data",
                        fix=f"use the run's labels: {', '.join(label_ids)}")  # fmt: skip
    return [Case(i, e.where, e.text if e.text_pair is None else f"{e.text}\n\n{e.text_pair}", str(e.label), example=e)
            for i, e in enumerate(rows)]  # fmt: skip


def in_context_prompt(playground: Playground, fmt: str, case: Case, shots: list[Example]) -> str:
    """The case's prompt with `shots` (training rows, answers included) before it as worked examples."""
    e = case.example
    assert e is not None
    if fmt in CHAT_FORMATS:
        system = [m for m in e.messages if m["role"] == "system"]
        examples = [m for s in shots for m in _turns(s) if m["role"] != "system"]
        rest = [m for m in e.messages[:-1] if m["role"] != "system"]
        return playground.renderer.prompt(system + examples + rest)
    if fmt == "prompt_completion":
        pairs = [(t[-2]["content"], t[-1]["content"]) for t in map(_turns, shots) if len(t) >= 2]
        return "".join(f"{p}{c}\n\n" for p, c in pairs) + case.prompt
    return "".join(f"{s.text or ' '.join(m['content'] for m in s.messages)}\n\n" for s in shots) + case.prompt


def _turns(example: Example) -> list[dict[str, str]]:
    """A training row as a conversation, whatever its shape (the run's data and --data may differ)."""
    if example.messages:
        return example.messages
    if example.prompt or example.completion:
        return [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.completion}]
    return []


def fit_in_context(
    build: Callable[[list[Any]], str], shots: list[Any], count_tokens: Callable[[str], int], room: int
) -> tuple[str, int]:
    """The prompt with as many of `shots` as fit in `room` tokens (dropping from the end); (prompt, shots used)."""
    for k in range(len(shots), 0, -1):
        prompt = build(shots[:k])
        if count_tokens(prompt) <= room:
            return prompt, k
    return build([]), 0
