"""Foundations of the engine on tiny Llama and GPT-2: learning, saving, merging, stopping, resuming,
the event log, and the messages a person gets for bad input."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Checkpoint, Eval, Event, Finished, Log, Metrics, Stage, Started, read_events
from adapter_studio.engine.spec import TrainingSpec
from adapter_studio.engine.training.run import RunResult, run
from adapter_studio.engine.training.speed import SpeedOptions

LR = 2e-2  # LoRA on a random 64-wide model: 100× its default rate to move in a few dozen steps
CASES = {  # name → (model fixture, data fixture)
    "llama-alpaca": ("tiny_llama", "alpaca_jsonl"),
    "llama-messages": ("tiny_llama", "messages_jsonl"),
    "gpt2-alpaca": ("tiny_gpt2", "alpaca_jsonl"),
}
MODELS = {"llama": ("tiny_llama", "alpaca_jsonl"), "gpt2": ("tiny_gpt2", "alpaca_jsonl")}

Spec = Callable[..., Any]


def start(spec: Any, **kwargs: Any) -> tuple[RunResult, list[Event]]:
    events: list[Event] = []
    return run(spec, events.append, **kwargs), events


def losses(events: list[Event]) -> list[float]:
    return [e.loss for e in events if isinstance(e, Metrics)]


def probe(tokenizer: Any) -> dict[str, torch.Tensor]:
    texts = ["reverse abc", "### Instruction:\nreverse fed\n\n### Response:\n"]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float()


_RUNS: dict[str, tuple[RunResult, list[Event]]] = {}


@pytest.fixture
def thirty_steps(request: pytest.FixtureRequest, make_spec: Spec) -> Callable[[str], tuple[RunResult, list[Event]]]:
    """`thirty_steps(case)`: a 30-step LoRA run of that case, trained once per module."""

    def get(case: str) -> tuple[RunResult, list[Event]]:
        if case not in _RUNS:
            model, data = (request.getfixturevalue(name) for name in CASES[case])
            _RUNS[case] = start(make_spec(model, data, "lora", max_steps=30, learning_rate=LR, eval_on_start=True))
        return _RUNS[case]

    return get


# --- learning, saving, merging ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_loss_falls_over_thirty_steps(case: str, thirty_steps: Callable[..., Any]) -> None:
    result, events = thirty_steps(case)
    assert result.status == "completed", result.error
    values = losses(events)
    assert len(values) == 30 and [e.step for e in events if isinstance(e, Metrics)] == list(range(1, 31))
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    # About ln(vocabulary size) = 4.85 at the start; the few characters of the answers come first.
    assert 4.5 < first < 5.2
    # Measured 0.21 to 0.37 lower over the three cases and their equally likely paths (dropout masks drawn
    # for batches of their exact width or padded to a width step; LoRA's dropout on or off); first at 0.3, the
    # bound sat inside that spread.
    assert last < first - 0.15, f"loss {first:.3f} → {last:.3f}"
    # The held-out rows' loss before the first step and after the last: the same rows, so no batch-to-batch
    # spread (measured 0.41 to 0.55 lower over the same cases and paths).
    held_out = [e.eval_loss for e in events if isinstance(e, Eval)]
    assert held_out[-1] < held_out[0] - 0.3, f"held-out loss {held_out[0]:.3f} → {held_out[-1]:.3f}"


@pytest.mark.parametrize("case", ["llama-alpaca", "gpt2-alpaca"])
def test_saved_adapter_reloads_with_identical_logits(
    case: str, thirty_steps: Callable[..., Any], tmp_path: Path
) -> None:
    from adapter_studio.engine.export.run_export import export_run
    from adapter_studio.engine.inference.trained import load_base, load_trained
    from peft import PeftModel

    result, _ = thirty_steps(case)
    exported = export_run(result.run_dir, "adapter", tmp_path / "adapter")
    assert (exported.path / "adapter_model.safetensors").is_file()
    assert (exported.path / "adapter_config.json").is_file() and (exported.path / "README.md").is_file()
    tuned = load_trained(result.run_dir)
    base, tokenizer, _ = load_base(tuned.spec)
    inputs = probe(tokenizer)
    before = logits(base, inputs)
    reloaded = PeftModel.from_pretrained(base, str(exported.path)).eval()
    after, want = logits(reloaded, inputs), logits(tuned.model, inputs)
    assert torch.equal(after, want)
    assert (after - before).abs().max() > 1e-3, "the adapter changes the model's answers"


@pytest.mark.parametrize("case", ["llama-alpaca", "gpt2-alpaca"])
def test_merged_logits_equal_adapter_logits(case: str, thirty_steps: Callable[..., Any], tmp_path: Path) -> None:
    from adapter_studio.engine.export.run_export import export_run
    from adapter_studio.engine.inference.trained import load_base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _ = thirty_steps(case)
    merged_dir = export_run(result.run_dir, "merged", tmp_path / "merged").path
    adapter_dir = export_run(result.run_dir, "adapter", tmp_path / "adapter").path
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    inputs = probe(AutoTokenizer.from_pretrained(str(merged_dir)))
    base, _, _ = load_base(run_spec_of(result.run_dir))
    adapter = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    assert (logits(merged, inputs) - logits(adapter, inputs)).abs().max() < 1e-4


def run_spec_of(run_dir: Path) -> Any:
    from adapter_studio.engine.inference.trained import run_spec

    return run_spec(run_dir)


# --- stopping and resuming -------------------------------------------------------------------------


def stop_after(step: int, stop: threading.Event, events: list[Event]) -> Callable[[Event], None]:
    """An emit callback that records events and asks the run to stop once `step` is reported."""

    def emit(event: Event) -> None:
        events.append(event)
        if isinstance(event, Metrics) and event.step >= step:
            stop.set()

    return emit


@pytest.mark.parametrize("model", list(MODELS))
def test_stop_mid_run_cancels_with_a_checkpoint(model: str, request: pytest.FixtureRequest, make_spec: Spec) -> None:
    model_dir, data = (request.getfixturevalue(name) for name in MODELS[model])
    stop, events = threading.Event(), []
    result = run(make_spec(model_dir, data, "lora", max_steps=2000), stop_after(5, stop, events), stop)
    assert result.status == "cancelled" and result.step == 5 and result.error is None
    finished = [e for e in events if isinstance(e, Finished)]
    assert [(f.status, f.step) for f in finished] == [("cancelled", 5)]
    checkpoints = [e for e in events if isinstance(e, Checkpoint)]
    assert [c.step for c in checkpoints] == [5]
    saved = Path(checkpoints[0].path)
    assert saved == result.run_dir / "checkpoints" / "step-0000005"
    assert json.loads((saved / "state.json").read_text())["step"] == 5
    assert (saved / "trainable.safetensors").is_file()
    assert not (result.run_dir / "run.lock").exists()


@pytest.mark.parametrize("model", list(MODELS))
def test_resume_ends_where_an_uninterrupted_run_ends(
    model: str, request: pytest.FixtureRequest, make_spec: Spec
) -> None:
    model_dir, data = (request.getfixturevalue(name) for name in MODELS[model])
    settings = {"max_steps": 12, "learning_rate": LR, "seed": 3}
    straight, straight_events = start(make_spec(model_dir, data, "lora", **settings))
    assert straight.status == "completed", straight.error

    stop, first_events = threading.Event(), []
    cancelled = run(make_spec(model_dir, data, "lora", **settings), stop_after(5, stop, first_events), stop)
    assert cancelled.status == "cancelled" and cancelled.step == 5
    resumed, resumed_events = start(None, resume_dir=cancelled.run_dir)
    assert resumed.status == "completed", resumed.error
    assert resumed.run_dir == cancelled.run_dir and resumed.step == 12

    started = next(e for e in resumed_events if isinstance(e, Started))
    assert started.resumed_from_step == 5
    assert [e.step for e in resumed_events if isinstance(e, Metrics)] == list(range(6, 13))
    assert losses(first_events)[:5] == pytest.approx(losses(straight_events)[:5], abs=1e-6)
    assert losses(resumed_events)[-1] == pytest.approx(losses(straight_events)[-1], abs=1e-3)
    # One log holds both parts: two starts, one cancelled and one completed finish.
    logged = read_events(cancelled.run_dir / "events.jsonl")
    assert [e.status for e in logged if isinstance(e, Finished)] == ["cancelled", "completed"]


def test_a_resume_given_more_steps_decays_over_them_and_a_finished_run_is_left_as_it_is(
    tiny_llama: Path, alpaca_jsonl: Path, make_spec: Spec
) -> None:
    """Found by a new user: the saved schedule kept its old total, so `--set training.max_steps=8` on a finished
    4-step run trained the new steps at the old floor; and a finished run 'resumed' by loading and logging."""
    from adapter_studio.engine.training.optimizers import WarmupThenDecay

    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=4, learning_rate=LR)
    first, _ = start(spec)
    assert first.status == "completed", first.error
    logged = (first.run_dir / "events.jsonl").read_text()
    again, said = start(None, resume_dir=first.run_dir)  # a script resuming until done goes on: said, not redone
    assert (again.status, again.step) == ("completed", 4) and (first.run_dir / "events.jsonl").read_text() == logged
    assert [e.message for e in said] == [f"{first.run_dir.name} already completed its 4 steps: nothing to resume "
                                         "(to train it longer, give it more: --set training.max_steps=N)"]
    longer = spec.model_copy(update={"training": spec.training.model_copy(update={"max_steps": 8})})
    resumed, events = start(longer, resume_dir=first.run_dir)
    assert resumed.status == "completed" and resumed.step == 8, resumed.error
    t = longer.training
    shape = WarmupThenDecay(t.scheduler, math.ceil(t.warmup_ratio * 8), 8, t.min_lr_ratio)
    assert [e.lr for e in events if isinstance(e, Metrics)] == pytest.approx([LR * shape(s) for s in range(4, 8)])
    assert any("schedule now runs over 8 steps (it was saved for 4)" in e.message for e in events
               if isinstance(e, Log))  # fmt: skip

    # Stopped at step 3 of 10 (warmup 1 step), resumed to 100 steps: the warmup is not started again (from the
    # longer total it would be 10 steps, and the rate would fall back to a third of its peak mid-run).
    stop = threading.Event()
    short = make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=10, learning_rate=LR, warmup_ratio=0.1)
    stopped = run(short, lambda e: stop.set() if isinstance(e, Metrics) and e.step >= 3 else None, stop)
    assert stopped.status == "cancelled" and stopped.step == 3
    # Told to stop where its checkpoint already is: it trained nothing and called the cancelled run completed.
    fewer = short.model_copy(update={"training": short.training.model_copy(update={"max_steps": 3})})
    before = {p.name: p.read_bytes() for p in stopped.run_dir.iterdir() if p.is_file()}
    with pytest.raises(UserError) as refused:
        start(fewer, resume_dir=stopped.run_dir)
    assert refused.value.message == ("training.max_steps: it would end at step 3, not past step 3, where the run's "
                                     "checkpoint is — give it more than 3 steps, or resume it as it is")  # fmt: skip
    by_epochs = short.model_copy(update={"training": short.training.model_copy(update={"max_steps": None,
                                                                                        "epochs": 0.01})})
    with pytest.raises(UserError, match=r"training\.epochs: it would end at step 1, not past step 3"):  # 1/100 epoch
        start(by_epochs, resume_dir=stopped.run_dir)
    # Refused, the run is as it was: its spec (the length to finish) and its log (still cancelled, no failure).
    assert {p.name: p.read_bytes() for p in stopped.run_dir.iterdir() if p.is_file()} == before
    t = short.training.model_copy(update={"max_steps": 100})
    resumed, events = start(short.model_copy(update={"training": t}), resume_dir=stopped.run_dir)
    rates = [e.lr for e in events if isinstance(e, Metrics)][:3]
    assert rates == pytest.approx([LR * WarmupThenDecay(t.scheduler, 1, 100, t.min_lr_ratio)(s) for s in (3, 4, 5)])


def test_a_resume_given_fewer_steps_shortens_a_warmup_it_had_not_finished(
    tiny_llama: Path, alpaca_jsonl: Path, make_spec: Spec
) -> None:
    """Stopped at step 3 of a 100-step run warming up over 50 steps and resumed to 6 steps, the warm-up was kept
    as it ran: its last steps trained at 6 % of the peak rate. A shorter total's warm-up now replaces it."""
    from adapter_studio.engine.training.optimizers import WarmupThenDecay

    stop = threading.Event()
    long = make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=100, learning_rate=LR, warmup_ratio=0.5)
    stopped = run(long, lambda e: stop.set() if isinstance(e, Metrics) and e.step >= 3 else None, stop)
    assert stopped.status == "cancelled" and stopped.step == 3
    t = long.training.model_copy(update={"max_steps": 6})
    resumed, events = start(long.model_copy(update={"training": t}), resume_dir=stopped.run_dir)
    assert resumed.status == "completed" and resumed.step == 6, resumed.error
    rates = [e.lr for e in events if isinstance(e, Metrics)]
    assert rates == pytest.approx([LR * WarmupThenDecay(t.scheduler, 3, 6, t.min_lr_ratio)(s) for s in (3, 4, 5)])


