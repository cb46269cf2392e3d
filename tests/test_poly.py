"""Poly (routing by task): the data's task column reaches every layer as the row's task id, the router
learns a mixture per task, a run records its task names and loads, evaluates, is tried and exported
without its data; data without tasks, or rows without one, is refused with where and what to do."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Event, Metrics
from adapter_studio.engine.training.run import run

POLY = {"name": "poly", "r": 4, "skills": 3}
_RUNS: dict[str, tuple[Any, list[Event]]] = {}


@pytest.fixture(scope="module")
def poly_run(request: pytest.FixtureRequest, make_spec: Callable[..., Any]) -> Callable[[str], tuple[Any, list[Event]]]:
    """`poly_run("llama" | "bert")`: one 20-step Poly run on two-task data (trained on first use)."""

    def get(model: str) -> tuple[Any, list[Event]]:
        if model not in _RUNS:
            model_dir = request.getfixturevalue("tiny_bert_cls" if model == "bert" else "tiny_llama")
            data = request.getfixturevalue("multitask_csv" if model == "bert" else "multitask_jsonl")
            spec = make_spec(model_dir, data, POLY, learning_rate=1e-2 if model == "bert" else 0.3,
                             data={"eval_split": 0.1})  # fmt: skip
            events: list[Event] = []
            _RUNS[model] = (run(spec, events.append), events)
        return _RUNS[model]

    return get


@pytest.mark.parametrize("model", ["llama", "bert"])
def test_a_poly_run_trains_on_two_tasks_and_records_them(model: str, poly_run: Callable[..., Any]) -> None:
    from adapter_studio.engine.inference.trained import run_spec

    result, events = poly_run(model)
    assert result.status == "completed", result.error
    losses = [e.loss for e in events if isinstance(e, Metrics)]
    assert sum(losses[-3:]) < sum(losses[:3]) * 0.98
    expected = ["film", "shop"] if model == "bert" else ["double", "reverse"]
    assert run_spec(result.run_dir).method.tasks == expected


def test_each_task_gets_its_own_mixture_of_skills(poly_run: Callable[..., Any]) -> None:
    """The router's weights differ between the two tasks after training, and a row's output depends on
    its task: the same input under the two task ids gives different logits."""
    from adapter_studio.engine.inference.trained import load_trained
    from adapter_studio.engine.methods.poly import routed

    result, _ = poly_run("llama")
    trained = load_trained(result.run_dir)
    logits = trained.model.base_model.model.model.layers[0].self_attn.q_proj.poly_router["default"].module_logits
    assert logits.shape == (2, 3) and not torch.allclose(logits[0], logits[1])
    ids = torch.tensor([[5, 6, 7, 8]] * 2)
    with torch.no_grad(), routed(trained.model, torch.tensor([0, 1])):
        both = trained.model(input_ids=ids).logits
    with torch.no_grad(), routed(trained.model, 1):
        second = trained.model(input_ids=ids[:1]).logits
    assert not torch.allclose(both[0], both[1])
    assert torch.allclose(both[1], second[0], atol=1e-5)


@pytest.mark.parametrize(
    ("data", "settings", "words"),
    [
        ("alpaca_jsonl", {}, ("no task column", "data.columns.task")),
        ("multitask_jsonl", {"packing": True}, ("packing", "turn packing off")),
    ],
)
def test_data_a_poly_run_cannot_route_is_refused(
    data: str, settings: dict[str, Any], words: tuple[str, ...], request: pytest.FixtureRequest,
    make_spec: Callable[..., Any], tiny_llama: Path,
) -> None:  # fmt: skip
    spec = make_spec(tiny_llama, request.getfixturevalue(data), POLY, data=settings)
    result = run(spec, lambda e: None)
    assert result.status == "failed" and all(w in (result.error or "") for w in words), result.error


def test_rows_without_a_task_are_named(make_spec: Callable[..., Any], tiny_llama: Path, multitask_jsonl: Path,
                                       tmp_path: Path) -> None:  # fmt: skip
    rows = [json.loads(line) for line in multitask_jsonl.read_text().splitlines()]
    rows[6]["task"] = ""
    path = tmp_path / "gaps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(make_spec(tiny_llama, path, POLY, data={"eval_split": 0.0}), lambda e: None)
    assert result.status == "failed" and "1 training rows name no task (rows 7)" in (result.error or "")


@pytest.mark.parametrize(
    ("value", "name"),
    [("math", "math"), (" math ", "math"), (3, "3"), (3.0, "3"), (2.5, "2.5"), ("", None), (None, None),
     (float("nan"), None), (True, None), (["a"], None), ({"a": 1}, None)],
)
def test_task_cells_are_read_as_names_or_as_none(value: Any, name: str | None) -> None:
    from adapter_studio.engine.data.shapes import _task_name

    assert _task_name(value) == name


def test_a_task_column_of_odd_values_never_fails_another_methods_run(
    make_spec: Callable[..., Any], tiny_llama: Path, multitask_jsonl: Path, tmp_path: Path
) -> None:
    """Only Poly reads the task column (found by its name): a LoRA run on data whose `task` holds lists trains."""
    rows = [{**json.loads(line), "task": ["a", "b"]} for line in multitask_jsonl.read_text().splitlines()]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(make_spec(tiny_llama, path, "lora", max_steps=2, eval_samples=0), lambda e: None)
    assert result.status == "completed", result.error


def test_poly_is_refused_on_conv1d_layers(tiny_gpt2: Path) -> None:
    from adapter_studio.engine.methods.poly import PolyRouting
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.spec import TrainingSpec
    from transformers import AutoModelForCausalLM

    info = describe_model(AutoModelForCausalLM.from_pretrained(tiny_gpt2))
    with pytest.raises(UserError, match=r"nn\.Linear layers only"):
        PolyRouting().fill_defaults(info).check(info, TrainingSpec())


def test_evaluation_answers_each_row_as_its_task(poly_run: Callable[..., Any], tmp_path: Path,
                                                 multitask_jsonl: Path) -> None:  # fmt: skip
    """The Evaluate page's tuned column routes each held-out row by its own task: its answers are the
    playground's answers under that task; a file whose rows name another task is refused at that row."""
    from adapter_studio.engine.evaluation.run_eval import EvalSettings, evaluate_run
    from adapter_studio.engine.inference.playground import Playground

    result, _ = poly_run("llama")
    settings = EvalSettings(checkpoint="last", in_context=0, limit=6, max_new_tokens=12)
    evaluation = evaluate_run(result.run_dir, settings, write_report=False)
    assert evaluation.metrics["tuned"] and any("as the task 'double'" in n for n in evaluation.notes)
    pg = Playground.open(result.run_dir)
    rows = {r["input"]: r for r in evaluation.rows}
    for example in pg.held_out_examples(6):
        answer = "".join(pg.stream("tuned", example.message, max_new_tokens=12, task=example.task)).strip()
        assert rows[example.message]["answers"]["tuned"] == answer, example.task

    rows_ = [json.loads(line) for line in multitask_jsonl.read_text().splitlines()[:4]]
    rows_[2]["task"] = "translate"
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    with pytest.raises(UserError) as refused:
        evaluate_run(result.run_dir, EvalSettings(data=str(other), in_context=0), write_report=False)
    assert "task 'translate' is not one of the run's" in refused.value.message
    assert refused.value.where.endswith("other.jsonl:3")


