"""A GGUF model is converted once into a folder and later loads come from it, with the same result."""

from __future__ import annotations

import pytest
import torch
from adapter_studio.engine.models.gguf_cache import converted_folder
from adapter_studio.engine.models.loading import EMBEDDED_SMOLLM2, load_model, resolve_source
from adapter_studio.engine.spec import ModelSpec

from tests.conftest import CHATML, _decoder_config
from tests.test_gguf_export import bpe_tokenizer


@pytest.mark.slow
def test_second_load_comes_from_the_conversion_and_is_identical(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = resolve_source(EMBEDDED_SMOLLM2)
    assert converted_folder(source) is None
    messages = [{"role": "user", "content": "Convert 3 March 2021 to ISO 8601."}]

    def answer() -> tuple[list[int], torch.Tensor, str]:
        model, tokenizer, loaded_from = load_model(ModelSpec(source=EMBEDDED_SMOLLM2), "causal_lm")
        assert loaded_from.kind == "gguf"  # callers still see the person's source
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            return ids[0].tolist(), model(ids).logits, tokenizer.pad_token

    first = answer()
    folder = converted_folder(source)
    assert folder is not None and (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    second = answer()
    assert first[0] == second[0] and first[2] == second[2]
    assert torch.equal(first[1], second[1])


def test_a_bf16_load_keeps_the_conversion_with_the_weights_a_bf16_read_gives(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A training run loads in bf16, and only float32 conversions are kept: the file is read in float32,
    kept, and cast, so the run's next load comes from the folder, with the same weights as before."""
    from adapter_studio.engine.export import gguf_writer
    from adapter_studio.engine.models import loading
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_decoder_config(LlamaConfig, tokenizer, vocab_size=len(tokenizer)))
    file = tmp_path / "tiny-q8_0.gguf"
    gguf_writer.write_model(model, tokenizer, file, "q8_0", name="tiny", chat_template=CHATML)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec, source = ModelSpec(source=str(file)), resolve_source(str(file))

    def load() -> torch.nn.Module:
        loaded, _, loaded_from = load_model(spec, "causal_lm", dtype=torch.bfloat16)
        assert loaded_from.kind == "gguf" and loaded.config.dtype == torch.bfloat16
        return loaded

    with monkeypatch.context() as m:
        m.setattr(loading, "converts_in_float32", lambda *args: False)
        direct = load().state_dict()  # read straight in bf16, as before: nothing kept
    assert converted_folder(source) is None
    for load_from in ("the file, keeping its conversion", "the conversion"):
        weights = load().state_dict()
        assert converted_folder(source) is not None, load_from
        assert weights.keys() == direct.keys(), load_from
        assert all(v.dtype == torch.bfloat16 and torch.equal(v, direct[k]) for k, v in weights.items()), load_from


def test_pruning_skips_conversions_another_process_removes_meanwhile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two processes converting at once: a marker listed by one can be gone when it is looked at."""
    from adapter_studio.engine.models import gguf_cache

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / gguf_cache.DONE).write_text("")

    class Racing:  # lists a marker that is gone by the time it is looked at
        def glob(self, pattern: str):  # type: ignore[no-untyped-def]
            return [tmp_path / "gone" / gguf_cache.DONE, kept / gguf_cache.DONE]

    gguf_cache._prune(Racing())  # type: ignore[arg-type]
    assert kept.is_dir()
