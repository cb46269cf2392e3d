"""Bring your own data: every file type and shape, the loss mask, the cache, and every bad input.

The same questions and answers written as alpaca JSONL, JSON, CSV, TSV, Parquet, a saved data set,
messages, ShareGPT, mapped columns, several files and a folder must give the same tokens. Each bad
input must give a UserError that names the file, line and field — from the engine, the command line
(see also tests/test_data_page.py for the window) — and never a traceback.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.data.prepare import prepare_data
from adapter_studio.engine.data.preview import length_stats, preview_data, render_tokens
from adapter_studio.engine.data.rendering import ChatRenderer
from adapter_studio.engine.data.shapes import Example, detect_format
from adapter_studio.engine.data.tokenising import IGNORE
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.spec import DataSpec

QA = [(f"reverse {w}", w[::-1]) for w in ("abc", "dcba", "ef", "fedcb", "aab", "cafe", "bead", "fade", "dab", "ace")]
CSV_QUOTED = [('say "hi", then stop', "hi, stop"), ("two\nlines", "ok")]  # quotes, commas, newlines
PAIRS = QA + CSV_QUOTED


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test prepares into a cache folder of its own (never the person's ~/.cache)."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ADAPTER_STUDIO_DATA_CACHE", str(folder))
    return folder


def tokenizer_of(model: Path) -> Any:
    from adapter_studio.engine.models.loading import load_tokenizer, resolve_source

    return load_tokenizer(resolve_source(str(model)))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as the file type the suffix names (gzipped for a further `.gz`)."""
    if path.suffix == ".gz":
        inner = write_rows(path.with_suffix(""), rows)
        path.write_bytes(gzip.compress(inner.read_bytes()))
        inner.unlink()
        return path
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps({"train": rows}, indent=1), encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="," if suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".saved":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def alpaca_rows(pairs: list[tuple[str, str]] = PAIRS) -> list[dict[str, Any]]:
    return [{"instruction": q, "input": "", "output": a} for q, a in pairs]


SOURCES: dict[str, Callable[[Path], tuple[str | list[str], dict[str, Any]]]] = {
    "alpaca jsonl": lambda d: (str(write_rows(d / "a.jsonl", alpaca_rows())), {}),
    "alpaca json": lambda d: (str(write_rows(d / "a.json", alpaca_rows())), {}),
    "alpaca csv": lambda d: (str(write_rows(d / "a.csv", alpaca_rows())), {}),
    "alpaca tsv": lambda d: (str(write_rows(d / "a.tsv", alpaca_rows())), {}),
    "alpaca parquet": lambda d: (str(write_rows(d / "a.parquet", alpaca_rows())), {}),
    "alpaca jsonl.gz": lambda d: (str(write_rows(d / "a.jsonl.gz", alpaca_rows())), {}),
    "alpaca json.gz": lambda d: (str(write_rows(d / "a.json.gz", alpaca_rows())), {}),
    "alpaca csv.gz": lambda d: (str(write_rows(d / "a.csv.gz", alpaca_rows())), {}),
    "save_to_disk folder": lambda d: (str(write_rows(d / "a.saved", alpaca_rows())), {}),
    "messages": lambda d: (str(write_rows(d / "m.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS
    ])), {}),
    "sharegpt": lambda d: (str(write_rows(d / "s.jsonl", [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in PAIRS
    ])), {}),
    "mapped columns csv": lambda d: (str(write_rows(d / "qa.csv", [
        {"id": i, "question": q, "reply": a} for i, (q, a) in enumerate(PAIRS)
    ])), {"format": "alpaca", "columns": {"instruction": "question", "output": "reply"}}),
    "two files": lambda d: ([str(write_rows(d / "x.jsonl", alpaca_rows(PAIRS[:5]))),
                             str(write_rows(d / "y.csv", alpaca_rows(PAIRS[5:])))], {}),
    "folder of files": lambda d: (str(_folder(d)), {}),
}  # fmt: skip


def _folder(d: Path) -> Path:
    (d / "parts").mkdir()
    write_rows(d / "parts" / "1.jsonl", alpaca_rows(PAIRS[:7]))
    write_rows(d / "parts" / "2.parquet", alpaca_rows(PAIRS[7:]))
    return d / "parts"


def tokens_of(data: Any) -> list[tuple[list[int], list[int]]]:
    return [(t.input_ids, t.labels) for t in data.train]


@pytest.mark.parametrize("model_name", ["llama", "qwen2", "gpt2"])
def test_every_file_type_and_shape_gives_the_same_tokens(tmp_path, tiny_models, model_name) -> None:  # type: ignore[no-untyped-def]
    tokenizer = tokenizer_of(tiny_models[model_name])
    results = {}
    for name, make in SOURCES.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        path, extra = make(folder)
        data = prepare_data(DataSpec(path=path, eval_split=0, **extra), tokenizer, None, 128, 0)
        assert data.rows == len(PAIRS), name
        results[name] = tokens_of(data)
    reference = results["alpaca jsonl"]
    assert len(reference) == len(PAIRS)
    for name, tokens in results.items():
        assert tokens == reference, f"{name} differs from alpaca jsonl"


@pytest.mark.parametrize(
    ("model_name", "prompt", "end"),
    [
        ("llama", "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n"),
        ("qwen2", "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n"),
        ("gpt2", "### Instruction:\n{q}\n\n### Response:\n", "<|endoftext|>"),
    ],
)
def test_loss_is_on_the_answer_and_end_of_turn_only(tmp_path, tiny_models, model_name, prompt, end) -> None:  # type: ignore[no-untyped-def]
    tokenizer = tokenizer_of(tiny_models[model_name])
    path = write_rows(tmp_path / "a.jsonl", alpaca_rows())
    data = prepare_data(DataSpec(path=str(path), eval_split=0), tokenizer, None, 128, 0)
    for (q, a), t in zip(PAIRS, data.train, strict=True):
        learned = [i for i, label in zip(t.input_ids, t.labels, strict=True) if label != IGNORE]
        masked = [i for i, label in zip(t.input_ids, t.labels, strict=True) if label == IGNORE]
        assert [label for label in t.labels if label != IGNORE] == learned  # labels are the ids themselves
        assert tokenizer.decode(learned) == a + end
        assert tokenizer.decode(masked) == prompt.format(q=q)
        # The same ids as tokenising the whole text at once.
        assert t.input_ids == tokenizer(prompt.format(q=q) + a + end, add_special_tokens=False)["input_ids"]


