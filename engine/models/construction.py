"""One model built at a time in this process: `with model_construction(): ...`.

transformers builds a model under process-wide switches and puts them back when it is done:
`torch.set_default_dtype` to the dtype asked for (`local_torch_dtype`), `PreTrainedModel.tie_weights`
replaced by a no-op while loading, the `torch.nn.init` functions of torch's modules patched. They are
global, not per thread, and the engine builds models on several threads of one process: the window's
training thread, its cost estimates and model summaries, the Try page's loader, an export's check.
Two builds that overlap see each other's switches. Issue 20: an estimate's meta model built in bf16 on
a worker thread while a float32 run was inside its model's constructor; the run's `lm_head` was made
while the default dtype was bf16, kept it, and the first step died with "expected m1 and m2 to have
the same dtype, but got: float != c10::BFloat16". Overlapping builds also restore each other's saved
values in the wrong order, which can leave the default dtype bf16 for the rest of the process. peft
makes adapters the same way (`nn.Linear` and friends in the default dtype, `torch.nn.init`).

So every engine call that builds a model or wraps one in a method's modules (`from_pretrained`,
`from_config`, `MethodSpec.apply`, peft's adapter loading) runs inside `model_construction()`. The lock
is reentrant (loading a trained run builds the base, then applies the method, inside one section) and
held only while modules are made, not while a model trains or generates. A build on one thread waits
for a build on another: an estimate started while a run loads a large base waits for that load.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()


@contextmanager
def model_construction() -> Iterator[None]:
    """Hold the process's model-construction lock for the block (see the module)."""
    with _LOCK:
        yield