def test_a_resume_keeps_the_label_names_its_head_was_trained_with(
    tiny_bert_cls: Path, classification_csv: Path, make_spec: Spec
) -> None:
    """Names number the classes in their sorted order: other names on a resume would read the checkpoint's head
    rows as other classes (and Try, Evaluate and Export would say those)."""
    named = {"positive": "good", "negative": "bad"}
    spec = make_spec(tiny_bert_cls, classification_csv, "lora", max_steps=2, data={"label_names": named})
    first, _ = start(spec)
    assert first.status == "completed", first.error
    other = spec.data.model_copy(update={"label_names": {"positive": "pos", "negative": "neg"}})
    with pytest.raises(UserError, match=r"data\.label_names: a resumed run keeps the label names its classifier"):
        start(spec.model_copy(update={"data": other, "training": spec.training.model_copy(update={"max_steps": 4})}),
              resume_dir=first.run_dir)  # fmt: skip


def test_a_resume_given_another_method_is_refused_before_anything_is_written(
    tiny_llama: Path, alpaca_jsonl: Path, make_spec: Spec, tmp_path: Path
) -> None:
    """The window and the API resume with a spec too: another rank failed after the model loaded, saved."""
    spec = make_spec(tiny_llama, alpaca_jsonl, {"name": "lora", "r": 4})
    folder = tmp_path / "run"
    folder.mkdir()
    spec.save(folder / "spec.yaml")
    before = (folder / "spec.yaml").read_bytes()
    other = spec.model_copy(update={"method": spec.method.model_copy(update={"r": 16})})
    with pytest.raises(UserError, match=r"^method: a resumed run keeps its method and the method's settings \(method "
                                        r"lora\) — train a new run to change it \(Clone on the Runs page\)$"):
        run(other, resume_dir=folder)
    assert (folder / "spec.yaml").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]