def test_system_prompt_and_template_take_effect(tmp_path, tiny_llama, tiny_gpt2) -> None:  # type: ignore[no-untyped-def]
    llama, gpt2 = tokenizer_of(tiny_llama), tokenizer_of(tiny_gpt2)
    example = Example(row=1, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    text = ChatRenderer(llama, "Be brief.").render(example).text
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>")
    own = Example(row=1, messages=[{"role": "system", "content": "Mine."}, *example.messages])
    assert ChatRenderer(llama, "Be brief.").render(own).text.count("system") == 1  # the row's own one wins

    template = "Q: {instruction} [{input}]\nA: "
    path = write_rows(tmp_path / "a.jsonl", [{"instruction": "reverse ab", "input": "x\n\ny", "output": "ba"}] * 2)
    for tokenizer in (llama, gpt2):  # a template replaces even a chat template
        spec = DataSpec(path=str(path), template=template, system_prompt="S.", eval_split=0)
        data = prepare_data(spec, tokenizer, None, 128, 0)
        eos = tokenizer.eos_token
        assert tokenizer.decode(data.train[0].input_ids) == f"S.\n\nQ: reverse ab [x\n\ny]\nA: ba{eos}"
        pieces = render_tokens(spec, preview_data(spec).examples[0], "alpaca", tokenizer)
        assert "".join(t for t, loss in pieces if loss) == f"ba{eos}"
    with pytest.raises(UserError, match=r"data.template.*\{instruction\}"):
        prepare_data(DataSpec(path=str(path), template="Q: {question}"), gpt2, None, 128, 0)


@pytest.mark.parametrize("model", ["embedded:all-minilm-l6-v2", "embedded:smollm2-135m-instruct"])
def test_a_rows_tokens_read_as_its_text(model: str, tmp_path: Path) -> None:
    """Each token's piece is its text in the row: WordPiece keeps its spaces, a split character shows once."""
    from adapter_studio.engine.data.preview import token_pieces
    from adapter_studio.engine.models.loading import load_tokenizer, resolve_source

    tokenizer = load_tokenizer(resolve_source(model))
    ids = tokenizer("Fears for T N pension after talks — naïve café 😀😀 unbelievable 日本語のテキスト")["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids)
    assert "\ufffd" not in "".join(pieces)
    if "minilm" in model:  # the classifier's row, and the label it learns marked
        path = write_rows(tmp_path / "news.csv", [{"text": "Fears for pension", "label": "World"}] * 2)
        spec = DataSpec(path=str(path))
        shown = render_tokens(spec, preview_data(spec).examples[0], "classification", tokenizer)
        assert "".join(t for t, _ in shown) == "[CLS] fears for pension [SEP]\n→ label: World"
        assert [t for t, learnt in shown if learnt] == ["\n→ label: World"]
        # A title and its description: shown as training encodes the pair, each part ended by [SEP].
        path = write_rows(tmp_path / "pairs.csv", [{"title": "Fears for pension", "description": "Unions meet.",
                                                    "label": "World"}] * 2)  # fmt: skip
        spec = DataSpec(path=str(path))
        example = preview_data(spec).examples[0]
        shown = render_tokens(spec, example, "classification", tokenizer)
        text = "".join(t for t, _ in shown)
        assert text == "[CLS] fears for pension [SEP] unions meet. [SEP]\n→ label: World"
        assert tokenizer.decode(tokenizer(example.text, example.text_pair)["input_ids"]) in text


def test_prompt_completion_text_and_classification(tmp_path, tiny_llama, tiny_bert_cls) -> None:  # type: ignore[no-untyped-def]
    llama = tokenizer_of(tiny_llama)
    pc = write_rows(tmp_path / "pc.jsonl", [{"prompt": f"{q} = ", "completion": a} for q, a in QA])
    data = prepare_data(DataSpec(path=str(pc), eval_split=0), llama, None, 128, 0)
    assert data.format == "prompt_completion"
    for (q, a), t in zip(QA, data.train, strict=True):
        loss = [label != IGNORE for label in t.labels]
        assert llama.decode([i for i, learn in zip(t.input_ids, loss, strict=True) if learn]) == a + "<|im_end|>"
        assert llama.decode([i for i, learn in zip(t.input_ids, loss, strict=True) if not learn]) == f"{q} = "
    data = prepare_data(DataSpec(path=str(pc), eval_split=0.2), llama, None, 128, 0)
    assert (len(data.train), len(data.eval)) == (8, 2)
    assert {p for p, _ in data.eval_prompts} <= {f"{q} = " for q, _ in QA} and len(data.eval_prompts) == 2

    docs = tmp_path / "book.txt"
    docs.write_text("first document here.\n\nsecond one, a bit longer than the first.\n\nthird.\n")
    data = prepare_data(DataSpec(path=str(docs), eval_split=0), llama, None, 16, 0)
    stream = "first document here.<|im_end|>second one, a bit longer than the first.<|im_end|>third.<|im_end|>"
    assert data.format == "text"
    assert "".join(llama.decode(t.input_ids) for t in data.train) == stream
    assert all(len(t.input_ids) <= 16 and t.labels == t.input_ids for t in data.train)

    bert = tokenizer_of(tiny_bert_cls)
    rows = [{"sentence1": f"s{i}", "sentence2": f"t{i}", "label": ["neg", "pos", "mid"][i % 3]} for i in range(9)]
    data = prepare_data(DataSpec(path=str(write_rows(tmp_path / "c.csv", rows)), eval_split=0), bert, None, 32, 0)
    assert data.format == "classification" and data.id2label == {0: "mid", 1: "neg", 2: "pos"}
    assert [t.labels for t in data.train[:3]] == [[1], [2], [0]]
    assert bert.decode(data.train[0].input_ids) == "[CLS]s0[SEP]t0[SEP]"  # the text pair is used
    ids = [{"text": f"x{i}", "label": i % 2} for i in range(4)]
    data = prepare_data(DataSpec(path=str(write_rows(tmp_path / "i.jsonl", ids)), eval_split=0), bert, None, 32, 0)
    assert data.id2label == {0: "0", 1: "1"} and [t.labels[0] for t in data.train] == [0, 1, 0, 1]


@pytest.mark.parametrize(("folder", "written"), [("a$HOME b", "{tmp}/a$HOME b/d.jsonl"),
                                                   ("home", "$ROOT_OF_TEST/home/d.jsonl")])  # fmt: skip
def test_a_data_path_is_read_as_named_else_as_a_shell_reads_it(
    folder: str, written: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder named with a `$` (picked in a file dialog) was read with $HOME expanded: not found."""
    from adapter_studio.engine.data.files import data_files

    monkeypatch.setenv("ROOT_OF_TEST", str(tmp_path))
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    assert data_files(written.format(tmp=tmp_path)) == [path]


@pytest.mark.parametrize(
    ("files", "read"),
    [
        (["README.txt", "train.jsonl"], ["train.jsonl"]),  # the README was read first, as a row of text
        (["LICENSE", "a.csv", "notes.txt", "b.parquet"], ["a.csv", "b.parquet"]),
        (["a.txt", "b.txt", "README.md"], ["a.txt", "b.txt"]),  # plain text is the data where nothing else is
    ],
    ids=["a README beside rows", "notes beside rows", "a folder of plain text"],
)
def test_a_folders_notes_are_not_read_as_data(files: list[str], read: list[str], tmp_path: Path) -> None:
    from adapter_studio.engine.data.files import data_files

    for name in files:
        (tmp_path / name).write_text('{"instruction": "a", "output": "b"}\n' if name.endswith(".jsonl") else "x\n")
    assert [p.name for p in data_files(str(tmp_path))] == read


def test_a_folder_of_notes_alone_says_so(tmp_path: Path) -> None:
    """It said "no data files … use one of …, .txt" of a folder holding README.txt."""
    from adapter_studio.engine.data.files import data_files

    (tmp_path / "README.txt").write_text("my data will go here\n")
    with pytest.raises(UserError, match=r"no data files in .* \(README\.txt: the folder's notes, not data\)"):
        data_files(str(tmp_path))


def test_classes_written_as_ids_take_the_names_given(tmp_path: Path, tiny_bert_cls: Path) -> None:
    """AG News writes its topics 1-4: `data.label_names` names them for the run, Try, Evaluate and the export
    (YAML's `{1: World}` reads the key as a number); a name for a label no row has is a typo, said before a run."""
    from adapter_studio.engine.data.examples import run_labels

    path = write_rows(tmp_path / "news.csv", [{"label": i % 3 + 1, "text": f"story {i}"} for i in range(6)])
    data = DataSpec(path=str(path), eval_split=0, label_names={1: "World", 2: "Sports", 3: "Business"})
    assert data.label_names == {"1": "World", "2": "Sports", "3": "Business"}
    prepared = prepare_data(data, tokenizer_of(tiny_bert_cls), None, 32, 0)
    assert prepared.id2label == {0: "Business", 1: "Sports", 2: "World"}  # names in sorted order, as any names
    assert [prepared.id2label[t.labels[0]] for t in prepared.train] == ["World", "Sports", "Business"] * 2
    assert run_labels(data) == prepared.id2label
    assert preview_data(data).labels == {"Business": 2, "Sports": 2, "World": 2}
    partly = data.model_copy(update={"label_names": {"1": "World"}})  # the others stay as written
    assert run_labels(partly) == {0: "2", 1: "3", 2: "World"}
    for names, said in [
        ({"1": "World", "4": "Sci/Tech"},
         "names label '4', which no training row has — write it as the data does: 2, 3"),
        ({"7": "2", "1": "one"}, "names label '7', which no training row has"),  # its name is another's label
        ({"1": "2"}, "names a label '2', as the rows already call another: the two would be one class"),
    ]:  # fmt: skip
        with pytest.raises(UserError) as caught:
            run_labels(data.model_copy(update={"label_names": names}))
        assert caught.value.message.startswith(f"data.label_names: {said}"), caught.value.message
    assert run_labels(data.model_copy(update={"label_names": {"1": "2", "2": "1"}})) == {0: "1", 1: "2", 2: "3"}
    with pytest.raises(ValueError, match="quote it"):  # YAML's {0: no, 1: yes} named the classes False and True
        DataSpec(path="x", label_names={0: False, 1: True})
    assert DataSpec(path="x", label_names={True: "spam", 3.0: "x"}).label_names == {"true": "spam", "3": "x"}


def test_split_share_and_separate_eval_file(tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    tokenizer = tokenizer_of(tiny_llama)
    many = [(f"reverse {i}", str(i)[::-1]) for i in range(40)]
    path = write_rows(tmp_path / "a.jsonl", alpaca_rows(many))
    data = prepare_data(DataSpec(path=str(path), eval_split=0.25), tokenizer, None, 128, 3)
    assert (len(data.train), len(data.eval), len(data.eval_prompts)) == (30, 10, 10)
    assert {t.row for t in data.train}.isdisjoint(t.row for t in data.eval)
    again = prepare_data(DataSpec(path=str(path), eval_split=0.25), tokenizer, None, 128, 3)
    assert [t.row for t in again.eval] == [t.row for t in data.eval]  # the seed fixes the split

    held = write_rows(tmp_path / "held.csv", alpaca_rows(QA[:3]))
    data = prepare_data(DataSpec(path=str(path), eval_path=str(held), eval_split=0.25), tokenizer, None, 128, 3)
    assert (len(data.train), len(data.eval)) == (40, 3)
    assert data.eval_prompts[0] == ("<|im_start|>user\nreverse abc<|im_end|>\n<|im_start|>assistant\n", "cba")


@pytest.mark.parametrize("rare_at", [0, 12, 29, 59])  # 12 and 29: rows seed 0's shuffle holds out of 60
def test_a_label_with_one_row_trains_on_it_whatever_the_split(tmp_path: Path, tiny_bert_cls: Path,
                                                              rare_at: int) -> None:  # fmt: skip
    """Held out, the one 'neutral' row stopped the run: 'label neutral is not one of the training labels'."""
    from adapter_studio.engine.data.examples import load_examples, split_examples

    rows = [{"text": f"review {i}", "label": "neutral" if i == rare_at else ("neg", "pos")[i % 2]} for i in range(60)]
    spec = DataSpec(path=str(write_rows(tmp_path / "reviews.csv", rows)))
    data = prepare_data(spec, tokenizer_of(tiny_bert_cls), None, 32, 0)
    assert sorted(data.id2label.values()) == ["neg", "neutral", "pos"]
    assert [t.row for t in data.train if data.id2label[t.labels[0]] == "neutral"] == [rare_at + 2]  # CSV line
    fmt, _, examples, _ = load_examples(spec, spec.path)
    held = split_examples(examples, None, 0, fmt)[1]  # as the Evaluate and Try pages find the held-out rows
    assert sorted(e.row for e in held) == sorted(t.row for t in data.eval)


def test_chat_templates_that_look_at_contents_still_render_exactly(tmp_path, tiny_llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import adapter_studio.engine.data.rendering as data_prep

    tokenizer = tokenizer_of(tiny_llama)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    )
    assert not ChatRenderer(tokenizer).fast  # a filter on the content: every row goes through the template
    tokenizer.chat_template = (
        "{% for m in messages %}{% set c = m['content'] %}<|im_start|>{{ m['role'] }}\n"
        "{% if c.startswith('!') %}LOUD {% endif %}{{ c }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert not ChatRenderer(tokenizer).fast  # `set`, then a method: the same
    # Were such a template missed, the sampled check against the template catches the difference on a
    # checked row and the data is rendered again, row by row.
    monkeypatch.setattr(data_prep, "_content_used_verbatim", lambda source: True)
    assert ChatRenderer(tokenizer).fast
    monkeypatch.setattr(data_prep, "_VERIFY_EVERY", 5)
    answers = ["ab", "cd", "ef", "gh", "!shout", "ij"]
    path = write_rows(tmp_path / "a.jsonl", alpaca_rows([(f"q{i}", a) for i, a in enumerate(answers)]))
    data = prepare_data(DataSpec(path=str(path), eval_split=0), tokenizer, None, 128, 0)
    for i, (a, t) in enumerate(zip(answers, data.train, strict=True)):
        messages = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": a}]
        assert tokenizer.decode(t.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert "LOUD" in tokenizer.decode(data.train[4].input_ids)


def test_a_run_trains_on_packed_sharegpt_parquet_with_an_eval_file(tmp_path, tiny_llama, make_spec) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.events import read_events
    from adapter_studio.engine.training.run import run

    many = [(f"reverse {w}", w[::-1]) for w in ("abc", "bca", "cab", "dd", "eef", "fa", "bead", "cafe")] * 5
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in many]
    train = write_rows(tmp_path / "chat.parquet", rows)
    held = write_rows(tmp_path / "held.jsonl", rows[:4])
    data = {"packing": True, "eval_path": str(held), "max_length": 200}
    spec = make_spec(tiny_llama, train, data=data, max_steps=3, eval_samples=2)
    packed = len(prepare_data(spec.data, tokenizer_of(tiny_llama), None, 200, 0).train)
    assert packed < len(rows) // 2  # about three conversations per 200-token row
    result = run(spec)
    assert result.status == "completed", result.error
    events = read_events(result.run_dir / "events.jsonl")
    evals = [e for e in events if e.type == "eval"]
    assert evals and evals[-1].exact_match is not None
    log = " ".join(getattr(e, "message", "") for e in events)
    assert f"{packed} training and 4 held-out examples (sharegpt format" in log


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["instruction", "input", "output"], "alpaca"),
        (["question", "answer"], "alpaca"),
        (["input", "target"], "alpaca"),
        (["input", "output"], "alpaca"),
        (["problem", "solution"], "alpaca"),
        (["problem", "conditions", "question", "equation", "gold_answer"], "alpaca"),
        (["label", "title", "description"], "classification"),
        (["Class Index", "Title", "Description"], "classification"),
        (["review", "sentiment"], "classification"),
        (["title", "content"], "text"),
        (["messages"], "messages"),
        (["conversations", "id"], "sharegpt"),
        (["prompt", "completion"], "prompt_completion"),
        (["text"], "text"),
        (["sentence", "label"], "classification"),
        (["sentence1", "sentence2", "label"], "classification"),
    ],
)
def test_shape_is_detected_from_columns(columns: list[str], expected: str) -> None:
    assert detect_format(columns) == expected


@pytest.mark.parametrize(
    ("row", "user", "answer"),
    [
        ({"question": "A train goes 60 km in 2 hours. Its speed?", "options": ["A)20", "B)30", "C)40"],
          "rationale": "60 / 2 = 30. Answer: B", "correct": "B"},  # AQuA
         "A train goes 60 km in 2 hours. Its speed?\n\nA)20\nB)30\nC)40", "B"),
        ({"Problem": "what is 10 % of 50 ?", "Rationale": "50 * 0.1 = 5", "options": "a ) 5 , b ) 10",
          "correct": "a", "category": "general"},  # MathQA
         "what is 10 % of 50 ?\n\na ) 5 , b ) 10", "a"),
        ({"ID": "chal-1", "Body": "Jack had 8 pens. He gave 3 to Mary.", "Question": "How many pens has he now?",
          "Equation": "( 8.0 - 3.0 )", "Answer": 5.0, "Type": "Subtraction"},  # SVAMP on the Hub
         "Jack had 8 pens. He gave 3 to Mary.\n\nHow many pens has he now?", "5"),  # the story first, as it reads
        ({"context": "The Nile flows north.", "question": "Which way does the Nile flow?", "answer": "north"},
         "The Nile flows north.\n\nWhich way does the Nile flow?", "north"),
        ({"id": 3, "question": "Tom has 3 apples and buys 4. How many?", "chain": "<gadget>3+4</gadget>",
          "result": "7", "result_float": 7.0},  # Calc-X's MAWPS: read as labels (`id`) to classify
         "Tom has 3 apples and buys 4. How many?", "7"),
        ({"input": "Jack had 8 pens. He gave 3 to Mary. How many pens has he now?", "target": 5},
         "Jack had 8 pens. He gave 3 to Mary. How many pens has he now?", "5"),
    ],
    ids=["aqua", "mathqa", "svamp with its story apart", "a passage and its question", "calc-x", "input and target"],
)  # fmt: skip
def test_problems_are_read_with_their_options_or_story(tmp_path: Path, row: dict, user: str,
                                                              answer: str) -> None:  # fmt: skip
    from adapter_studio.engine.data.examples import load_examples

    path = write_rows(tmp_path / "problems.jsonl", [row] * 3)
    fmt, _, examples, _ = load_examples(DataSpec(path=str(path)), str(path))
    assert fmt == "alpaca"
    assert [m["content"] for m in examples[0].messages] == [user, answer]


@pytest.mark.parametrize(("value", "text"), [(51.0, "51"), (-3.0, "-3"), (2.5, "2.5"), (51, "51"), (1e20, "1e+20")])
def test_a_numeric_answer_is_written_as_a_person_writes_it(tmp_path: Path, value: float, text: str) -> None:
    from adapter_studio.engine.data.examples import load_examples

    path = write_rows(tmp_path / "answers.jsonl", [{"instruction": "How many?", "output": value}] * 2)
    _, _, examples, _ = load_examples(DataSpec(path=str(path)), str(path))
    assert examples[0].messages[-1]["content"] == text


def test_a_list_is_options_only_where_it_is_the_input(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "p.jsonl", [{"question": ["a", "b"], "answer": "c"}])
    from adapter_studio.engine.data.examples import load_examples

    with pytest.raises(UserError, match="field 'question' is a list, expected text"):
        load_examples(DataSpec(path=str(path)), str(path))


TABLE = [{"text": "Stocks rose", "label": "Business"}, {"text": "The team won", "label": "Sports"},
         {"text": "Rain in Paris", "label": "World"}]


@pytest.mark.parametrize(
    "layout",
    [
        TABLE,  # records
        {"train": TABLE, "test": TABLE[:1]},  # the first list of rows
        {"version": "1.0", "data": TABLE},
        {c: {str(i): r[c] for i, r in enumerate(TABLE)} for c in ("text", "label")},  # pandas' to_json default
        {str(i): r for i, r in enumerate(TABLE)},  # pandas, orient="index"
        {"columns": ["text", "label"], "index": [0, 1, 2], "data": [[r["text"], r["label"]] for r in TABLE]},
        {c: [r[c] for r in TABLE] for c in ("text", "label")},  # datasets' to_dict: columns as lists
        {f"news-{i}": r for i, r in enumerate(TABLE)},  # pandas, orient="index", rows named
        {"data": TABLE, "splits": ["train", "test", "dev"]},  # rows beside a list as long: still the rows
    ],
    ids=["records", "splits", "data key", "pandas columns", "pandas index", "pandas split", "column lists",
         "pandas named rows", "rows beside a list"],
)
def test_json_tables_are_read_in_the_layouts_people_save_them_in(tmp_path: Path, layout: Any) -> None:
    from adapter_studio.engine.data.examples import load_examples

    path = tmp_path / "table.json"
    path.write_text(json.dumps(layout))
    fmt, _, examples, *_ = load_examples(DataSpec(path=str(path)), str(path))
    assert fmt == "classification"
    assert [(e.text, e.label) for e in examples] == [(r["text"], r["label"]) for r in TABLE]


@pytest.mark.parametrize(
    ("name", "delimiter"),
    [("table.csv", ","), ("table.csv", ";"), ("table.csv", "\t"), ("table.csv", "|"), ("table.tsv", "\t"),
     ("table.tsv", ","), ("table.csv.gz", ";")],
)
def test_a_csv_file_is_read_with_the_delimiter_its_header_uses(tmp_path: Path, name: str, delimiter: str) -> None:
    """A spreadsheet in a locale with a decimal comma saves ';'; a field may still hold a comma."""
    from adapter_studio.engine.data.examples import load_examples

    text = "\n".join([f"text{delimiter}label", *(f"{r['text']}, again{delimiter}{r['label']}" for r in TABLE)])
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    if delimiter == ",":  # the field's own comma needs quotes here
        path.write_text("\n".join(["text,label", *(f'"{r["text"]}, again",{r["label"]}' for r in TABLE)]))
    _, _, examples, *_ = load_examples(DataSpec(path=str(path)), str(path))
    assert [(e.text, e.label) for e in examples] == [(f"{r['text']}, again", r["label"]) for r in TABLE]


def test_one_object_is_one_row(tmp_path: Path) -> None:
    from adapter_studio.engine.data.files import read_rows

    (tmp_path / "one.json").write_text('{"text": "hello", "label": 1}')
    assert read_rows(str(tmp_path / "one.json")) == [{"text": "hello", "label": 1}]


def test_columns_as_lists_beside_a_column_of_objects_are_the_table(tmp_path: Path) -> None:
    """PKU-SafeRLHF's to_dict: text columns beside its harm categories (objects)."""
    from adapter_studio.engine.data.files import read_rows

    rows = [{"prompt": f"p{i}", "response_0": "a", "response_1": "b", "harm": {"Violence": bool(i)}} for i in range(2)]
    path = tmp_path / "pku.json"
    path.write_text(json.dumps({c: [r[c] for r in rows] for c in rows[0]}))
    assert read_rows(str(path)) == rows


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("ragged.json", '{"text": ["a", "b", "c"], "label": [1, 0]}', "different lengths (text 3, label 2)"),
        ("junk.json", '[\n {"question": "q", "answer": "a"}\n]\nxx\n', "not valid JSON (Extra data at line 4"),
        ("twice.csv", "text,text,label\na,b,1\n", "the header names 'text' more than once"),
        ("empty.json", "{}", "the file has no data rows"),
        ("nulls.jsonl", '{"text": "a", "label": 1}\nnull\n', "line 2 is a JSON null, not an object"),
        ("list.json", '[{"text": "a", "label": 1}, ["b", 0]]', "item 2 is a JSON array, not an object"),
    ],
)
def test_a_table_that_cannot_be_read_says_why(tmp_path: Path, name: str, text: str, message: str) -> None:
    from adapter_studio.engine.data.files import read_rows

    (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as caught:
        read_rows(str(tmp_path / name))
    assert message in caught.value.message


@pytest.mark.parametrize("orient", ["columns", "index"])
def test_pandas_json_of_numbered_columns_is_not_transposed(tmp_path: Path, orient: str) -> None:
    """`pd.read_csv(header=None).to_json()`: the columns are 0, 1 and so are the rows."""
    from adapter_studio.engine.data.files import read_rows

    rows = [{"0": f"news text {i}", "1": str(i % 2)} for i in range(3)]
    by_columns = {c: {str(i): r[c] for i, r in enumerate(rows)} for c in ("0", "1")}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(by_columns if orient == "columns" else {str(i): r for i, r in enumerate(rows)}))
    assert read_rows(str(path)) == rows


@pytest.mark.parametrize("first", [120, 2100])  # within the first chunk of rows, and in a later one
def test_a_column_that_first_appears_far_down_a_file_is_read(tmp_path: Path, first: int) -> None:
    """JSON writers leave out empty keys: rows with an `input` may start after many rows without one."""
    from adapter_studio.engine.data.examples import load_examples

    rows = [{"instruction": f"Say hi {i}", "output": "hi"} for i in range(first)]
    rows += [{"instruction": "Translate to French", "input": f"cat {i}", "output": "chat"} for i in range(3)]
    path = str(write_rows(tmp_path / "late.jsonl", rows))
    _, mapping, examples, _ = load_examples(DataSpec(path=path), path)
    assert mapping == {"instruction": "instruction", "input": "input", "output": "output"}
    assert examples[-1].messages[0]["content"] == "Translate to French\n\ncat 2"
    assert examples[0].messages[0]["content"] == "Say hi 0"
    preview = preview_data(DataSpec(path=path))  # the Data page's column boxes offer it
    assert preview.columns == ["instruction", "output", "input"] and preview.mapping["input"] == "input"


def test_columns_as_lists_with_messages_are_rows_not_a_list_of_them(tmp_path: Path) -> None:
    """`datasets`' to_dict of pairs whose answers are one message each: every column is a list."""
    from adapter_studio.engine.data.examples import load_examples

    table = {"prompt": [f"What is 0+{i}?" for i in range(3)],
             "chosen": [{"role": "assistant", "content": f"It is {i}."} for i in range(3)],
             "rejected": [{"role": "assistant", "content": "No idea."} for _ in range(3)]}  # fmt: skip
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(table))
    fmt, _, examples, _ = load_examples(DataSpec(path=str(path)), str(path))
    assert fmt == "preference" and [(e.chosen, e.rejected) for e in examples] == [(f"It is {i}.", "No idea.")
                                                                                  for i in range(3)]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        # GLUE-style, unquoted: a quote mark that opens a sentence is text, and runs on into no other line
        ('sentence\tlabel\n"Wow" is all I can say\t1\nbad film\t0\nthe best "film" of the year"\t1\n',
         [('"Wow" is all I can say', "1"), ("bad film", "0"), ('the best "film" of the year"', "1")]),
        # as CSV writers quote a cell holding a quote mark: the quotes go
        ('sentence\tlabel\n"He said ""hi"" twice"\t1\nbad film\t0\n', [('He said "hi" twice', "1"), ("bad film", "0")]),
        # a quoted cell across lines or holding a tab: the file is read with CSV quoting
        ('sentence\tlabel\n"two\nlines"\t1\n"a\ttab"\t0\n', [("two\nlines", "1"), ("a\ttab", "0")]),
    ],
    ids=["unquoted", "quoted cells", "quoted across lines"],
)
def test_a_tsv_is_read_with_the_quoting_it_was_written_with(tmp_path: Path, text: str, rows: list) -> None:
    from adapter_studio.engine.data.files import read_rows

    path = tmp_path / "sst.tsv"
    path.write_text(text)
    assert [(r["sentence"], r["label"]) for r in read_rows(str(path))] == rows


