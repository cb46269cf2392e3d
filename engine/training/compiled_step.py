"""The compiled training step: regional torch.compile of the decoder's blocks (or the whole model where
a block cannot be shared), the reasons inductor cannot build on this machine, and a session's compiling
(StepCompiler: `on` from the start, `auto` decided by what compiling costs, the fallback when it fails)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.training import compile_cost
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




class StepCompiler:
    """One training session's compiling. `attach` gives it the model once the session has built it; `compile`
    compiles (training.compile = on, or auto once `worth_it` says so); `after_step` measures what the compile
    cost (the first compiled step's seconds less the next one's) and remembers it (compile_cost); `give_up`
    runs compiled code eagerly after an automatic compile failed, until `restore` at the run's end."""

    def __init__(self, speed: SpeedOptions, log: Callable[..., None]) -> None:
        self.speed, self.log = speed, log
        # auto compile still to decide / the training forward is compiled / gave up (compiled code runs eagerly)
        self.auto = self.compiled = self.eager_stance = False
        self.parts: tuple[Any, Any, str, str, bool] | None = None  # fast_parts, model, device, cost key, main
        self.first_step_s: float | None = None  # the first compiled step's, until the next one measures the cost
        self.awaiting_first = False

    def attach(self, fast_parts: Any, model: Any, device: str, key: str, main_process: bool) -> None:
        self.parts = (fast_parts, model, device, key, main_process)

    def compile(self) -> str:
        """Compile the attached model's training forward; what was compiled, for the log."""
        assert self.parts is not None, "attach the model first"
        fast_parts, model, device, _, _ = self.parts
        what = compile_training_forward(fast_parts, model, device, self.speed)
        self.compiled = self.awaiting_first = True
        return what

    def worth_it(self, left_s: float) -> bool:
        """training.compile = auto, decided once: compile when `left_s`, the rest of the run at its eager
        speed, pays back what compiling is expected to cost. Logs the decision and its reason."""
        assert self.parts is not None, "attach the model first"
        self.auto = False
        cost, known = compile_cost.expected_cost(compile_cost.remembered(self.parts[3]), self.speed)
        if not compile_cost.worth_compiling(left_s, cost, self.speed):
            self.log(f"about {left_s:.0f} s to go: not compiling the training step (it would cost about "
                     f"{cost:.0f} s, {known}; training.compile: auto)")  # fmt: skip
            return False
        what = self.compile()
        self.log(f"about {left_s / 60:.1f} minutes to go: compiling the training step to make them faster "
                 f"(torch.compile of {what}, about {cost:.0f} s, {known}; training.compile: auto)")  # fmt: skip
        return True

    def after_step(self, seconds: float) -> None:
        if self.awaiting_first:
            self.awaiting_first, self.first_step_s = False, seconds
        elif self.first_step_s is not None:
            assert self.parts is not None
            if not self.eager_stance and self.parts[4]:  # the main process keeps it
                compile_cost.remember_cost(self.parts[3], self.first_step_s - seconds)
            self.first_step_s = None

    def give_up(self, error: Exception) -> None:
        """An automatic compile that fails must not cost the run: compiled code runs eagerly from here."""
        import torch

        root: BaseException = error
        while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
            root = inner  # dynamo wraps the compiler's own error (BackendCompilerFailed.inner_exception)
        first_line = (str(root).strip().splitlines() or [""])[0][:300]
        self.log(f"compiling failed ({type(root).__name__}: {first_line}); training goes on uncompiled",
                 level="warning")
        torch.compiler.set_stance("force_eager")  # process-wide: undone by `restore` when the run ends
        self.eager_stance = True

    def restore(self) -> None:
        if self.eager_stance:
            import torch

            torch.compiler.set_stance("default")
