"""LoRA started from the weights themselves (`method.init`: pissa, olora): it starts as the base model,
trains, reloads and merges exactly; whatever compares with the base uses the untouched weights, since
the adapter switched off leaves the rewritten residual."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Log, Metrics, Started
from adapter_studio.engine.spec import parse_spec
from adapter_studio.engine.training.run import run

from tests.conftest import write_jsonl
from tests.test_methods import logits, probe_inputs
from tests.test_preference import preference_rows

INITS = ["pissa", "olora"]
_RUNS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def trained(make_spec, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    def get(init: str) -> tuple[Any, list[Any]]:
        if init not in _RUNS:
            spec = make_spec(tiny_llama, alpaca_jsonl, {"name": "lora", "init": init, "dropout": 0.0}, max_steps=8,
                             learning_rate=0.01, save_every=4)  # fmt: skip
            events: list[Any] = []
            _RUNS[init] = (run(spec, events.append), events)
        return _RUNS[init]

    return get


def losses(events: list[Any]) -> list[float]:
    return [e.loss for e in events if isinstance(e, Metrics)]


@pytest.mark.parametrize("init", INITS)
def test_it_starts_as_the_base_model_and_learns(init, trained) -> None:  # type: ignore[no-untyped-def]
    result, events = trained(init)
    assert result.status == "completed", result.error
    _, default_events = trained("default")
    first = losses(events)[0]
    # The same model at step 1, the base (dropout off: on the adapter's input it would change a PiSSA start).
    assert abs(first - losses(default_events)[0]) < 1e-4
    assert losses(events)[-1] < first
    started = next(e for e in events if isinstance(e, Started))
    assert started.trainable_params == next(e for e in default_events if isinstance(e, Started)).trainable_params


@pytest.mark.parametrize("init", INITS)
def test_the_adapter_reloads_with_peft_and_merges(init, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.export.run_export import export_run
    from adapter_studio.engine.inference.trained import load_base, load_trained
    from peft import PeftModel

    result, _ = trained(init)
    adapter = export_run(result.run_dir, "adapter", tmp_path / "adapter")
    assert adapter.verified_max_diff is not None and adapter.verified_max_diff < 1e-4
    merged = export_run(result.run_dir, "merged", tmp_path / "merged")
    assert merged.verified_max_diff is not None and merged.verified_max_diff < 1e-4
    tuned = load_trained(result.run_dir)
    base, tokenizer, _ = load_base(tuned.spec)
    inputs = probe_inputs(tokenizer)
    want = logits(tuned.model, inputs)
    # peft recomputes the decomposition of the original weights when it loads the adapter.
    reloaded = PeftModel.from_pretrained(base, str(adapter.path)).eval()
    assert (logits(reloaded, inputs) - want).abs().max() < 1e-4


@pytest.mark.parametrize("init", INITS)
def test_the_base_it_is_compared_with_is_the_untouched_one(init, trained) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.inference.playground import Playground
    from adapter_studio.engine.inference.trained import load_base

    result, _ = trained(init)
    playground = Playground.open(result.run_dir, device="cpu")
    base, tokenizer, _ = load_base(playground.spec)
    inputs = probe_inputs(tokenizer)
    with playground.using("base") as shown:
        assert torch.allclose(logits(shown, inputs), logits(base, inputs), atol=1e-6)
    with playground.tuned.model.disable_adapter():  # what it would have shown: the residual
        assert (logits(playground.tuned.model, inputs) - logits(base, inputs)).abs().max() > 1e-3


def test_a_preference_run_keeps_a_frozen_copy_as_its_reference(make_spec, tiny_llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(24))
    spec = make_spec(tiny_llama, data, {"name": "lora", "init": "pissa", "dropout": 0.0}, max_steps=2,
                     eval_samples=0)
    spec = parse_spec({**spec.model_dump(), "objective": {"name": "dpo"}})
    events: list[Any] = []
    result = run(spec, events.append)
    assert result.status == "completed", result.error
    assert any(isinstance(e, Log) and "frozen copy" in e.message for e in events)
    assert abs(losses(events)[0] - math.log(2)) < 1e-4  # policy = reference at the start


@pytest.mark.parametrize("init", INITS)
def test_exports_that_need_the_original_weights_are_refused(init, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.combine_runs import combine_runs
    from adapter_studio.engine.export.run_gguf import lora_refusal
    from adapter_studio.engine.spec import load_spec_file

    result, _ = trained(init)
    default, _ = trained("default")
    spec = load_spec_file(result.run_dir / "spec.yaml")
    assert "export the merged model as GGUF instead" in (lora_refusal(spec.method) or "")
    with pytest.raises(UserError, match="rewrites them"):
        combine_runs([default.run_dir, result.run_dir], None, "linear")


def test_the_estimate_counts_it_as_lora(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.estimate.table import estimate_table

    rows = {init: estimate_table(str(tiny_llama), "lora", [f"method.init={init}"])[0] for init in ["default", *INITS]}
    assert all("error" not in r for r in rows.values()), rows
    assert len({r["trainable_params"] for r in rows.values()}) == 1