def test_pandas_index_column_and_spaced_header_names_are_read_as_meant(tmp_path: Path) -> None:
    """`to_csv` writes the index first under no name; 'question, answer' is two columns, not ' answer'."""
    from adapter_studio.engine.data.files import read_rows

    indexed = tmp_path / "indexed.csv"
    indexed.write_text(",text,target\n0,a news post,1\n1,another post,0\n")
    assert read_rows(str(indexed)) == [{"text": "a news post", "target": "1"}, {"text": "another post", "target": "0"}]
    spaced = tmp_path / "spaced.csv"
    spaced.write_text('question, answer\n"What is 2+2?", "4"\nWhat is 3+3?, 6\n')
    assert read_rows(str(spaced)) == [{"question": "What is 2+2?", "answer": "4"},
                                      {"question": "What is 3+3?", "answer": "6"}]  # fmt: skip


def test_a_messages_column_written_as_text_in_a_csv_is_read_as_messages(tmp_path: Path) -> None:
    """NuminaMath saved through pandas: `messages` holds the list's repr beside `problem` and `solution`."""
    from adapter_studio.engine.data.examples import load_examples

    turns = [{"role": "user", "content": "Find 2+2."}, {"role": "assistant", "content": "It is 4."}]
    path = tmp_path / "numina.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["problem", "solution", "messages"], ["Find 2+2.", "It is 4.", repr(turns)]])
    fmt, _, examples, _ = load_examples(DataSpec(path=str(path)), str(path))
    assert fmt == "messages" and examples[0].messages == turns


