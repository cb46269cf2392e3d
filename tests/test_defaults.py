"""The defaults the engine fills in (engine/defaults.py), their reasons, the schedule's floor and the
divergence watch: tables of cases on model descriptions, no model built."""

from __future__ import annotations

import math

import pytest
from adapter_studio.engine import defaults
from adapter_studio.engine.data.examples import held_out_count
from adapter_studio.engine.methods import METHODS
from adapter_studio.engine.models.info import ModelInfo
from adapter_studio.engine.spec import DataSpec, ModelSpec, RunSpec, TrainingSpec
from adapter_studio.engine.training.divergence import WINDOW, DivergenceWatch, guessing_loss
from adapter_studio.engine.training.optimizers import WarmupThenDecay


def info(params: float, task: str = "causal_lm") -> ModelInfo:
    linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    return ModelInfo(model_type="llama", architecture="LlamaForCausalLM", task=task, num_layers=2, hidden_size=64,
                     total_params=int(params), linear_names=linear, query_value_targets=["q_proj", "v_proj"],
                     head_names=["lm_head"])  # fmt: skip


def spec(method: str = "lora", **training: object) -> RunSpec:
    return RunSpec(model=ModelSpec(source="m"), data=DataSpec(path="d.jsonl"), method=METHODS[method](),
                   training=TrainingSpec(**training))  # fmt: skip


@pytest.mark.parametrize(
    ("method", "params", "task", "batch", "rate"),
    [
        ("lora", 135e6, "causal_lm", 4, 2e-3),  # small models take higher rates
        ("lora", 22e6, "classification", 16, 2e-3),
        ("dora", 1.1e9, "causal_lm", 4, 1e-3),
        ("rslora", 3e9, "causal_lm", 4, 5e-4),
        ("lora", 8e9, "causal_lm", 4, 2e-4),  # QLoRA's anchor for 7-13B
        ("adalora", 70e9, "causal_lm", 4, 1e-4),
        ("full", 135e6, "causal_lm", 2, 2e-5),
        ("full", 22e6, "classification", 16, 5e-5),
        ("full", 8e9, "causal_lm", 2, 1e-5),
        ("prompt_tuning", 135e6, "causal_lm", 4, METHODS["prompt_tuning"].default_lr),  # the method's own
        ("ia3", 22e6, "classification", 16, METHODS["ia3"].default_lr),
    ],
)
def test_batch_and_rate_fit_method_model_size_and_task(method: str, params: float, task: str, batch: int,
                                                        rate: float) -> None:  # fmt: skip
    resolved = defaults.resolve(spec(method), info(params, task), task)
    assert resolved.spec.training.batch_size == batch
    assert resolved.spec.training.learning_rate == pytest.approx(rate)
    assert set(resolved.reasons) >= {"training.batch_size", "training.learning_rate"}
    assert all(reason and "\n" not in reason for reason in resolved.reasons.values())


@pytest.mark.parametrize(
    ("objective", "method", "params", "rate"),
    [
        ("sft", "lora", 135e6, 2e-3),
        ("dpo", "lora", 135e6, 5e-4),  # a quarter of the supervised rate
        ("ipo", "dora", 1.1e9, 2.5e-4),
        ("kto", "lora", 8e9, 5e-5),  # the usual LoRA DPO rate on 7-8B
        ("simpo", "full", 135e6, 5e-6),
        ("orpo", "prompt_tuning", 135e6, METHODS["prompt_tuning"].default_lr / 4),
    ],
)
def test_preference_objectives_take_a_lower_rate(objective: str, method: str, params: float, rate: float) -> None:
    from adapter_studio.engine.objectives import OBJECTIVES

    given = spec(method).model_copy(update={"objective": OBJECTIVES[objective]()})
    resolved = defaults.resolve(given, info(params), "causal_lm")
    assert resolved.spec.training.learning_rate == pytest.approx(rate)
    assert (OBJECTIVES[objective].title in resolved.reasons["training.learning_rate"]) == (objective != "sft")
    assert defaults.default_rate(given, info(params), "causal_lm") == pytest.approx(rate)


