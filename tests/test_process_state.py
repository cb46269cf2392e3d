"""State the whole process shares, and the threads that share it.

The window trains on one thread while others estimate costs, summarise a model or load the Try page's
model. transformers builds a model under process-wide switches (`torch.set_default_dtype`, its own
`PreTrainedModel.tie_weights` and `torch.nn.init` patches), so two models built at once on two threads
see each other's switches. These tests build the overlap on purpose, step by step, instead of waiting
for a busy machine to produce it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.training.run import run

WAIT_S = 2.0  # how long one thread waits for the other to reach its step (a lock makes it wait in vain)


Pause = Callable[..., None]


@pytest.fixture
def pause_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pause]:
    """`pause_in(module_class, step, after=False)`: constructing `module_class`, on any thread, calls
    `step()` before (or after) the class's own `__init__`."""

    def pause(cls: type, step: Callable[[], None], after: bool = False) -> None:
        original = cls.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            if not after:
                step()
            original(self, *args, **kwargs)
            if after:
                step()

        monkeypatch.setattr(cls, "__init__", init)

    yield pause


def test_a_meta_model_built_in_bf16_meanwhile_leaves_a_runs_model_float32(
    tiny_llama: Path, tiny_gpt2: Path, alpaca_jsonl: Path, make_spec: Callable[..., Any],
    pause_in: Pause,
) -> None:  # fmt: skip
    """Issue 20: the window's cost estimate (a meta model in bf16, on a worker thread) overlapped a run's
    model loading on another thread; transformers' `torch.set_default_dtype(bfloat16)` for the estimate
    made part of the run's float32 model bf16, and its first step died with "expected m1 and m2 to
    have the same dtype, but got: float != c10::BFloat16". Here the estimate starts when the run has
    built its decoder and is about to build its head. Engine model constructions wait for each other
    (models.construction): the run's model is float32 throughout, and the estimate gets its bf16
    model after it (without the lock: the run fails as above, and the estimate's model is float32)."""
    from adapter_studio.engine.models.loading import build_meta_model, load_config, resolve_source
    from transformers import GPT2LMHeadModel, LlamaModel

    run_constructing, estimate_in_bf16, run_constructed = threading.Event(), threading.Event(), threading.Event()

    def in_the_run() -> None:  # the run's decoder is built, its lm_head not yet
        run_constructing.set()
        estimate_in_bf16.wait(WAIT_S)  # without the lock the estimate switches the dtype here

    def in_the_estimate() -> None:  # the estimate's meta GPT-2, inside transformers' bf16 switch
        estimate_in_bf16.set()
        run_constructed.wait(WAIT_S)  # ...and keeps it switched while the run builds its model

    pause_in(LlamaModel, lambda: None if run_constructing.is_set() else in_the_run(), after=True)
    pause_in(GPT2LMHeadModel, in_the_estimate)
    config = load_config(resolve_source(str(tiny_gpt2)))
    built: list[Any] = []

    def estimate() -> None:
        run_constructing.wait(WAIT_S)
        built.append(build_meta_model(config, "causal_lm", dtype=torch.bfloat16))

    worker = threading.Thread(target=estimate, name="estimate")
    worker.start()
    try:
        spec = make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=2, eval_samples=0)
        result = run(spec, lambda event: run_constructed.set() if type(event).__name__ == "Started" else None)
    finally:
        run_constructed.set()
        worker.join(30)
    assert result.status == "completed", result.error
    assert {p.dtype for p in built[0].parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.gui
def test_a_wound_down_window_starts_no_background_work_after_its_test(
    window: Any, qtbot: Any, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other half of issue 20: the window fixture waited for the thread pool while the cost table's
    debounced request (a 30 ms QTimer) was still pending; pytest-qt processes events after every
    fixture's teardown, the timer fired, and the estimate ran beside the next test. Here: a pending
    request starts its work whenever events are next processed, and after `wind_down` (what the window
    fixture does before the window closes) none starts."""
    import time

    import adapter_studio.gui.pages.compare_page as compare_page
    from conftest import wind_down
    from PySide6.QtCore import QThreadPool
    from PySide6.QtWidgets import QApplication

    started: list[str] = []
    real = compare_page.run_in_background

    def counted(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started.append(func.__name__)
        return real(func, *args, **kwargs)

    monkeypatch.setattr(compare_page, "run_in_background", counted)
    window.state.set_model(str(tiny_llama))
    wind_down(window, qtbot)
    started.clear()

    def after_the_test() -> None:  # the 30 ms go by, then pytest-qt processes events
        time.sleep(0.1)
        QApplication.processEvents()

    window.state.spec_edited.emit()  # a setting edited: the cost table recomputes in 30 ms
    after_the_test()
    assert started == ["estimate_rows"], "the pending request did not start (the reproduction is void)"
    window.state.spec_edited.emit()
    wind_down(window, qtbot)
    after_the_test()
    assert started == ["estimate_rows"]
    assert QThreadPool.globalInstance().activeThreadCount() == 0
