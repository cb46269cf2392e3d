"""The learning-rate finder (`training.learning_rate: auto`): its pick on known curves, and on tiny models
that it leaves the model, the random numbers and the data order as they were, so an `auto` run trains
exactly as a run given the rate it picked."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import LrFinder, Metrics, Stage, Started, read_events
from adapter_studio.engine.spec import parse_spec
from adapter_studio.engine.training import lr_finder
from adapter_studio.engine.training.lr_finder import BAND, pick_rate, range_rates
from adapter_studio.engine.training.run import run
from torch.optim.optimizer import register_optimizer_step_post_hook


def default_rate(events: list[Any], run_dir: Path) -> float:
    """The rate engine.defaults gives this run's method, model size, task and batch (the finder's centre)."""
    from adapter_studio.engine.defaults import rate_for

    started = next(e for e in events if isinstance(e, Started))
    spec = parse_spec(yaml.safe_load((run_dir / "spec.yaml").read_text()))
    return rate_for(spec.method, started.total_params, spec.model.task, spec.training.batch_size).value


# --- the pick, on curves of known shape ------------------------------------------------------------


def range_curve(rates: list[float], best_rate: float, noise: float, seed: int = 0) -> list[float]:
    """A range test's loss: flat at 2.0, falling fastest a decade below `best_rate`, lowest at it, then
    rising fast; with uniform noise of ±`noise`."""
    rng = random.Random(seed)
    out = []
    for rate in rates:
        x = math.log10(rate / best_rate)  # decades from the minimum
        fall = 1.0 / (1.0 + math.exp(-3.0 * (x + 1.0)))  # a logistic step centred a decade below it
        rise = 3.0 * max(x, 0.0) ** 2
        out.append(2.0 - 1.2 * fall + rise + rng.uniform(-noise, noise))
    return out


@pytest.mark.parametrize(
    ("best_rate", "default", "noise"),
    [(1e-2, 2e-4, 0.01), (1e-2, 2e-4, 0.05), (3e-3, 2e-4, 0.03), (3e-1, 3e-2, 0.03)],
    ids=["lora-clean", "lora-noisy", "lora-lower", "prompt-tuning"],
)
def test_the_pick_is_the_steepest_fall_before_the_minimum(best_rate: float, default: float, noise: float) -> None:
    rates = range_rates(48)
    losses = range_curve(rates, best_rate, noise)
    pick = pick_rate(rates, losses, default)
    # The curve falls fastest a decade below its minimum: the pick lands within a third of a decade of it.
    assert abs(math.log10(pick.rate / (best_rate / 10))) < 0.35, pick
    assert pick.reason.startswith(("steepest fall of the smoothed loss at", "between the steepest fall"))
    assert len(pick.smoothed) == len(losses)


def test_a_fall_steepest_at_the_edge_of_diverging_picks_below_it() -> None:
    """MiniLM on AG News (issue 21): the loss fell fastest right where it was lowest (4.6e-3), then rose;
    trained at that rate the classifier fell back to chance. The pick is midway (log scale) between the
    steepest fall and a tenth of the minimum's rate."""
    rates = range_rates(50)
    edge = min(range(50), key=lambda i: abs(rates[i] - 4.6e-3))
    losses = [1.39] * (edge - 3) + [1.3, 1.1, 0.8, 0.7] + [1.5 + 0.5 * i for i in range(50 - edge - 1)]
    pick = pick_rate(rates, losses, 2e-3)
    assert pick.reason.startswith("between the steepest fall"), pick.reason
    steepest = float(pick.reason.split(" at ")[1].split(" ")[0])
    lowest = rates[min(range(50), key=lambda i: pick.smoothed[i])]
    assert steepest > lowest / 10 and pick.rate == pytest.approx(math.sqrt(steepest * lowest / 10), rel=0.05)
    assert pick.rate < lowest / 2


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("flat", "did not fall clearly"),
        ("only rising", "did not fall clearly"),
        ("diverged at once", "diverged within 3 steps"),
        ("noise only", "did not fall clearly"),
    ],
)
def test_a_curve_that_says_nothing_gives_the_methods_default_with_the_reason(case: str, expected: str) -> None:
    rates = range_rates(40)
    rng = random.Random(1)
    losses = {
        "flat": [2.0] * 40,
        "only rising": [2.0 + 0.05 * i for i in range(40)],
        "diverged at once": [2.0, 3.0, 9.0],
        "noise only": [2.0 + rng.uniform(-0.3, 0.3) for _ in range(40)],
    }[case]
    pick = pick_rate(rates[: len(losses)], losses, 2e-4)
    assert pick.rate == 2e-4
    assert expected in pick.reason and "the default rate 0.0002 is used" in pick.reason


def test_a_pick_outside_the_methods_band_is_kept_within_it() -> None:
    rates = range_rates(48)
    pick = pick_rate(rates, range_curve(rates, 0.5, 0.01), 2e-5)  # full fine-tuning's default
    assert pick.rate == pytest.approx(2e-5 * BAND)
    assert f"kept within {BAND:g}× of the default rate 2e-05" in pick.reason


