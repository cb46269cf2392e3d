"""DyLoRA: each step trains a random rank b ≤ r (the same b for a seed and step), evaluation and exports
use `export_rank` components, and the export is a plain peft LoRA adapter of that rank that reproduces
the run's model (adapter and merged)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch


def ranks_drawn(method: Any, model: Any, steps: range) -> list[int]:
    masks = model._dylora["masks"]
    drawn = []
    for step in steps:
        method.on_step(model, step)
        drawn.append(int((masks["train"] > 0).sum()))
    return drawn


def test_each_step_draws_a_rank_and_evaluation_keeps_export_rank(tiny_llama: Path) -> None:
    from adapter_studio.engine.methods import MethodContext
    from adapter_studio.engine.methods.low_rank import DyLoRA
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.spec import TrainingSpec
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    method = DyLoRA(r=8, export_rank=3, target_modules=["q_proj", "v_proj"])
    model = method.apply(base, MethodContext(describe_model(base), TrainingSpec(), total_steps=50))
    drawn = ranks_drawn(method, model, range(1, 51))
    assert set(drawn) <= set(range(1, 9)) and len(set(drawn)) >= 6  # b spreads over 1..r
    assert drawn == ranks_drawn(method, model, range(1, 51))  # a resumed run draws the same ranks
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model.eval()
    with torch.no_grad():
        three = model(input_ids=ids).logits
        for layer in (m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A):
            layer.lora_A["default"].weight[3:] = 0  # what components 4..8 hold must not matter in evaluation
        assert torch.allclose(model(input_ids=ids).logits, three)


@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_the_export_is_plain_lora_of_export_rank(kind: str, tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any,
                                                 tmp_path: Path) -> None:  # fmt: skip
    from adapter_studio.engine.export.run_export import export_run
    from adapter_studio.engine.training.run import run

    spec = make_spec(tiny_llama, alpaca_jsonl, {"name": "dylora", "r": 8, "export_rank": 2}, max_steps=10,
                     learning_rate=2e-2)  # fmt: skip
    result = run(spec, emit=lambda e: None)
    assert result.status == "completed", result.error
    out = export_run(Path(result.run_dir), kind, tmp_path / kind)  # reloads it and compares logits (< 1e-4)
    assert out.verified_max_diff is not None and out.verified_max_diff < 1e-4
    if kind == "adapter":
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        assert json.loads((tmp_path / kind / "adapter_config.json").read_text())["r"] == 2
        shapes = {n: t.shape for n, t in load_file(str(tmp_path / kind / "adapter_model.safetensors")).items()}
        assert all(s[0] == 2 for n, s in shapes.items() if "lora_A" in n)
        assert all(s[1] == 2 for n, s in shapes.items() if "lora_B" in n)
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(tmp_path / kind))


def test_export_rank_above_r_is_refused(tiny_llama: Path) -> None:
    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.methods.low_rank import DyLoRA
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.spec import TrainingSpec
    from transformers import AutoModelForCausalLM

    info = describe_model(AutoModelForCausalLM.from_pretrained(tiny_llama))
    with pytest.raises(UserError, match="export_rank 9 is above its rank r 8"):
        DyLoRA(r=8, export_rank=9).check(info, TrainingSpec())