def test_tokenising_says_how_far_it_is(tiny_llama: Path, make_spec: Spec, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Tokenising 300,000 rows said nothing for four minutes: its stage reports the share done, at most every
    few seconds (every call here)."""
    import adapter_studio.engine.events as events
    from conftest import reversal_pairs, write_jsonl

    monkeypatch.setattr(events.stage_progress, "__defaults__", (0.0,))
    rows = [{"instruction": q, "output": a} for q, a in reversal_pairs(40)]
    data = write_jsonl(tmp_path / "fresh.jsonl", rows)  # not in the cache: read and tokenised
    _, seen = start(make_spec(tiny_llama, data, "lora", max_steps=1))
    said = [e for e in seen if isinstance(e, Stage) and e.progress is not None]
    assert said and all(e.stage == "tokenising" and 0 <= e.progress <= 1 for e in said)
    assert {e.detail.split()[0] for e in said} == {"reading", "tokenising"}


@pytest.mark.parametrize("at", [2, 6], ids=["mid-run", "the last evaluation"])
def test_stop_during_an_evaluation_leaves_it_out_and_cancels_at_once(
    at: int, tiny_llama: Path, alpaca_jsonl: Path, make_spec: Spec
) -> None:
    """Found with 300,000 rows: Ctrl-C while 27,000 held-out rows were scored waited five minutes for them; in
    the last evaluation, the run then said completed (exit 0), stopped as the person asked."""
    stop, seen = threading.Event(), []

    def emit(event: Event) -> None:
        seen.append(event)
        steps = [e.step for e in seen if isinstance(e, Metrics)]
        if isinstance(event, Stage) and event.stage == "evaluating" and steps and steps[-1] == at:
            stop.set()  # as the held-out scoring after step `at` begins

    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=6, eval_every=4 if at == 6 else 2, save_every=2)
    result = run(spec, emit, stop)
    assert (result.status, result.step) == ("cancelled", at), result.error
    assert all(e.step != at for e in seen if isinstance(e, Eval))  # that evaluation left out, unfinished
    assert any(isinstance(e, Log) and f"stopped while evaluating at step {at}" in e.message for e in seen)
    if at == 6:  # resumed, it does what was left: the last evaluation (it reloaded, trained nothing, completed)
        resumed, events = start(None, resume_dir=result.run_dir)
        assert resumed.status == "completed" and [e.step for e in events if isinstance(e, Eval)] == [6]


# --- the event log ---------------------------------------------------------------------------------

CONTRACT_FIELDS = {
    "started": {"run_dir", "model", "method", "trainable_params", "total_params", "total_steps", "device"},
    "metrics": {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "memory_bytes"},
    "eval": {"step", "eval_loss", "exact_match"},
    "log": {"level", "message"},
    "checkpoint": {"step", "path"},
    "export": {"kind", "path", "bytes", "verified_max_diff"},
    "finished": {"status", "step", "error", "train_seconds", "tokens_trained"},
}


def test_events_log_holds_the_contract_fields(thirty_steps: Callable[..., Any], tmp_path: Path) -> None:
    from adapter_studio.engine.export.run_export import export_run

    result, emitted = thirty_steps("llama-alpaca")
    export_run(result.run_dir, "adapter", tmp_path / "adapter")
    lines = (result.run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(isinstance(r["type"], str) and isinstance(r["time"], float) for r in rows)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_type.setdefault(row["type"], []).append(row)
    for kind, fields in CONTRACT_FIELDS.items():
        assert kind in by_type, f"no {kind} event"
        for row in by_type[kind]:
            assert fields <= set(row), f"{kind} lacks {fields - set(row)}"
            assert all(not isinstance(v, (dict, list)) for v in row.values()), "events are flat"

    # What the callback got is what the log holds, in the same order (the export came later).
    assert [e.to_dict() for e in emitted] == [r for r in rows if r["type"] != "export"]
    order = [r["type"] for r in rows if r["type"] in ("started", "metrics", "checkpoint", "finished")]
    assert order[0] == "started" and order[-1] == "finished" and order.index("checkpoint") > order.index("metrics")
    started, finished = by_type["started"][0], by_type["finished"][0]
    assert started["method"] == "lora" and started["total_steps"] == 30 and started["run_dir"] == str(result.run_dir)
    assert 0 < started["trainable_params"] < started["total_params"]
    assert finished["status"] == "completed" and finished["step"] == 30 and finished["error"] is None
    metrics = by_type["metrics"]
    assert finished["tokens_trained"] == metrics[-1]["tokens_seen"] > 0
    assert all(m["memory_bytes"] > 0 and m["tokens_per_s"] > 0 for m in metrics)
    rates = [m["lr"] for m in metrics]  # the rate each step used: two warm-up steps (5% of 30), then cosine
    floor = LR * TrainingSpec().min_lr_ratio  # toward its floor, which the step after the last would use
    assert rates[:3] == pytest.approx([LR / 3, LR * 2 / 3, LR]) and floor < rates[-1] < floor * 1.05
    assert rates[2:] == sorted(rates[2:], reverse=True)
    assert Path(by_type["checkpoint"][-1]["path"]).is_dir()
    assert 0 <= by_type["eval"][-1]["exact_match"] <= 1 and by_type["eval"][-1]["eval_loss"] > 0
    export = rows[-1]  # this test's own export: the run is shared, and other tests export it too, in any order
    assert export["type"] == "export" and export["path"] == str(tmp_path / "adapter")
    assert export["kind"] == "adapter" and export["bytes"] > 0 and export["verified_max_diff"] < 1e-4


def test_a_truncated_last_line_is_tolerated(thirty_steps: Callable[..., Any], tmp_path: Path) -> None:
    from adapter_studio.engine.runs import summarize_run

    result, _ = thirty_steps("gpt2-alpaca")
    copy = tmp_path / "killed-run"
    shutil.copytree(result.run_dir, copy)
    log = copy / "events.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    end = next(i for i, line in enumerate(lines) if '"type": "finished"' in line)
    # As a killed process leaves it: everything up to the finished event, which is half written.
    log.write_text("".join(lines[:end]) + lines[end][:40], encoding="utf-8")

    events = read_events(log)
    assert len(events) == end and not any(isinstance(e, Finished) for e in events)
    summary = summarize_run(copy)
    last = [e for e in events if isinstance(e, Metrics)][-1]
    assert summary.status == "interrupted" and summary.error is None
    assert summary.steps == last.step == 30 and summary.final_loss == last.loss
    assert summary.method == "lora" and summary.trainable_params and summary.trainable_params > 0


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": "nowhere/train.jsonl"}, "data.path: data file not found: {tmp}/nowhere/train.jsonl — check the path"),
        ({"data": "nowhere/train.jsonl", "format": "alpaca"}, "data.path: data file not found: {tmp}/nowhere/"),
        ({"eval": "nowhere/eval.jsonl"}, "data.eval_path: data file not found: {tmp}/nowhere/eval.jsonl"),
        ({"model": "nowhere/model"}, "model.source: model not found: {tmp}/nowhere/model"),
        ({"model": "llama-3.2-1b"}, "model.source: 'llama-3.2-1b' is an architecture description without weights"),
        ({"model": "weightless/model"},
         "model.source: {tmp}/weightless/model holds a config.json but no weight files (.safetensors or .bin) — copy "
         "the model's weight files into it"),
    ],
    ids=["data", "data of a given format", "held-out data", "model", "architecture only", "a folder without weights"],
)
def test_a_missing_model_or_data_file_is_said_before_a_run_folder_is_made(
    change: dict[str, str], message: str, tiny_llama: Path, make_spec: Spec, tmp_path: Path, alpaca_jsonl: Path
) -> None:
    """It was said as the run's failure at step 0, after a run folder had joined the history (the model loaded
    first, for a missing data file)."""
    model = change.get("model", tiny_llama)
    if str(model).startswith("weightless"):  # the Model page said "Ready"; the run failed on transformers' words
        (tmp_path / model).mkdir(parents=True)
        shutil.copy(tiny_llama / "config.json", tmp_path / model)
    spec = make_spec(tmp_path / model if "/" in str(model) else model,
                     tmp_path / change["data"] if "data" in change else alpaca_jsonl, "lora")  # fmt: skip
    if "eval" in change:
        spec.data.eval_path = str(tmp_path / change["eval"])
    spec.data.format = change.get("format")
    with pytest.raises(UserError) as caught:
        run(spec)
    assert caught.value.message.startswith(message.format(tmp=tmp_path)), caught.value.message
    assert not Path(spec.output_dir).exists() or not any(Path(spec.output_dir).iterdir())


@pytest.mark.parametrize(
    ("task", "data", "message"),
    [
        ("classification", "alpaca_jsonl", "model.task: classification, but the data holds alpaca rows, with no label"),
        ("causal_lm", "classification_csv", "model.task: causal_lm, but the data holds texts with a label"),
    ],
    ids=["a classifier on answers", "a generator on labels"],
)
def test_a_task_the_rows_cannot_train_is_refused_naming_it(
    task: str, data: str, message: str, tiny_llama: Path, make_spec: Spec, request: pytest.FixtureRequest
) -> None:
    """`model.task: classification` on math problems said "every training row has the label 'None'"."""
    spec = make_spec(tiny_llama, request.getfixturevalue(data), "lora")
    result, _ = start(spec.model_copy(update={"model": spec.model.model_copy(update={"task": task})}))
    assert result.status == "failed" and result.error is not None and result.error.startswith(message), result.error


def test_malformed_jsonl_line_is_named(tiny_llama: Path, make_spec: Spec, tmp_path: Path) -> None:
    rows = [json.dumps({"instruction": f"reverse a{i}", "output": f"{i}a"}) for i in range(10)]
    rows[6] = '{"instruction": "reverse ab", "output": '  # line 7: cut off mid-object
    data = tmp_path / "broken.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:  # its first rows are read before a run folder is made
        run(make_spec(tiny_llama, data, "lora"))
    assert "line 7 is not valid JSON" in caught.value.message and f"{data}:7" in caught.value.message


def test_missing_column_lists_the_columns_found(tiny_gpt2: Path, make_spec: Spec, tmp_path: Path) -> None:
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps({"instruction": "reverse ab", "answer_text": "ba"}) + "\n" for _ in range(8)))
    spec = make_spec(tiny_gpt2, data, "lora", data={"format": "alpaca"})
    before = set(Path(spec.output_dir).iterdir())
    with pytest.raises(UserError) as refused:  # before a run folder is made: a file not in the format given
        start(spec)
    assert "needs an 'output' column" in refused.value.message
    assert "the columns found are instruction, answer_text" in refused.value.message
    assert set(Path(spec.output_dir).iterdir()) == before


def test_zero_rank_is_refused_naming_the_field(tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path) -> None:
    with pytest.raises(UserError) as refused:
        make_spec(tiny_llama, alpaca_jsonl, {"name": "lora", "r": 0})
    assert refused.value.message.startswith("spec: method.r:")
    assert "greater than or equal to 1" in refused.value.message and "got 0" in refused.value.message


def test_runs_with_different_precisions_follow_each_other_in_one_process(
    tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path
) -> None:
    # The window trains many runs in one process; accelerate's settings singleton must not stick.
    for precision in ("float32", "bf16", "float32"):
        result = run(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=2, precision=precision))
        assert result.status == "completed", result.error


@pytest.mark.parametrize("method", ["lora", "loraplus", "full"])
def test_fused_adamw_learns_as_foreach_does(
    method: str, tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's AdamW is fused where PyTorch has it (CPU, CUDA): the same curve as foreach."""
    from adapter_studio.engine.training.devices import adamw_implementation

    assert adamw_implementation([torch.nn.Parameter(torch.ones(2))]) == {"fused": True}
    assert adamw_implementation([torch.nn.Parameter(torch.ones(2, device="meta"))]) == {"foreach": True}
    curves, calls = {}, []
    for kind in ("foreach", "fused"):

        def chosen(params: list[Any], kind: str = kind) -> dict[str, bool]:
            calls.append(kind)
            return {kind: True}

        # the engine's and LoRA+'s optimizer both ask this one function
        monkeypatch.setattr("adapter_studio.engine.training.devices.adamw_implementation", chosen)
        curves[kind], _, _ = _curve_and_stages(
            make_spec(tiny_llama, alpaca_jsonl, method, max_steps=6, learning_rate=0.01, eval_samples=0)
        )
        assert calls[-1:] == [kind], "the optimizer was built without asking for its implementation"
    assert max(abs(a - b) for a, b in zip(curves["foreach"], curves["fused"], strict=True)) < 1e-4, curves


