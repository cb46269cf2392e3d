"""Exports are all or nothing: a failure while writing leaves no folder behind and says why."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.export.run_export import export_run
from adapter_studio.engine.training.run import run


@pytest.fixture(scope="module")
def trained_run(tiny_llama, alpaca_jsonl, make_spec) -> Path:  # type: ignore[no-untyped-def]
    result = run(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=3, save_every=3))
    assert result.status == "completed"
    return result.run_dir


def test_exported_files_are_as_readable_as_other_files(trained_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """safetensors wrote the weights 0600 beside a 0644 card: on a shared folder, others could not load them."""
    import os

    from adapter_studio.engine.durable import _umask

    result = export_run(trained_run, "adapter", tmp_path / "shared")
    modes = {p.name: p.stat().st_mode & 0o777 for p in result.path.iterdir()}
    mask = _umask()
    assert mask is not None  # Linux: read from /proc
    assert set(modes.values()) == {0o666 & ~mask}, modes
    assert os.access(result.path / "adapter_model.safetensors", os.R_OK)


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
        (OSError(errno.EROFS, "Read-only file system"), "permission denied"),
    ],
    ids=["read-only folder", "disk full", "read-only file system"],
)
@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_a_failed_write_leaves_nothing_and_says_why(trained_run, tmp_path, monkeypatch, kind, error, words):  # type: ignore[no-untyped-def]
    import adapter_studio.engine.export.run_export as export

    def fail_midway(*args, **kwargs):  # type: ignore[no-untyped-def]
        (args[-1] if isinstance(args[-1], Path) else Path(str(args[-1]))).joinpath("half-written").write_text("x")
        raise error

    target = "_write_adapter" if kind == "adapter" else "model_card"
    if kind == "adapter":
        monkeypatch.setattr(export, target, lambda trained, folder: fail_midway(folder))
    else:
        monkeypatch.setattr(export, target, lambda trained, kind, run_dir: (_ for _ in ()).throw(error))
    out = tmp_path / "target" / "export"
    with pytest.raises(UserError, match=words):
        export_run(trained_run, kind, out)
    assert not out.exists()
    assert [p.name for p in (tmp_path / "target").iterdir()] == []  # no partial folder beside it either


def test_an_existing_target_is_never_overwritten(trained_run, tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        export_run(trained_run, "adapter", out)
    assert (out / "keep.txt").read_text() == "mine"


def test_model_card_has_the_metadata(trained_run, tmp_path):  # type: ignore[no-untyped-def]
    import yaml

    result = export_run(trained_run, "adapter", tmp_path / "card")
    text = (result.path / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    studio = meta["adapter_studio"]
    assert meta["base_model"] and studio["method"]["name"] == "lora" and studio["trainable_params"] > 0
    assert studio["final_train_loss"] is not None and "peft" in studio["versions"]
    assert result.verified_max_diff is not None and result.verified_max_diff < 1e-4


@pytest.mark.parametrize(
    ("source", "base", "note"),
    [
        ("embedded:smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("huggingfacetb/smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("embedded:all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", False),  # the same weights
        ("/models/my-llama", "/models/my-llama", False),
        ("/models/tiny.gguf", "/models/tiny.gguf", False),
        ("gguf-folder", "gguf-folder", False),  # a folder that holds only a .gguf file
    ],
)
def test_the_card_names_the_hub_model_an_embedded_base_is_a_copy_of(trained_run, source, base, note) -> None:  # type: ignore[no-untyped-def]
    """The card's base_model is a hub id where the base was an embedded model, and says where its weights differ
    from the hub's (SmolLM2 ships as a 4-bit GGUF file)."""
    from types import SimpleNamespace

    import yaml
    from adapter_studio.engine.export.run_export import model_card
    from adapter_studio.engine.inference.trained import run_spec

    if source == "gguf-folder":
        folder = trained_run.parent / "gguf-folder"
        folder.mkdir(exist_ok=True)
        (folder / "tiny.gguf").write_bytes(b"GGUF")
        source = base = str(folder)
    spec = run_spec(trained_run)
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"source": source})})
    card = model_card(SimpleNamespace(spec=spec, task="causal_lm", model=None), "adapter", trained_run)  # type: ignore[arg-type]
    assert yaml.safe_load(card.split("---")[1])["base_model"] == base
    assert f"fine-tune of {base}\n" in card
    assert ("Q4_1 GGUF file" in card and "nearly, not exactly, the same" in card) == note
    loads = ("'/models', gguf_file='tiny.gguf'" if base.endswith(".gguf") else
             f"{base!r}, gguf_file='tiny.gguf'" if base.endswith("gguf-folder") else repr(base))  # fmt: skip
    assert f"AutoModelForCausalLM.from_pretrained({loads})" in card  # it read '<base model>'


