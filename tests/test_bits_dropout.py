"""BitsDropout: torch's dropout with its mask drawn 16 bits per element (engine.training.bits_dropout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.training.bits_dropout import BitsDropout, use_bits_dropout_for_lora


@pytest.mark.parametrize(
    ("p", "shape", "dtype"),
    [
        (0.05, (2000, 1000), torch.bfloat16),  # LoRA's default, bf16 as under CPU autocast
        (0.1, (1000, 2000), torch.float32),
        (0.5, (3, 667, 999), torch.float32),  # a size that is not a multiple of four lanes
        (0.9, (1000, 1001), torch.bfloat16),
    ],
)
def test_drops_at_the_rate_asked_and_keeps_the_expected_value(p: float, shape: tuple[int, ...], dtype: Any) -> None:
    torch.manual_seed(0)
    dropout = BitsDropout(p)
    ones = torch.ones(shape, dtype=dtype)
    out = dropout(ones)
    assert out.dtype == dtype and out.shape == ones.shape
    dropped = (out == 0).double().mean().item()
    n = ones.numel()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5, dropped  # five binomial standard deviations
    kept = out[out != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-2)  # bf16 holds 1/(1-p) to ~0.4%
    # Every lane of the 64-bit draws drops alike (the top one too: its sign bit is random).
    lanes = (out.flatten()[: n // 4 * 4].view(-1, 4) == 0).double().mean(0)
    assert (lanes - p).abs().max().item() < 5 * (4 * p * (1 - p) / n) ** 0.5, lanes
    if dtype == torch.float32:
        assert abs(out.double().mean().item() - 1) < 5 * (p / (1 - p) / n) ** 0.5  # expected value kept


def test_gradient_flows_through_the_kept_elements_only_and_eval_is_identity() -> None:
    torch.manual_seed(1)
    dropout = BitsDropout(0.3)
    x = torch.randn(64, 33, requires_grad=True)
    out = dropout(x)
    out.sum().backward()
    keep = out != 0
    assert torch.equal(x.grad, keep.float() * dropout.scale)
    assert torch.allclose(out[keep], x[keep] * dropout.scale)
    dropout.eval()
    assert dropout(x) is x


def test_same_seed_same_mask_and_bad_probabilities_refused() -> None:
    masks = []
    for _ in range(2):
        torch.manual_seed(7)
        masks.append(BitsDropout(0.2)(torch.ones(100, 100)) == 0)
    assert torch.equal(masks[0], masks[1])
    for p in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="0 < p < 1"):
            BitsDropout(p)


@pytest.mark.parametrize(("method", "dropout", "swapped"), [("lora", 0.1, 4), ("dora", 0.1, 4), ("lora", 0.0, 0)])
def test_lora_layers_get_it_where_they_drop_out(tiny_llama: Path, method: str, dropout: float, swapped: int) -> None:
    """A LoRA layer per adapted projection (q and v of the tiny llama's 2 layers); p 0 is nn.Identity in peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=dropout, use_dora=method == "dora")
    model = get_peft_model(model, config)
    assert use_bits_dropout_for_lora(model) == swapped
    kinds = {type(d) for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()}
    assert kinds == ({BitsDropout} if swapped else {torch.nn.Identity})


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager_decomp_partition",  # inductor's graph passes and partitioner, without building code
        pytest.param("inductor", marks=pytest.mark.slow),  # builds C++ (~10 s)
    ],
)
def test_compiled_code_draws_each_mask_once_and_backward_uses_it(backend: str) -> None:
    """Compiled, the draw is one opaque op (fullgraph: no graph break). Two dropouts on one input, as
    LoRA's q and v in a block, keep their own masks (equal arguments would be merged as one draw), and
    the backward multiplies by the masks the forward drew, not by new ones."""
    torch.manual_seed(3)
    q, v = BitsDropout(0.5, salt=0), BitsDropout(0.5, salt=1)
    x = torch.ones(1000, 100, requires_grad=True)
    outs = torch.compile(lambda t: (q(t), v(t)), fullgraph=True, backend=backend)(x)
    keeps = [out != 0 for out in outs]
    assert not torch.equal(keeps[0], keeps[1])
    for keep in keeps:
        assert abs(keep.float().mean().item() - 0.5) < 0.01
    (outs[0] + 2 * outs[1]).sum().backward()
    assert torch.equal(x.grad, (keeps[0].float() + 2 * keeps[1].float()) * q.scale)


def test_lora_salts_differ_within_a_block_and_repeat_across_blocks(tiny_llama: Path) -> None:
    """Blocks share their compiled code, so a projection's salt is the same in every block."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))
    use_bits_dropout_for_lora(model)
    salts: dict[str, set[int]] = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_dropout"):
            salts.setdefault(name.split(".")[-1], set()).add(module.lora_dropout["default"].salt)
    assert salts == {"q_proj": {0}, "v_proj": {1}}
