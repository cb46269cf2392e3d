"""Shared fixtures: tiny seeded models with real fast tokenizers, small learnable data sets, specs.

Every model fixture is session-scoped and written once to a temporary folder, in the layout a real
Hugging Face model folder has (config.json, model.safetensors, tokenizer.json, tokenizer_config.json),
so tests exercise the same loading path as a person's model. The tokenizers are character-level
(every printable ASCII character is one token) plus each family's special tokens, which keeps the
vocabulary at about 110 and the models at a few hundred thousand parameters.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
import random
import shutil
import string
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the window tests run headless
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The app's caches (GGUF conversions, configs, prepared data) go to a folder of this test session, not
# into the person's ~/.cache; CLI subprocesses inherit it.
# Removed when the test process ends: a prepared-data cache reaches half a gigabyte, and every session
# left one behind in /tmp.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="adapter-studio-test-cache-")
# The window's settings (QSettings: runs folder, geometry) likewise: a test's choices are not the person's,
# nor seen by a later test session.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="adapter-studio-test-config-")

import adapter_studio.engine  # noqa: F401  see below
import pytest
import torch
import transformers  # noqa: F401  see below

# transformers is first imported here, on one thread: a test's own first import racing a window's worker
# saw it half-initialised ("cannot import name BertConfig"); the app's workers take engine.imports' lock.
# The engine sets process-wide state as it is first imported (USE_HUB_KERNELS): imported here, before any
# test, so the first test to import it is not failed for leaving that behind (seen running one file alone).

atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)

# Tiny models: one thread beats two (no contention with the window thread or other workers).
torch.set_num_threads(1)

CHARS = list(string.printable)  # digits, letters, punctuation and whitespace: 100 characters
VOCAB_SIZE = 128  # room for the characters and every family's special tokens
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LETTERS = "abcdef"  # a small alphabet so a tiny model learns the answers' characters within steps


def char_tokenizer(specials: list[str], *, template: tuple[str, str] | None = None, **roles: str) -> Any:
    """A fast tokenizer with one token per character; `roles` names special tokens (eos_token=...)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*specials, *CHARS])}
    assert len(vocab) <= VOCAB_SIZE
    backend = Tokenizer(models.WordLevel(vocab, unk_token=roles.get("unk_token", specials[0])))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    if template is not None:
        single, pair = template
        backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in ("[CLS]", "[SEP]")]
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


def byte_level_tokenizer(specials: list[str], **roles: str) -> Any:
    """A fast tokenizer with one token per byte, as Qwen2's own tokenizer class rebuilds it on load."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*specials, *alphabet])}
    backend = Tokenizer(models.BPE(vocab, [], fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


def _save(folder: Path, model: torch.nn.Module, tokenizer: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _decoder_config(config_cls: type, tokenizer: Any, vocab_size: int = VOCAB_SIZE) -> Any:
    return config_cls(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


CHATML_SPECIALS = ["<unk>", "<s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHATML_ROLES = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>"}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama, hidden 64, 2 layers, 4 heads / 2 kv heads, no biases; ChatML chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer(CHATML_SPECIALS, **CHATML_ROLES)
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    model = LlamaForCausalLM(_decoder_config(LlamaConfig, tokenizer))
    return _save(tmp_path_factory.mktemp("tiny-llama"), model, tokenizer)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2, shaped like tiny_llama but with q/k/v biases; byte-level tokenizer, ChatML template.

    Byte-level because transformers loads a qwen2 folder's tokenizer as Qwen2Tokenizer, which keeps
    the saved vocabulary but imposes Qwen's byte-level pre-tokenizer and decoder.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_level_tokenizer(CHATML_SPECIALS, **CHATML_ROLES)
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(_decoder_config(Qwen2Config, tokenizer, vocab_size=len(tokenizer)))
    return _save(tmp_path_factory.mktemp("tiny-qwen2"), model, tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2, n_embd 64, 2 layers; no chat template, so data goes through the plain template."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = char_tokenizer(["<|endoftext|>"], unk_token="<|endoftext|>", eos_token="<|endoftext|>",
                               bos_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=eos, eos_token_id=eos)
    return _save(tmp_path_factory.mktemp("tiny-gpt2"), GPT2LMHeadModel(config), tokenizer)


@pytest.fixture(scope="session")
def tiny_bert_cls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BERT encoder with a 2-way classification head, [CLS] text [SEP] post-processing.

    A random 64-wide encoder at the usual 0.02 init passes almost nothing of the text to [CLS], and
    dropout drowns the rest; with dropout off and a 0.2 init, 20 steps of any method learn the task.
    """
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = char_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        template=("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"),
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        initializer_range=0.2)
    model = BertForSequenceClassification(config)
    torch.nn.init.zeros_(model.classifier.weight)  # every run starts at loss ln 2
    return _save(tmp_path_factory.mktemp("tiny-bert-cls"), model, tokenizer)