def test_a_nan_answer_is_an_empty_one(tmp_path: Path) -> None:
    """Python's json writes NaN for a missing float: the row has no answer, it is not the answer 'nan'."""
    from adapter_studio.engine.data.examples import load_examples

    path = tmp_path / "math.json"
    path.write_text('[{"question": "1 + 1?", "answer": NaN}, {"question": "2 + 2?", "answer": 4}]')
    _, _, examples, dropped = load_examples(DataSpec(path=str(path)), str(path))
    assert [e.messages[-1]["content"] for e in examples] == ["4"]
    assert dropped == [f"{path}, row 1: empty 'answer' (nothing to learn)"]


def test_zero_padded_class_ids_are_classes_as_written(tmp_path: Path, tiny_bert_cls: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("text,label\n" + "".join(f"post {i},0{i % 3 + 1}\n" for i in range(6)))
    data = prepare_data(DataSpec(path=str(path), eval_split=0), tokenizer_of(tiny_bert_cls), None, 32, 0)
    assert data.id2label == {0: "01", 1: "02", 2: "03"} and [t.labels[0] for t in data.train] == [0, 1, 2] * 2
    assert preview_data(DataSpec(path=str(path))).labels == {"01": 2, "02": 2, "03": 2}


NEWS = [
    ("3", "Wall St. Bears Claw Back Into the Black",
     "Short-sellers, Wall Street's dwindling band of ultra-cynics, are seeing green again."),
    ("4", "Ky. Company Wins Grant to Study Peptides",
     "A company founded by a chemistry researcher at the University of Louisville won a grant."),
    ("2", "Phelps, Thorpe Advance in 200 Freestyle",
     "Michael Phelps won the gold medal in the 100 butterfly and set an Olympic record."),
    ("1", "Iraq Halts Oil Exports from Main Pipeline",
     "Authorities have halted oil export flows from the main pipeline in southern Iraq."),
]  # fmt: skip
NEWS = [(label, f"{title} ({i})", f"{text} ({i})") for i in range(3) for label, title, text in NEWS]  # distinct rows


@pytest.mark.parametrize(
    ("header", "is_row"),
    [
        (["label", "title", "description"], False),
        (["Class Index", "Title", "Description"], False),
        (["0", "1", "2"], False),  # pandas' names for unnamed columns
        (["1", "2"], False),
        (["3", "Wall St. Bears Claw Back", "Reuters - Short-sellers"], True),  # a number
        (["the film is a charming and often affecting journey", "positive"], True),  # a sentence
        (["text", "2.5"], True),
        (["the_news_topic_class_index_from_one_to_four", "the_full_description_of_the_article"], False),
    ],
)
def test_a_csv_first_line_is_a_row_when_it_holds_numbers_or_sentences(header: list[str], is_row: bool) -> None:
    from adapter_studio.engine.data.by_values import looks_like_data

    assert looks_like_data(header) is is_row


@pytest.mark.parametrize("name", ["news.csv", "news.tsv", "news.csv.gz"])
def test_a_csv_without_a_header_line_is_read_from_its_first_line_and_classified(tmp_path: Path, name: str) -> None:
    """AG News, DBpedia and Yahoo Answers as first published: no header, the label first, then title and text."""
    from adapter_studio.engine.data.examples import load_examples

    path = tmp_path / name
    delimiter = "\t" if name.endswith(".tsv") else ","
    lines = []
    for row in NEWS:
        with_quotes = [f'"{cell}"' for cell in row] if delimiter == "," else list(row)
        lines.append(delimiter.join(with_quotes))
    text = "\n".join(lines) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    fmt, mapping, examples, dropped = load_examples(DataSpec(path=str(path)), str(path))
    assert (fmt, mapping) == ("classification", {"text": "column 2", "text_pair": "column 3", "label": "column 1"})
    assert [(e.label, e.text, e.text_pair) for e in examples] == NEWS and not dropped
    assert examples[0].where.endswith(f"{name}:1")  # the first line is row 1, not a header


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["text", "target"], {"text": "text", "label": "target"}),  # scikit-learn's 20 newsgroups
        (["utterance", "intent"], {"text": "utterance", "label": "intent"}),
        (["review", "rating"], {"text": "review", "label": "rating"}),
        (["emotion", "text"], {"text": "text", "label": "emotion"}),
    ],
)
def test_a_label_column_is_found_by_its_values_where_its_name_says_nothing(
    tmp_path: Path, columns: list[str], expected: dict[str, str]
) -> None:
    from adapter_studio.engine.data.examples import load_examples

    rows = [{columns[0]: None, columns[1]: None} for _ in NEWS]
    label_column, text_column = (expected["label"], expected["text"])
    for row, (label, _, description) in zip(rows, NEWS, strict=True):
        row.update({label_column: label, text_column: description})
    path = write_rows(tmp_path / "rows.jsonl", rows)
    fmt, mapping, examples, _ = load_examples(DataSpec(path=str(path)), str(path))
    assert (fmt, mapping) == ("classification", expected)
    assert [e.label for e in examples] == [label for label, *_ in NEWS]