# The engine's CPU speed switches (SpeedOptions), each against its way round: (switch, method, the
# curves must differ, which shows the switch took effect where it changes the random numbers drawn).
SPEED_SWITCHES = [
    *(("lora_inputs_in_autocast_dtype", m, False) for m in ("lora", "dora", "rslora", "loraplus", "adalora")),
    *(("bits_dropout_on_cpu", m, True) for m in ("lora", "adalora")),  # other dropout masks
]


@pytest.mark.parametrize(("switch", "method", "differ"), SPEED_SWITCHES)
def test_cpu_speed_switches_learn_the_same(
    switch: str, method: str, differ: bool, tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path
) -> None:  # fmt: skip
    """peft's input cast to float32 only adds copies under bf16 autocast; LoRA's dropout masks from
    16-bit lanes (engine.training.bits_dropout) drop as often as torch's: the same learning either way."""
    curves, held_out = {}, {}
    # AdaLoRA's updates start from zero singular values and its penalty takes a share of each step: at 0.01
    # its held-out loss moved 0.02 in 8 steps, at 0.02 0.2 (every other method here 0.1 or more at 0.01).
    rate = 0.02 if method == "adalora" else 0.01
    for on in (False, True):
        spec = make_spec(tiny_llama, alpaca_jsonl, {"name": method, "dropout": 0.1}, max_steps=8, precision="bf16",
                         learning_rate=rate, eval_samples=0, eval_on_start=True)  # fmt: skip
        curves[on], _, events = _curve_and_stages(spec, SpeedOptions(**{switch: on}))
        held_out[on] = [e.eval_loss for e in events if isinstance(e, Eval)]
    # It learns: the held-out rows' loss at the end against before the first step (one batch's loss against
    # another's differs by up to 0.7 with the rows' lengths, learning or not).
    assert held_out[True][-1] < held_out[True][0] - 0.1, (held_out, curves)
    assert max(abs(a - b) for a, b in zip(curves[False], curves[True], strict=True)) < 0.05, curves
    if differ:
        assert curves[True] != curves[False], f"the same curve: {switch} changed nothing"


