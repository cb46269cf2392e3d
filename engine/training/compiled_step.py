"""The compiled training step: regional torch.compile of the decoder's blocks (or the whole model where
a block cannot be shared), and the reasons inductor cannot build on this machine."""

from __future__ import annotations

import os
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.training.speed import SpeedOptions

# the 'compiling' stage's detail
COMPILING = "torch.compile builds the training step: up to a few minutes the first time, seconds once cached"


def compile_unavailable(device: str) -> UserError | None:
    """Why inductor cannot build here (no C++ compiler on a CPU, no triton on a GPU), or None."""
    import importlib.util
    import shutil

    if device == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        return UserError("torch.compile needs a C++ compiler on a CPU, and none was found",
                         where="training.compile", fix="install g++ (e.g. apt-get install g++), or turn compile off")
    if device == "cuda" and importlib.util.find_spec("triton") is None:
        return UserError("torch.compile needs the triton package on a GPU", where="training.compile",
                         fix="pip install triton, or turn compile off")
    return None


def compile_training_forward(
    fast_parts: tuple[Any, Any] | None, model: Any, device: str, speed: SpeedOptions
) -> str:
    """Regional torch.compile, in place: each transformer block is compiled, and since the blocks
    share their code, inductor builds it once for all of them (SmolLM2 on this CPU: about half a minute
    instead of four for the whole decoder, at 92% of its speed; benchmarks/throughput.py). Evaluation
    runs eagerly (the session's evaluation). Refuses, saying why, where inductor cannot build.
    Returns what was compiled, for the log."""
    from adapter_studio.engine.models.info import find_layers_path

    missing = compile_unavailable(device)
    if missing is not None:
        raise missing
    import torch

    # Compiled code is cached per Python function: the runs before this one in the same process (the
    # window trains many) would otherwise use up dynamo's recompile limit and leave this one eager.
    torch.compiler.reset()
    root = fast_parts[0] if fast_parts is not None else model
    path = find_layers_path(root)
    # A prefix (prefix tuning, P-Tuning v2, MAM) reaches every block as its layer's key/value cache,
    # and each block's compiled code would be specialised to its own layer: compile the whole model.
    configs = getattr(getattr(model, "module", model), "peft_config", {})  # DDP wraps the peft model
    prefix = any(str(c.peft_type).endswith("PREFIX_TUNING") for c in configs.values())
    if prefix or not path or speed.compile_whole:
        root.compile(dynamic=True, mode=speed.compile_mode)  # what the training forward calls
        return "the whole model"
    blocks = root.get_submodule(path)
    # Dynamo guards on whether a block's input carries a gradient. With the embeddings frozen, the
    # first block that trains is the only one whose input carries none while it does backward; it
    # would be a second compiled variant of the shared code (and, with the mask and width variants
    # on a GPU, reach dynamo's limit of 8). It runs eagerly instead: 1/N of the blocks.
    boundary = first_trainable_block(blocks, root)
    for i, block in enumerate(blocks):
        if i != boundary:
            block.compile(dynamic=True, mode=speed.compile_mode)
    if boundary is None:
        return f"one block, shared by all {len(blocks)}"
    return (f"one block, shared by {len(blocks) - 1} of {len(blocks)}; block {boundary}, the first that trains, "
            "runs eagerly")


def first_trainable_block(blocks: Any, root: Any) -> int | None:
    """The block whose input carries no gradient and whose parameters train (None: no such block)."""
    root = getattr(root, "module", root)  # DDP wraps the model
    embeddings = root.get_input_embeddings() if hasattr(root, "get_input_embeddings") else None
    if embeddings is None or any(p.requires_grad for p in embeddings.parameters()):
        return None  # the embeddings train: every block's input carries a gradient
    if embeddings._forward_hooks:  # e.g. enable_input_require_grads (gradient checkpointing) makes it carry one
        return None
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return None


