"""Mixture of LoRA experts: the layer computes base + (alpha/r)·Σ gates·Bₑ·Aₑ·x over the router's top-k,
starts as the base model, and refuses a top-k above its experts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def adapted(tiny_llama: Path, **fields: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    from adapter_studio.engine.methods import MethodContext
    from adapter_studio.engine.methods.mixture import MixtureOfLoRA
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.spec import TrainingSpec
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    info = describe_model(model)
    model = MixtureOfLoRA(dropout=0.0, **fields).apply(model, MethodContext(info, TrainingSpec(), total_steps=1))
    return base, model.eval()


@pytest.mark.parametrize(("experts", "top_k"), [(4, 2), (4, 1), (3, 0)])
def test_the_layer_mixes_its_top_k_experts(tiny_llama: Path, experts: int, top_k: int) -> None:
    base, model = adapted(tiny_llama, experts=experts, top_k=top_k, r=2, alpha=4.0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)  # B = 0: the base model
        layer = model.model.layers[0].self_attn.q_proj
        for p in (layer.lora_B, layer.router.weight):
            p.normal_(0, 0.5)
        x = torch.randn(3, layer.lora_A.shape[-1])
        gates = torch.softmax(x @ layer.router.weight.T, dim=-1)
        k = top_k or experts
        kept = gates.topk(k, dim=-1)
        weights = torch.zeros_like(gates).scatter(-1, kept.indices, kept.values / kept.values.sum(-1, keepdim=True))
        assert ((weights > 0).sum(-1) == k).all() and torch.allclose(weights.sum(-1), torch.ones(3))
        expected = layer.base_layer(x) + 2.0 * sum(
            weights[:, e : e + 1] * (x @ layer.lora_A[e].T @ layer.lora_B[e].T) for e in range(experts)
        )
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_top_k_above_the_experts_is_refused(tiny_llama: Path) -> None:
    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.methods.mixture import MixtureOfLoRA
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.spec import TrainingSpec
    from transformers import AutoModelForCausalLM

    info = describe_model(AutoModelForCausalLM.from_pretrained(tiny_llama))
    with pytest.raises(UserError, match="top_k 5 is more than its 4 experts"):
        MixtureOfLoRA(experts=4, top_k=5).check(info, TrainingSpec())