def test_labels_named_target_are_found_beside_more_columns_than_the_text(tmp_path: Path) -> None:
    """20 Newsgroups saved with an id beside scikit-learn's `text` and `target` (labels among three columns)."""
    from adapter_studio.engine.data.examples import load_examples

    rows = [{"text": description, "target": label, "id": i} for i, (label, _, description) in enumerate(NEWS)]
    path = write_rows(tmp_path / "newsgroups.jsonl", rows)
    fmt, mapping, *_ = load_examples(DataSpec(path=str(path)), str(path))
    assert (fmt, mapping) == ("classification", {"text": "text", "label": "target"})


@pytest.mark.parametrize(
    "rows",
    [
        [{"text": description, "source": "web"} for *_, description in NEWS],  # one value: no classes
        [{"text": description, "source": ["web", "book"][i % 2], "id": i} for i, (*_, description) in enumerate(NEWS)],
        [{"text": description, "id": str(i)} for i, (*_, description) in enumerate(NEWS)],  # all different
        [{"text": description, "label2": "a"} for *_, description in NEWS[:4]] + [{"text": "x", "label2": "b"}],
    ],
    ids=["one value", "three columns", "ids", "too few rows"],
)
def test_plain_text_stays_plain_text_beside_columns_that_are_no_labels(tmp_path: Path, rows: list[dict]) -> None:
    from adapter_studio.engine.data.examples import load_examples

    path = write_rows(tmp_path / "corpus.jsonl", rows)
    fmt, mapping, *_ = load_examples(DataSpec(path=str(path)), str(path))
    assert (fmt, mapping) == ("text", {"text": "text"})


def test_a_headerless_file_sorted_by_class_is_classified_from_its_first_rows(tmp_path: Path) -> None:
    """DBpedia's CSV files as published: no header, and the first 40,000 rows all of class 1."""
    from adapter_studio.engine.data.examples import load_examples

    rows = [(str(i // 110 + 1), f"Company number {i} (firm)", f"Company {i} is a firm founded in {1800 + i}.")
            for i in range(220)]  # the first 110 rows are of class 1
    path = tmp_path / "dbpedia.csv"
    path.write_text("\n".join(",".join(f'"{c}"' for c in row) for row in rows))
    fmt, mapping, examples, _ = load_examples(DataSpec(path=str(path)), str(path))
    assert (fmt, mapping["label"]) == ("classification", "column 1")
    assert {e.label for e in examples} == {"1", "2"}


@pytest.mark.parametrize("saved", ["parquet", "folder"])
def test_class_ids_of_a_datasets_file_are_read_as_their_names(tmp_path: Path, saved: str) -> None:
    """The Hub's AG News Parquet holds label 0-3 and keeps World, Sports, Business, Sci/Tech in its schema."""
    import datasets
    from adapter_studio.engine.data.examples import load_examples

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])})
    texts = [description for _, _, description in NEWS]
    table = datasets.Dataset.from_dict({"text": texts, "label": [int(label) - 1 for label, *_ in NEWS]}, features)
    path = tmp_path / ("train.parquet" if saved == "parquet" else "saved")
    table.to_parquet(str(path)) if saved == "parquet" else table.save_to_disk(str(path))
    fmt, _, examples, _ = load_examples(DataSpec(path=str(path)), str(path))
    names = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
    assert fmt == "classification" and [e.label for e in examples] == [names[label] for label, *_ in NEWS]


