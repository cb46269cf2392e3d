"""A merged model, or a LoRA adapter, written as a GGUF file for llama.cpp, Ollama and LM Studio.

Written with the `gguf` package (llama.cpp's own writer) in the layout llama.cpp's converter uses:
its tensor names, the Llama family's rotary permutation of the query and key rows, the tokenizer as
a byte-level BPE vocabulary with merges, the chat template and the end-of-turn id. f16, bf16 and
q8_0 are written here; the K-quants are made from the f16 file by llama.cpp's quantizer
(engine/export/llama_cpp.py). Architectures outside `ARCHITECTURES` and tokenizers llama.cpp would
split differently are refused with the reason, never written approximately.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class Architecture:
    gguf_name: str  # general.architecture
    permute_qk: bool  # llama.cpp's Llama graph expects interleaved rotary halves in q and k rows


# model_type → how llama.cpp names and lays it out. Mistral is a Llama graph in llama.cpp.
ARCHITECTURES = {
    "llama": Architecture("llama", True),
    "mistral": Architecture("llama", True),
    "qwen2": Architecture("qwen2", False),
}
WRITTEN_HERE = ("f16", "bf16", "q8_0")
BY_LLAMA_CPP = ("q4_k_m", "q5_k_m", "q6_k")
QUANTS = WRITTEN_HERE + BY_LLAMA_CPP
CONTROL, USER_DEFINED, NORMAL, UNUSED = 3, 4, 1, 5  # gguf.TokenType values, as llama.cpp reads them

# llama.cpp picks its pre-tokenizer (how text is split before BPE) by name. Its converter finds the
# name by hashing the token ids of this text; the hashes below are the families this export supports
# (from llama.cpp's convert_hf_to_gguf.py). A tokenizer that is plain GPT-2 byte-level is found from
# its tokenizer.json instead; any other is refused rather than tokenised differently by llama.cpp.
PRE_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen 1.5 / 2 / 2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen 3
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
}
# The split patterns of these families' tokenizer.json (Llama 3's is tiktoken's cl100k pattern; Qwen2's
# differs only in splitting digits one by one): a fine-tuned model of the family keeps its pattern.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def refusal_for_task(task: str) -> str | None:
    return None if task == "causal_lm" else "GGUF holds text generators for llama.cpp; this run trained a classifier"


def refusal(config: Any, task: str) -> str | None:
    """Why a model of this config cannot be written as GGUF here, or None."""
    if task != "causal_lm":
        return refusal_for_task(task)
    if config.model_type not in ARCHITECTURES:
        names = ", ".join(sorted(ARCHITECTURES))
        return f"this export supports the Llama family ({names}); this model is {config.model_type!r}"
    scaling = _rope(config)
    if scaling.get("rope_type", "default") not in ("default", "linear", "llama3"):
        return f"its rotary scaling {scaling['rope_type']!r} is not written to GGUF here"
    return None


def _rope(config: Any) -> dict[str, Any]:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.pop("type", "default"))
    return params


# --- tensors --------------------------------------------------------------------------------------


def permute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF keeps the rotary halves of each head apart; llama.cpp's Llama graph wants them interleaved."""
    split = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def rows_permuted(hf_name: str, config: Any) -> int | None:
    """The head count to permute this tensor's rows by (query and key projections), else None."""
    if not ARCHITECTURES[config.model_type].permute_qk:
        return None
    if hf_name.endswith("q_proj.weight"):
        return config.num_attention_heads
    if hf_name.endswith("k_proj.weight"):
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None


def gguf_tensor_name(hf_name: str, config: Any) -> str:
    import gguf

    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[ARCHITECTURES[config.model_type].gguf_name]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    found = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if found is None:
        raise UserError(f"no GGUF name for the tensor {hf_name}", where="GGUF export",
                        fix="report this as a bug with the model's name")  # fmt: skip
    return found