def test_the_playground_answers_as_the_chosen_task(poly_run: Callable[..., Any]) -> None:
    from adapter_studio.engine.inference.playground import Playground

    result, _ = poly_run("bert")
    pg = Playground.open(result.run_dir)
    assert pg.tasks == ["film", "shop"]
    shop, film = (pg.classify("great fun love", task=t)["tuned"] for t in ("shop", "film"))
    assert shop != film  # one text, two tasks: two mixtures of skills
    assert pg.classify("great fun love")["tuned"] == film  # no task given: the first one
    with pytest.raises(UserError, match="unknown task 'news'") as refused:
        pg.classify("great fun love", task="news")
    assert "film, shop" in refused.value.fix


def test_the_adapter_export_names_its_tasks_and_loads_in_peft(poly_run: Callable[..., Any], tmp_path: Path) -> None:
    """tasks.json and the model card say which id is which task; peft's own PolyModel reads `task_ids`."""
    from adapter_studio.engine.export.run_export import export_run
    from adapter_studio.engine.inference.trained import load_base, load_trained
    from adapter_studio.engine.methods.poly import routed
    from peft import PeftModel

    result, _ = poly_run("llama")
    exported = export_run(result.run_dir, "adapter", tmp_path / "adapter")
    assert json.loads((exported.path / "tasks.json").read_text()) == {"tasks": ["double", "reverse"]}
    assert "task_ids=torch.tensor([0])" in (exported.path / "README.md").read_text()
    tuned = load_trained(result.run_dir)
    base, _, _ = load_base(tuned.spec)
    reloaded = PeftModel.from_pretrained(base, str(exported.path)).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad(), routed(tuned.model, torch.tensor([1, 0])):
        want = tuned.model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, task_ids=torch.tensor([1, 0])).logits, want)
    with pytest.raises(UserError, match="cannot be merged"):
        export_run(result.run_dir, "merged", tmp_path / "merged")