@pytest.mark.parametrize(
    ("values", "labels"),
    [
        ([True, False, True], ["true", "false", "true"]),  # is_spam: true
        (["3.0", "1.0", "3"], [3, 1, "3"]),  # pandas' floats for a column with a gap, beside a plain 3
        ([" Sports ", "World", "2.5"], ["Sports", "World", "2.5"]),
    ],
)
def test_labels_are_read_as_the_classes_they_name(tmp_path: Path, values: list[Any], labels: list[Any]) -> None:
    from adapter_studio.engine.data.examples import load_examples
    from adapter_studio.engine.data.shapes import label_mapping

    rows = [{"text": f"row {i}", "label": v} for i, v in enumerate(values)]
    path = str(write_rows(tmp_path / "rows.jsonl", rows))
    _, _, examples, _ = load_examples(DataSpec(path=path), path)
    assert [e.label for e in examples] == labels
    assert len(label_mapping(examples)) == len({str(label) for label in labels})


def test_a_headline_is_read_with_its_short_description(tmp_path: Path) -> None:
    """The News Category set: headline, category, short_description, link, authors, date."""
    from adapter_studio.engine.data.examples import load_examples

    rows = [{"link": "https://x", "headline": title, "category": label, "short_description": text,
             "authors": "A", "date": "2018-05-26"} for label, title, text in NEWS]  # fmt: skip
    path = str(write_rows(tmp_path / "news.jsonl", rows))
    fmt, mapping, examples, _ = load_examples(DataSpec(path=path), path)
    assert (fmt, mapping) == ("classification", {"text": "headline", "label": "category",
                                                 "text_pair": "short_description"})  # fmt: skip
    assert (examples[0].text, examples[0].text_pair) == NEWS[0][1:]


def test_a_headerless_evaluation_file_is_read_in_its_training_files_format(tmp_path: Path) -> None:
    from adapter_studio.engine.data.examples import load_examples

    path = tmp_path / "test.csv"
    path.write_text("\n".join(",".join(f'"{c}"' for c in row) for row in NEWS))
    fmt, mapping, examples, _ = load_examples(DataSpec(path=str(path), format="classification"), str(path))
    assert (fmt, mapping["label"], len(examples)) == ("classification", "column 1", len(NEWS))


@pytest.mark.parametrize(
    ("labels", "said"),
    [
        ([], ""),
        ([1, 0, 1], "2 labels (rows each) — 0: 1 · 1: 2"),  # numbers in their order
        (["b", "a", "b", "b", "b", "b", "b"], "2 labels (rows each) — a: 1 · b: 6; 'b' has 6× the rows of 'a'"),
        ([f"c{i}" for i in range(8)], "8 labels (rows each) — c0: 1 · c1: 1 · c2: 1 · c3: 1 · c4: 1 · c5: 1 · 2 more"),
        (["spam"] * 3, "1 label (spam: 3): a classifier needs two at least — map the label column"),
    ],
)
def test_labels_are_counted_and_an_imbalance_is_said(labels: list[Any], said: str) -> None:
    from adapter_studio.engine.data.preview import describe_labels, label_counts

    text = describe_labels(label_counts(labels))
    assert text.startswith(said) and (said != "" or text == "")
    assert ("macro-F1" in text) == ("×" in said)


def test_a_math_file_with_problem_and_question_reads_the_whole_problem() -> None:
    """SVAMP's shape: `question` is the problem's last sentence only; `problem` holds all of it."""
    from adapter_studio.engine.data.shapes import resolve_columns

    columns = ["problem", "conditions", "question", "equation", "gold_answer"]
    assert resolve_columns("alpaca", columns, {}, "data.columns") == {"instruction": "problem", "output": "gold_answer"}


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["label", "title", "description"], {"text": "title", "text_pair": "description", "label": "label"}),
        (["description", "topic"], {"text": "description", "label": "topic"}),  # not its own pair
        (["text", "description", "label"], {"text": "text", "text_pair": "description", "label": "label"}),
        (["text", "label", "label_text"], {"text": "text", "label": "label_text"}),  # the name, not the number
        (["sentence", "label", "label_name", "idx"], {"text": "sentence", "label": "label_name"}),
    ],
)
def test_news_columns_map_to_text_and_pair(columns: list[str], expected: dict[str, str]) -> None:
    from adapter_studio.engine.data.shapes import resolve_columns

    assert resolve_columns("classification", columns, {}, "data.columns") == expected