# --- data ------------------------------------------------------------------------------------------


def reversal_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """("reverse abc", "cba") pairs over a small alphabet: an answer a tiny model can start to learn."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 5))) for _ in range(count)]
    return [(f"reverse {w}", w[::-1]) for w in words]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def alpaca_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 alpaca rows: instruction "reverse abc", output "cba"."""
    rows = [{"instruction": q, "input": "", "output": a} for q, a in reversal_pairs(200)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "reverse.jsonl", rows)


@pytest.fixture(scope="session")
def messages_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 chat rows (system, user, assistant) with the reversal task."""
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                      {"role": "assistant", "content": a}]}
        for q, a in reversal_pairs(120, seed=1)
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", rows)


@pytest.fixture(scope="session")
def multitask_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 alpaca rows of two tasks, named in a `task` column: reverse a word, or repeat it twice."""
    rows = [{"instruction": f"{'reverse' if i % 2 else 'double'} {q.split()[1]}", "input": "",
             "output": a if i % 2 else q.split()[1] * 2, "task": "reverse" if i % 2 else "double"}
            for i, (q, a) in enumerate(reversal_pairs(200, seed=3))]  # fmt: skip
    return write_jsonl(tmp_path_factory.mktemp("data") / "two_tasks.jsonl", rows)


POSITIVE = ("good", "great", "love", "happy", "nice", "fun")
NEGATIVE = ("bad", "awful", "hate", "sad", "poor", "dull")


