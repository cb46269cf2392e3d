"""objective.precompute_reference: the reference's log-probabilities of every pair computed once before
training equal those the steps would compute, a run trains on them (LoRA: adapter off; full fine-tuning:
the frozen copy is let go after the pass), and objectives without a reference do not take the option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from tests.conftest import write_jsonl
from tests.test_preference import _objective, preference_rows, start
from tests.test_shared_prompts import adapted, pairs


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pref") / "pairs.jsonl", preference_rows(160))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_table_equals_the_reference_of_each_batch(tiny_llama: Path, tmp_path: Path, batch_size: int) -> None:
    from contextlib import nullcontext

    from adapter_studio.engine.data.batches import collate
    from adapter_studio.engine.objectives.logps import reference_logps
    from adapter_studio.engine.objectives.training import PairPass, reference_table, with_reference
    from adapter_studio.engine.training.fast_loss import causal_lm_parts

    items, pad = pairs(tiny_llama, tmp_path, count=7)
    model = adapted(tiny_llama, "sdpa")
    model.train()
    parts = causal_lm_parts(model)
    table = reference_table(PairPass(model, parts, batch_size, pad, nullcontext, torch.device("cpu")), items)
    assert table.shape == (7, 2) and model.training  # the model's mode is given back
    indices = [5, 1, 2]
    batch = collate([items[i] for i in indices], pad, False)
    live = reference_logps(model, parts, batch, None)
    assert torch.allclose(with_reference(batch, table, indices)["ref_logps"], live, atol=1e-5)
    with torch.no_grad():
        policy = reference_logps(model, parts, batch, (model, parts))  # the adapter on: a different model
    assert (policy - live).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_trains_on_the_precomputed_reference(
    method: str, tiny_llama: Path, make_spec: Any, pairs_jsonl: Path
) -> None:
    spec = make_spec(tiny_llama, pairs_jsonl, method, max_steps=20, eval_every=10, data={"eval_split": 0.1},
                     learning_rate=5e-3 if method == "lora" else 1e-4)  # fmt: skip
    spec = spec.model_copy(update={"objective": _objective("dpo", precompute_reference=True)})
    result, events = start(spec)
    assert result.status == "completed", result.error
    stages = [e.stage for e in events if e.type == "stage"]
    assert stages.index("reference") < stages.index("training")
    logs = [e.message for e in events if e.type == "log"]
    assert any("reference log-probabilities of 160 pairs" in m for m in logs)
    assert any("frozen copy of the model is let go" in m for m in logs) == (method == "full")
    metrics = [e for e in events if e.type == "metrics"]
    assert abs(metrics[0].loss - 0.6931) < 0.01 and abs(metrics[0].reward_margin) < 1e-4  # the same start
    margins = [m.reward_margin for m in metrics]
    assert sum(margins[-5:]) > sum(margins[:5]), margins
    evals = [e for e in events if e.type == "eval"]
    assert evals[-1].reward_margin > 0 and evals[-1].preference_accuracy > 0.5


@pytest.mark.parametrize("name", ["simpo", "orpo", "kto"])
def test_objectives_without_a_reference_refuse_the_option(name: str) -> None:
    with pytest.raises(ValidationError, match="precompute_reference"):
        _objective(name, precompute_reference=True)