def test_dropped_rows_are_reported_with_where_and_why(tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    rows = alpaca_rows(QA[:4])
    rows[1]["output"] = "   "
    path = write_rows(tmp_path / "d.jsonl", rows)
    data = prepare_data(DataSpec(path=str(path), eval_split=0), tokenizer_of(tiny_llama), None, 128, 0)
    assert len(data.train) == 3
    assert data.dropped == [f"{path}:2: empty 'output' (nothing to learn)"]
    assert preview_data(DataSpec(path=str(path))).dropped == data.dropped


def test_cache_reopens_instantly_and_notices_changes(tmp_path, tiny_llama, tiny_qwen2, private_cache) -> None:  # type: ignore[no-untyped-def]
    llama = tokenizer_of(tiny_llama)
    path = write_rows(tmp_path / "a.jsonl", alpaca_rows())
    spec = DataSpec(path=str(path), eval_split=0.2)
    cold = prepare_data(spec, llama, None, 128, 0)
    warm = prepare_data(spec, llama, None, 128, 0)
    assert (cold.from_cache, warm.from_cache) == (False, True)
    assert tokens_of(warm) == tokens_of(cold) and warm.eval_prompts == cold.eval_prompts
    entry = next(private_cache.iterdir())
    (entry / "train" / "lengths.npy").unlink()  # a damaged entry is prepared again
    repaired = prepare_data(spec, llama, None, 128, 0)
    assert not repaired.from_cache and tokens_of(repaired) == tokens_of(cold)
    assert [p.name for p in private_cache.iterdir()] == [entry.name]
    shorter = prepare_data(spec, llama, None, 30, 0)  # truncation is a view: nothing is tokenised again
    assert shorter.from_cache and all(len(t.input_ids) <= 30 for t in shorter.train)
    assert not prepare_data(spec, tokenizer_of(tiny_qwen2), None, 128, 0).from_cache  # another tokenizer
    write_rows(path, alpaca_rows(PAIRS[:-1]))  # the file changed
    changed = prepare_data(spec, llama, None, 128, 0)
    assert not changed.from_cache and changed.rows == len(PAIRS) - 1
    off = prepare_data(spec, llama, None, 128, 0, use_cache=False)
    assert not off.from_cache and tokens_of(off) == tokens_of(changed)


def test_cache_pruning_skips_entries_another_process_renames_meanwhile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two ranks preparing new data at once: one renames its temporary folder while the other
    prunes the cache (seen as FileNotFoundError in every two-process run on data not yet cached)."""
    from adapter_studio.engine.data.cache import _prune_cache

    kept = tmp_path / "kept"
    (kept / "train").mkdir(parents=True)
    (kept / "meta.json").write_text("{}")

    class Racing:  # lists entries that are gone by the time they are looked at
        def iterdir(self):  # type: ignore[no-untyped-def]
            return [tmp_path / "abc.tmp-1-x", tmp_path / "gone", kept]

    _prune_cache(Racing(), kept)  # type: ignore[arg-type]
    assert kept.is_dir()


def test_big_files_stream_in_chunks_with_the_same_result(tmp_path, tiny_llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import adapter_studio.engine.data.examples as data_prep

    tokenizer = tokenizer_of(tiny_llama)
    many = [(f"reverse {i}", str(i)[::-1]) for i in range(5000)]  # more rows than one chunk (2048)
    path = write_rows(tmp_path / "big.jsonl", alpaca_rows(many))
    held = prepare_data(DataSpec(path=str(path)), tokenizer, None, 64, 0, use_cache=False)
    monkeypatch.setattr(data_prep, "HOLD_BYTES", 0)  # read the file a second time instead of keeping it
    seen: list[tuple[str, float]] = []
    streamed = prepare_data(DataSpec(path=str(path)), tokenizer, None, 64, 0, use_cache=False,
                            progress=lambda stage, f: seen.append((stage, f)))  # fmt: skip
    assert tokens_of(streamed) == tokens_of(held) and len(held.train) == 4500
    assert [t.input_ids for t in streamed.eval] == [t.input_ids for t in held.eval]
    assert {s for s, _ in seen} == {"reading", "tokenising"} and max(f for _, f in seen) == 1.0


def test_packing_fills_rows_up_to_max_length(tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    tokenizer = tokenizer_of(tiny_llama)
    path = write_rows(tmp_path / "a.jsonl", alpaca_rows([(f"reverse {i}", str(i)[::-1]) for i in range(60)]))
    plain = prepare_data(DataSpec(path=str(path), eval_split=0), tokenizer, None, 200, 0)
    packed = prepare_data(DataSpec(path=str(path), eval_split=0, packing=True), tokenizer, None, 200, 0)
    assert packed.from_cache  # packing is a view too
    lengths = [len(t.input_ids) for t in packed.train]
    assert max(lengths) <= 200 and len(packed.train) == -(-sum(len(t.input_ids) for t in plain.train) // 200)
    assert [i for t in packed.train for i in t.input_ids] == [i for t in plain.train for i in t.input_ids]
    assert [x for t in packed.train for x in t.labels] == [x for t in plain.train for x in t.labels]


def test_held_out_rows_too_long_are_counted_as_dropped(tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    """12 HH rows read "6 training and 0 held-out examples; 5 rows dropped": the held-out row dropped for its
    length was in no count, and the run was not evaluated, unsaid."""
    short, long = alpaca_rows([("reverse ab", "ba")]), alpaca_rows([("reverse " + "a" * 40, "b" * 40)])
    path = write_rows(tmp_path / "a.jsonl", short * 4)
    held = write_rows(tmp_path / "held.jsonl", short + long)
    stats = length_stats(DataSpec(path=str(path), eval_path=str(held), max_length=60), tokenizer_of(tiny_llama), 2)
    assert (stats["train_examples"], stats["eval_examples"]) == (4, 1)
    assert stats["dropped"] == [f"held-out {held}:2: longer than max_length 60 before its answer starts"]


def test_length_stats_counts_rows_tokens_truncation_and_padding(tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    tokenizer = tokenizer_of(tiny_llama)
    pairs = [("reverse " + "a" * n, "b" * n) for n in (1, 2, 3, 4, 20, 40)]
    rows = [*alpaca_rows(pairs), {"instruction": "empty", "input": "", "output": ""}]
    path = write_rows(tmp_path / "a.jsonl", rows)
    overhead = len(tokenizer("<|im_start|>user\nreverse <|im_end|>\n<|im_start|>assistant\n<|im_end|>\n")["input_ids"])
    expected = [overhead + 2 * n for n in (1, 2, 3, 4, 20, 40)]
    assert overhead == 29 and expected == [31, 33, 35, 37, 69, 109]
    stats = length_stats(DataSpec(path=str(path), eval_split=0, max_length=60), tokenizer, 2)
    assert stats["lengths"] == expected and stats["max_length"] == 60
    assert stats["truncated"] == 1  # the 69-token row; the 109-token one has no answer left within 60
    assert (stats["rows"], stats["examples"], stats["train_examples"], stats["eval_examples"]) == (7, 6, 5, 0)
    assert stats["dropped"] == [
        f"{path}:7: empty 'output' (nothing to learn)",
        f"{path}:6: longer than max_length 60 before its answer starts",
    ]
    assert stats["total_tokens"] == 31 + 33 + 35 + 37 + 60
    # Batches of 2 sorted by length: (31, 33) (35, 37) (60) → 2*33 + 2*37 + 60 = 200 computed tokens;
    # packed into 60-token rows: (31) (33) (35) (37) (60) would not fit pairs, so packing saves nothing here.
    assert stats["padded_tokens"] == 200 and stats["padding_share_padded"] == pytest.approx(1 - 196 / 200)
    stats = length_stats(DataSpec(path=str(path), eval_split=0, max_length=80), tokenizer, 2)
    assert stats["truncated"] == 1 and stats["total_tokens"] == 31 + 33 + 35 + 37 + 69 + 80
    assert stats["packed_tokens"] < stats["padded_tokens"]  # (31 33) (35 37) fit in 80
    assert 0 <= stats["padding_share_packed"] < stats["padding_share_padded"] < 1


# --- bad input: the engine, the command line, and (tests/test_data_page.py) the window ------------


@dataclass
class BadInput:
    """A broken data set: the files to write, the data settings, and words the error must contain."""

    files: dict[str, bytes]
    expected: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    classification: bool = False

    def write(self, folder: Path) -> dict[str, Any]:
        """Write the files; the data section of a spec (paths made absolute)."""
        for name, content in self.files.items():
            (folder / name).write_bytes(content)
        data = {"path": str(folder / next(iter(self.files))), "max_length": 64, **self.data}
        if "eval_path" in data:
            data["eval_path"] = str(folder / data["eval_path"])
        return data

    def words(self, folder: Path) -> list[str]:
        return [w.format(dir=folder) for w in self.expected]


LONG = "".join(json.dumps({"instruction": "please " * 20 + str(i), "output": "ok"}) + "\n" for i in range(3))
BAD_INPUTS = {
    "empty file": BadInput({"empty.jsonl": b""}, ["{dir}/empty.jsonl", "the file is empty", "add rows"]),
    "not utf-8": BadInput(
        {"latin.csv": "instruction,output\nabc,ok\ncafé,oui\n".encode("latin-1")},
        ["{dir}/latin.csv:3", "not UTF-8", "save the file as UTF-8"],
    ),
    "malformed jsonl line": BadInput(
        {"bad.jsonl": b'{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n{oops\n'},
        ["{dir}/bad.jsonl:4", "line 4 is not valid JSON", "fix or remove that line"],
    ),
    "malformed line in a gzipped file": BadInput(
        {"bad.jsonl.gz": gzip.compress(b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n{oops\n')},
        ["{dir}/bad.jsonl.gz:3", "line 3 is not valid JSON", "fix or remove that line"],
    ),
    "not gzip data": BadInput(
        {"plain.jsonl.gz": b'{"instruction": "a", "output": "b"}\n'},
        ["{dir}/plain.jsonl.gz", "not readable as gzip-compressed data", "must not end in .gz"],
    ),
    "gzip cut short": BadInput(
        {"cut.csv.gz": gzip.compress(b"instruction,output\n" + b"what is 2 + 2?,4\n" * 300, mtime=0)[:40]},
        ["{dir}/cut.csv.gz", "the compressed file ends early", "download or copy the file again"],
    ),
    "not utf-8 inside a gzipped file": BadInput(
        {"latin.jsonl.gz": gzip.compress(b'{"instruction": "a", "output": "b"}\n' * 5
                                         + '{"instruction": "café", "output": "b"}\n'.encode("latin-1"), mtime=0)},
        ["{dir}/latin.jsonl.gz:6", "not UTF-8 text (byte 21 of line 6", "save the file as UTF-8"],
    ),
    "gzipped parquet": BadInput(
        {"a.parquet.gz": gzip.compress(b"PAR1")}, ["{dir}/a.parquet.gz", "unsupported file type '.parquet.gz'"]
    ),
    "csv broken quote": BadInput(
        {"quote.csv": b'instruction,output\nhello,world\n"unclosed,answer\nmore,rows\n'},
        ["{dir}/quote.csv:3", "quoted field that starts on line 3 is never closed", "close the quote"],
    ),
    "required column missing": BadInput(
        {"cols.jsonl": b'{"question": "a", "reply": "b"}\n'},
        ["{dir}/cols.jsonl", "needs an 'output' column", "columns found are question, reply", "data.columns"],
        {"format": "alpaca", "columns": {"instruction": "question"}},
    ),
    "shape not told by the columns": BadInput(
        {"posts.csv": b"body,label\nhi,1\nbye,0\n"},
        ["{dir}/posts.csv", "cannot tell the data's shape from its columns (body, label)",
         "data.format: classification, data.columns: {{text: body, label: label}}"],
        classification=True,
    ),
    "question found, its answer not": BadInput(
        {"mathqa.json": b'[{"Problem": "2 + 2?", "Rationale": "2 + 2 = 4", "Verdict": "a"}]'},
        ["{dir}/mathqa.json", "cannot tell the data's shape from its columns (Problem, Rationale, Verdict)",
         "data.format: alpaca, data.columns: {{instruction: Problem, output: Rationale}}"],
    ),
    "pair under longer names": BadInput(
        {"pairs.jsonl": b'{"instruction": "hi", "chosen_text": "hello", "rejected_text": "go"}\n'},
        ["{dir}/pairs.jsonl", "data.format: preference, data.columns: {{prompt: instruction, "
         "chosen: chosen_text, rejected: rejected_text}}"],
    ),
    "two answers, which is better unknown": BadInput(
        {"pairs.jsonl": b'{"question": "hi", "response_a": "hello", "response_b": "go", "vote": "A"}\n'},
        ["{dir}/pairs.jsonl", "data.format: preference, data.columns: {{prompt: question, answer_a: response_a, "
         "answer_b: response_b, preferred: <the column that says which is better>}}"],
    ),
    "wrong type in a field": BadInput(
        {"types.jsonl": b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": ["d", "e"]}\n'},
        ["{dir}/types.jsonl:2", "field 'output' is a list, expected text", "make 'output' a string"],
    ),
    "every output empty": BadInput(
        {"blank.csv": b"instruction,output\na,\nb,  \n"},
        ["{dir}/blank.csv", "all 2 rows were dropped", "blank.csv:2: empty 'output'",
         "put those rows right as their reasons say"],
    ),
    "label not in the label set": BadInput(
        {
            "train.csv": b"text,label\ngood,positive\nbad,negative\nnice,positive\n",
            "eval.csv": b"text,label\nfine,positive\nmeh,neutral\n",
        },
        ["{dir}/eval.csv:3", "label 'neutral' is not one of the training labels (negative, positive)", "fix the label"],
        {"eval_path": "eval.csv"},
        classification=True,
    ),
    "one label only": BadInput(
        {"spam.csv": b"text,label\nwin money now,spam\ncheap pills,spam\nfree prize,spam\n"},
        ["{dir}/spam.csv", "every training row has the label 'spam': a classifier needs two labels at least",
         "add rows of the other labels"],
        classification=True,
    ),
    "every row longer than max length": BadInput(
        {"long.jsonl": LONG.encode()},
        ["{dir}/long.jsonl", "every row is longer than max_length 16", "raise data.max_length to at least"],
        {"max_length": 16},
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_a_clear_user_error(case: str, tmp_path: Path, tiny_llama: Path, tiny_bert_cls: Path) -> None:
    bad = BAD_INPUTS[case]
    spec = DataSpec(**bad.write(tmp_path))
    tokenizer = tokenizer_of(tiny_bert_cls if bad.classification else tiny_llama)
    with pytest.raises(UserError) as caught:
        prepare_data(spec, tokenizer, None, spec.max_length or 64, 0)
    for word in bad.words(tmp_path):
        assert word in caught.value.message, caught.value.message


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_bert_cls: Path) -> dict[str, Any]:
    """`adapter-studio train spec.yaml` on every bad input, all started at once."""
    import yaml

    started = {}
    for case, bad in BAD_INPUTS.items():
        folder = tmp_path_factory.mktemp("cli")
        spec = {
            "model": {"source": str(tiny_bert_cls if bad.classification else tiny_llama)},
            "data": bad.write(folder),
            "training": {"max_steps": 1, "batch_size": 2, "eval_samples": 0, "precision": "float32"},
            "output_dir": str(folder / "runs"),
        }
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
        env = {**os.environ, "ADAPTER_STUDIO_DATA_CACHE": str(folder / "cache")}
        process = subprocess.Popen(
            [sys.executable, "-m", "adapter_studio.cli", "train", str(folder / "spec.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        started[case] = (folder, process)
    results = {}
    for case, (folder, process) in started.items():
        out, err = process.communicate(timeout=300)
        results[case] = (folder, process.returncode, out, err)
    return results


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_through_the_command_line(case: str, cli_runs: dict[str, Any]) -> None:
    folder, _, out, err = cli_runs[case]
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors, err
    for word in BAD_INPUTS[case].words(folder):
        assert word in errors[-1], errors[-1]


def test_command_line_exit_code_says_a_person_can_fix_it(cli_runs: dict[str, Any]) -> None:
    """Exit code 2, as the contract has it for a bad file, not 1 (a run that failed on its own)."""
    codes = {case: subprocess_code for case, (_, subprocess_code, _, _) in cli_runs.items()}
    assert set(codes.values()) == {2}, codes


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 24])
def test_labelled_tokens_are_counted_a_block_at_a_time(block: int) -> None:
    """One cumulative sum over 238M tokens took 4 GB and held the window 7 s: a block at a time gives the same."""
    import numpy as np
    from adapter_studio.engine.data.tokenising import summed_prefixes

    rng = np.random.default_rng(block)
    for _ in range(100):
        values = rng.integers(0, 2, int(rng.integers(1, 40))).astype(np.uint8)
        positions = rng.integers(0, len(values) + 1, int(rng.integers(0, 8)))  # the very end included
        prefixes = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
        assert summed_prefixes(values, positions, block) == int(prefixes[positions].sum())


def test_long_rows_are_tokenised_in_batches_of_bounded_characters_alike(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,048 rows of 20,000 characters went to the tokenizer in one call and peaked at 7.3 GB: calls now hold at
    most ENCODE_CHARS characters (a longer row alone), and the tokens are the same."""
    from adapter_studio.engine.data import tokenising
    from adapter_studio.engine.data.rendering import Rendered

    tokenizer = tokenizer_of(tiny_llama)
    texts = [f"question {i}? " + "word " * (i * 7 % 40) + f"answer {i}" for i in range(30)]
    rendered = [Rendered(t, [(t.index("answer"), len(t))], i + 1) for i, t in enumerate(texts)]
    labelled = [Example(row=i, path="c", text=t, text_pair=t[::-1], label=i % 2) for i, t in enumerate(texts)]

    def encoded() -> tuple[Any, ...]:
        plain = tokenising._encode_documents(texts, tokenizer)
        classes, full = tokenising._encode_classification(labelled, tokenizer, 16)
        return (tokenising.tokenize_rendered(rendered, tokenizer, 64, False), full.tolist(),
                *(getattr(e, f).tolist() for e in (plain, classes) for f in ("ids", "lengths")))  # fmt: skip

    whole = encoded()
    monkeypatch.setattr(tokenising, "ENCODE_CHARS", 50)  # a call a row or two
    assert encoded() == whole


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, ["a", "b", "\n", "c", "d"]),  # GPT-2, SmolLM2: nothing between them, "…HOMEJermain" in AG News
        (("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"), ["[CLS]", "a", "b", "[SEP]", "c", "d", "[SEP]"]),
    ],
    ids=["no separator: a line break", "its own separator"],
)
def test_a_text_and_its_pair_are_read_apart(template: tuple[str, str] | None, expected: list[str]) -> None:
    from adapter_studio.engine.data.text_pairs import pair_inputs
    from conftest import char_tokenizer

    tokenizer = char_tokenizer(["<pad>", "[CLS]", "[SEP]"], template=template, pad_token="<pad>")
    for texts, pairs in (("ab", "cd"), (["ab"], ["cd"])):
        text, pair = pair_inputs(tokenizer, texts, pairs)
        ids = tokenizer(text, pair)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids if isinstance(texts, str) else ids[0]) == expected
    assert pair_inputs(tokenizer, "ab", None) == ("ab", None)