@pytest.mark.parametrize(
    ("device", "compiled", "longest", "limit", "multiple"),
    [
        ("cpu", False, 8, 512, 1),  # short rows: their own width
        ("cpu", False, 100, 512, 8),  # 64-127: steps of 8 (104)
        ("cpu", False, 200, 512, 16),  # 128-255: steps of 16 (208)
        ("cpu", False, 256, 512, 32),  # 256 is a step
        ("cpu", False, 300, 512, 32),  # 320
        ("cpu", False, 300, 300, 1),  # 320 would pass max_length (learned positions end there): its own width
        ("cpu", True, 200, 512, 16),  # compiled the same
        ("cuda", False, 200, 512, 1),  # a GPU builds no kernels per shape
        ("cuda", True, 200, 512, 8),  # ... but compiled code pads to 8 there
    ],
)
def test_cpu_batch_widths_take_a_few_steps_per_doubling(
    device: str, compiled: bool, longest: int, limit: int, multiple: int
) -> None:
    assert SpeedOptions().multiple_for(device, compiled, longest, limit) == multiple
    assert SpeedOptions(cpu_width_steps=0).multiple_for(device, compiled, longest, limit) == (8 if compiled and
                                                                                               device == "cuda" else 1)


def test_stepped_widths_learn_what_exact_widths_do(tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path) -> None:
    """Padding the batches to width steps changes no real token's loss (right padding, masked)."""
    spec = make_spec(tiny_llama, alpaca_jsonl, {"name": "lora", "dropout": 0.0}, max_steps=6, learning_rate=0.01,
                     eval_samples=0, precision="float32")  # fmt: skip
    curves = {steps: _curve_and_stages(spec, SpeedOptions(cpu_width_steps=steps))[0] for steps in (0, 2)}
    assert max(abs(a - b) for a, b in zip(curves[0], curves[2], strict=True)) < 1e-4, curves