def _encode(array: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """The tensor's bytes in `quant`, or float32 for vectors (norms, biases) as llama.cpp keeps them.
    Rows not a whole number of q8_0 blocks stay f16, as llama.cpp's converter does."""
    import gguf
    import numpy as np

    types = gguf.GGMLQuantizationType
    if array.ndim == 1:
        return array.astype(np.float32), types.F32
    if quant == "bf16":
        return gguf.quants.quantize(array.astype(np.float32), types.BF16), types.BF16
    if quant == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0] == 0:
        return gguf.quants.quantize(array.astype(np.float32), types.Q8_0), types.Q8_0
    return array.astype(np.float16), types.F16


def _model_tensors(model: torch.nn.Module) -> Iterator[tuple[str, np.ndarray]]:
    config = model.config
    tied = getattr(config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue  # a peft-wrapped base (the LoRA export's check): its own weights only
        name = name.replace(".base_layer.", ".")
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output tensor
        if "rotary_emb" in name:
            continue
        array = tensor.detach().float().cpu().numpy()
        heads = rows_permuted(name, config)
        yield gguf_tensor_name(name, config), permute_rows(array, heads) if heads else array
    if _rope(config)["rope_type"] == "llama3":
        yield "rope_freqs.weight", _llama3_rope_factors(config)


def _llama3_rope_factors(config: Any) -> np.ndarray:
    """Llama 3.1's per-frequency rotary scaling, stored as factors in `rope_freqs` (llama.cpp's format)."""
    import math

    import numpy as np

    rope = _rope(config)
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


# --- metadata -------------------------------------------------------------------------------------


def _hyperparameters(writer: Any, config: Any) -> None:
    import gguf

    rope = _rope(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE. Read from the tokenizer's own
    settings first (what the run trained with: a GGUF base read by transformers gets GPT-2's split,
    whatever its file called it), then from the hash of its tokens (see KNOWN_PRE)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    pre = backend.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # GPT-2's own split: llama.cpp's default byte-level pre-tokenizer
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex") if steps[0].get("type") == "Split" else None
        found = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}.get(pattern)
        if found:
            return found
    digest = sha256(str(tokenizer.encode(PRE_CHECK_TEXT)).encode()).hexdigest()
    if digest in KNOWN_PRE:
        return KNOWN_PRE[digest]
    raise UserError(
        "llama.cpp would split this model's text differently from its tokenizer (its pre-tokenizer is not "
        "one this export recognises: Llama 3, Qwen2, SmolLM or GPT-2 byte-level)",
        where="GGUF export",
        fix="export merged safetensors instead and convert with llama.cpp's convert_hf_to_gguf.py",
    )


def _byte_level_bpe(tokenizer: Any) -> tuple[dict[str, Any], list[str]]:
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(
            "this export writes byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM2, GPT-2); this model's "
            f"tokenizer is {model.get('type', 'not a fast tokenizer')}"
            + (" with byte fallback (SentencePiece style)" if model.get("byte_fallback") else ""),
            where="GGUF export",
            fix="export merged safetensors instead and convert with llama.cpp's convert_hf_to_gguf.py",
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return model, merges


def chat_template_for(tokenizer: Any, plain_template: str | None, system_prompt: str | None) -> str | None:
    """The chat template the GGUF carries: the one the run trained with. A run trained through a plain
    prompt template gets that template as Jinja, so llama.cpp and Ollama prompt the model as it learned."""
    if plain_template is None and getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    from adapter_studio.engine.data.rendering import PLAIN_PROMPT

    template = plain_template or PLAIN_PROMPT
    before, _, after = template.partition("{instruction}")
    after = after.replace("{input}", "")
    eos = tokenizer.eos_token or ""
    system = f"{{{{ {json.dumps(system_prompt + chr(10) * 2)} }}}}" if system_prompt else ""
    return (
        system + "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
        f"{{% elif m['role'] == 'user' %}}{{{{ {json.dumps(before)} + m['content'] + {json.dumps(after)} }}}}"
        f"{{% elif m['role'] == 'assistant' %}}{{{{ m['content'] + {json.dumps(eos)} + '\\n\\n' }}}}"
        "{% endif %}{% endfor %}"
    )


def _tokenizer_metadata(writer: Any, tokenizer: Any, config: Any, chat_template: str | None) -> None:
    _, merges = _byte_level_bpe(tokenizer)
    vocab = tokenizer.get_vocab()
    by_id = {i: token for token, i in vocab.items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(config.vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(token)
            types.append((CONTROL if added[token].special else USER_DEFINED) if token in added else NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges or ["Ġ Ġ"])  # llama.cpp refuses a BPE vocabulary without merges
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
               "pad": tokenizer.pad_token_id}  # fmt: skip
    add = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
           "pad": writer.add_pad_token_id}  # fmt: skip
    for role, token_id in special.items():
        if token_id is not None and token_id < config.vocab_size:
            add[role](int(token_id))
    eot = end_of_turn_id(tokenizer, chat_template)
    if eot is not None:
        writer.add_eot_token_id(eot)
    probe = tokenizer("a")["input_ids"]  # does the tokenizer add BOS / EOS around a text by itself?
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    writer.add_add_bos_token(bos is not None and len(probe) > 1 and probe[0] == bos)
    writer.add_add_eos_token(eos is not None and len(probe) > 1 and probe[-1] == eos)
    if chat_template:
        writer.add_chat_template(chat_template)


def end_of_turn_id(tokenizer: Any, chat_template: str | None) -> int | None:
    """The token that ends an assistant's turn in the chat template (ChatML's <|im_end|>, Llama 3's
    <|eot_id|>), else the end-of-text token."""
    for marker in END_OF_TURN:
        if chat_template and marker in chat_template and marker in tokenizer.get_vocab():
            return int(tokenizer.convert_tokens_to_ids(marker))
    return tokenizer.eos_token_id


# --- files ----------------------------------------------------------------------------------------


def write_model(model: torch.nn.Module, tokenizer: Any, path: Path, quant: str, *, name: str,
                chat_template: str | None,
                progress: Callable[[str], None] | None = None) -> None:  # fmt: skip
    """Write `model` (a merged causal LM) to `path` in f16, bf16 or q8_0 with its tokenizer."""
    import gguf

    if quant not in WRITTEN_HERE:
        raise ValueError(f"{quant} is made by llama.cpp's quantizer from the f16 file")
    config = model.config
    writer = gguf.GGUFWriter(str(path), ARCHITECTURES[config.model_type].gguf_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])  # fmt: skip
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hyperparameters(writer, config)
    _tokenizer_metadata(writer, tokenizer, config, chat_template)
    for tensor_name, array in _model_tensors(model):
        data, dtype = _encode(array, quant)
        writer.add_tensor(tensor_name, data, raw_dtype=dtype)
    if progress:
        progress(f"writing {path.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tokenizer_refusal(tokenizer: Any) -> str | None:
    """Why llama.cpp could not tokenise as this tokenizer does, or None."""
    try:
        _byte_level_bpe(tokenizer)
        pre_tokenizer(tokenizer)
    except UserError as e:
        return e.what  # the reason alone: whoever refuses says where, and what to do instead
    return None


def write_lora(peft_model: torch.nn.Module, path: Path, *, alpha: float, name: str) -> int:
    """Write a LoRA adapter in llama.cpp's adapter format (f16 A and B per projection); returns how
    many projections it holds. `alpha` is the scale numerator llama.cpp divides by the rank."""
    import gguf
    import numpy as np

    base = peft_model.get_base_model()
    config = base.config
    writer = gguf.GGUFWriter(str(path), ARCHITECTURES[config.model_type].gguf_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    count = 0
    for module_name, module in base.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not lora_a or "default" not in lora_a:
            continue
        a = module.lora_A["default"].weight.detach().float().cpu().numpy()
        b = module.lora_B["default"].weight.detach().float().cpu().numpy()
        hf_name = f"{module_name}.weight"
        heads = rows_permuted(hf_name, config)
        if heads:
            b = permute_rows(b, heads)  # B makes the output rows that the base tensor's permutation reorders
        target = gguf_tensor_name(hf_name, config)
        writer.add_tensor(f"{target}.lora_a", a.astype(np.float16))
        writer.add_tensor(f"{target}.lora_b", b.astype(np.float16))
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count
