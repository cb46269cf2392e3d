"""Bottleneck adapters (Houlsby, Pfeiffer, Parallel, MAM, Compacter, Compacter++, UniPELT) on tiny random models."""

from __future__ import annotations

import pytest
import torch
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, trainable_count
from adapter_studio.engine.methods.bottleneck import (
    CONFIG,
    WEIGHTS,
    AdapterH,
    AdapterP,
    MAMAdapter,
    ParallelAdapter,
    adapter_parameters,
    bottleneck_param_count,
    load_bottleneck_adapter,
)
from adapter_studio.engine.methods.compacter import Compacter, CompacterPlusPlus
from adapter_studio.engine.methods.unipelt import UniPELT
from adapter_studio.engine.models.info import describe_model
from adapter_studio.engine.spec import TrainingSpec
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 256}
MODELS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**DECODER)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**DECODER)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**DECODER)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256)),
    "bert": lambda: BertForSequenceClassification(BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=256,
        num_labels=3)),
}
METHODS = [AdapterH, AdapterP, ParallelAdapter, MAMAdapter, Compacter, CompacterPlusPlus, UniPELT]
WITH_PREFIX = (MAMAdapter, UniPELT)  # prefix tuning: no BERT (past_key_values), output changed from the start
CASES = [(m, cls) for m in MODELS for cls in METHODS if not (m == "bert" and cls in WITH_PREFIX)]
IDS = [f"{m}-{cls.__name__}" for m, cls in CASES]


def build(model_name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same seed gives the same base weights for the reload test
    return MODELS[model_name]().eval()  # eval: no dropout noise in the comparisons


def batch(model_name: str) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2]) if model_name == "bert" else ids
    return {"input_ids": ids, "labels": labels}


def adapted(model_name: str, cls: type) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """(base copy for reference, adapted model, its info)."""
    ref = build(model_name)
    model = build(model_name)
    info = describe_model(model)
    model = cls().apply(model, MethodContext(info=info, training=TrainingSpec(), total_steps=20))
    return ref, model, info