@pytest.mark.parametrize(("batch", "rate"), [(4, 1e-3), (8, 1.4e-3), (16, 2e-3), (64, 2e-3)])
def test_a_rate_safe_only_with_a_larger_batch_is_lowered_for_a_small_one(batch: int, rate: float) -> None:
    """LoRA at 2e-3 learnt AG News at batch 16 (0.913) and collapsed at batch 4 (issue 21): the rate
    falls by the square root of the batch ratio, and never rises above its reference."""
    resolved = defaults.resolve(spec(batch_size=batch), info(22e6, "classification"), "classification")
    assert resolved.spec.training.learning_rate == pytest.approx(rate)
    assert "training.batch_size" not in resolved.reasons  # the person's own value has no reason to give
    assert ("lowered" in resolved.reasons["training.learning_rate"]) == (batch < 16)


def test_values_the_person_gave_are_kept_and_not_explained() -> None:
    given = spec(batch_size=3, learning_rate=1e-4)
    given.method.target_modules = ["q_proj"]
    resolved = defaults.resolve(given, info(135e6), "causal_lm")
    assert (resolved.spec.training.batch_size, resolved.spec.training.learning_rate) == (3, 1e-4)
    assert resolved.spec.method.target_modules == ["q_proj"] and resolved.reasons == {}
    assert defaults.resolve(spec(learning_rate="auto"), info(135e6), "causal_lm").spec.training.learning_rate == "auto"


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "loraplus", "adalora", "poly"])  # Poly's skills are LoRAs
def test_lora_family_targets_every_linear_layer_of_the_blocks(method: str) -> None:
    resolved = defaults.resolve(spec(method), info(135e6), "causal_lm")
    assert resolved.spec.method.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]  # fmt: skip  # never the output head
    assert "method.target_modules" in resolved.reasons


@pytest.mark.parametrize(("rows", "epochs"), [(50, 3.0), (240, 3.0), (1000, 3.0), (1500, 2.0), (2999, 2.0),
                                              (3000, 1.0), (100_000, 1.0)])  # fmt: skip
def test_epochs_come_from_the_data_size_when_neither_epochs_nor_steps_are_given(rows: int, epochs: float) -> None:
    resolved = defaults.resolve_epochs(spec(), rows)
    assert resolved.spec.training.epochs == epochs and f"{rows:,} training rows" in resolved.reasons["training.epochs"]
    assert defaults.resolve_epochs(spec(epochs=0.5), rows).spec.training.epochs == 0.5
    kept = defaults.resolve_epochs(spec(max_steps=7), rows)
    assert kept.spec.training.epochs is None and kept.reasons == {}


@pytest.mark.parametrize(
    ("rows", "held"),
    [
        (2, 1), (10, 1), (50, 5), (80, 8),  # 10 %, one row at least
        (100, 8), (200, 8), (240, 12), (400, 32),  # under 500 rows the share shrinks with the data, to 8 rows
        (500, 50), (2000, 200), (20_000, 2000),  # 10 %
        (20_001, 2000), (100_000, 2000), (300_000, 2000), (1_234_567, 2000),  # at most 2,000: each evaluation
    ],
)  # fmt: skip
def test_held_out_rows_shrink_with_small_data_and_stop_at_2000_when_the_share_is_left_empty(
    rows: int, held: int
) -> None:
    """10 % of 300,000 rows took 16 minutes to score after each checkpoint; a share the person gives is kept."""
    assert held_out_count(rows, None) == held
    resolved = defaults.resolve_eval_split(spec(), rows)
    share = resolved.spec.data.eval_split
    assert held_out_count(rows, share) == held  # the saved share holds out the same rows again
    assert f"{rows:,} rows: {held:,} held out" in resolved.reasons["data.eval_split"]
    assert held_out_count(rows, 0.1) == max(1, round(rows * 0.1))  # a share the person gave is kept
    given = spec().model_copy(update={"data": DataSpec(path="d.jsonl", eval_split=0.2)})
    assert defaults.resolve_eval_split(given, rows).reasons == {}
    separate = spec().model_copy(update={"data": DataSpec(path="d.jsonl", eval_path="e.jsonl")})
    assert defaults.resolve_eval_split(separate, rows).spec.data.eval_split is None


