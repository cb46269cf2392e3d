"""Direct prefixes (P-Tuning v2, and the prefixes of the MAM adapter and UniPELT) start as the keys and values
of a real text: before training, the prefixed model reads any input exactly as the base model reads that
text followed by the input (engine.methods.peft_base.seed_prefix_from_text)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapter_studio.engine.methods import METHODS, MethodContext
from adapter_studio.engine.models.info import describe_model
from adapter_studio.engine.spec import TrainingSpec
from transformers import AutoModelForCausalLM, AutoTokenizer

METHOD_NAMES = ("p_tuning_v2", "mam", "unipelt")
MODELS = ("llama", "gpt2", "qwen2")
N = 7  # virtual tokens: fewer than the text's, so the text is cut


def load(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_the_prefixed_model_starts_as_the_base_reading_the_text(method: str, model_name: str,
                                                               tiny_models: dict[str, Path]) -> None:  # fmt: skip
    folder = tiny_models[model_name]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    spec = METHODS[method](num_virtual_tokens=N)
    model = load(folder)
    ctx = MethodContext(info=describe_model(model), training=TrainingSpec(), total_steps=1, tokenizer=tokenizer)
    prefixed = spec.apply(model, ctx).eval()
    text = tokenizer(spec.init_text, add_special_tokens=False)["input_ids"][:N]  # type: ignore[attr-defined]
    x = torch.tensor([[5, 9, 12, 7, 30, 11]])
    with torch.no_grad():
        got = prefixed(input_ids=x).logits
        want = load(folder)(input_ids=torch.cat([torch.tensor([text]), x], dim=1)).logits[:, N:]
    assert (got - want).abs().max().item() < 1e-4


def test_an_empty_text_keeps_peft_start(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = load(tiny_llama)
    ctx = MethodContext(info=describe_model(model), training=TrainingSpec(), total_steps=1, tokenizer=tokenizer)
    torch.manual_seed(0)
    prefixed = METHODS["p_tuning_v2"](num_virtual_tokens=N, init_text="").apply(model, ctx)
    weight = prefixed.prompt_encoder["default"].embedding.weight
    assert 0.8 < weight.std().item() < 1.2  # nn.Embedding's N(0, 1)
