"""Each pair's prompt read once for both answers (engine.objectives.logps.shared_row_logps) gives the
log-probabilities and gradients of reading the two whole rows, on the model kinds and attention kernels
a preference run uses; the layout (engine.data.preference.shared_prefix_rows) is only made where it
saves work, and gradient checkpointing (which turns the key/value cache off) falls back to whole rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import write_jsonl
from tests.test_preference import preference_rows

TOL = 1e-5
WHOLE = ("input_ids", "attention_mask", "labels")


def side(ids: list[int], first_label: int) -> tuple[list[int], list[int]]:
    return ids, [-100] * first_label + ids[first_label:]


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        (side([1, 2, 3, 4], 2), side([1, 2, 5, 6], 2), 2),  # the prompt, up to the first answer token
        (side([1, 2, 3, 4], 2), side([1, 2, 3, 6], 2), 2),  # answers that start alike stay in the answers
        (side([1, 2, 3, 4], 3), side([1, 2, 3, 6, 7], 1), 1),  # the earlier answer start bounds it
        (side([1, 9, 3, 4], 2), side([1, 2, 3, 4], 2), 1),  # prompts that differ share their common start
        (side([7, 2, 3], 1), side([1, 2, 3], 1), 0),  # nothing in common
    ],
)
def test_shared_length(chosen: Any, rejected: Any, expected: int) -> None:
    from adapter_studio.engine.data.preference import shared_length

    assert shared_length(chosen, rejected) == expected


def pairs(model_dir: Path, tmp_path: Path, count: int = 4) -> tuple[Any, Any]:
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.spec import DataSpec
    from transformers import AutoTokenizer

    path = write_jsonl(tmp_path / "p.jsonl", preference_rows(12, seed=5))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = prepare_data(DataSpec(path=str(path), eval_split=0.0), tokenizer, None, 64, 0, use_cache=False)
    return data.train[:count], tokenizer.pad_token_id or 0


def adapted(model_dir: Path, attention: str) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_shared_prompts_give_the_whole_rows_logps_and_gradients(
    tiny_models: dict[str, Path], tmp_path: Path, kind: str, attention: str
) -> None:
    from adapter_studio.engine.data.batches import collate
    from adapter_studio.engine.objectives.logps import row_logps
    from adapter_studio.engine.training.fast_loss import causal_lm_parts

    items, pad = pairs(tiny_models[kind], tmp_path)
    batch = collate(items, pad, False, multiple=8)  # padded widths, as on a GPU
    assert "prefix_ids" in batch and batch["prefix_ids"].shape[0] == 4 and batch["suffix_ids"].shape[0] == 8
    model = adapted(tiny_models[kind], attention)
    parts = causal_lm_parts(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    shared, shared_counts = row_logps(model, parts, batch)
    whole, whole_counts = row_logps(model, parts, {k: batch[k] for k in WHOLE})
    assert torch.equal(shared_counts, whole_counts)
    assert torch.allclose(shared, whole, atol=TOL, rtol=1e-6), (shared, whole)
    for a, b in zip(torch.autograd.grad(shared.sum(), trainable), torch.autograd.grad(whole.sum(), trainable),
                    strict=True):  # fmt: skip
        assert torch.allclose(a, b, atol=TOL, rtol=1e-4)
    with torch.no_grad(), model.disable_adapter():  # the reference's forward takes the same path
        ref_shared, _ = row_logps(model, parts, batch)
        ref_whole, _ = row_logps(model, parts, {k: batch[k] for k in WHOLE})
    assert torch.allclose(ref_shared, ref_whole, atol=TOL, rtol=1e-6)


def test_gradient_checkpointing_reads_whole_rows(tiny_llama: Path, tmp_path: Path) -> None:
    from adapter_studio.engine.data.batches import collate
    from adapter_studio.engine.objectives.logps import can_share_prompts
    from adapter_studio.engine.training.fast_loss import causal_lm_parts

    items, pad = pairs(tiny_llama, tmp_path)
    batch = collate(items, pad, False)
    model = adapted(tiny_llama, "sdpa")
    parts = causal_lm_parts(model)
    assert can_share_prompts(parts, batch)
    assert not can_share_prompts(None, batch) and not can_share_prompts(parts, {k: batch[k] for k in WHOLE})
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert not can_share_prompts(parts, batch)  # the cache is off under checkpointing
    with torch.no_grad():
        assert can_share_prompts(parts, batch)  # the reference's forward keeps no activations to recompute


def test_the_layout_is_made_only_where_it_saves_work() -> None:
    from adapter_studio.engine.data.preference import PairItem, collate_pairs

    def pair(prompt: int, answer: int, row: int) -> PairItem:
        ids = list(range(1, prompt + 1))
        chosen, rejected = side(ids + [7] * answer, prompt), side(ids + [8] * answer, prompt)
        return PairItem(chosen[0] + rejected[0], chosen[1] + rejected[1], row, len(chosen[0]))

    long_prompts = collate_pairs([pair(40, 5, 1), pair(38, 6, 2)], pad_id=0)
    assert long_prompts["prefix_ids"].shape == (2, 40) and long_prompts["suffix_ids"].shape == (4, 6)
    assert long_prompts["prefix_mask"][1].tolist() == [0, 0] + [1] * 38  # prompts end at the last column
    # One long prompt with a short answer, one short prompt with a long answer: padding both parts to
    # their longest costs more than the whole rows.
    mixed = collate_pairs([pair(40, 2, 1), pair(2, 40, 2)], pad_id=0)
    assert "prefix_ids" not in mixed and mixed["input_ids"].shape == (4, 42)