@pytest.mark.parametrize(("params", "said"), [(90_000, "90K"), (135e6, "135M"), (1.24e9, "1.2B")])
def test_a_models_size_reads_in_its_own_unit(params: float, said: str) -> None:
    assert f"on a {said}-parameter model" in defaults.rate_for_size(METHODS["lora"](), int(params), "causal_lm").reason


def test_explain_writes_one_line_per_chosen_value() -> None:
    resolved = defaults.resolve(spec(), info(135e6), "causal_lm")
    lines = defaults.explain(resolved.spec, resolved.reasons)
    assert "training.learning_rate = 0.002: LoRA on a 135M-parameter model: smaller models take higher rates" in lines
    assert any(line.startswith("method.target_modules = q_proj, k_proj, v_proj") for line in lines)


@pytest.mark.parametrize(
    ("kind", "floor", "expected"),
    [
        # 10 steps, 2 warming up: the first step trains at a third of the peak, never at zero
        ("cosine", 0.1, [1 / 3, 2 / 3, 1.0, None, None, None, None, None, None, None, 0.1]),
        ("linear", 0.0, [1 / 3, 2 / 3, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]),
        ("linear", 0.2, [1 / 3, 2 / 3, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]),
        ("constant", 0.1, [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_schedule_warms_up_then_decays_to_its_floor(kind: str, floor: float, expected: list[float | None]) -> None:
    schedule = WarmupThenDecay(kind, warmup_steps=2, total_steps=10, floor=floor)
    got = [schedule(step) for step in range(11)]
    for value, want in zip(got, expected, strict=True):
        assert want is None or value == pytest.approx(want)
    assert got[2:] == sorted(got[2:], reverse=True)


def test_schedule_state_is_plain_data_for_a_json_checkpoint() -> None:
    import json

    import torch
    from adapter_studio.engine.training.optimizers import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, TrainingSpec(warmup_ratio=0.1), total_steps=20)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    state = json.loads(json.dumps(scheduler.state_dict()))
    again = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), TrainingSpec(), 20)
    again.load_state_dict(state)
    assert again.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def _feed(watch: DivergenceWatch, losses: list[float]) -> str | None:
    return next((message for loss in losses if (message := watch.add(loss))), None)


@pytest.mark.parametrize(
    ("losses", "chance", "diverged"),
    [
        ([2.0] * WINDOW + [2.0 - 0.01 * i for i in range(100)], None, False),  # learning
        ([2.0] * 30 + [50.0] * 3 + [1.5] * 30, None, False),  # a spike that recovers is noise
        ([2.0] * 20 + [1.0] * 20 + [4.0] * 30, None, True),  # rising far above its start and best
        ([2.0] * 20 + [2.6] * 40, None, False),  # above its start, but not twice its best
        ([1.39] * 10 + [0.5] * 30 + [1.38] * 50, math.log(4), True),  # a classifier collapsed to guessing
        # MiniLM on AG News at lr 4.6e-3 (issue 21): down to 0.84 × guessing, then back for good
        ([1.39] * 10 + [1.16] * 15 + [1.4, 1.45, 1.38, 1.36] * 40, math.log(4), True),
        ([1.39] * 10 + [1.2] * 15 + [1.33] * 25 + [1.1] * 30, math.log(4), False),  # back near guessing a while
        ([1.39] * 10 + [1.3] * 60, math.log(4), False),  # slow, never learnt: not a collapse
        ([1.39] * 10 + [0.5] * 30 + [1.38] * 50, None, False),  # a generation task has no guessing loss
    ],
)
def test_divergence_watch_stops_runs_that_diverged_not_noisy_ones(losses: list[float], chance: float | None,
                                                                  diverged: bool) -> None:  # fmt: skip
    message = _feed(DivergenceWatch(chance), losses)
    assert (message is not None) == diverged, message


def test_guessing_loss_is_the_entropy_of_the_labels() -> None:
    assert guessing_loss([0, 1, 0, 1]) == pytest.approx(math.log(2))
    assert guessing_loss([0, 0, 0, 1]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert guessing_loss([3, 3]) is None