@pytest.mark.slow  # inductor compiles for ~20 s even for the tiny model
@pytest.mark.parametrize(
    ("method", "compiled"),
    [
        ("lora", "block 0, the first that trains, runs eagerly"),  # the labelled-only loss path
        ("adalora", "block 0, the first that trains, runs eagerly"),  # the model's own forward
        ("prefix_tuning", "the whole model"),  # the prefix reaches each block as its own cache
    ],
)
def test_compiled_training_step_follows_the_eager_curve(
    method: str, compiled: str, tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from torch._dynamo.utils import counters

    # With dropout: on a CPU LoRA's masks come from engine.training.bits_dropout's op, which compiled code calls
    # as eager code does, in the same order: the same masks, the same curve.
    fields = {"name": method} if method == "prefix_tuning" else {"name": method, "dropout": 0.3}
    curves = {}
    for compile in (False, True):
        events: list[Event] = []
        spec = make_spec(tiny_llama, alpaca_jsonl, fields, max_steps=6, learning_rate=0.01,
                         compile="on" if compile else "off")  # fmt: skip
        counters.clear()
        with caplog.at_level(logging.WARNING):
            result = run(spec, events.append)
        assert result.status == "completed", result.error
        curves[compile] = [e.loss for e in events if isinstance(e, Metrics)]
        stages = [e.stage for e in events if isinstance(e, Stage)]
        assert ("compiling" in stages) == compile and stages[stages.index("saving") - 1] == "training"
    assert any(compiled in e.message for e in events if isinstance(e, Log))
    # Runs before this one in the process must not have used up dynamo's recompile limit (eager fallback).
    assert "recompile_limit" not in caplog.text
    if method != "prefix_tuning":  # the blocks share one compiled graph: no variant for block 0's input
        assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert max(abs(a - b) for a, b in zip(curves[False], curves[True], strict=True)) < 1e-4, curves  # float32


def test_compile_without_a_compiler_is_refused_with_the_fix(
    tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    events: list[Event] = []
    result = run(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=2, compile=True), events.append)
    assert result.status == "failed"
    assert "C++ compiler" in (result.error or "") and "training.compile" in (result.error or "")


@pytest.mark.parametrize(("value", "expected"), [(True, "on"), (False, "off"), ("auto", "auto"), ("on", "on")])
def test_compile_takes_auto_on_off_and_the_old_booleans(value: object, expected: str) -> None:
    from adapter_studio.engine.spec import TrainingSpec

    assert TrainingSpec(compile=value).compile == expected
    assert TrainingSpec().compile == "auto"


# training.compile = auto decides after two steps, whatever is left.
COMPILE_SOON = SpeedOptions(auto_compile_after_steps=2, auto_compile_payback=0.0)


def _curve_and_stages(spec: Any, speed: SpeedOptions | None = None) -> tuple[list[float], list[str], list[Event]]:
    events: list[Event] = []
    result = run(spec, events.append, speed=speed)
    assert result.status == "completed", result.error
    stages = [e.stage for e in events if isinstance(e, Stage)]
    return [e.loss for e in events if isinstance(e, Metrics)], stages, events


def test_gradient_checkpointing_recomputes_the_same_dropout_masks(
    tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path
) -> None:
    """Checkpointing re-runs each block's forward in backward; torch restores the CPU generator for
    it, so the recomputed masks (engine.training.bits_dropout's) are the forward's and the curve is the one
    without checkpointing."""
    curves = {}
    for checkpointing in (False, True):
        spec = make_spec(tiny_llama, alpaca_jsonl, {"name": "lora", "dropout": 0.3}, max_steps=6, learning_rate=0.01,
                         eval_samples=0, gradient_checkpointing=checkpointing)  # fmt: skip
        curves[checkpointing], _, _ = _curve_and_stages(spec)
    assert max(abs(a - b) for a, b in zip(curves[False], curves[True], strict=True)) < 1e-5, curves


def test_auto_compile_leaves_a_short_run_alone(tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path) -> None:
    _, stages, events = _curve_and_stages(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=14, compile="auto"))
    assert "compiling" not in stages
    assert any("not compiling the training step" in e.message for e in events if isinstance(e, Log))


