"""llama.cpp through `llama-cpp-python` (optional: `pip install adapter-studio[gguf]`): the K-quants
made by llama.cpp's own quantizer, and an exported GGUF run in llama.cpp itself to check it answers as
the torch model does. Everything here says plainly when the package is not installed."""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapter_studio.engine.errors import UserError

INSTALL_HINT = (
    "llama.cpp is not installed here: `pip install llama-cpp-python` (it builds llama.cpp with cmake and a "
    "C++ compiler, a few minutes), or `pip install adapter-studio[gguf]`"
)
FTYPES = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # llama.h's LLAMA_FTYPE_MOSTLY_* values


def installed() -> bool:
    """Cheap (no native library loaded): for the window to enable the K-quants at start."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError):  # OSError: the package is there but its shared library is not
        return False
    return True


def quantize(source: Path, target: Path, quant: str) -> None:
    """llama.cpp's quantizer: `source` (an f16 GGUF) to `target` in a K-quant. Rows too short for a
    K-quant block fall back to a type llama.cpp chooses, as in its own tool."""
    if not available():
        raise UserError(f"{quant} is made by llama.cpp's quantizer. {INSTALL_HINT}", where="--gguf",
                        fix="install it, or pick f16, bf16 or q8_0, which need nothing else")  # fmt: skip
    import llama_cpp

    quiet()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise UserError(f"llama.cpp could not quantize {source.name} to {quant}", where="--gguf",
                        fix="pick f16, bf16 or q8_0, and report this with the model's name")  # fmt: skip


def quiet() -> None:
    """llama.cpp logs every tensor it quantizes and loads: only its errors reach stderr."""
    import logging

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # the package routes llama.cpp's log here


@dataclass
class LlamaCppRun:
    answers: list[list[int]]
    stopped: list[bool]
    perplexity: float | None


def run_checks(path: Path, prompts: Sequence[list[int]], texts: Sequence[list[int]], starts: Sequence[int],
               max_new_tokens: int, lora: Path | None = None) -> LlamaCppRun:  # fmt: skip
    """Greedy answers to `prompts` (token ids, so tokenisation is compared separately) and the perplexity
    of `texts` from `starts` on (each text's answer), computed by llama.cpp from the file at `path` (with
    a LoRA adapter file if given)."""
    import llama_cpp
    import numpy as np

    longest = max([len(p) for p in prompts] + [len(t) for t in texts]) + max_new_tokens + 8
    quiet()
    try:
        llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None,
                              n_ctx=max(longest, 256), n_batch=max(longest, 256), logits_all=True, verbose=False,
                              seed=0, n_threads=os.cpu_count() or 1)  # fmt: skip
    except ValueError as e:  # llama-cpp-python's way of saying llama.cpp refused the file
        raise UserError(
            f"llama.cpp cannot load the written GGUF ({e}); nothing was written",
            where=str(path.name),
            fix="export merged safetensors instead, and report this with the model's name",
        ) from None
    try:
        answers, stopped = [], []
        for prompt in prompts:
            tokens, ended = [], False
            for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    ended = True
                    break
                tokens.append(int(token))
                if len(tokens) >= max_new_tokens:
                    break
            answers.append(tokens)
            stopped.append(ended)
        nll, count = 0.0, 0
        for text, start in zip(texts, starts, strict=True):
            llm.reset()
            llm.eval(text)
            logits = np.asarray(llm.scores[start - 1 : len(text) - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            log_probs = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
            nll -= float(log_probs[np.arange(len(logits)), np.asarray(text[start:])].sum())
            count += len(text) - start
        return LlamaCppRun(answers, stopped, math.exp(nll / count) if count else None)
    finally:
        llm.close() if hasattr(llm, "close") else None


def tokenize(path: Path, texts: Sequence[str], add_bos: bool) -> list[list[int]]:
    """llama.cpp's own tokenisation of `texts` (special tokens parsed), to compare with transformers'."""
    import llama_cpp

    quiet()
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=add_bos, special=True) for t in texts]
    finally:
        llm.close() if hasattr(llm, "close") else None