@pytest.fixture(scope="session")
def classification_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 short reviews labelled `positive` / `negative`; each is three keywords of its class."""
    rng = random.Random(2)
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(160):
            label = "positive" if i % 2 == 0 else "negative"
            words = rng.sample(POSITIVE if label == "positive" else NEGATIVE, 3)
            writer.writerow([" ".join(words), label])
    return path


@pytest.fixture(scope="session")
def multitask_csv(tmp_path_factory: pytest.TempPathFactory, classification_csv: Path) -> Path:
    """The 160 reviews with a `task` column: the first half "shop" reviews, the rest "film" reviews."""
    lines = classification_csv.read_text(encoding="utf-8").splitlines()
    rows = [lines[0] + ",task"] + [f"{line},{'shop' if i < 80 else 'film'}" for i, line in enumerate(lines[1:])]
    path = tmp_path_factory.mktemp("data") / "two_tasks.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# --- specs -----------------------------------------------------------------------------------------

SpecFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def make_spec(tmp_path_factory: pytest.TempPathFactory) -> SpecFactory:
    """`make_spec(model_dir, data_path, method, **training)` → a small RunSpec in a fresh runs folder.

    `method` is a method name or a dict of method fields (with `name`). Keyword `data` takes extra
    data fields; everything else goes to `training`. Defaults: 20 steps, batch 4, max_length 64,
    eval on 5% of the rows with 2 generated answers, float32 (the same numbers on every CPU).
    """
    from adapter_studio.engine.spec import parse_spec

    def make(
        model_dir: Path | str, data_path: Path | str, method: str | dict[str, Any] = "lora",
        *, data: dict[str, Any] | None = None, **training: Any,
    ) -> Any:  # fmt: skip
        method_fields = {"name": method} if isinstance(method, str) else dict(method)
        return parse_spec({
            "model": {"source": str(model_dir)},
            "data": {"path": str(data_path), "max_length": 64, "eval_split": 0.05, **(data or {})},
            "method": method_fields,
            "training": {"max_steps": 20, "batch_size": 4, "eval_samples": 2, "precision": "float32",
                         "save_every": 1000, **training},
            "output_dir": str(tmp_path_factory.mktemp("runs")),
        })  # fmt: skip

    return make


@pytest.fixture(scope="session")
def tiny_models(tiny_llama: Path, tiny_gpt2: Path, tiny_qwen2: Path, tiny_bert_cls: Path) -> dict[str, Path]:
    return {"llama": tiny_llama, "gpt2": tiny_gpt2, "qwen2": tiny_qwen2, "bert": tiny_bert_cls}


# --- what a test may not leave behind ------------------------------------------------------------------

THREAD_GRACE_S = 10.0  # a thread told to stop may take a moment to return


def _process_state() -> dict[str, Any]:
    """Settings of the whole process (or of the main thread) that one test could leave for the next."""
    import gc
    import sys

    import torch._dynamo.eval_frame

    state: dict[str, Any] = {
        "torch default dtype": torch.get_default_dtype(),
        "cpu autocast": (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")),
        "grad mode": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "torch.compiler stance": torch._dynamo.eval_frame._stance.stance,
        "torch threads": torch.get_num_threads(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "automatic garbage collection": gc.isenabled(),
        "working directory": os.getcwd(),
        "environment": dict(os.environ),
    }
    if "transformers.initialization" in sys.modules:  # patched while transformers builds a model
        from transformers import initialization, modeling_utils

        patched = [(sys.modules[m], f) for m in initialization.TORCH_MODULES_TO_PATCH if m in sys.modules
                   for f in initialization.TORCH_INIT_FUNCTIONS if hasattr(sys.modules[m], f)]  # fmt: skip
        state["torch.nn.init functions"] = {f"{m.__name__}.{f}": getattr(m, f) for m, f in patched}
        model = modeling_utils.PreTrainedModel
        state["PreTrainedModel hooks"] = {"tie_weights": model.tie_weights, "init_weights": model.init_weights}
    return state


def _restore(name: str, value: Any) -> None:
    import gc
    import sys

    if name == "torch default dtype":
        torch.set_default_dtype(value)
    elif name == "cpu autocast":
        torch.set_autocast_enabled("cpu", value[0])
        torch.set_autocast_dtype("cpu", value[1])
    elif name == "grad mode":
        torch.set_grad_enabled(value)
    elif name == "torch.compiler stance":
        torch.compiler.set_stance(value)
    elif name == "torch threads":
        torch.set_num_threads(value)
    elif name == "deterministic algorithms":
        torch.use_deterministic_algorithms(value)
    elif name == "automatic garbage collection":
        gc.enable() if value else gc.disable()
    elif name == "working directory":
        os.chdir(value)
    elif name == "environment":
        os.environ.clear()
        os.environ.update(value)
    elif name == "torch.nn.init functions":
        for dotted, func in value.items():
            module, _, attr = dotted.rpartition(".")
            setattr(sys.modules[module], attr, func)
    elif name == "PreTrainedModel hooks":
        from transformers import modeling_utils

        for attr, func in value.items():
            setattr(modeling_utils.PreTrainedModel, attr, func)


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    found = []
    for name, was in before.items():
        now = after.get(name, was)
        if name == "environment":
            keys = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k) and k not in TOOL_VARIABLES)
            if keys:
                found.append(f"environment variables {keys}")
        elif now != was:
            found.append(f"{name}: {was!r} -> {now!r}")
    return found


def _background_work(threads_before: set[threading.Thread]) -> list[str]:
    """Threads this test started that still run (after a grace period for ones told to stop)."""
    import sys

    found = []
    if "PySide6.QtCore" in sys.modules:
        from PySide6.QtCore import QCoreApplication, QThreadPool

        pool = QThreadPool.globalInstance()
        if QCoreApplication.instance() is not None and not pool.waitForDone(int(THREAD_GRACE_S * 1000)):
            found.append(f"{pool.activeThreadCount()} QThreadPool worker(s) still running")
    deadline = time.monotonic() + THREAD_GRACE_S
    for thread in set(threading.enumerate()) - threads_before:
        if not _library_thread(thread):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                found.append(f"thread {thread.name!r} still running")
    return found


def _library_thread(thread: threading.Thread) -> bool:
    """Threads libraries keep for the life of the process once started (not work a test left running).
    A QThreadPool's threads show here as dummy threads once they ran Python: the pool is checked itself."""
    return (
        isinstance(thread, threading._DummyThread)
        or thread.name.startswith(LIBRARY_THREADS)
        or thread in _inductor_compile_threads()
    )


def _inductor_compile_threads() -> set[threading.Thread]:
    """The threads of inductor's compile pool: made by the first compile that needs them (lru_cache'd
    `AsyncCompile.pool`) and kept for the process, whichever test happens to compile first."""
    import sys

    if "torch._inductor.async_compile" not in sys.modules:
        return set()
    pool = sys.modules["torch._inductor.async_compile"].AsyncCompile.pool
    if not pool.cache_info().currsize:
        return set()
    return set(pool()._threads)


LIBRARY_THREADS = ("tqdm_monitor",)  # tqdm's, started with the first progress bar
TOOL_VARIABLES = {
    "PYTEST_CURRENT_TEST",  # pytest's own
    "QT_API",  # pytest-qt's, with the first window
    # inductor's: set when it loads its first compiled kernel library, to a pointer fixed for the process
    "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR",
    # scikit-learn's (imported by the evaluation, also through rouge-score's nltk): set on its first import
    "KMP_DUPLICATE_LIB_OK",
    "KMP_INIT_AT_FORK",
}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    """After everything else in a test's teardown, pytest-qt included (its last `processEvents` can fire a
    timer a window left running): no worker may have started for the next test to run beside."""
    import sys

    result = yield
    if "PySide6.QtCore" in sys.modules:
        from PySide6.QtCore import QCoreApplication, QThreadPool

        pool = QThreadPool.globalInstance()
        if QCoreApplication.instance() is not None and pool.activeThreadCount():
            pool.waitForDone(60_000)
            raise AssertionError(f"{item.nodeid} started background work as it ended (a timer it left running)")
    return result