@pytest.mark.gui
def test_the_try_page_offers_the_runs_tasks(poly_run: Callable[..., Any], qtbot: Any) -> None:
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from adapter_studio.gui.pages.try_page import TryPage
    from adapter_studio.gui.state import StudioState

    result, _ = poly_run("bert")
    page = TryPage(StudioState())
    qtbot.addWidget(page)
    page.error = lambda error: pytest.fail(str(error))  # type: ignore[method-assign]
    page.show()
    page.state.set_current_run(result.run_dir)
    qtbot.waitUntil(lambda: page.playground is not None, timeout=30_000)
    combo = page.task_choice
    assert combo.isVisible() and [combo.itemText(i) for i in range(combo.count())] == ["film", "shop"]
    shop_row = next(i for i, e in enumerate(page.held_out) if e.task == "shop")
    page.examples.setCurrentRow(shop_row)
    assert combo.currentText() == "shop"
    page.generate()
    qtbot.waitUntil(lambda: not page.busy, timeout=30_000)
    shown = {page.probabilities.item(r, 0).text(): page.probabilities.item(r, 2).text()
             for r in range(page.probabilities.rowCount())}  # fmt: skip
    expected = page.playground.classify(page.prompt.toPlainText(), task="shop")["tuned"]
    assert shown == {label: f"{p:.1%}" for label, p in expected.items()}


@pytest.mark.slow
def test_poly_trains_smollm2_on_two_tasks_through_the_cli(tmp_path: Path) -> None:
    """The embedded SmolLM2 on two real tasks (the demo's dates, and reversing words), from the command
    line: the run completes, records its tasks and exports an adapter that names them."""
    from conftest import reversal_pairs, write_jsonl
    from test_cli import cli

    demo = Path(__file__).resolve().parent.parent / "resources" / "demo" / "train.jsonl"
    dates = [{**json.loads(line), "task": "dates"} for line in demo.read_text().splitlines()[:40]]
    words = [{"instruction": q, "input": "", "output": a, "task": "reverse"} for q, a in reversal_pairs(40)]
    data = write_jsonl(tmp_path / "two_tasks.jsonl", [r for pair in zip(dates, words, strict=True) for r in pair])
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({
        "model": {"source": "embedded:smollm2-135m-instruct"}, "data": {"path": str(data), "max_length": 96},
        "method": {"name": "poly"}, "output_dir": str(tmp_path / "runs"),
        "training": {"max_steps": 3, "batch_size": 4, "eval_samples": 2, "save_every": 3},
    }))  # fmt: skip
    done = cli("train", str(spec), timeout=900)
    assert done.returncode == 0 and "finished completed at step 3" in done.stdout, done.stdout[-2000:] + done.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    exported = cli("export", str(run_dir), "--adapter", "--out", str(tmp_path / "export"), timeout=600)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "export" / "tasks.json").read_text()) == {"tasks": ["dates", "reverse"]}


@pytest.mark.gui
def test_from_the_window_the_task_column_is_mapped_and_poly_trains(window: Any, qtbot: Any, tiny_llama: Path,
                                                                   multitask_jsonl: Path) -> None:  # fmt: skip
    """A new user's path: the Data page finds the task column, the Method page says where Poly's tasks come
    from, and Start trains it; the run records the tasks."""
    from adapter_studio.engine.spec import TrainingSpec
    from test_data_page import choose_model, open_data

    page = choose_model(window, qtbot, tiny_llama)
    open_data(page, qtbot, multitask_jsonl)
    qtbot.waitUntil(lambda: "task" in page.combos, timeout=30_000)
    assert page.combos["task"].currentText() == "task" and window.state.data.columns.get("task") == "task"
    window.go_to("method")
    method_page = window.pages["method"]
    method_page.select("poly")
    assert "double, reverse (from the data's task column)" in method_page.details.text()
    assert "Cannot train" not in method_page.details.text()
    # The Compare page counts the router for the data's two tasks: the count the run reports.
    from adapter_studio.engine.estimate.table import estimate_table
    from adapter_studio.gui.pages.compare_page import cost_overrides

    overrides = cost_overrides(window.state)
    assert 'method.tasks=["double", "reverse"]' in overrides
    compared = estimate_table(str(tiny_llama), "poly", overrides)[0]["trainable_params"]
    window.state.training = TrainingSpec(max_steps=4, batch_size=4, save_every=4, eval_samples=0, learning_rate=0.05,
                                         precision="float32")  # fmt: skip
    window.train_page.start()
    qtbot.waitUntil(lambda: not window.train_page.controller.running, timeout=120_000)
    assert window.train_page.last_status == "completed", window.train_page.last_error
    from adapter_studio.engine.inference.trained import run_spec

    assert run_spec(window.state.current_run).method.tasks == ["double", "reverse"]
    from adapter_studio.engine.events import Started, read_events

    started = next(e for e in read_events(window.state.current_run / "events.jsonl") if isinstance(e, Started))
    assert compared == started.trainable_params


@pytest.mark.parametrize(("data", "refused"), [("alpaca_jsonl", True), ("multitask_jsonl", False)])
def test_a_sweep_refuses_poly_up_front_on_data_without_tasks(
    data: str, refused: bool, request: pytest.FixtureRequest, make_spec: Callable[..., Any], tiny_llama: Path
) -> None:
    from adapter_studio.engine.training.sweep import plan_sweep

    plan = plan_sweep(make_spec(tiny_llama, request.getfixturevalue(data)), ["lora", "poly"])
    lora, poly = plan.entries
    assert lora.refused is None
    assert bool(poly.refused) == refused and (not refused or "no task column" in (poly.refused or ""))