def test_a_failed_auto_compile_goes_on_uncompiled(
    tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run long enough to compile, whose compiler breaks: a warning, and the same curve as without."""
    from adapter_studio.engine.training import compiled_step

    def broken_backend(graph: Any, inputs: Any) -> Any:
        raise RuntimeError("no kernels today")

    def compile_with_a_broken_backend(fast_parts: Any, model: Any, device: str, speed: SpeedOptions) -> str:
        for block in fast_parts[0].layers:
            block.compile(backend=broken_backend)
        return "every block, with a broken backend"

    monkeypatch.setattr(compiled_step, "compile_training_forward", compile_with_a_broken_backend)
    eager, _, _ = _curve_and_stages(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=5, compile="off"))
    curve, stages, events = _curve_and_stages(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=5), COMPILE_SOON)
    assert "compiling" in stages and stages[stages.index("compiling") + 1] == "training"
    warnings = [e.message for e in events if isinstance(e, Log) and e.level == "warning"]
    assert any("compiling failed" in w and "no kernels today" in w for w in warnings), warnings
    assert max(abs(a - b) for a, b in zip(eager, curve, strict=True)) < 1e-5, (eager, curve)
    compiled: list[int] = []  # the process compiles again afterwards (its stance is back to default)

    def counting_backend(graph: Any, inputs: Any) -> Any:
        compiled.append(1)
        return graph.forward

    torch.compile(lambda x: x * 3 + 1, backend=counting_backend)(torch.ones(2))
    assert compiled


@pytest.mark.parametrize(
    ("method", "first"),
    [
        ({"name": "lora"}, 0),  # frozen embeddings: block 0 is the only one whose input has no gradient
        ({"name": "full"}, None),  # the embeddings train: every block's input carries a gradient
        ({"name": "last_layers", "num_layers": 2}, 2),
        ({"name": "llama_adapter", "adapter_layers": 1}, 3),
        ({"name": "prompt_tuning"}, None),  # no block trains
    ],
    ids=["lora", "full", "last_layers", "llama_adapter", "prompt_tuning"],
)
def test_regional_compile_leaves_the_first_block_that_trains_eager(method: dict[str, Any], first: int | None) -> None:
    from adapter_studio.engine.methods import METHODS, MethodContext
    from adapter_studio.engine.models.info import describe_model, find_layers_path
    from adapter_studio.engine.spec import TrainingSpec
    from adapter_studio.engine.training.compiled_step import first_trainable_block
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config)
    fields = dict(method)
    model = METHODS[fields.pop("name")](**fields).apply(
        model, MethodContext(info=describe_model(model), training=TrainingSpec(), total_steps=1)
    )
    assert first_trainable_block(model.get_submodule(find_layers_path(model)), model) == first


@pytest.mark.slow  # inductor compiles for ~20 s
def test_auto_compile_compiles_a_long_run_midway(tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path) -> None:
    eager, _, _ = _curve_and_stages(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=6, compile="off",
                                              learning_rate=0.01))  # fmt: skip
    curve, stages, events = _curve_and_stages(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=6,
                                                        learning_rate=0.01), COMPILE_SOON)  # fmt: skip
    assert stages.count("compiling") == 1
    assert any("training.compile: auto" in e.message for e in events if isinstance(e, Log))
    assert max(abs(a - b) for a, b in zip(eager, curve, strict=True)) < 5e-3, (eager, curve)
    # the next run of the same spec expects what this compile cost (inductor's cache makes it cheaper)
    _, _, events = _curve_and_stages(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=6,
                                               learning_rate=0.01), COMPILE_SOON)  # fmt: skip
    said = [e.message for e in events if isinstance(e, Log) and "training.compile: auto" in e.message]
    assert said and ("as measured last time" in said[0] or "filled by an earlier run" in said[0]), said


@pytest.mark.parametrize(
    ("left_s", "remembered", "compiles"),
    [
        (301.0, None, True),  # never compiled here: a minute, paid back five times
        (299.0, None, False),
        (31.0, {"first_s": 24.0}, True),  # compiled once, inductor's cache filled: a quarter of that
        (29.0, {"first_s": 24.0}, False),
        (31.0, {"first_s": 30.0, "cached_s": 6.0}, True),  # a cached compile measured
        (29.0, {"first_s": 30.0, "cached_s": 6.0}, False),
        (0.0, {"first_s": 0.0, "cached_s": 0.0}, False),
    ],
)
def test_auto_compile_waits_for_a_run_that_pays_its_cost_back(
    left_s: float, remembered: dict[str, float] | None, compiles: bool
) -> None:
    from adapter_studio.engine.training import compile_cost

    speed = SpeedOptions()
    cost, _ = compile_cost.expected_cost(remembered, speed)
    assert compile_cost.worth_compiling(left_s, cost, speed) is compiles


def test_compile_costs_are_remembered_per_key_first_then_cached() -> None:
    from adapter_studio.engine.training import compile_cost

    compile_cost.remember_cost("a-key", 30.123)
    assert compile_cost.remembered("a-key") == {"first_s": 30.12}
    compile_cost.remember_cost("a-key", 7.0)
    compile_cost.remember_cost("a-key", 6.0)  # the latest cached compile counts
    compile_cost.remember_cost("another-key", -1.0)  # a compiled step faster than the next: no cost
    assert compile_cost.remembered("a-key") == {"first_s": 30.12, "cached_s": 6.0}
    assert compile_cost.remembered("another-key") == {"first_s": 0.0}
    assert compile_cost.remembered("unknown") is None
    # a file that is not what the engine writes (cut short, edited) is taken as nothing remembered
    path = compile_cost.app_cache_dir() / compile_cost.COSTS_FILE
    for text in ('{"a-key": {"first_s": 3', '["a-key"]', '{"a-key": 3.0, "b-key": {"cached_s": 1.0}}'):
        path.write_text(text, encoding="utf-8")
        assert compile_cost.remembered("a-key") is None and compile_cost.remembered("b-key") is None
    compile_cost.remember_cost("a-key", 5.0)
    assert compile_cost.remembered("a-key") == {"first_s": 5.0}


@pytest.mark.parametrize("chosen", [None, "/somewhere/of/theirs"])
def test_inductor_keeps_its_cache_under_the_app_cache_unless_the_person_chose_a_place(
    chosen: str | None, tmp_path: Path
) -> None:
    """Set as the engine is imported, before bitsandbytes (imported by peft) writes inductor's default."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    env.update({"TORCHINDUCTOR_CACHE_DIR": chosen} if chosen else {})
    script = ("import adapter_studio.engine, peft\n"
              "from torch._inductor.runtime.cache_dir_utils import cache_dir\nprint(cache_dir())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (chosen or str(tmp_path / "adapter-studio" / "torch-compile"))


def test_an_app_cache_that_cannot_be_written_leaves_inductor_its_default(tmp_path: Path) -> None:
    """A read-only home (here a file where the cache folder would go): importing transformers made inductor's
    folder under the app cache and failed every run, estimate and the window's model with a PermissionError."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = {**os.environ, "XDG_CACHE_HOME": str(blocked)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    script = ("import os, adapter_studio.engine, peft, transformers\n"
              "print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert not out.stdout.strip().startswith(str(blocked))  # inductor's own (it sets the variable itself)


def test_a_relative_cache_home_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The XDG spec: a relative XDG_CACHE_HOME is invalid (it made ./cache wherever the app was started)."""
    from adapter_studio.engine.app_cache import app_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert app_cache_dir() == tmp_path / ".cache" / "adapter-studio"


def test_the_compile_cost_key_follows_what_the_compiled_code_depends_on(tiny_llama: Path) -> None:
    from adapter_studio.engine.spec import method_from_dict
    from adapter_studio.engine.training import compile_cost
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_llama)
    lora = method_from_dict({"name": "lora"})
    key = compile_cost.cost_key("cpu", config, lora, "bf16", SpeedOptions())
    assert key == compile_cost.cost_key("cpu", AutoConfig.from_pretrained(tiny_llama), lora, "bf16", SpeedOptions())
    others = [compile_cost.cost_key("cuda", config, lora, "bf16", SpeedOptions()),
              compile_cost.cost_key("cpu", config, method_from_dict({"name": "lora", "r": 16}), "bf16",
                                    SpeedOptions()),
              compile_cost.cost_key("cpu", config, lora, "float32", SpeedOptions()),
              compile_cost.cost_key("cpu", config, lora, "bf16", SpeedOptions(compile_whole=True))]  # fmt: skip
    assert key not in others and len(set(others)) == len(others)


def test_a_run_takes_the_textbook_steps(tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path) -> None:
    """Same init and batches: the engine's trained tensors equal a hand-written loop's (model loss,
    backward, clipping, AdamW, linear schedule). The speed paths must not change the arithmetic."""
    from accelerate.utils import set_seed
    from adapter_studio.engine.data.batches import collate, epoch_batches
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.methods import MethodContext
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.models.loading import load_model
    from adapter_studio.engine.spec import load_spec_file
    from adapter_studio.engine.training import checkpoints
    from safetensors.torch import load_file
    from transformers import get_scheduler

    # q,v as the tolerance below was set for (fp32 rounding grows with every adapted layer: 1.6e-5 on all)
    lora = {"name": "lora", "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    spec = make_spec(tiny_llama, alpaca_jsonl, lora, max_steps=5, save_every=5,
                     learning_rate=0.01, scheduler="linear", warmup_ratio=0.0, min_lr_ratio=0.0,
                     data={"eval_split": 0.0})  # fmt: skip
    result = run(spec, speed=SpeedOptions(cpu_eager_attention_max_width=0))  # the reference: the model's attention
    assert result.status == "completed", result.error
    latest = checkpoints.latest_checkpoint(result.run_dir / "checkpoints")
    trained = load_file(str(latest / checkpoints.WEIGHTS))

    saved = load_spec_file(result.run_dir / "spec.yaml")
    set_seed(saved.training.seed)
    model, tokenizer, _ = load_model(saved.model, "causal_lm", dtype=torch.float32)
    info = describe_model(model)
    data = prepare_data(saved.data, tokenizer, "causal_lm", saved.data.max_length, saved.training.seed)
    model = saved.method.apply(model, MethodContext(info=info, training=saved.training, total_steps=5))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.01, weight_decay=saved.training.weight_decay)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=5)
    batches = epoch_batches([len(x.input_ids) for x in data.train], 4, saved.training.seed, 0)
    model.train()
    for step in range(5):
        model(**collate([data.train[i] for i in batches[step]], tokenizer.pad_token_id, False)).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, saved.training.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    reference = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert trained.keys() == reference.keys()
    assert max(float((trained[n] - reference[n]).abs().max()) for n in trained) < 1e-5


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "NO False"),  # offline-first: no kernel code fetched from the Hub at load time
        ("YES", "YES True"),  # a person who wants the Hub's kernels says so
    ],
)
def test_hub_kernels_are_off_unless_asked_for(given: str | None, expected: str) -> None:
    # transformers 5 with `kernels` installed fetches a rotary kernel on CUDA at from_pretrained; offline
    # that fetch raised a ValueError transformers does not catch (H200, 2026-12-04). A fresh interpreter:
    # the setting is made when the engine is imported.
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    if given is not None:
        env["USE_HUB_KERNELS"] = given
    code = (
        "import os, adapter_studio.engine; from transformers.integrations.hub_kernels import _kernels_enabled; "
        "print(os.environ['USE_HUB_KERNELS'], _kernels_enabled())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("kernels_first", [False, True], ids=["kernels loaded later", "kernels loaded first"])
def test_no_kernel_is_fetched_from_the_hub_unless_asked(kernels_first: bool) -> None:
    """On a CPU with AVX-512 BF16, importing bitsandbytes (peft does, whenever it is installed, on every path:
    `params` imports peft without the window's heavy imports) called kernels.get_kernel(
    'kernels-community/quantization-bitsandbytes'): code from the Hub online, a warning on stderr offline."""
    code = (
        ("import kernels; " if kernels_first else "")
        + "import sys, adapter_studio.engine, peft, kernels\n"
        "try:\n kernels.get_kernel('kernels-community/quantization-bitsandbytes', version=1); print('fetched')\n"
        "except RuntimeError as e:\n print('refused', 'bitsandbytes' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["refused", "True"], out.stdout + out.stderr
    assert "kernels-community" not in out.stderr and "publisher trust" not in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("memory", "setting", "said"),
    [
        (2**50, "off", "no need to recompute"),  # fits: the faster step
        (2**20, "on", "may run out of memory"),  # fits neither way: on, as the closest, and said so
    ],
)
def test_auto_gradient_checkpointing_follows_the_estimate(
    tiny_llama: Path, make_spec: Spec, alpaca_jsonl: Path, monkeypatch: pytest.MonkeyPatch, memory: int, setting: str,
    said: str,
) -> None:
    from adapter_studio.engine.estimate import fit

    monkeypatch.setattr(fit, "_device_memory", lambda device: memory)
    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=2, eval_samples=0)
    assert spec.training.gradient_checkpointing == "auto"
    result, events = start(spec)
    assert result.status == "completed", result.error
    line = next(e.message for e in events if isinstance(e, Log) and "gradient_checkpointing" in e.message)
    assert line.startswith(f"training.gradient_checkpointing = {setting}: a step of ") and said in line, line
    saved = run_spec_of(result.run_dir)
    assert saved.training.gradient_checkpointing == setting  # a resume keeps the decision


