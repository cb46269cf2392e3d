"""The Try page's engine: base and tuned answers streamed side by side, held-out rows, classifier probabilities."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.inference.playground import Playground, held_out_rows
from adapter_studio.engine.inference.trained import load_base
from adapter_studio.engine.training.run import run

MESSAGE = "reverse abcd"


def train_run(make_spec: Any, model: Path, data: Path, method: str | dict[str, Any], lr: float,
              **training: Any) -> Path:  # fmt: skip
    spec = make_spec(model, data, method, learning_rate=lr, max_steps=30, eval_samples=0, **training)
    result = run(spec)
    assert result.status == "completed", result.error
    return result.run_dir


@pytest.fixture(scope="module")
def runs(tiny_llama: Path, tiny_bert_cls: Path, alpaca_jsonl: Path, classification_csv: Path,
         make_spec: Any) -> dict[str, Path]:  # fmt: skip
    """One short run per way the base answers are obtained (adapter switched off, or a second copy)."""
    return {
        "lora": train_run(make_spec, tiny_llama, alpaca_jsonl, "lora", 1e-2),
        "prefix_tuning": train_run(make_spec, tiny_llama, alpaca_jsonl,
                                   {"name": "prefix_tuning", "num_virtual_tokens": 4}, 3e-2),
        "prompt_tuning": train_run(make_spec, tiny_llama, alpaca_jsonl,
                                   {"name": "prompt_tuning", "num_virtual_tokens": 4}, 3e-2),
        "last_layers": train_run(make_spec, tiny_llama, alpaca_jsonl, "last_layers", 3e-3),
        "adapter_h": train_run(make_spec, tiny_llama, alpaca_jsonl, "adapter_h", 1e-2),
        "mam": train_run(make_spec, tiny_llama, alpaca_jsonl, {"name": "mam", "num_virtual_tokens": 4}, 1e-2),
        "llama_adapter": train_run(make_spec, tiny_llama, alpaca_jsonl, {"name": "llama_adapter", "adapter_len": 4},
                                   3e-2),
        "ia3": train_run(make_spec, tiny_llama, alpaca_jsonl, "ia3", 3e-2),
        "classifier": train_run(make_spec, tiny_bert_cls, classification_csv, "lora", 1e-2),
    }  # fmt: skip


@pytest.fixture(scope="module")
def playgrounds(runs: dict[str, Path]) -> dict[str, Playground]:
    return {name: Playground.open(run_dir, device="cpu") for name, run_dir in runs.items()}


def answer(pg: Playground, which: str, message: str = MESSAGE, **kw: Any) -> list[str]:
    """The streamed chunks of one answer (greedy and 24 tokens unless told)."""
    return list(pg.stream(which, message, max_new_tokens=kw.pop("max_new_tokens", 24), **kw))  # type: ignore[arg-type]


def reference_answer(model: Any, pg: Playground, message: str = MESSAGE, max_new_tokens: int = 24) -> str:
    """Greedy decoding by full forward passes, no cache and no `generate`: what the weights really say."""
    import torch

    ids = pg.tokenizer(pg.prompt_text(message), return_tensors="pt", add_special_tokens=False)["input_ids"]
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
            if int(next_id) == pg.tokenizer.eos_token_id:
                break
    return pg.tokenizer.decode(ids[0, start:], skip_special_tokens=True)


METHODS = ["lora", "prefix_tuning", "prompt_tuning", "llama_adapter", "ia3", "last_layers", "adapter_h", "mam"]
SHARED = {"lora", "prefix_tuning", "prompt_tuning", "llama_adapter", "ia3"}  # peft: adapter switched off


@pytest.mark.parametrize("method", METHODS)
def test_base_and_tuned_stream_their_own_answers(method: str, playgrounds: dict[str, Playground]) -> None:
    pg = playgrounds[method]
    assert pg.shares_weights is (method in SHARED)
    base_chunks, tuned_chunks = answer(pg, "base"), answer(pg, "tuned")
    base, tuned = "".join(base_chunks), "".join(tuned_chunks)
    assert len(base_chunks) >= 3, base_chunks  # streamed piece by piece, not as one block
    assert base != tuned
    # The base answer is exactly what an untouched copy of the base model says.
    untouched, _, _ = load_base(pg.spec)
    assert base == reference_answer(untouched.eval(), pg)
    assert tuned == reference_answer(pg.tuned.model, pg)


def test_sampled_tuned_answers_use_the_tasks_letters(playgrounds: dict[str, Playground]) -> None:
    """30 LoRA steps move a tiny random model only a little: sampled (not greedy) answers show it.

    The answers are words over a-f; the random base picks from ~100 characters (a-f about 6%).
    """
    import torch

    pg = playgrounds["lora"]

    def letter_share(which: str) -> float:
        torch.manual_seed(0)
        text = "".join("".join(answer(pg, which, m, max_new_tokens=8, temperature=1.0))
                       for m in (e.message for e in pg.held_out_examples(10)))  # fmt: skip
        return sum(c in "abcdef" for c in text) / len(text)

    base, tuned = letter_share("base"), letter_share("tuned")
    assert base < 0.1
    assert tuned > 2 * base


def test_stop_event_ends_generation_after_the_current_token(playgrounds: dict[str, Playground]) -> None:
    pg = playgrounds["lora"]
    full = answer(pg, "base", max_new_tokens=60)
    stop = threading.Event()
    chunks = []
    for chunk in pg.stream("base", MESSAGE, max_new_tokens=60, stop_event=stop):
        chunks.append(chunk)
        stop.set()
    assert len(full) > 20
    # Generation runs in its own thread: a few tokens may already be queued when the reader stops
    # it (seen: 5 on a loaded CPU), but it must end long before its 60-token limit.
    assert 1 <= len(chunks) <= 10 < len(full)
    assert "".join(full).startswith("".join(chunks))


def test_closing_the_stream_ends_its_thread(playgrounds: dict[str, Playground]) -> None:
    pg = playgrounds["prefix_tuning"]
    stream = pg.stream("tuned", MESSAGE, max_new_tokens=200, temperature=1.0)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("playground-")]


def test_sampling_with_temperature_differs_from_greedy(playgrounds: dict[str, Playground]) -> None:
    import torch

    pg = playgrounds["adapter_h"]
    greedy = "".join(answer(pg, "base", max_new_tokens=30))
    torch.manual_seed(0)
    sampled = ["".join(answer(pg, "base", max_new_tokens=30, temperature=1.5, top_p=1.0)) for _ in range(2)]
    assert greedy not in sampled
    assert sampled[0] != sampled[1]


def test_held_out_examples_are_the_runs_eval_split(playgrounds: dict[str, Playground]) -> None:
    pg = playgrounds["lora"]
    examples = pg.held_out_examples(50)
    assert len(examples) == 10  # 5% of 200 rows, split with the run's seed
    for prompt, message, expected, *_ in examples:
        word = message.removeprefix("reverse ")
        assert expected == word[::-1]
        assert prompt == f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"
    assert len(pg.held_out_examples(3)) == 3


def test_held_out_examples_come_from_the_eval_file(alpaca_jsonl: Path, tiny_llama: Path, make_spec: Any,
                                                   tmp_path: Path) -> None:  # fmt: skip
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text('{"instruction": "reverse fed", "input": "", "output": "def"}\n')
    spec = make_spec(tiny_llama, alpaca_jsonl, data={"eval_path": str(eval_file)})
    fmt, rows = held_out_rows(SimpleNamespace(spec=spec))  # type: ignore[arg-type]
    assert fmt == "alpaca"
    assert [r.messages[-1]["content"] for r in rows] == ["def"]


def test_classifier_probabilities(playgrounds: dict[str, Playground]) -> None:
    import torch

    pg = playgrounds["classifier"]
    assert pg.task == "classification" and pg.base_head_is_random
    examples = pg.held_out_examples(8)
    assert examples and {e.expected for e in examples} <= {"positive", "negative"}
    for _, text, *_ in examples:
        probs = pg.classify(text)
        assert set(probs) == {"base", "tuned"}
        for which in ("base", "tuned"):
            assert set(probs[which]) == {"negative", "positive"}
            assert sum(probs[which].values()) == pytest.approx(1.0, abs=1e-6)
        assert probs["base"] != probs["tuned"]
        with torch.no_grad():
            logits = pg.tuned.model(**pg.tokenizer(text, return_tensors="pt")).logits[0]
        labels = pg.tuned.model.config.id2label
        expected = {labels[i]: p for i, p in enumerate(logits.softmax(-1).tolist())}
        assert probs["tuned"] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(UserError, match="classifier"):
        next(pg.stream("tuned", "the film was great"))


def test_a_generator_run_cannot_classify(playgrounds: dict[str, Playground]) -> None:
    with pytest.raises(UserError, match="text generator"):
        playgrounds["lora"].classify("reverse abc")