def train(model: torch.nn.Module, data: dict, steps: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def kv_dim(model: torch.nn.Module) -> int:
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return heads * (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


@pytest.mark.parametrize(("model_name", "cls"), CASES, ids=IDS)
def test_output_unchanged_before_training(model_name, cls):
    ref, model, _ = adapted(model_name, cls)
    ids = batch(model_name)["input_ids"]
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        if cls in WITH_PREFIX:
            # The prefix changes attention from the start; the adapters alone must not.
            with model.disable_adapter():
                got = model(input_ids=ids).logits
        else:
            got = model(input_ids=ids).logits
    assert (got - expected).abs().max().item() == 0.0


@pytest.mark.parametrize(("model_name", "cls"), CASES, ids=IDS)
def test_trainable_count_matches_formula(model_name, cls):
    _, model, info = adapted(model_name, cls)
    head = sum(p.numel() for n, p in model.named_parameters() if "classifier" in n and p.requires_grad)
    assert trainable_count(model) == bottleneck_param_count(info, cls(), kv_dim(model)) + head


@pytest.mark.parametrize(("model_name", "cls"), CASES, ids=IDS)
def test_training_lowers_loss_and_touches_only_adapters(model_name, cls):
    _, model, _ = adapted(model_name, cls)
    data = batch(model_name)
    losses = train(model, data, steps=20)
    assert losses[-1] < losses[0]
    model(**data).loss.backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    allowed = (".adapter.", "classifier", "prompt_encoder")
    assert with_grad and all(any(a in n for a in allowed) for n in with_grad), with_grad
    assert all(p.grad is not None for p in adapter_parameters(model).values())


@pytest.mark.parametrize(("model_name", "cls"), CASES, ids=IDS)
def test_save_then_load_gives_identical_logits(model_name, cls, tmp_path):
    ref, model, _ = adapted(model_name, cls)
    data = batch(model_name)
    train(model, data, steps=5)
    cls().save_adapter(model, str(tmp_path))
    assert (tmp_path / WEIGHTS).exists() and (tmp_path / CONFIG).exists()
    if cls in WITH_PREFIX:
        assert (tmp_path / "adapter_config.json").exists()

    loaded = load_bottleneck_adapter(build(model_name), tmp_path).eval()
    with torch.no_grad():
        want = model(input_ids=data["input_ids"]).logits
        got = loaded(input_ids=data["input_ids"]).logits
        base = ref(input_ids=data["input_ids"]).logits
    assert (got - want).abs().max().item() < 1e-6
    assert (got - base).abs().max().item() > 1e-4  # the trained adapter really was loaded
    assert trainable_count(loaded) == 0


def test_parameter_names_are_stable():
    _, model, _ = adapted("llama", AdapterH)
    names = set(adapter_parameters(model))
    assert "model.layers.0.mlp.adapter.down.weight" in names
    assert "model.layers.1.self_attn.o_proj.adapter.up.bias" in names


def test_bottleneck_is_at_least_one_wide():
    _, model, info = adapted("gpt2", lambda: AdapterP(reduction_factor=1000))
    assert model.transformer.h[0].mlp.adapter.down.out_features == 1
    assert trainable_count(model) == bottleneck_param_count(info, AdapterP(reduction_factor=1000))


def test_adapters_follow_base_dtype():
    model = build("llama").to(torch.bfloat16)
    AdapterP().apply(model, MethodContext(info=describe_model(model), training=TrainingSpec(), total_steps=1))
    assert {p.dtype for p in adapter_parameters(model).values()} == {torch.bfloat16}


def test_fields_are_validated():
    with pytest.raises(ValueError):
        AdapterH(reduction_factor=0)
    with pytest.raises(ValueError):
        ParallelAdapter(non_linearity="softmax")
    assert ParallelAdapter().scaling == 4.0


def test_merge_is_refused():
    _, model, _ = adapted("llama", AdapterH)
    with pytest.raises(UserError):
        AdapterH().merge(model)


def test_mam_refuses_encoder_classifier():
    info = describe_model(build("bert"))
    with pytest.raises(UserError):
        MAMAdapter().check(info, TrainingSpec())


def test_loading_onto_another_model_type_is_refused(tmp_path):
    _, model, _ = adapted("llama", AdapterP)
    AdapterP().save_adapter(model, str(tmp_path))
    with pytest.raises(UserError):
        load_bottleneck_adapter(build("gpt2"), tmp_path)


def test_compacter_shares_its_rules_and_saves_them_once(tmp_path):
    from safetensors.torch import load_file

    _, model, info = adapted("llama", Compacter)
    rules = {id(m.rule) for m in model.modules() if hasattr(m, "rule")}
    assert len(rules) == 1  # one n×n×n rule tensor for every projection of every adapter
    names = [n for n in adapter_parameters(model) if n.endswith(".rule")]
    assert names == ["model.layers.0.self_attn.o_proj.adapter.down.rule"]
    Compacter().save_adapter(model, str(tmp_path))
    assert [n for n in load_file(str(tmp_path / WEIGHTS)) if n.endswith(".rule")] == names
    # 2 layers × 2 adapters × (2·1·(64 + 4) + 4 + 64) + 4³
    assert trainable_count(model) == 4 * (2 * (64 + 4) + 4 + 64) + 64 == bottleneck_param_count(info, Compacter())


@pytest.mark.parametrize(("fields", "words"), [
    ({"phm_dim": 3}, ("phm_dim 3 must divide the hidden size 64", "pick phm_dim 2 or 4")),
    ({"reduction_factor": 32}, ("bottleneck width 2", "pick phm_dim 2")),
])  # fmt: skip
def test_compacter_refuses_a_rule_size_that_does_not_divide(fields, words):
    model = build("llama")
    with pytest.raises(UserError) as e:
        Compacter(**fields).check(describe_model(model), TrainingSpec())
    assert all(w in str(e.value) for w in words), str(e.value)
