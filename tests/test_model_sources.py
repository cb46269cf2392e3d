"""What `model.source` names: a hub id comes from this machine's Hugging Face cache only, said at once when
it is not there; the embedded models' own hub ids fall back to the copies the app ships, and say so."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.models.embedded import EMBEDDED_MINILM, EMBEDDED_SMOLLM2, embedded_source
from adapter_studio.engine.models.hub_ids import SHIPPED_CONFIG_HUB_IDS
from adapter_studio.engine.models.loading import MODEL_CONFIGS, load_model, resolve_source, summarize_model
from adapter_studio.engine.spec import ModelSpec


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test's own (the machine's may hold anything)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_model(cache: Path, repo_id: str) -> None:
    """The layout huggingface_hub keeps a downloaded model in (refs/main → a snapshot with config.json)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


@pytest.mark.parametrize(
    ("source", "embedded"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", EMBEDDED_SMOLLM2),
        ("huggingfacetb/smollm2-135m-instruct", EMBEDDED_SMOLLM2),  # the hub reads ids without case
        (" HuggingFaceTB/SmolLM2-135M-Instruct ", EMBEDDED_SMOLLM2),
        ("sentence-transformers/all-MiniLM-L6-v2", EMBEDDED_MINILM),
    ],
)
def test_an_embedded_models_hub_id_uses_the_shipped_copy_when_not_cached(hub_cache: Path, source: str,
                                                                         embedded: str) -> None:  # fmt: skip
    got = resolve_source(source)
    shipped = embedded_source(embedded)
    assert (got.kind, got.path, got.gguf_file) == (shipped.kind, shipped.path, shipped.gguf_file)
    assert got.note.startswith(f"{source.strip()} is not in this machine's Hugging Face cache: using the copy")
    assert embedded in got.note
    assert ("Q4_1" in got.note) == (embedded == EMBEDDED_SMOLLM2)  # the 4-bit file, not the hub's weights


@pytest.mark.parametrize(("source", "params"), [("meta-llama/Llama-3.1-8B", 8_030_261_248),
                                               ("Qwen/Qwen2.5-0.5B", 494_032_768)])
def test_a_hub_id_whose_architecture_ships_shows_its_size_and_costs(hub_cache: Path, source: str,
                                                                    params: int) -> None:  # fmt: skip
    summary = summarize_model(source)
    assert (summary.kind, summary.params) == ("config", params)  # the counts in resources/model_configs/README.md
    assert summary.note.startswith(f"{source} is not in this machine's Hugging Face cache: its architecture ships")
    assert f"training needs the weights (`hf download {source}`" in summary.note
    with pytest.raises(UserError, match=f"'{source}' is not in this machine's Hugging Face cache, and nothing is "
                                        "downloaded while training"):  # fmt: skip
        load_model(ModelSpec(source=source), "causal_lm")


def test_every_shipped_architecture_names_its_hub_model() -> None:
    readme = (MODEL_CONFIGS / "README.md").read_text().lower()
    for repo_id, name in SHIPPED_CONFIG_HUB_IDS.items():
        assert f"| {name} | {repo_id} |" in readme and (MODEL_CONFIGS / name / "config.json").exists()


def test_a_cached_hub_model_is_used_over_the_shipped_copy(hub_cache: Path) -> None:
    cache_model(hub_cache, "HuggingFaceTB/SmolLM2-135M-Instruct")
    got = resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (got.kind, got.path, got.note) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct", "")


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("someorg/not-here", "'someorg/not-here' is not in this machine's Hugging Face cache, and nothing is "
                             "downloaded while training — download it once (`hf download someorg/not-here`"),
        ("some org/a..b", "'some org/a..b' is not a folder, a .gguf file or a valid hub id"),
    ],
)
def test_a_hub_id_that_is_not_here_is_said_before_anything_loads(hub_cache: Path, source: str, words: str) -> None:
    """The Model page used to ask the hub for the configuration: 24 s of retries offline, then transformers'
    advice about offline mode."""
    start = time.perf_counter()
    with pytest.raises(UserError) as raised:
        summarize_model(source)
    assert words in str(raised.value) and raised.value.where == "model.source"
    assert time.perf_counter() - start < 5  # no network retries (they take 8 s each)


def test_the_model_page_says_which_copy_a_hub_id_got(window, qtbot, hub_cache) -> None:  # type: ignore[no-untyped-def]
    page = window.pages["model"]
    page.choose("HuggingFaceTB/SmolLM2-135M-Instruct")
    qtbot.waitUntil(lambda: page.status.text().endswith("Ready. The weights load when training starts."),
                    timeout=60_000)  # fmt: skip
    assert page.status.text().startswith("HuggingFaceTB/SmolLM2-135M-Instruct is not in this machine's Hugging "
                                         "Face cache: using the copy that ships with the app")
    assert page.fields["name"].text() == "SmolLM2-135M-Instruct (embedded)"
    assert window.state.model.source == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the spec keeps the person's words
    assert page.status.minimumSizeHint().width() < 600  # the note wraps (on one line it widened the window 300 px)


