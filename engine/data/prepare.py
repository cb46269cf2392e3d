"""From rows to training tensors, the orchestration: read and check the data (`examples`), split off
the held-out set, render (`rendering`) and tokenise (`tokenising`) it into the token store
(`cache`), and view it truncated or packed (`batches`). Preparation streams: rows are read, checked,
rendered and tokenised a chunk at a time, and the token ids go straight to flat arrays on disk.
Those arrays are the cache, so opening the same data again is instant, and they are memory-mapped,
so a data set larger than memory can be prepared.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from adapter_studio.engine.data.batches import _view
from adapter_studio.engine.data.cache import (
    CACHE_VERSION,
    _cache_key,
    _cached,
    _prune_cache,
    _Store,
    _StoreWriter,
    cache_root,
    repeated_rows,
)
from adapter_studio.engine.data.examples import (
    Survey,
    _where,
    check_some_left,
    check_two_labels,
    example_chunks,
    held_out_mask,
    survey_data,
)
from adapter_studio.engine.data.kto import render_completions
from adapter_studio.engine.data.preference import render_pairs
from adapter_studio.engine.data.rendering import (
    TEMPLATED_FORMATS,
    ChatRenderer,
    Rendered,
    TemplateMismatch,
    _render_pairs,
)
from adapter_studio.engine.data.shapes import Example, mapping_for_labels
from adapter_studio.engine.data.tokenising import (
    Tokenized,
    TokenizedSet,
    _encode_classification,
    _encode_documents,
    _encode_rendered,
)
from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.spec import DataSpec

EVAL_PROMPTS = 10_000  # the most answers evaluation generates (training.eval_samples' limit)
Progress = Callable[[str, float], None]


@dataclass
class PreparedData:
    format: str
    columns: dict[str, str]
    train: Sequence[Tokenized]
    eval: Sequence[Tokenized]
    eval_prompts: list[tuple[str, str]] = field(default_factory=list)  # (prompt text, expected answer)
    id2label: dict[int, str] | None = None
    dropped: list[str] = field(default_factory=list)
    truncated: int = 0
    rows: int = 0  # usable examples (train and held out, before the max_length check)
    rows_read: int = 0  # rows in the files, dropped ones included
    full_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # train, before truncation
    from_cache: bool = False
    eval_prompt_tasks: list[int] = field(default_factory=list)  # each eval prompt's task index (with a task column)
    tasks: list[str] | None = None  # the task names of data.columns.task, in the order of their indices
    stores: tuple[Any, Any] | None = field(default=None, repr=False)  # (training, held-out) as tokenised

    @functools.cached_property
    def repeated(self) -> int:
        """Held-out rows that are a training row token for token (cache.repeated_rows); counted when asked (a run
        says it), not on each Data page count; none for pairs, KTO answers and text blocks."""
        if self.stores is None or self.format in ("preference", "kto", "text"):
            return 0
        return repeated_rows(*self.stores)

    @property
    def train_tokens(self) -> int:
        if isinstance(self.train, TokenizedSet):
            return self.train.tokens
        return sum(len(t.input_ids) for t in self.train)


def _stage(progress: Progress | None, stage: str) -> Callable[[float], None] | None:
    return None if progress is None else (lambda fraction: progress(stage, fraction))


def prepare_data(
    spec: DataSpec,
    tokenizer: Any,
    task: str | None,
    max_length: int,
    seed: int,
    *,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> PreparedData:
    """Read, check, split and tokenise the data a run trains and evaluates on.

    `task` None follows the data (classification for classification data). `progress(stage,
    fraction)` is called as the files are read ("reading") and tokenised ("tokenising"). Data seen
    before with the same files, settings and tokenizer comes from the cache without reading a row.
    """
    root = cache_root() if use_cache else None
    key = _cache_key(spec, tokenizer, task, seed)
    found = _cached(root, key, max_length) if root is not None else None
    scratch: tempfile.TemporaryDirectory[str] | None = None
    if found is not None:
        meta, folder = found
    else:
        if root is not None:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError:
                root = None
        if root is None:
            scratch = tempfile.TemporaryDirectory(prefix="adapter-studio-data-")
        meta, folder = _prepare_store(spec, tokenizer, task, max_length, seed, root or Path(scratch.name), key,
                                      progress)  # fmt: skip
        if scratch is None and root is not None:
            _prune_cache(root, folder)
    fmt = meta["format"]
    _check_task(fmt, task)
    # A scratch folder is deleted at once: on POSIX its mapped files live on until unmapped.
    in_memory = scratch is not None and os.name != "posix"
    try:
        train_store = _Store.load(folder / "train", meta["id_dtype"], in_memory)
        eval_store = _Store.load(folder / "eval", meta["id_dtype"], in_memory)
    except (OSError, ValueError):
        if found is None:
            raise
        shutil.rmtree(folder, ignore_errors=True)  # a damaged cache entry: prepare the data again
        return prepare_data(spec, tokenizer, task, max_length, seed, progress=progress, use_cache=use_cache)
    finally:
        if scratch is not None:
            scratch.cleanup()
    files = [tuple(f) for f in meta["files"]]
    id2label = {int(i): str(name) for i, name in meta["id2label"]} if meta["id2label"] is not None else None
    data = PreparedData(
        fmt, dict(meta["columns"]), [], [], [tuple(p) for p in meta["eval_prompts"]], id2label,
        list(meta["dropped"]), rows=meta["rows"], rows_read=meta["rows_read"], full_lengths=train_store.full,
        from_cache=found is not None, tasks=meta["tasks"], eval_prompt_tasks=meta["eval_prompt_tasks"],
    )  # fmt: skip
    data.train, data.truncated, too_long = _view(train_store, fmt, max_length, spec.packing, files)
    data.eval, _, eval_too_long = _view(eval_store, fmt, max_length, False, files)
    data.stores = (train_store, eval_store)
    data.dropped += too_long + [f"held-out {note}" for note in eval_too_long]  # counted: the numbers add up
    if not len(data.train):
        raise _all_too_long(train_store, max_length, _where(spec.path))
    return data


def keep_tasks(data: PreparedData, keep: bool, where: tuple[str, str]) -> None:
    """Let batches carry each row's task id (for a method that routes by task: every row must name a
    known task), or drop the ids (any other method: they are no model input). `where`: the files of the
    training and the held-out rows."""
    views = [v for v in (data.train, data.eval) if isinstance(v, TokenizedSet)]
    if not keep:
        for view in views:
            view.tasks = None
        data.eval_prompt_tasks = []
        return
    for view, side, file in zip(views, ("training", "held-out"), where, strict=False):
        missing = [] if view.tasks is None else view.rows[view.tasks < 0].tolist()
        if (view.tasks is None and len(view)) or missing:
            rows = ", ".join(map(str, missing[:5])) + (", …" if len(missing) > 5 else "")
            raise UserError(
                f"{len(missing) or len(view)} {side} rows name no task{f' (rows {rows})' if missing else ''} (an "
                "empty cell, or a value that is not a name)"
                + (f"; the tasks are {', '.join(data.tasks)}" if data.tasks else ""),
                where=file,
                fix="give every row a task in the task column (held-out rows: one of the training rows' tasks)",
            )


def _check_task(fmt: str, task: str | None) -> None:
    if task is not None and (fmt == "classification") != (task == "classification"):
        raise UserError(
            f"{fmt} data needs a {'classification' if fmt == 'classification' else 'text-generation'} model",
            where="data.format",
            fix="pick a matching model (an encoder such as MiniLM for classification) or another data file",
        )


def _prepare_store(
    spec: DataSpec,
    tokenizer: Any,
    task: str | None,
    max_length: int,
    seed: int,
    root: Path,
    key: str,
    progress: Progress | None,
) -> tuple[dict[str, Any], Path]:
    """Read and check everything (pass one), then tokenise it into a new cache entry (pass two)."""
    survey = survey_data(spec, spec.path, limit=spec.max_rows, progress=_stage(progress, "reading"))
    fmt = survey.format
    _check_task(fmt, task)
    check_some_left(survey, spec.path)
    eval_survey = survey_data(spec, spec.eval_path, fmt) if spec.eval_path else None
    labels = [label for label, _ in survey.labels] if fmt == "classification" else None
    held = np.zeros(survey.count, bool) if eval_survey else held_out_mask(survey.count, spec.eval_split, seed, labels)
    id2label = None
    if fmt == "classification":
        train_labels = [label for (label, _), h in zip(survey.labels, held.tolist(), strict=True) if not h]
        id2label = mapping_for_labels(train_labels)
        check_two_labels(id2label, spec.path)
        held_labels = [x for x, h in zip(survey.labels, held.tolist(), strict=True) if h]
        _check_labels(held_labels + (eval_survey.labels if eval_survey else []), id2label)
    folder = root / (f"{key}-{max_length}" if fmt == "classification" else key)
    meta = _build_store(spec, tokenizer, fmt, (survey, eval_survey), held, id2label, max_length, folder, progress)
    return meta, folder


def _check_labels(labels: list[tuple[Any, str]], id2label: dict[int, str]) -> None:
    known = set(id2label.values())
    for label, where in labels:
        if str(label) not in known:
            raise UserError(
                f"label '{label}' is not one of the training labels ({', '.join(id2label.values())})",
                where=where,
                fix="fix the label, or add training rows that have it",
            )


def _all_too_long(store: _Store, max_length: int, where: str) -> UserError:
    needed = store.first_loss[store.first_loss >= 0]
    shortest = int(needed.min()) + 1 if len(needed) else None
    hint = f" (the shortest needs {shortest} tokens before its answer)" if shortest else ""
    return UserError(
        f"every row is longer than max_length {max_length} before its answer starts{hint}",
        where=where,
        fix=f"raise data.max_length{f' to at least {shortest}' if shortest else ''}, or shorten the prompts",
    )


def _build_store(
    spec: DataSpec,
    tokenizer: Any,
    fmt: str,
    surveys: tuple[Survey, Survey | None],
    held: np.ndarray,
    id2label: dict[int, str] | None,
    max_length: int,
    folder: Path,
    progress: Progress | None,
) -> dict[str, Any]:
    """Pass two: tokenise every example into train/ and eval/ under a temporary name, then rename."""
    # Unique per writer: the window's preview and a run may prepare the same data at once, and the
    # global `random` is reseeded by every run (two writers drew the same number and collided).
    temporary = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    id_dtype = "uint16" if len(tokenizer) <= 1 << 16 else "uint32"
    for fast in (True, False):
        try:
            meta = _tokenise_all(spec, tokenizer, fmt, surveys, held, id2label, max_length, temporary, id_dtype,
                                 fast, progress)  # fmt: skip
            break
        except TemplateMismatch:
            shutil.rmtree(temporary, ignore_errors=True)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    survey, eval_survey = surveys
    meta.update(
        columns=survey.columns,
        id2label=sorted(id2label.items()) if id2label is not None else None,
        dropped=survey.dropped + [f"eval {d}" for d in (eval_survey.dropped if eval_survey else [])],
        rows=survey.count,
        rows_read=survey.rows,
    )
    (temporary / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    try:
        temporary.rename(folder)
    except OSError:  # another process prepared the same data meanwhile
        shutil.rmtree(temporary, ignore_errors=True)
    return meta


def _tokenise_all(
    spec: DataSpec,
    tokenizer: Any,
    fmt: str,
    surveys: tuple[Survey, Survey | None],
    held: np.ndarray,
    id2label: dict[int, str] | None,
    max_length: int,
    folder: Path,
    id_dtype: str,
    fast: bool,
    progress: Progress | None,
) -> dict[str, Any]:
    chat = fmt in TEMPLATED_FORMATS
    renderer = ChatRenderer(tokenizer, spec.system_prompt, spec.template, fast=fast) if chat else None
    label2id = {v: k for k, v in (id2label or {}).items()}
    survey, eval_survey = surveys
    task_names = sorted(survey.tasks)  # rows of another task in an eval file get -1 (none)
    task2id = {name: i for i, name in enumerate(task_names)}
    eval_prompt_tasks: list[int] = []
    writers = {False: _StoreWriter(folder / "train", id_dtype), True: _StoreWriter(folder / "eval", id_dtype)}
    files: list[tuple[str, str]] = []
    eval_prompts: list[tuple[str, str]] = []
    sources = [(spec.path, survey, held, survey.count)]
    if spec.eval_path and eval_survey is not None:
        sources.append((spec.eval_path, eval_survey, None, eval_survey.count))
    for path, source, mask, limit in sources:
        index = 0
        report = _stage(progress, "tokenising") if mask is not None else None
        for file, unit, examples in _examples_again(spec, path, fmt, source, report):
            examples = examples[: limit - index]
            flags = [True] * len(examples) if mask is None else mask[index : index + len(examples)].tolist()
            index += len(examples)
            if (file, unit) not in files:
                files.append((file, unit))
            file_index = files.index((file, unit))
            for is_eval in (False, True):
                chosen = [e for e, f in zip(examples, flags, strict=False) if f == is_eval]
                if not chosen:
                    continue
                writer = writers[is_eval]
                rows = [e.row for e in chosen]
                if task_names and fmt not in ("preference", "kto", "text"):
                    writer.tasks += [task2id.get(e.task, -1) for e in chosen]  # type: ignore[arg-type]
                wanted = EVAL_PROMPTS - len(eval_prompts) if is_eval else 0
                if fmt == "classification":
                    enc, full = _encode_classification(chosen, tokenizer, max_length)
                    writer.add(enc, rows, file_index, full)
                    writer.labels += [label2id[str(e.label)] for e in chosen]
                elif fmt == "preference":  # each pair as two sides, chosen then rejected, on one row number
                    assert renderer is not None
                    rendered = render_pairs(chosen, renderer)
                    writer.add(_encode_rendered(rendered, tokenizer, not renderer.use_chat_template),
                               [r for r in rows for _ in (0, 1)], file_index)  # fmt: skip
                elif fmt == "kto":  # prompt + completion, with the desirable flag as the item's label
                    assert renderer is not None
                    rendered = render_completions(chosen, renderer)
                    writer.add(_encode_rendered(rendered, tokenizer, not renderer.use_chat_template), rows, file_index)
                    writer.labels += [int(e.label) for e in chosen]
                elif fmt == "text":
                    writer.add(_encode_documents([e.text for e in chosen], tokenizer), rows, file_index)
                else:
                    if fmt == "prompt_completion":
                        rendered, special = _render_pairs(chosen, tokenizer), True
                        asked = [(e, e.prompt, e.completion.strip()) for e in chosen[:wanted]]
                    else:
                        assert renderer is not None
                        rendered, special = [renderer.render(e) for e in chosen], not renderer.use_chat_template
                        asked = _chat_eval_prompts(chosen[:wanted], rendered)
                    eval_prompts += [(prompt, answer) for _, prompt, answer in asked]
                    eval_prompt_tasks += [task2id.get(e.task, -1) for e, _, _ in asked]  # type: ignore[arg-type]
                    writer.add(_encode_rendered(rendered, tokenizer, special), rows, file_index)
            if index >= limit:
                break
    for writer in writers.values():
        writer.close()
    return {"version": CACHE_VERSION, "id_dtype": id_dtype, "files": files, "eval_prompts": eval_prompts,
            "format": fmt, "tasks": task_names or None,
            "eval_prompt_tasks": eval_prompt_tasks if task_names else []}  # fmt: skip


def _examples_again(
    spec: DataSpec, path: str | list[str], fmt: str, survey: Survey, progress: Callable[[float], None] | None
) -> Iterator[tuple[str, str, list[Example]]]:
    """The surveyed examples: kept from the first pass when small, else read again."""
    if survey.held is not None:
        for i, part in enumerate(survey.held):
            if progress is not None:
                progress(i / len(survey.held))
            yield part
        return
    for part in example_chunks(spec, path, fmt, progress):
        yield part.rows.path, part.rows.unit, part.examples


def _chat_eval_prompts(examples: list[Example], rendered: list[Rendered]) -> list[tuple[Example, str, str]]:
    """(example, prompt, expected answer) of held-out conversations ending in an answer, for exact match.
    The prompt is the rendered text up to the last answer: what training saw before it."""
    return [
        (e, r.text[: r.spans[-1][0]], e.messages[-1]["content"].strip())
        for e, r in zip(examples, rendered, strict=False)
        if e.messages and e.messages[-1]["role"] == "assistant" and r.spans
    ]