def test_the_smoothing_does_not_lag_the_rate() -> None:
    # A straight fall then a rise: the smoothed minimum stays where the raw one is.
    losses = [5.0 - 0.1 * i for i in range(30)] + [2.0 + 0.5 * i for i in range(1, 10)]
    smoothed = lr_finder.smooth(losses)
    assert abs(smoothed.index(min(smoothed)) - losses.index(min(losses))) <= 1


def test_finder_steps_scale_with_the_data_within_bounds() -> None:
    assert [lr_finder.finder_steps(n) for n in (3, 30, 45, 60, 5000)] == [30, 30, 45, 60, 60]
    rates = range_rates(30)
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(rates[1] / rates[0]) for a, b in itertools.pairwise(rates))


# --- the spec --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), (3e-4, 3e-4), ("3e-4", 3e-4), (None, None)]
)
def test_learning_rate_takes_a_number_or_auto(value: Any, expected: Any) -> None:
    spec = parse_spec({"model": {"source": "m"}, "data": {"path": "d"}, "training": {"learning_rate": value}})
    assert spec.training.learning_rate == expected


@pytest.mark.parametrize("value", [-1, 0, 11, "fast"])
def test_a_bad_learning_rate_names_the_field_and_says_auto_is_allowed(value: Any) -> None:
    with pytest.raises(UserError) as caught:
        parse_spec({"model": {"source": "m"}, "data": {"path": "d"}, "training": {"learning_rate": value}})
    message = str(caught.value)
    assert "training.learning_rate:" in message and "'auto'" in message
    assert "constrained" not in message and "literal" not in message  # the union's members stay out of it


# --- on tiny models --------------------------------------------------------------------------------

CASES = [
    ("llama", "lora"),
    ("llama", "loraplus"),  # its own optimizer: two groups at different rates
    ("llama", "ia3"),
    ("llama", "prompt_tuning"),
    ("llama", "full"),
    ("bert", "lora"),  # classification
]


def model_and_data(request: pytest.FixtureRequest, model: str) -> tuple[Path, Path]:
    if model == "bert":
        return request.getfixturevalue("tiny_bert_cls"), request.getfixturevalue("classification_csv")
    return request.getfixturevalue("tiny_llama"), request.getfixturevalue("alpaca_jsonl")


def trainable_sum(session: Any) -> float:
    model = session.accelerator.unwrap_model(session.model)
    return float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))