def test_peft_s_deprecated_property_read_is_not_in_a_run_s_output(tiny_llama: Path) -> None:
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` in every get_peft_model; the
    # FutureWarning went to every run's output. A fresh interpreter with warnings shown, as the CLI has them.
    code = (
        "import adapter_studio.engine, sys; from adapter_studio.engine.methods import METHODS, MethodContext; "
        "from adapter_studio.engine.models.info import describe_model; from adapter_studio.engine.spec import "
        "TrainingSpec; from transformers import AutoModelForCausalLM; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); info = describe_model(m); "
        "METHODS['lora']().apply(m, MethodContext(info=info, training=TrainingSpec(), total_steps=10))"
    )
    out = subprocess.run([sys.executable, "-W", "default", "-c", code, str(tiny_llama)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert "is_gradient_checkpointing" not in out.stderr


def test_a_classifier_saved_with_another_head_size_gets_a_new_head_and_says_so(
    tiny_bert_cls: Path, make_spec: Spec, tmp_path: Path, classification_csv: Path
) -> None:
    """An SST-2-like model (2 labels) tuned on 4 news topics: transformers refused the load with
    'ignore_mismatched_sizes' and a report nobody saw."""
    import csv

    path = tmp_path / "topics.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *([f"news item {i}", ("World", "Sports", "Business", "Tech")[i % 4]]
                                                       for i in range(40))])  # fmt: skip
    events: list[Event] = []
    result = run(make_spec(tiny_bert_cls, path, "lora", max_steps=2, eval_samples=0), events.append)
    assert result.status == "completed", result.error
    notes = [e.message for e in events if isinstance(e, Log)]
    assert "the model's classification head has 2 labels and the data 4: a new head of 4 replaces it" in " ".join(notes)
    from adapter_studio.engine.evaluation.run_eval import EvalSettings, evaluate_run

    scored = evaluate_run(result.run_dir, EvalSettings(in_context=0, forgetting=False), write_report=False)
    assert set(scored.metrics["tuned"]) >= {"accuracy", "macro_f1"}  # the run's own 4-label head loads again
    events.clear()
    kept = run(make_spec(tiny_bert_cls, classification_csv, "lora", max_steps=1, eval_samples=0), events.append)
    assert kept.status == "completed" and not any("classification head" in e.message for e in events
                                                  if isinstance(e, Log))  # two labels: its own head is kept