@pytest.mark.parametrize("source", ["meta-llama/Llama-3.1-8B", "llama-3.1-8b", "a folder with config.json alone"])
def test_the_model_page_offers_an_architecture_for_costs_only(window, qtbot, hub_cache, source, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A folder holding only config.json was "Ready", and training failed on transformers' missing file."""
    if source.startswith("a folder"):
        (tmp_path / "llama-8b").mkdir()
        shutil.copy(MODEL_CONFIGS / "llama-3.1-8b" / "config.json", tmp_path / "llama-8b")
        source = str(tmp_path / "llama-8b")
    page = window.pages["model"]
    page.choose(source)
    qtbot.waitUntil(lambda: "Compare page" in page.status.text(), timeout=60_000)
    assert page.fields["parameters"].text() == "8.03 B (8,030,261,248)"
    assert page.status.text().endswith("Its costs are on the Compare page; to train, pick a model with weights.")
    assert ("Hugging Face cache" in page.status.text()) == source.startswith("meta-llama/")
    folder = source.startswith("/")
    assert page.status.text().startswith("llama-8b holds a config.json but no weight files") == folder
    assert "The weights load when training starts" not in page.status.text()


@pytest.mark.parametrize(
    ("source", "saved"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", EMBEDDED_SMOLLM2),  # the shipped copy trained: the run names it
        ("sentence-transformers/all-MiniLM-L6-v2", EMBEDDED_MINILM),
        (EMBEDDED_SMOLLM2, EMBEDDED_SMOLLM2),
    ],
)
def test_a_run_names_the_copy_it_trained(hub_cache: Path, source: str, saved: str) -> None:
    """So that its evaluation, export and resume load the same weights after the hub's are downloaded."""
    from adapter_studio.engine.spec import parse_spec
    from adapter_studio.engine.training.session import _source_used

    spec = parse_spec({"model": {"source": source}, "data": {"path": "x.jsonl"}})
    used, reasons = _source_used(spec, resolve_source(source))
    assert used.model.source == saved
    assert (list(reasons) == ["model.source"]) == (source != saved)
    if source != saved:
        assert reasons["model.source"].startswith(f"{source} is not in this machine's Hugging Face cache")
    cache_model(hub_cache, "HuggingFaceTB/SmolLM2-135M-Instruct")  # once downloaded, the hub's weights train
    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _source_used(spec.model_copy(update={"model": ModelSpec(source=hub)}), resolve_source(hub))[1] == {}


def test_a_damaged_gguf_file_is_named_itself(tmp_path: Path) -> None:
    """Walking the window: 'model.source (/tmp/x): … /tmp/x/bad.gguf does not start with the GGUF magic' named
    the file's folder as the place."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError) as raised:
        summarize_model(str(bad))
    assert raised.value.where == f"model.source ({bad.resolve()})", raised.value.message


def test_a_slow_answer_about_an_earlier_choice_is_dropped(window, qtbot, tiny_llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Walking the window: a superseded choice's error dialog popped up after a good model had been picked."""
    import threading

    from adapter_studio.gui.pages import model_page

    read = model_page.summarize_model
    release = threading.Event()

    def summarize(source: str):  # type: ignore[no-untyped-def]
        if source == "/slow/not-a-model":
            release.wait(30)
            raise UserError("not a model", where="model.source")
        return read(source)

    monkeypatch.setattr(model_page, "summarize_model", summarize)
    page = window.pages["model"]
    said: list[object] = []
    monkeypatch.setattr(page, "error", said.append)
    page.choose("/slow/not-a-model")
    page.choose(str(tiny_llama))
    qtbot.waitUntil(lambda: page.status.text().startswith("Ready"), timeout=60_000)
    release.set()
    from adapter_studio.gui.worker import _ALIVE

    qtbot.waitUntil(lambda: not _ALIVE, timeout=30_000)  # every worker done: the earlier answer has arrived
    assert said == [] and page.status.text().startswith("Ready") and window.state.model.source == str(tiny_llama)


def test_an_encoder_asked_to_write_answers_is_refused(tiny_bert_cls: Path, alpaca_jsonl: Path, make_spec: Any) -> None:
    """all-MiniLM-L6-v2 on math problems trained as text generation, unsaid (BERT with a language-model head, each
    token seeing the ones after it)."""
    from adapter_studio.engine.training.run import run

    result = run(make_spec(tiny_bert_cls, alpaca_jsonl, "lora", max_steps=1))
    assert result.status == "failed" and result.step == 0
    assert result.error is not None and "is an encoder (bert): it reads a text to classify it" in result.error