@pytest.fixture(autouse=True)
def leaves_the_process_as_it_found_it() -> Any:
    """Fail a test that leaves a thread running or process-wide state changed (in the spirit of napari's
    dangling-thread check): the next test would run in it, and pass or fail by the order they run in.
    Autouse fixtures are set up first, so this check runs after every other fixture's teardown. What
    changed is restored, so one leak does not fail the tests after it too."""
    threads_before = set(threading.enumerate())
    before = _process_state()
    yield
    problems = _background_work(threads_before)
    after = _process_state()
    problems += _changes(before, after)
    for name, value in before.items():
        if after.get(name, value) != value:
            _restore(name, value)
    if problems:
        pytest.fail("the test left behind: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def every_core(leaves_the_process_as_it_found_it: None) -> Any:
    """A real model trained or loaded in this process uses every core: the one thread the tiny models get
    (top of this file) made the in-process SmolLM2 tests take twice as long. Restored after the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def thread_pool_kept() -> Any:
    """Qt's global thread pool as it was: create_app changes its expiry (idle workers exit at once)."""
    from PySide6.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    kept = pool.maxThreadCount(), pool.expiryTimeout()
    yield pool
    pool.setMaxThreadCount(kept[0])
    pool.setExpiryTimeout(kept[1])


@pytest.fixture(autouse=True)
def garbage_collected_on_the_gui_thread(request: pytest.FixtureRequest, leaves_the_process_as_it_found_it: None) -> Any:
    """A test with Qt widgets runs as the app does: Python's cycle collector only on the GUI thread.

    The main window turns it on (gui.garbage_collection); a test of one page has no window, and left
    automatic, a collection started by a worker thread's allocation freed a Qt object there and deadlocked
    against the GUI thread: the Evaluate page's first ROUGE score imports nltk on its worker, and the whole
    suite hung there once (2026-12-05: the worker in `_get_module_lock`, the main thread in a pytest-qt
    wait, garbage-collecting). Set up before pytest-qt's fixtures, so it ends after their teardown has
    closed the widgets and their work; then the collector is Python's own again."""
    if "qtbot" not in request.fixturenames:
        yield
        return
    from adapter_studio.gui.garbage_collection import (
        collect_garbage_on_gui_thread,
        restore_automatic_garbage_collection,
    )

    request.getfixturevalue("qapp")  # the collector's timer needs the application
    collect_garbage_on_gui_thread()
    yield
    restore_automatic_garbage_collection()


def wind_down(widget: Any, qtbot: Any) -> None:
    """Let a window (or page) finish its background work before it goes, and start none after.

    Its debounced requests are QTimers that fire when events are next processed, which pytest-qt does
    after every fixture's teardown and in the next test's setup: a timer left running started the cost
    table's estimate (a bf16 meta model, on a worker thread) during the next test (issue 20). So: stop
    the run, then until nothing is left, stop every timer of the widget, wait for the thread pool and
    deliver the results (a result can start a timer again)."""
    from PySide6.QtCore import QThreadPool, QTimer
    from PySide6.QtWidgets import QApplication

    controller = getattr(getattr(widget, "train_page", None), "controller", None)
    if controller is not None and controller.running:
        controller.stop()
        qtbot.waitUntil(lambda: not controller.running, timeout=60_000)
    pool = QThreadPool.globalInstance()
    for _ in range(100):
        for timer in widget.findChildren(QTimer):
            timer.stop()
        assert pool.waitForDone(60_000), "background work still running after a minute"
        QApplication.processEvents()
        if pool.activeThreadCount() == 0 and not any(t.isActive() for t in widget.findChildren(QTimer)):
            return
    raise AssertionError("the window kept starting background work")


@pytest.fixture
def window(qtbot: Any, tmp_path: Path) -> Any:
    """The real main window (offscreen) with its runs folder in a temporary directory. Before pytest-qt
    closes it, a run still going is stopped and its background work ends (wind_down): no thread
    outlives the test, and none starts after it."""
    from adapter_studio.gui.main_window import MainWindow
    from adapter_studio.gui.state import StudioState

    window = MainWindow(StudioState(runs_dir=str(tmp_path / "runs")))
    qtbot.addWidget(window, before_close_func=lambda w: wind_down(w, qtbot))
    window.show()
    yield window  # Python's own collector comes back after pytest-qt closed it (garbage_collected_on_the_gui_thread)