@pytest.mark.parametrize(
    ("counts", "share", "held"),
    [
        ({"World": 300, "Sports": 20}, None, {"World": 18, "Sports": 2}),  # it held out 16 World, no Sports
        ({"a": 500, "b": 300, "c": 3, "d": 1}, 0.1, {"a": 49, "b": 30, "c": 1}),  # d's one row trains
        ({"a": 2, "b": 2}, 0.5, {"a": 1, "b": 1}),
        ({"a": 50, "b": 50, "c": 50}, 0.02, {"a": 1, "b": 1, "c": 1}),  # one each before the shares
        ({"a": 98, "b": 2}, 0.01, {"a": 1}),  # too few to go round: by share
    ],
    ids=["rare label", "one row", "pairs", "one each", "too few to go round"],
)
def test_held_out_rows_to_classify_keep_each_labels_share(counts: dict[str, int], share: float | None,
                                                          held: dict[str, int]) -> None:  # fmt: skip
    from collections import Counter

    from adapter_studio.engine.data.examples import held_out_count, held_out_mask

    labels = [label for label, n in counts.items() for _ in range(n)]
    for seed in range(3):
        mask = held_out_mask(len(labels), share, seed, labels)
        assert mask.sum() == held_out_count(len(labels), share)
        assert Counter(label for label, h in zip(labels, mask, strict=True) if h) == held


def test_held_out_rows_that_repeat_training_rows_are_counted(tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    """24 identical rows trained on 22 and scored the model on 2 copies of them, unsaid."""
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.training.evaluation import held_out_warnings

    same = alpaca_rows([("reverse ab", "ba")])
    rows = write_rows(tmp_path / "same.jsonl", same * 24)
    data = prepare_data(DataSpec(path=str(rows), eval_split=0.1), tokenizer_of(tiny_llama), None, 64, 0)
    assert data.repeated == len(data.eval) > 0
    assert held_out_warnings(data)[0].startswith(f"{len(data.eval)} held-out rows are also training rows")
    varied = write_rows(tmp_path / "varied.jsonl", alpaca_rows([(f"reverse {w}", w[::-1]) for w in
                                                                ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op")]))
    data = prepare_data(DataSpec(path=str(varied), eval_split=0.25), tokenizer_of(tiny_llama), None, 64, 0)
    assert data.repeated == 0 and held_out_warnings(data) == []