@pytest.mark.parametrize(
    ("before", "merged", "largest_logit", "tolerance"),
    [
        ({"": 1.0, "q": 0.07}, {"": 1.0, "q": 0.07}, 0.0, 1e-4),  # a tiny model's logits: float32's rounding
        ({"": 1.0, "q": 0.07}, {"": 1.0, "q": 0.07}, 35.3, 3.53e-4),  # SmolLM2 after the default LoRA run
        ({"": 1.0, "q": 1.0}, {"": 271.0, "q": 271.0}, 0.0, 2.71e-2),  # weights that grew carry more rounding
        ({"": 1.0, "q": 0.07}, {"": 1.0, "q": 0.49}, 0.77, 7e-4),  # q grew 7×, not the largest weight (a norm's)
        ({"": 2.0, "q": 1.0}, {"": 1.0, "q": 0.5}, 5.0, 1e-4),  # weights that shrank: never below the floor
        ({"": 1.0, "q": 0.07}, {"": 1.0, "model.q": 0.49}, 0.0, 1e-4),  # renamed by the merge: not compared
    ],
)
def test_a_merge_is_verified_within_float32s_rounding(before: dict[str, float], merged: dict[str, float],
                                                      largest_logit: float, tolerance: float) -> None:
    from adapter_studio.engine.export.run_export import merge_growth, merge_tolerance

    assert merge_tolerance(merge_growth(before, merged), largest_logit) == pytest.approx(tolerance)


def test_a_terminated_export_leaves_nothing_behind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`timeout` (SIGTERM) on an export left its hidden partial folder (139 MiB of GGUF); Ctrl-C did not. The
    command line itself is started, with an export that waits while its folder is half-written."""
    import signal
    import subprocess
    import sys

    code = (
        "import sys, time\nfrom pathlib import Path\nfrom adapter_studio.engine.export import run_export\n"
        "def slow(run_dir, kind, out, emit=None):\n    with run_export.written_in_place(Path(out)) as tmp:\n"
        "        (tmp / 'w').write_text('x')\n        print('writing', flush=True)\n        time.sleep(60)\n"
        "run_export.export_run = slow\nfrom adapter_studio.cli import main\n"
        "sys.argv = ['adapter-studio', 'export', sys.argv[1], '--adapter', '--out', sys.argv[2]]\nsys.exit(main())\n"
    )
    out = tmp_path / "export"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), str(out)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130  # as Ctrl-C ends a command
    assert list(tmp_path.iterdir()) == []  # neither the export nor its hidden partial folder


def test_an_export_to_a_long_legal_name_is_written(tmp_path: Path) -> None:
    """A 250-byte folder name is legal; the hidden folder written first, named by it and a suffix, was not."""
    from adapter_studio.engine.export.run_export import written_in_place

    out = tmp_path / ("n" * 250)
    with written_in_place(out) as tmp:
        (tmp / "weights").write_text("x")
    assert (out / "weights").read_text() == "x" and [p.name for p in tmp_path.iterdir()] == [out.name]
    from adapter_studio.engine.export.run_export import new_export_folder

    with pytest.raises(UserError, match="is 256 bytes long, more than a folder's name can be"):
        new_export_folder(tmp_path / ("n" * 256))  # was an OSError: "File name too long"


def test_an_export_from_a_run_folder_that_cannot_be_written_is_kept_and_said(tmp_path: Path) -> None:
    """Exported and checked, then `export` failed (exit 1, a PermissionError) noting it in the read-only run's
    events.jsonl, the export left in place as if it had failed."""
    from adapter_studio.engine.events import Export, Log, log_export

    not_a_folder = tmp_path / "run"
    not_a_folder.write_text("")  # events.jsonl cannot be made inside it: an OSError, as a read-only folder gives
    said: list[object] = []
    event = Export(kind="adapter", path=str(tmp_path / "out"), bytes=1, verified_max_diff=0.0)
    log_export(not_a_folder, event, said.append)
    assert said[-1] == event
    assert isinstance(said[0], Log) and said[0].level == "warning"
    assert said[0].message.startswith(f"the export is written and checked, but {not_a_folder / 'events.jsonl'} "
                                      "could not note it (")  # fmt: skip
