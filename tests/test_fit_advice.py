"""The change that makes a run fit (engine.estimate.fit): the estimate asked again per candidate, in the order
that costs the run least on that device. Device memory is set around the estimates themselves, so the
cases hold whatever the estimate's constants are."""

from __future__ import annotations

from typing import Any

import pytest
from adapter_studio.engine.estimate import fit
from adapter_studio.engine.estimate.fit import describe, fit_advice, with_changes
from adapter_studio.engine.spec import RunSpec, parse_spec

HUGE = 2**50


def spec_of(device: str = "cpu", method: str = "lora", **training: Any) -> RunSpec:
    return parse_spec({"model": {"source": "smollm2-135m", "device": device}, "data": {"path": "-", "max_length": 512},
                       "method": {"name": method}, "training": {"batch_size": 8, **training}})  # fmt: skip


def need(spec: RunSpec, monkeypatch: pytest.MonkeyPatch, seq_len: int | None = None) -> int:
    monkeypatch.setattr(fit, "_device_memory", lambda device: HUGE)
    advice = fit_advice(spec, seq_len)
    assert advice is not None and advice.changes == {}
    return advice.needed


def advise(spec: RunSpec, memory: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(fit, "_device_memory", lambda device: memory)
    return fit_advice(spec)


@pytest.mark.parametrize(
    ("device", "fits_with", "expected"),
    [
        # A CPU splits the batch before paying for checkpointing...
        ("cpu", {"training.batch_size": 4, "training.gradient_accumulation": 2},
         {"training.batch_size": 4, "training.gradient_accumulation": 2}),
        ("cpu", {"training.batch_size": 1, "training.gradient_accumulation": 8},
         {"training.batch_size": 1, "training.gradient_accumulation": 8}),
        # ...a GPU checkpoints first and keeps the largest micro-batch that fits.
        ("cuda", {"training.gradient_checkpointing": "on"}, {"training.gradient_checkpointing": "on"}),
        ("cuda", {"training.gradient_checkpointing": "on", "training.batch_size": 2,
                  "training.gradient_accumulation": 4},
         {"training.gradient_checkpointing": "on", "training.batch_size": 2, "training.gradient_accumulation": 4}),
    ],
)  # fmt: skip
def test_the_cheapest_change_that_fits_is_advised(device, fits_with, expected, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec = spec_of(device)
    monkeypatch.setattr(fit, "_quantizable", lambda spec: False)  # no bitsandbytes here
    budget = need(with_changes(spec, fits_with), monkeypatch)
    assert budget < need(spec, monkeypatch)
    advice = advise(spec, budget, monkeypatch)
    assert advice.changes == expected, advice.text
    assert advice.needed <= advice.available == budget
    assert advice.text == f"fits with {describe(expected)}"


def test_a_run_that_fits_needs_no_change(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec = spec_of()
    advice = advise(spec, need(spec, monkeypatch), monkeypatch)
    assert advice.changes == {} and advice.text == "fits"


def test_shorter_rows_are_the_last_resort(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec = spec_of()
    lightest = {"training.batch_size": 1, "training.gradient_accumulation": 8, "training.gradient_checkpointing": "on"}
    if fit._quantizable(spec):  # a 4-bit base comes before cutting rows (bitsandbytes: CPUs and CUDA GPUs)
        lightest = {"model.quantization": "4bit", **lightest}
    at_256 = need(with_changes(spec, {**lightest, "data.max_length": 256}), monkeypatch)
    assert at_256 < need(with_changes(spec, lightest), monkeypatch)
    advice = advise(spec, at_256, monkeypatch)
    assert advice.changes == {**lightest, "data.max_length": 256}
    assert "max length 256 (longer rows are cut)" in advice.text


def test_nothing_that_fits_is_said_not_invented(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec = spec_of(method="full")
    advice = advise(spec, 2**20, monkeypatch)
    assert advice.changes is None and "nothing tried fits" in advice.text and "lighter method" in advice.text


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_4bit_base_is_offered_for_frozen_bases_only(device, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fit, "_quantizable", lambda spec: spec.method.adapter_format == "peft")
    lora = spec_of(device)
    candidates = list(fit._candidates(lora, 8, 512, device))
    assert {"model.quantization": "4bit", "training.gradient_checkpointing": "on"} in candidates
    assert not any("model.quantization" in c for c in fit._candidates(spec_of(device, "full"), 8, 512, device))
    # Every candidate is a valid spec.
    for changes in candidates:
        with_changes(lora, changes)


def test_the_measured_step_length_is_what_is_estimated(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec = spec_of()
    assert need(spec, monkeypatch, seq_len=64) < need(spec, monkeypatch)