@pytest.mark.parametrize(("model", "method"), CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_the_finder_picks_within_the_band_and_puts_the_model_back(  # type: ignore[no-untyped-def]
    request, monkeypatch, make_spec, model, method
) -> None:
    model_dir, data = model_and_data(request, model)
    seen: dict[str, Any] = {}
    real = lr_finder._range_test

    def watched(session: Any, rates: list[float]) -> Any:
        unwrapped = session.accelerator.unwrap_model(session.model)
        seen["before"] = {k: v.clone() for k, v in unwrapped.state_dict().items()}
        seen["rng"] = torch.get_rng_state()
        during: list[float] = []
        # After every optimizer step of the test: the weights it trains really move (or restoring proves nothing).
        hook = register_optimizer_step_post_hook(
            lambda *_: during.append(trainable_sum(session))
        )
        try:
            result = real(session, rates)
        finally:
            hook.remove()
        seen["during"], seen["after_sum"] = during, trainable_sum(session)
        seen["after"] = {k: v.clone() for k, v in unwrapped.state_dict().items()}
        seen["rng_after"] = torch.get_rng_state()
        return result

    monkeypatch.setattr(lr_finder, "_range_test", watched)
    events: list[Any] = []
    result = run(make_spec(model_dir, data, method, learning_rate="auto", max_steps=2, eval_samples=0), events.append)
    assert result.status == "completed", result.error

    found = [e for e in events if isinstance(e, LrFinder)]
    assert len(found) == 1
    event = found[0]
    default = default_rate(events, result.run_dir)
    assert default / BAND * 0.99 <= event.chosen <= default * BAND * 1.01, event
    assert event.reason and len(event.rates) == len(event.losses) == len(event.raw_losses) >= 5
    assert event.rates == sorted(event.rates) and event.rates[0] == pytest.approx(1e-6)
    saved = yaml.safe_load((result.run_dir / "spec.yaml").read_text())
    assert saved["training"]["learning_rate"] == event.chosen
    assert any(isinstance(e, Stage) and e.stage == lr_finder.STAGE for e in events)
    # Put back bit for bit: every parameter and buffer, and the random number generator.
    assert seen["before"].keys() == seen["after"].keys()
    changed = [k for k, v in seen["before"].items() if not torch.equal(v, seen["after"][k])]
    assert not changed, changed[:5]
    assert torch.equal(seen["rng"], seen["rng_after"])
    assert any(not math.isclose(s, seen["after_sum"], rel_tol=0, abs_tol=1e-9) for s in seen["during"])


@pytest.mark.parametrize(("model", "method"), [("llama", "lora"), ("bert", "lora")], ids=["llama", "bert"])
def test_an_auto_run_trains_exactly_as_a_run_given_the_rate_it_picked(  # type: ignore[no-untyped-def]
    request, make_spec, model, method
) -> None:
    model_dir, data = model_and_data(request, model)
    # Dropout and a seed: the test fails if the finder used up random numbers or moved the data order.
    fields = {"name": method, "dropout": 0.3}
    settings = {"max_steps": 12, "seed": 3, "eval_samples": 0, "save_every": 6}
    auto_events: list[Any] = []
    auto = run(make_spec(model_dir, data, fields, learning_rate="auto", **settings), auto_events.append)
    assert auto.status == "completed", auto.error
    chosen = yaml.safe_load((auto.run_dir / "spec.yaml").read_text())["training"]["learning_rate"]
    assert isinstance(chosen, float)
    given_events: list[Any] = []
    given = run(make_spec(model_dir, data, fields, learning_rate=chosen, **settings), given_events.append)
    assert given.status == "completed", given.error

    def curve(events: list[Any]) -> list[tuple[float, float, float]]:
        return [(m.loss, m.lr, m.grad_norm) for m in events if isinstance(m, Metrics)]

    assert len(curve(auto_events)) == 12
    for (loss_a, lr_a, grad_a), (loss_b, lr_b, grad_b) in zip(curve(auto_events), curve(given_events), strict=True):
        assert abs(loss_a - loss_b) <= 1e-6 and abs(grad_a - grad_b) <= 1e-6
        assert lr_a == pytest.approx(lr_b, rel=1e-12)
    assert not any(isinstance(e, LrFinder) for e in given_events)


def test_resuming_an_auto_run_keeps_the_rate_it_found(tiny_llama, alpaca_jsonl, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", learning_rate="auto", max_steps=4, save_every=2,
                     eval_samples=0)  # fmt: skip
    first = run(spec)
    assert first.status == "completed", first.error
    chosen = yaml.safe_load((first.run_dir / "spec.yaml").read_text())["training"]["learning_rate"]
    finders = sum(isinstance(e, LrFinder) for e in read_events(first.run_dir / "events.jsonl"))
    assert finders == 1

    longer = spec.model_copy(update={"training": spec.training.model_copy(update={"max_steps": 8})})
    assert longer.training.learning_rate == "auto"  # as the window or `--set` would hand it back
    events: list[Any] = []
    second = run(longer, events.append, resume_dir=first.run_dir)
    assert second.status == "completed", second.error
    assert not any(isinstance(e, LrFinder) for e in events)  # no second range test
    assert yaml.safe_load((first.run_dir / "spec.yaml").read_text())["training"]["learning_rate"] == chosen
    peak = max(m.lr for m in read_events(first.run_dir / "events.jsonl") if isinstance(m, Metrics))
    assert peak <= chosen * (1 + 1e-9)
    assert [m.step for m in events if isinstance(m, Metrics)] == [5, 6, 7, 8]


def test_stopping_during_the_range_test_keeps_the_default_in_the_spec(tiny_llama, alpaca_jsonl, make_spec) -> None:  # type: ignore[no-untyped-def]
    import threading

    stop = threading.Event()
    events: list[Any] = []

    def emit(event: Any) -> None:
        events.append(event)
        if isinstance(event, Stage) and event.stage == lr_finder.STAGE:
            stop.set()

    result = run(make_spec(tiny_llama, alpaca_jsonl, "lora", learning_rate="auto", max_steps=50), emit, stop)
    assert result.status == "cancelled" and result.step == 0
    event = next(e for e in events if isinstance(e, LrFinder))
    default = default_rate(events, result.run_dir)
    assert "stopped during the range test" in event.reason and event.chosen == default
    saved = yaml.safe_load((result.run_dir / "spec.yaml").read_text())
    assert saved["training"]["learning_rate"] == default  # a resume agrees with its checkpoint


def test_the_finder_event_is_read_back_from_the_log(tmp_path: Path) -> None:
    from adapter_studio.engine.events import EventLog

    log = EventLog(tmp_path / "events.jsonl")
    log.write(LrFinder(rates=[1e-6, 1e-3], losses=[2.0, 1.5], chosen=1e-3, reason="why", raw_losses=[2.1, 1.4]))
    log.close()
    (event,) = read_events(tmp_path / "events.jsonl")
    assert isinstance(event, LrFinder) and event.type == "lr_finder"
    assert (event.rates, event.losses, event.chosen, event.reason) == ([1e-6, 1e-3], [2.0, 1.5], 1e-3, "why")


def test_the_command_line_finds_the_rate_and_says_why(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    from test_cli import cli, write_spec

    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, alpaca_jsonl, tmp_path / "runs")
    result = cli("train", str(spec), "--set", "training.learning_rate=auto", "--set", "training.max_steps=2")
    assert result.returncode == 0, result.stderr
    assert f"[{lr_finder.STAGE}]" in result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("learning rate "))
    chosen = yaml.safe_load(next((tmp_path / "runs").iterdir()).joinpath("spec.yaml").read_text())
    assert f"learning rate {chosen['training']['learning_rate']:.2g}, from a range test of" in line
    assert "steepest fall" in line or "the default rate" in line
