"""Preference tuning end to end: preference files read in each shape (and refused with file, line and
field when bad), rendered with the loss on the answers only, and DPO, IPO, SimPO and ORPO runs on the
tiny models through `run(...)` and the command line, with their reward metrics and held-out evaluation.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from adapter_studio.engine.errors import UserError

from tests.conftest import reversal_pairs, write_jsonl

HH = Path("/work/shared/data/hh_harmless_test.jsonl.gz")
if not HH.exists():
    HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl.gz"


def preference_rows(count: int, seed: int = 3) -> list[dict[str, Any]]:
    """The reversal task as pairs: the reversed word is chosen, the word as it is rejected."""
    return [{"prompt": q, "chosen": a, "rejected": a[::-1] + a[0]} for q, a in reversal_pairs(count, seed)]


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pref") / "pairs.jsonl", preference_rows(160))


def read(path: Path, **data: Any) -> tuple[str, list[Any], list[str]]:
    from adapter_studio.engine.data.examples import load_examples
    from adapter_studio.engine.spec import DataSpec

    fmt, _, examples, dropped = load_examples(DataSpec(path=str(path), **data), str(path))
    return fmt, examples, dropped


# --- reading the shapes -------------------------------------------------------------------------


def test_prompt_chosen_rejected_text_is_detected(pairs_jsonl: Path) -> None:
    fmt, examples, dropped = read(pairs_jsonl)
    assert fmt == "preference" and len(examples) == 160 and not dropped
    first = examples[0]
    assert first.messages == [{"role": "user", "content": preference_rows(1)[0]["prompt"]}]
    assert first.chosen == preference_rows(1)[0]["chosen"]


@pytest.mark.parametrize(
    ("row", "mapping"),
    [
        ({"system": "Be brief.", "question": "hi?", "chosen": "hello", "rejected": "go"},  # Intel/orca_dpo_pairs
         {"prompt": "question", "chosen": "chosen", "rejected": "rejected", "system": "system"}),
        ({"instruction": "hi?", "chosen_response": "hello", "rejected_response": "go"},  # Argilla's sets
         {"prompt": "instruction", "chosen": "chosen_response", "rejected": "rejected_response"}),
        ({"prompt": "hi?", "chosen": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello"}],
          "rejected": [{"role": "user", "content": "hi? "}, {"role": "assistant", "content": "go"}],
          "score_chosen": 8.0, "score_rejected": 3.0},  # UltraFeedback binarized: answers repeat the prompt
         {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}),
        ({"prompt": "\n\nHuman: hi?\n\nAssistant:", "response": " hello", "chosen": " hello", "rejected": " go"},
         {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}),  # HH as prompt/chosen/rejected
        ({"qid": 5, "question": "hi?", "date": "2020/01/01", "metadata": ["https://stackoverflow.com/q/5"],
          "response_j": "hello", "response_k": "go"},  # StackExchange-paired: j is the better answer
         {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}),
    ],
    ids=["orca_dpo_pairs", "argilla", "ultrafeedback", "hh-prompt-transcript", "stack-exchange-paired"],
)  # fmt: skip
def test_published_pair_files_are_read_without_a_mapping(row: dict[str, str], mapping: dict[str, str],
                                                         tmp_path: Path) -> None:  # fmt: skip
    from adapter_studio.engine.data.preview import preview_data
    from adapter_studio.engine.spec import DataSpec

    preview = preview_data(DataSpec(path=str(write_jsonl(tmp_path / "pairs.jsonl", [row] * 3))))
    assert preview.format == "preference" and preview.mapping == mapping and preview.usable == 3
    first = preview.examples[0]
    assert [m for m in first.messages if m["role"] != "system"] == [{"role": "user", "content": "hi?"}]
    assert (first.chosen, first.rejected) == ("hello", "go")  # HH's " hello" after "Assistant:" loses its space
    assert ("system" in mapping) == (first.messages[0] == {"role": "system", "content": "Be brief."})


def _two_answers(a: str, b: str, preferred: str, values: list[Any], **more: Any) -> list[dict[str, Any]]:
    """Rows that give two answers and which is better: row i prefers the answer `values[i]` names; the
    preferred answer is always "good", the other "bad"."""
    rows = []
    for i, value in enumerate(values):
        first_good = i % 2 == 0
        rows.append({"prompt": f"question {i}?", a: "good" if first_good else "bad",
                     b: "bad" if first_good else "good", preferred: value, **more})  # fmt: skip
    return rows


@pytest.mark.parametrize(
    ("a", "b", "preferred", "values"),
    [
        ("response_0", "response_1", "better_response_id", [0, 1, 0.0, "1"]),  # PKU-SafeRLHF
        ("response1", "response2", "preference", [1, 2, "1", 2]),
        ("response_a", "response_b", "winner", ["model_a", "model_b", "A", "response_b"]),  # arena exports
        ("answer_a", "answer_b", "preferred", ["a", "B", "answer_a", "b"]),
        ("human_ref_A", "human_ref_B", "labels", [1, 0, 1.0, "0"]),  # SHP: its card's 1 means A
    ],
    ids=["pku", "numbered from 1", "arena", "letters", "shp"],
)  # fmt: skip
def test_two_answers_and_which_is_better_are_read_as_pairs(a: str, b: str, preferred: str, values: list[Any],
                                                           tmp_path: Path) -> None:  # fmt: skip
    from adapter_studio.engine.data.preview import preview_data
    from adapter_studio.engine.spec import DataSpec

    rows = _two_answers(a, b, preferred, values, safer_response_id=0)
    preview = preview_data(DataSpec(path=str(write_jsonl(tmp_path / "pairs.jsonl", rows))))
    assert preview.format == "preference" and not preview.dropped
    assert preview.mapping == {"prompt": "prompt", "answer_a": a, "answer_b": b, "preferred": preferred}
    assert [(e.chosen, e.rejected) for e in preview.examples] == [("good", "bad")] * len(values)
    assert preview.examples[1].messages == [{"role": "user", "content": "question 1?"}]


@pytest.mark.parametrize(
    "written",
    [
        lambda turns: json.dumps(turns),
        repr,  # pandas' to_csv of Python lists
        lambda turns: "[" + "\n ".join(map(repr, turns)) + "]",  # ... of numpy arrays, read from Parquet
    ],
    ids=["json", "python repr", "numpy repr"],
)
def test_message_lists_written_as_text_in_a_csv_are_read_as_messages(tmp_path: Path, written: Any) -> None:
    """UltraFeedback's Parquet saved as CSV through pandas: each cell is the list's text, not an answer."""
    import csv

    user = {"role": "user", "content": "What is 1+1?"}
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "chosen", "rejected"])
        for answer in ("It is 2.", "Two, {x}\n{y}"):
            writer.writerow([user["content"], written([user, {"role": "assistant", "content": answer}]),
                             written([user, {"role": "assistant", "content": "No idea."}])])  # fmt: skip
    fmt, examples, dropped = read(path)
    assert fmt == "preference" and not dropped
    assert [(e.messages, e.chosen, e.rejected) for e in examples] == [([user], "It is 2.", "No idea."),
                                                                      ([user], "Two, {x}\n{y}", "No idea.")]


def test_whole_conversations_as_two_answers_split_where_they_diverge(tmp_path: Path) -> None:
    """Arena exports: each answer a whole conversation; a tie is dropped with a note."""
    user = {"role": "user", "content": "hi"}
    rows = [{"conversation_a": [user, {"role": "assistant", "content": side_a}],
             "conversation_b": [user, {"role": "assistant", "content": side_b}], "winner": winner}
            for side_a, side_b, winner in (("good", "bad", "model_a"), ("bad", "good", "model_b"),
                                           ("same", "other", "tie (bothbad)"))]  # fmt: skip
    fmt, examples, dropped = read(write_jsonl(tmp_path / "arena.jsonl", rows))
    assert fmt == "preference" and [(e.chosen, e.rejected) for e in examples] == [("good", "bad")] * 2
    assert examples[0].messages == [user]
    assert len(dropped) == 1 and "'winner' is tie (bothbad): no answer is preferred" in dropped[0]


@pytest.mark.parametrize(
    ("a", "b", "value", "fix"),
    [
        ("answer_A", "answer_B", 1, "write A or B"),  # a number names no lettered column (SHP's names aside)
        ("human_ref_A", "human_ref_B", 1, "write A or B"),  # nor SHP's, under another column than its `labels`
        ("response_0", "response_1", 2, "write 0 or 1"),
        ("response_0", "response_1", -1, "write 0 or 1"),
        ("response_a", "response_b", True, "write a or b"),
        ("response_a", "response_b", "model_c", "write a or b"),
    ],
)
def test_a_preferred_value_that_names_neither_answer_says_where_and_what_to_write(
    a: str, b: str, value: Any, fix: str, tmp_path: Path
) -> None:
    rows = _two_answers(a, b, "preferred", [value])
    path = write_jsonl(tmp_path / "pairs.jsonl", _two_answers(a, b, "preferred", [a, b]) + rows)
    with pytest.raises(UserError) as error:
        read(path)
    assert error.value.where == f"{path}:3"
    assert f"field 'preferred' is {str(value)!r}, which names neither answer ('{a}' or '{b}')" in error.value.message
    assert fix in error.value.fix


def test_message_lists_and_whole_dialogues_split_where_they_diverge(tmp_path: Path) -> None:
    user = {"role": "user", "content": "hi"}
    rows = [
        {"prompt": [{"role": "system", "content": "Be kind."}, user],
         "chosen": [{"role": "assistant", "content": "hello"}], "rejected": [{"role": "assistant", "content": "go"}]},
        {"chosen": [user, {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"},
                    {"role": "assistant", "content": "yes"}],
         "rejected": [user, {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"},
                      {"role": "assistant", "content": "no"}]},
    ]  # fmt: skip
    rows.append({"prompt": [user], "chosen": {"role": "assistant", "content": "hello"},  # one message, no list
                 "rejected": {"from": "gpt", "value": "go"}})
    fmt, examples, dropped = read(write_jsonl(tmp_path / "m.jsonl", rows))
    assert fmt == "preference" and not dropped
    assert (examples[2].messages, examples[2].chosen, examples[2].rejected) == ([user], "hello", "go")
    assert [m["role"] for m in examples[0].messages] == ["system", "user"]
    assert [m["content"] for m in examples[1].messages] == ["hi", "a", "more"]
    assert (examples[1].chosen, examples[1].rejected) == ("yes", "no")


def test_anthropic_hh_transcripts_are_split_into_turns() -> None:
    if not HH.exists():
        pytest.skip("the HH file is not on this machine")
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        row = json.loads(f.readline())
    from adapter_studio.engine.data.preference import pair_from_row

    pair = pair_from_row(row, {"chosen": "chosen", "rejected": "rejected"}, "hh.jsonl:1")
    assert not isinstance(pair, str)
    assert pair.prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert [t["role"] for t in pair.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert pair.chosen.startswith("No, sorry!") and pair.chosen != pair.rejected


def test_the_whole_hh_file_reads_with_few_dropped_rows(tmp_path: Path) -> None:
    if not HH.exists():
        pytest.skip("the HH file is not on this machine")
    path = tmp_path / "hh.jsonl"  # the app reads .jsonl, not .jsonl.gz
    path.write_bytes(gzip.decompress(HH.read_bytes()))
    fmt, examples, dropped = read(path)
    assert fmt == "preference"
    assert len(examples) + len(dropped) == 2312 and len(examples) > 2200, dropped[:5]


BAD = [
    # (rows, message fragment: a UserError; dropped: a note)
    ([{"prompt": "q", "chosen": 5, "rejected": "b"}], "field 'chosen' is a int, expected text or a list"),
    ([{"prompt": "q", "chosen": {"a": 1}, "rejected": "b"}], "field 'chosen' is a JSON object"),
    ([{"chosen": "just text", "rejected": "other"}], "field 'chosen' is plain text, and there is no prompt column"),
    ([{"prompt": "q", "chosen": [{"role": "bot", "content": "a"}], "rejected": "b"}], "turn 1 has role 'bot'"),
    ([{"prompt": "q", "chosen": [{"text": "a"}], "rejected": "b"}], "turn 1 of 'chosen' needs 'role' and 'content'"),
    ([{"chosen": "Intro\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}],
     "has text before its first 'Human:' turn"),
    ([{"prompt": "q", "rejected": "b"}], "needs a 'chosen' column"),
]
DROPPED = [
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "empty answer in 'chosen'"),
    ({"prompt": "q", "chosen": "a", "rejected": None}, "empty answer in 'rejected'"),  # pandas' NaN as JSON
    ({"prompt": "q", "chosen": "a"}, "empty answer in 'rejected'"),  # a writer that leaves empty keys out
    ({"chosen": None, "rejected": "\n\nHuman: hi\n\nAssistant: b"}, "empty answer in 'chosen'"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "are the same answer"),
    ({"chosen": "just text", "rejected": "other"}, "empty 'prompt' (no question to answer)"),  # the file has one
    ({"prompt": "", "chosen": "hello", "rejected": "go"}, "empty 'prompt' (no question to answer)"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: bye\n\nAssistant: b"},
     "differ before their last answer"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "'chosen' does not end with an assistant answer"),
]


@pytest.mark.parametrize(("rows", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_preference_files_name_file_line_and_field(rows: list[Any], message: str, tmp_path: Path) -> None:
    good = preference_rows(2)
    if "prompt" not in rows[0]:  # a file of whole dialogues, without a prompt column
        good = [{"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}] * 2
    if "chosen" not in rows[0]:
        good = [{"prompt": "q", "rejected": "b"}] * 2  # the column is missing from the whole file
    path = write_jsonl(tmp_path / "bad.jsonl", [*good, *rows])
    with pytest.raises(UserError) as error:
        read(path, format="preference")
    assert message in error.value.message
    if "column" not in message:
        assert error.value.where == f"{path}:3"


@pytest.mark.parametrize(("row", "note"), DROPPED, ids=[n[:30] for _, n in DROPPED])
def test_rows_with_nothing_to_prefer_are_dropped_with_a_note(row: dict[str, Any], note: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "some.jsonl", [*preference_rows(2), row])
    _, examples, dropped = read(path)
    assert len(examples) == 2 and len(dropped) == 1
    assert dropped[0].startswith(f"{path}:3: ") and note in dropped[0]


# --- rendering and batches ----------------------------------------------------------------------


def test_pairs_render_with_the_chat_template_and_loss_on_the_answer_only(tiny_llama: Path, pairs_jsonl: Path) -> None:
    from adapter_studio.engine.data.batches import collate
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.spec import DataSpec
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    data = prepare_data(DataSpec(path=str(pairs_jsonl), eval_split=0.1), tokenizer, None, 64, 0, use_cache=False)
    assert data.format == "preference" and len(data.train) == 144 and len(data.eval) == 16
    pair = data.train[0]
    row = preference_rows(160)[pair.row - 1]
    (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = pair.sides
    expected = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                              {"role": "assistant", "content": row["chosen"]}], tokenize=False)
    assert tokenizer.decode(chosen_ids) == expected
    assert tokenizer.decode([t for t in chosen_labels if t != -100]) == row["chosen"] + "<|im_end|>\n"
    assert tokenizer.decode([t for t in rejected_labels if t != -100]) == row["rejected"] + "<|im_end|>\n"
    batch = collate(data.train[:3], tokenizer.pad_token_id or 0, False)
    assert batch["input_ids"].shape[0] == 6  # three chosen rows, then three rejected rows
    assert batch["input_ids"][3, : len(rejected_ids)].tolist() == rejected_ids


# --- training -----------------------------------------------------------------------------------


def start(spec: Any) -> tuple[Any, list[Any]]:
    from adapter_studio.engine.training.run import run

    events: list[Any] = []
    result = run(spec, emit=events.append)
    return result, events


@pytest.fixture(scope="module")
def dpo_run(tiny_llama: Path, make_spec: Any, pairs_jsonl: Path) -> tuple[Any, list[Any]]:
    spec = make_spec(tiny_llama, pairs_jsonl, data={"eval_split": 0.2}, max_steps=30, eval_every=15,
                     learning_rate=5e-3).model_copy(update={"objective": _objective("dpo")})  # fmt: skip
    return start(spec)


def _objective(name: str, **fields: Any) -> Any:
    from adapter_studio.engine.objectives import OBJECTIVES

    return OBJECTIVES[name](**fields)


def test_dpo_run_reports_rewards_and_learns_the_preference(dpo_run: tuple[Any, list[Any]]) -> None:
    result, events = dpo_run
    assert result.status == "completed", result.error
    metrics = [e for e in events if e.type == "metrics"]
    evals = [e for e in events if e.type == "eval"]
    assert len(metrics) == 30 and len(evals) == 2
    for m in metrics:
        assert m.rewards_chosen is not None and m.preference_accuracy is not None
        assert m.reward_margin == pytest.approx(m.rewards_chosen - m.rewards_rejected, abs=1e-5)
    assert abs(metrics[0].loss - 0.6931) < 0.01  # the policy starts as the reference: loss ln 2, rewards 0
    assert abs(metrics[0].rewards_chosen) < 1e-4 and abs(metrics[0].reward_margin) < 1e-4
    # From 0 (every margin is 0 at the start) to well above chance; the exact figure depends on float
    # rounding (Adam's first steps amplify it), the gradients themselves equal TRL's (test_objectives).
    assert evals[-1].preference_accuracy >= 0.8 and evals[-1].reward_margin > 0
    assert evals[-1].eval_loss < evals[0].eval_loss < 0.6931  # below ln 2: the held-out pairs are ranked
    assert evals[-1].reward_margin > evals[0].reward_margin
    spec_text = (Path(result.run_dir) / "spec.yaml").read_text()
    assert ("objective:\n  name: dpo\n  disable_dropout: true\n  precompute_reference: false\n  beta: 0.1\n"
            "  label_smoothing: 0.0") in spec_text  # fmt: skip
    # As TRL's trainers: LoRA's dropout is off, so the policy's first pass is the reference's exactly.
    assert any(e.type == "log" and "dropout turned off in" in e.message for e in events)
    logged = [json.loads(line) for line in (Path(result.run_dir) / "events.jsonl").read_text().splitlines()]
    assert "preference_accuracy" in next(e for e in logged if e["type"] == "eval")


@pytest.mark.parametrize(("name", "fields"), [("ipo", {"beta": 1.0}), ("simpo", {}), ("orpo", {})])
def test_each_pairwise_objective_trains(
    name: str, fields: dict[str, Any], tiny_llama: Path, make_spec: Any, pairs_jsonl: Path
) -> None:
    spec = make_spec(tiny_llama, pairs_jsonl, max_steps=20, learning_rate=5e-3,
                     data={"eval_split": 0.1}).model_copy(update={"objective": _objective(name, **fields)})  # fmt: skip
    result, events = start(spec)
    assert result.status == "completed", result.error
    metrics = [e for e in events if e.type == "metrics"]
    margins = [m.reward_margin for m in metrics]
    assert sum(margins[-5:]) / 5 > sum(margins[:5]) / 5, margins
    assert sum(m.loss for m in metrics[-5:]) < sum(m.loss for m in metrics[:5])
    assert next(e for e in events if e.type == "eval").preference_accuracy is not None


def test_full_fine_tuning_dpo_keeps_a_frozen_copy_as_reference(
    tiny_llama: Path, make_spec: Any, pairs_jsonl: Path
) -> None:
    spec = make_spec(tiny_llama, pairs_jsonl, "full", max_steps=4, learning_rate=1e-4).model_copy(
        update={"objective": _objective("dpo")}
    )
    result, events = start(spec)
    assert result.status == "completed", result.error
    assert any("frozen copy" in e.message for e in events if e.type == "log")
    first = next(e for e in events if e.type == "metrics")
    assert abs(first.loss - 0.6931) < 0.01


@pytest.mark.parametrize(("data", "named", "refusal"), [
    ("alpaca_jsonl", "dpo", "DPO trains on preference pairs, but the data is in the alpaca format"),
    ("pairs_jsonl", "sft", "preference data (chosen and rejected answers) needs a preference objective"),
    ("pairs_jsonl", "kto", "KTO trains on answers marked desirable or not"),
    ("kto_jsonl", "dpo", "DPO trains on preference pairs, but the data is in the kto format"),
    ("kto_jsonl", "sft", "KTO data (answers marked desirable or not) needs a preference objective"),
])  # fmt: skip
def test_an_objective_named_for_other_data_is_refused(
    data: str, named: str, refusal: str, tiny_llama: Path, make_spec: Any, request: pytest.FixtureRequest
) -> None:
    """Before the run folder is made (a failed run joined the history, its model loaded for nothing)."""
    spec = make_spec(tiny_llama, request.getfixturevalue(data), max_steps=1)
    before = set(Path(spec.output_dir).iterdir())
    with pytest.raises(UserError, match=re.escape(refusal)):
        start(spec.model_copy(update={"objective": _objective(named)}))
    assert set(Path(spec.output_dir).iterdir()) == before


@pytest.mark.parametrize(("data", "picked", "reason"), [
    ("pairs_jsonl", "dpo", "objective.name = dpo: the data are preference pairs (chosen and rejected answers), "
                           "which DPO trains on"),
    ("kto_jsonl", "kto", "objective.name = kto: the data are answers marked desirable or not, which KTO trains on"),
    ("alpaca_jsonl", "sft", None),
], ids=["pairs", "kto", "alpaca"])  # fmt: skip
def test_a_spec_naming_no_objective_trains_with_the_one_its_data_needs(
    data: str, picked: str, reason: str | None, tiny_llama: Path, make_spec: Any, request: pytest.FixtureRequest
) -> None:
    """As the window picks on loading the data: the command line, the Python API, sweeps and searches."""
    spec = make_spec(tiny_llama, request.getfixturevalue(data), max_steps=1, eval_samples=0)
    assert "objective" not in spec.model_fields_set
    result, events = start(spec)
    assert result.status == "completed", result.error
    saved = yaml.safe_load((Path(result.run_dir) / "spec.yaml").read_text())
    assert saved["objective"]["name"] == picked  # a resume trains on with it
    said = [e.message for e in events if e.type == "log" and e.message.startswith("objective.name")]
    assert said == ([reason] if reason else [])


def test_dpo_through_the_command_line(tiny_llama: Path, pairs_jsonl: Path, tmp_path: Path) -> None:
    spec = tmp_path / "dpo.yaml"
    spec.write_text(
        f"model: {{source: {tiny_llama}}}\n"
        f"data: {{path: {pairs_jsonl}, max_length: 64, eval_split: 0.1}}\n"
        "method: {name: lora}\nobjective: {name: dpo, beta: 0.2}\n"
        "training: {max_steps: 3, batch_size: 4, precision: float32, learning_rate: 0.005}\n"
        f"output_dir: {tmp_path / 'runs'}\n",
        encoding="utf-8",
    )
    out = subprocess.run([sys.executable, "-m", "adapter_studio.cli", "train", str(spec)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    steps = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 3 and all(" margin " in line and " pref_acc " in line for line in steps), out.stdout
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert "beta: 0.2" in (run_dir / "spec.yaml").read_text()
    logged = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert all("rewards_chosen" in e for e in logged if e["type"] == "metrics")


def test_the_preview_shows_both_sides_with_the_answers_marked(tiny_llama: Path, pairs_jsonl: Path) -> None:
    from adapter_studio.engine.data.preview import length_stats, render_tokens
    from adapter_studio.engine.spec import DataSpec
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    spec = DataSpec(path=str(pairs_jsonl), max_length=64)
    fmt, examples, _ = read(pairs_jsonl)
    tokens = render_tokens(spec, examples[0], fmt, tokenizer)
    text = "".join(t for t, _ in tokens)
    assert text.index("── chosen ──") < text.index("── rejected ──")
    marked = "".join(t if loss else "\0" for t, loss in tokens).split("\0")
    answers = [m for m in marked if m]
    assert answers == [examples[0].chosen + "<|im_end|>\n", examples[0].rejected + "<|im_end|>\n"]
    stats = length_stats(spec, tokenizer, 4)
    # 160 pairs, 8 of them held out (data.eval_split auto: below 500 rows the share shrinks, to 8 rows)
    assert stats["format"] == "preference" and stats["examples"] == 152 and not stats["packing_applies"]
    # what a step's memory is estimated from: its rows are a pair's sides (the longest of them, not the longest
    # pair's two together), whose answers' positions alone go through the output layer; the histogram shows each
    # pair at its longer side, the row max_length limits (both sides summed stood past its line)
    assert stats["longest_row"] == min(max(stats["lengths"]), 64)
    assert 0 < stats["labelled_share"] < 0.5


# --- KTO: single answers marked desirable or not -------------------------------------------------


def kto_rows(count: int, seed: int = 4) -> list[dict[str, Any]]:
    """The reversal task: the reversed word is desirable, the word rotated by one letter is not (the same
    length, so that batches, which group rows of similar length, hold both kinds)."""
    rows = []
    for i, (q, a) in enumerate(reversal_pairs(count, seed)):
        good = i % 2 == 0
        rows.append({"prompt": q, "completion": a if good else a[1:] + a[0], "label": good})
    return rows


@pytest.fixture(scope="module")
def kto_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("kto") / "kto.jsonl", kto_rows(160))


def test_kto_rows_are_detected_and_labels_read(kto_jsonl: Path, tmp_path: Path) -> None:
    fmt, examples, dropped = read(kto_jsonl)
    assert fmt == "kto" and len(examples) == 160 and not dropped
    assert [e.label for e in examples[:2]] == [True, False]
    rows = [{"prompt": "q", "completion": "a", "label": v} for v in (1, 0, "yes", "undesirable", 1.0)]
    _, examples, _ = read(write_jsonl(tmp_path / "labels.jsonl", rows))
    assert [e.label for e in examples] == [True, False, True, False, True]
    user = {"role": "user", "content": "q"}
    rows = [{"prompt": [user], "completion": [user, {"role": "assistant", "content": "a"}], "label": True},  # repeats
            {"prompt": "\n\nHuman: q\n\nAssistant:", "completion": " a", "label": False}]  # an HH transcript
    quoted = "An example:\n\nHuman: q\n\nAssistant: a"  # an answer that quotes a transcript stays whole
    rows.append({"prompt": "q", "completion": quoted, "label": True})
    _, examples, _ = read(write_jsonl(tmp_path / "whole.jsonl", rows))
    assert [(e.messages, e.chosen) for e in examples] == [([user], "a")] * 2 + [([user], quoted)]  # " a" trimmed


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "q", "completion": "a", "label": "maybe"}, "field 'label' is 'maybe' (str), expected true or false"),
    ({"prompt": "q", "completion": "a", "label": 2}, "field 'label' is 2 (int), expected true or false"),
    ({"prompt": "q", "completion": {"x": 1}, "label": True}, "field 'completion' is a JSON object"),
])  # fmt: skip
def test_bad_kto_rows_name_file_line_and_field(row: dict[str, Any], message: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [*kto_rows(2), row])
    with pytest.raises(UserError) as error:
        read(path)
    assert message in error.value.message and error.value.where == f"{path}:3"


@pytest.mark.parametrize(("row", "note"), [
    ({"prompt": "q", "completion": "", "label": True}, "empty 'completion' (nothing to learn)"),
    ({"prompt": "q", "completion": None, "label": True}, "empty 'completion' (nothing to learn)"),  # pandas' NaN
    ({"prompt": "q", "label": False}, "empty 'completion' (nothing to learn)"),  # a key the writer left out
    ({"prompt": "", "completion": "a", "label": True}, "no prompt (no user turn before the completion)"),
    ({"prompt": None, "completion": "a", "label": True}, "no prompt (no user turn before the completion)"),
])  # fmt: skip
def test_kto_rows_with_nothing_to_learn_are_dropped_with_a_note(row: dict[str, Any], note: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "some.jsonl", [*kto_rows(2), row])
    _, examples, dropped = read(path)
    assert len(examples) == 2 and dropped == [f"{path}:3: {note}"]


def test_the_kto_preview_marks_the_completion(tiny_llama: Path, kto_jsonl: Path) -> None:
    from adapter_studio.engine.data.preview import render_tokens
    from adapter_studio.engine.spec import DataSpec
    from transformers import AutoTokenizer

    fmt, examples, _ = read(kto_jsonl)
    tokens = render_tokens(DataSpec(path=str(kto_jsonl)), examples[1], fmt, AutoTokenizer.from_pretrained(tiny_llama))
    assert tokens[0] == ("── undesirable ──\n", False)
    assert "".join(t for t, loss in tokens if loss) == examples[1].chosen + "<|im_end|>\n"


def test_kto_batches_add_mismatched_rows_for_the_kl_estimate(tiny_llama: Path, kto_jsonl: Path) -> None:
    from adapter_studio.engine.data.batches import collate
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.spec import DataSpec
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    data = prepare_data(DataSpec(path=str(kto_jsonl), eval_split=0.1), tokenizer, None, 64, 0, use_cache=False)
    assert data.format == "kto" and len(data.train) == 144
    items = data.train[:3]
    batch = collate(items, tokenizer.pad_token_id or 0, False)
    assert batch["input_ids"].shape[0] == 6 and batch["desirable"].tolist() == [i.desirable for i in items]
    kl = batch["input_ids"][3][batch["attention_mask"][3] == 1].tolist()  # prompt 0 + completion of item 2
    assert kl == items[0].input_ids[: items[0].split()] + items[2].input_ids[items[2].split():]


@pytest.mark.parametrize(
    ("batches", "desirable", "expected"),
    [
        ([[0, 1], [2, 3]], [1, 1, 0, 0], [[2, 1], [0, 3]]),  # two one-kind batches swap a row
        ([[0, 1, 2], [3, 4, 5]], [1, 1, 1, 1, 0, 0], [[4, 1, 2], [3, 0, 5]]),  # takes from a mixed batch of 2+
        ([[0, 1], [2, 3]], [1, 1, 1, 0], [[0, 1], [2, 3]]),  # no batch can spare an undesirable row
        ([[0], [1, 2]], [1, 1, 1], [[0], [1, 2]]),  # one kind only, and a batch of one: nothing to mix
        ([[0, 1], [2, 3], [4, 5]], [0, 1, 1, 1, 0, 0], [[0, 1], [4, 3], [2, 5]]),  # already mixed: left alone
    ],
)
def test_kto_batches_hold_both_kinds_where_the_data_allows(batches, desirable, expected) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.data.kto import mix_kinds

    mixed = mix_kinds(batches, [bool(d) for d in desirable])
    assert mixed == expected
    assert sorted(i for b in mixed for i in b) == sorted(i for b in batches for i in b)  # every row once


def test_kto_batches_split_over_processes_hold_both_kinds_in_each_part() -> None:
    from adapter_studio.engine.data.kto import mix_kinds

    desirable = [True] * 4 + [False] * 4
    # Mixed as wholes, but each of two processes takes every second row: 0,1 / 4,5 / 2,3 / 6,7, one kind each.
    batches = [[0, 4, 1, 5], [2, 6, 3, 7]]
    mixed = mix_kinds(batches, desirable, world=2)
    assert sorted(i for b in mixed for i in b) == list(range(8))
    for batch in mixed:
        for rank in range(2):
            assert {desirable[i] for i in batch[rank::2]} == {True, False}, (mixed, rank)


def test_kto_run_learns_which_answers_are_desirable(tiny_llama: Path, make_spec: Any, kto_jsonl: Path) -> None:
    spec = make_spec(tiny_llama, kto_jsonl, max_steps=30, learning_rate=5e-3, eval_every=10,
                     data={"eval_split": 0.2})  # fmt: skip
    spec = spec.model_copy(update={"objective": _objective("kto", beta=1.0)})
    result, events = start(spec)
    assert result.status == "completed", result.error
    metrics = [e for e in events if e.type == "metrics"]
    assert abs(metrics[0].loss - 0.5) < 1e-3  # 1 − σ(0) at the start, the policy being the reference
    assert all(m.reward_margin is not None for m in metrics)  # every batch holds both kinds (mix_kinds)
    evals = [e for e in events if e.type == "eval"]
    assert len(evals) == 3 and all(e.preference_accuracy is None for e in evals)  # no pairs: no accuracy
    assert evals[-1].eval_loss < evals[0].eval_loss


def test_dpo_with_the_rate_finder_accumulation_and_a_resume(
    tiny_llama: Path, make_spec: Any, pairs_jsonl: Path
) -> None:
    """learning_rate: auto tests rates on preference steps; a stopped DPO run resumes where it was."""
    import threading

    from adapter_studio.engine.training.run import run

    spec = make_spec(tiny_llama, pairs_jsonl, max_steps=8, learning_rate="auto", gradient_accumulation=2,
                     save_every=4).model_copy(update={"objective": _objective("dpo")})  # fmt: skip
    stop, events = threading.Event(), []

    def emit(event: Any) -> None:
        events.append(event)
        if event.type == "metrics" and event.step == 4:
            stop.set()

    first = run(spec, emit=emit, stop_event=stop)
    assert first.status == "cancelled", first.error
    assert any(e.type == "lr_finder" for e in events)
    again: list[Any] = []
    resumed = run(None, emit=again.append, resume_dir=first.run_dir)
    assert resumed.status == "completed", resumed.error
    steps = [e.step for e in again if e.type == "metrics"]
    assert steps[0] == 5 and steps[-1] == 8
    assert all(e.reward_margin is not None for e in again if e.type == "metrics")


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo", "orpo", "kto"])
def test_each_objective_trains_through_the_cli(name: str, tiny_llama: Path, pairs_jsonl: Path, kto_jsonl: Path,
                                               tmp_path: Path) -> None:  # fmt: skip
    """Every objective from the command line, its progress lines included (KTO has no pair accuracy)."""
    from tests.test_cli import cli, write_spec

    data = kto_jsonl if name == "kto" else pairs_jsonl
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, data, tmp_path / "runs", max_steps=3, eval_every=3)
    done = cli("train", str(spec), "--set", f"objective.name={name}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished completed at step 3" in done.stdout
    steps = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    # (A KTO step's margin needs both kinds of answer in its batch: training mixes them, data.kto.mix_kinds.)
    assert len(steps) == 3 and all(" margin " in line for line in steps)
    assert all(("pref_acc" in line) == (name != "kto") for line in steps)
    assert any(line.startswith("eval step 3") and " margin " in line for line in done.stdout.splitlines())


def test_sweeps_and_searches_plan_with_the_objective_the_data_needs(
    tiny_llama: Path, make_spec: Any, pairs_jsonl: Path
) -> None:
    """Their plans name the objective, so each entry, trial and resumed search trains with DPO too."""
    import threading

    from adapter_studio.engine.search.auto import run_auto_search
    from adapter_studio.engine.search.results import SearchLog
    from adapter_studio.engine.training.sweep import load_sweep, plan_sweep

    spec = make_spec(tiny_llama, pairs_jsonl, max_steps=2)
    plan = plan_sweep(spec, ["lora", "ia3"], name="pairs")
    assert {load_sweep(plan.folder).spec_for(e).objective.name for e in plan.entries} == {"dpo"}
    stopped, said = threading.Event(), []
    stopped.set()  # the plan is written before the first trial
    result = run_auto_search(spec, 60, lambda e: said.append(e.message) if isinstance(e, SearchLog) else None,
                             stopped, name="pairs-auto")  # fmt: skip
    assert load_sweep(result.folder).spec["objective"]["name"] == "dpo"
    assert said[0].startswith("objective.name = dpo: the data are preference pairs")


def test_a_pairs_run_stopped_while_its_model_loads_resumes_with_dpo(
    tiny_llama: Path, make_spec: Any, pairs_jsonl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the session saves the resolved spec, the run folder keeps the spec as given: a resume fills in
    the objective from the data again rather than reading back the `sft` it would have been written with."""
    from adapter_studio.engine.models import loading
    from adapter_studio.engine.training.run import run

    def crash(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the machine went down while the model loaded")

    monkeypatch.setattr(loading, "load_model", crash)
    result, _ = start(make_spec(tiny_llama, pairs_jsonl, max_steps=1, eval_samples=0))
    assert result.status == "failed" and "objective" not in yaml.safe_load((result.run_dir / "spec.yaml").read_text())
    monkeypatch.undo()
    resumed = run(None, resume_dir=result.run_dir)
    assert resumed.status == "completed", resumed.error
    assert yaml.safe_load((result.run_dir / "spec.yaml").read_text())["objective"]["name"] == "dpo"


def test_a_search_on_pairs_draws_its_rates_from_the_preference_bands(tiny_llama: Path, make_spec: Any,
                                                                      pairs_jsonl: Path) -> None:  # fmt: skip
    """Preference objectives train at a quarter of supervised training's rates (defaults), so do their trials."""
    import optuna
    from adapter_studio.engine.defaults import PREFERENCE_RATE_FACTOR, resolve_objective
    from adapter_studio.engine.search.space import CHOICES, space_for

    spec = resolve_objective(make_spec(tiny_llama, pairs_jsonl)).spec
    space, supervised = space_for(spec, "causal_lm", 300_000), space_for(make_spec(tiny_llama, pairs_jsonl),
                                                                         "causal_lm", 300_000)  # fmt: skip
    assert [s.learning_rate for s in space.baselines] == [
        s.learning_rate * PREFERENCE_RATE_FACTOR for s in supervised.baselines]  # fmt: skip
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        settings = space.suggest(study.ask())
        low, high = CHOICES[settings.choice].lr_band
        assert low * PREFERENCE_RATE_FACTOR <= settings.learning_rate <= high * PREFERENCE_RATE_FACTOR
