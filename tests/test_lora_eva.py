"""LoRA started from the data (`method.init: eva`): A from the top singular directions of each adapted
layer's inputs on training batches, B = 0 — so it starts as the base model, keeps LoRA's shapes and
counts, trains, and exports like plain LoRA (the base is untouched)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.events import Metrics, Started
from adapter_studio.engine.export.run_gguf import lora_refusal
from adapter_studio.engine.spec import load_spec_file, parse_spec
from adapter_studio.engine.training.run import run

from tests.conftest import write_jsonl
from tests.test_preference import preference_rows


def losses(events: list[Any]) -> list[float]:
    return [e.loss for e in events if isinstance(e, Metrics)]


def train(make_spec: Any, model: Path, data: Path, init: str, **training: Any) -> tuple[Any, list[Any]]:
    spec = make_spec(model, data, {"name": "lora", "init": init, "dropout": 0.0}, max_steps=6, learning_rate=0.01,
                     **training)  # fmt: skip
    events: list[Any] = []
    return run(spec, events.append), events


def test_eva_sets_a_to_orthonormal_directions_of_the_layer_inputs(tiny_llama: Path) -> None:
    from adapter_studio.engine.methods import METHODS
    from adapter_studio.engine.methods.base import MethodContext
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.spec import TrainingSpec
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    info = describe_model(model)
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 60, (4, 24), generator=generator),
                "attention_mask": torch.ones(4, 24, dtype=torch.long)} for _ in range(6)]  # fmt: skip
    ctx = MethodContext(info=info, training=TrainingSpec(), total_steps=1, sample_batches=lambda rows: batches)
    method = METHODS["lora"](r=4, target_modules=["q_proj", "v_proj"], init="eva")
    adapted = method.apply(model, ctx)
    layer = adapted.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    assert a.shape[0] == 4 and torch.allclose(a @ a.T, torch.eye(4), atol=1e-4)  # right singular vectors
    assert b.abs().max() == 0  # so the model starts as the base


def test_an_eva_run_starts_as_the_base_learns_and_exports(make_spec: Any, tiny_llama: Path, alpaca_jsonl: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    from adapter_studio.engine.export.run_export import export_run

    result, events = train(make_spec, tiny_llama, alpaca_jsonl, "eva")
    assert result.status == "completed", result.error
    _, default_events = train(make_spec, tiny_llama, alpaca_jsonl, "default")
    assert abs(losses(events)[0] - losses(default_events)[0]) < 1e-4 and losses(events)[-1] < losses(events)[0]
    count = [next(e for e in ev if isinstance(e, Started)).trainable_params for ev in (events, default_events)]
    assert count[0] == count[1]
    method = load_spec_file(result.run_dir / "spec.yaml").method
    assert not method.changes_base and lora_refusal(method) is None  # the base stays untouched: a LoRA file works
    adapter = export_run(result.run_dir, "adapter", tmp_path / "adapter")
    assert adapter.verified_max_diff is not None and adapter.verified_max_diff < 1e-4
    merged = export_run(result.run_dir, "merged", tmp_path / "merged")
    assert merged.verified_max_diff is not None and merged.verified_max_diff < 1e-4


def test_eva_on_a_classifier(make_spec: Any, tiny_bert_cls: Path, classification_csv: Path) -> None:
    result, events = train(make_spec, tiny_bert_cls, classification_csv, "eva")
    assert result.status == "completed", result.error
    assert all(torch.isfinite(torch.tensor(losses(events))))


def test_eva_is_refused_with_a_preference_objective(make_spec: Any, tiny_llama: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(24))
    spec = make_spec(tiny_llama, data, {"name": "lora", "init": "eva"}, max_steps=2, eval_samples=0)
    spec = parse_spec({**spec.model_dump(), "objective": {"name": "dpo"}})
    result = run(spec, lambda e: None)
    assert result.status == "failed" and "preference pairs do not give" in (result.error or "")


def test_the_estimate_counts_eva_as_lora(tiny_llama: Path) -> None:
    from adapter_studio.engine.estimate.table import estimate_table

    rows = [estimate_table(str(tiny_llama), "lora", [f"method.init={init}"])[0] for init in ("default", "eva")]
    assert all("error" not in r for r in rows) and rows[0]["trainable_params"] == rows[1]["trainable_params"]


def test_a_start_that_never_settles_stops_with_a_clear_message(tiny_bert_cls: Path) -> None:
    """peft cycles the batches until every layer settles; BERT's pooler sees one vector per row, and batches
    of fewer rows than the rank never give it enough: the engine stops after a bounded number of passes."""
    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.methods import METHODS
    from adapter_studio.engine.methods.base import MethodContext
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.spec import TrainingSpec
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_cls)
    batches = [{"input_ids": torch.randint(5, 60, (2, 12), generator=torch.Generator().manual_seed(i)),
                "attention_mask": torch.ones(2, 12, dtype=torch.long)} for i in range(3)]  # fmt: skip
    ctx = MethodContext(info=describe_model(model), training=TrainingSpec(), total_steps=1,
                        sample_batches=lambda rows: batches)  # fmt: skip
    method = METHODS["lora"](r=8, target_modules=["query", "dense"], init="eva")
    with pytest.raises(UserError, match="did not settle within 8 passes over 3 training batches"):
        method.apply(model, ctx)
