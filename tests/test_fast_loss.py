"""The engine's loss over labelled positions (engine.training.fast_loss) against the model's own loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapter_studio.engine.training import fast_loss


def _model_and_batch(folder: Path, method: str, dtype: torch.dtype) -> tuple[torch.nn.Module, dict]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
        for p in model.parameters():
            if p.requires_grad:  # adapters train in float32 over a bf16 base, as the engine's do
                p.data = torch.randn_like(p, dtype=torch.float32) * 0.05
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (3, 40))
    labels = ids.clone()
    labels[:, :15] = -100  # prompts
    labels[2, 30:] = -100  # padding
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _loss_and_grads(model: torch.nn.Module, batch: dict, autocast: bool, engine: bool) -> tuple[float, dict]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fast_loss.labelled_loss(fast_loss.causal_lm_parts(model), batch) if engine else model(**batch).loss
    (loss * 0.5).backward()  # a gradient-accumulation scale reaches the chunked head's stored gradient
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("method", "dtype", "rows", "chunked", "tolerance"),
    [
        ("lora", torch.float32, 1, True, 1e-5),  # one position per chunk
        ("lora", torch.float32, 7, True, 1e-5),  # 7 per chunk: the last one shorter (22 + 22 + 12 positions)
        ("lora", torch.float32, 10_000, True, 1e-5),  # every position in one chunk
        ("lora", torch.bfloat16, 7, True, 2e-2),  # bf16 base under autocast, as a CPU or GPU run trains
        ("full", torch.float32, 7, False, 1e-5),  # the head trains: the model's path, logits kept
    ],
)
def test_the_labelled_loss_and_its_gradients_are_the_models(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, method: str, dtype: torch.dtype, rows: int, chunked: bool,
    tolerance: float,
) -> None:  # fmt: skip
    model, batch = _model_and_batch(tiny_llama, method, dtype)
    head = model.get_output_embeddings()
    assert fast_loss.chunks_head(head) is chunked
    monkeypatch.setitem(fast_loss.CHUNK_ELEMENTS, "cpu", rows * head.weight.shape[0])
    autocast = dtype == torch.bfloat16
    loss, grads = _loss_and_grads(model, batch, autocast, engine=True)
    own_loss, own_grads = _loss_and_grads(model, batch, autocast, engine=False)
    assert loss == pytest.approx(own_loss, rel=tolerance / 10)
    for name, grad in own_grads.items():
        scale = grad.abs().max()
        assert (grads[name] - grad).abs().max() <= tolerance * scale, name


def test_without_gradients_the_chunked_loss_only_measures(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch = _model_and_batch(tiny_llama, "lora", torch.float32)
    monkeypatch.setitem(fast_loss.CHUNK_ELEMENTS, "cpu", 5 * model.config.vocab_size)
    with torch.no_grad():
        loss = fast_loss.labelled_loss(fast_loss.causal_lm_parts(model), batch)
        own = model(**batch).loss
    assert not loss.requires_grad and float(loss) == pytest.approx(float(own), rel=1e-6)


@pytest.mark.parametrize(
    ("vocab", "device", "rows"),
    [
        (49_152, "cpu", 85),  # SmolLM2: 16 MiB of float32 logits a chunk, under glibc's largest mmap threshold
        (128_256, "cpu", 32),  # Llama 3
        (128_256, "cuda", 1_046),  # a GPU takes larger chunks, for efficient matmuls
        (10, "cpu", 419_430),  # a tiny vocabulary: every position at once
    ],
)
def test_chunks_are_sized_by_the_vocabulary_and_device(vocab: int, device: str, rows: int) -> None:
    assert fast_loss.chunk_rows(vocab, device) == rows
