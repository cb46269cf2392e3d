"""AdapterFusion (engine.methods.fusion) on tiny models: it fuses finished bottleneck-adapter runs, trains only
its fusion layers (and a classifier's head), counts what trains, exports a folder that reloads without
the runs, and refuses what it cannot fuse with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Started

# Two Pfeiffer runs on the decoder, two Houlsby runs on the classifier, and a Compacter++ run (shared rules)
# beside a Pfeiffer one: kinds of one placement fuse.
ADAPTERS = {"llama": ("adapter_p", "adapter_p"), "bert": ("adapter_h", "adapter_h"),
            "mixed": ("compacter_pp", "adapter_p")}
KINDS = list(ADAPTERS)
# Tiny random models move only at high rates; the classifier's fresh head overshoots above 1e-2 (as in
# test_methods).
RATE = {"llama": 3e-2, "bert": 5e-3, "mixed": 3e-2}


def finished(make_spec: Any, model: Path, data: Path, method: str, folder: Path, seed: int) -> Path:
    from adapter_studio.engine.training.run import run

    fields = {"name": method} if method == "lora" else {"name": method, "reduction_factor": 4}
    spec = make_spec(model, data, fields, max_steps=20, learning_rate=3e-2 if "bert" not in model.name else 1e-2,
                     seed=seed).model_copy(update={"output_dir": str(folder)})  # fmt: skip
    result = run(spec, emit=lambda e: None)
    assert result.status == "completed", result.error
    return Path(result.run_dir)


@pytest.fixture(scope="module")
def runs(tiny_llama: Path, tiny_bert_cls: Path, alpaca_jsonl: Path, classification_csv: Path, make_spec: Any,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:  # fmt: skip
    folder = tmp_path_factory.mktemp("fused-runs")
    where = {"llama": (tiny_llama, alpaca_jsonl), "bert": (tiny_bert_cls, classification_csv),
             "mixed": (tiny_llama, alpaca_jsonl)}  # fmt: skip
    return {kind: [finished(make_spec, *where[kind], m, folder, seed) for seed, m in enumerate(methods)]
            for kind, methods in ADAPTERS.items()}  # fmt: skip


@pytest.fixture(scope="module")
def fused(runs: dict[str, list[Path]], tiny_llama: Path, tiny_bert_cls: Path, alpaca_jsonl: Path,
          classification_csv: Path, make_spec: Any) -> dict[str, Any]:  # fmt: skip
    """One AdapterFusion run per kind: (its result, its events)."""
    from adapter_studio.engine.training.run import run

    where = {"llama": (tiny_llama, alpaca_jsonl), "bert": (tiny_bert_cls, classification_csv),
             "mixed": (tiny_llama, alpaca_jsonl)}  # fmt: skip
    out = {}
    for kind, run_dirs in runs.items():
        events: list[Any] = []
        spec = make_spec(*where[kind], {"name": "adapter_fusion", "runs": [str(r) for r in run_dirs]}, max_steps=20,
                         learning_rate=RATE[kind])  # fmt: skip
        result = run(spec, emit=events.append)
        out[kind] = (result, events)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_fusion_trains_only_its_layers_and_counts_them(kind: str, fused: dict[str, Any]) -> None:
    from adapter_studio.engine.inference.trained import load_trained

    result, events = fused[kind]
    assert result.status == "completed", result.error
    losses = [e.loss for e in events if e.type == "metrics"]
    assert sum(losses[-3:]) < sum(losses[:3])
    started = next(e for e in events if isinstance(e, Started))
    trained = load_trained(Path(result.run_dir))
    names = [n for n, p in trained.model.named_parameters() if ".fusion." in n or "classifier" in n]
    assert started.trainable_params == sum(dict(trained.model.named_parameters())[n].numel() for n in names)


@pytest.mark.parametrize("kind", KINDS)
def test_the_runs_adapters_are_loaded_and_stay_frozen(kind: str, runs: dict[str, list[Path]],
                                                      fused: dict[str, Any]) -> None:  # fmt: skip
    from adapter_studio.engine.inference.trained import load_trained
    from adapter_studio.engine.training import checkpoints as ckpt
    from safetensors.torch import load_file

    result, _ = fused[kind]
    params = dict(load_trained(Path(result.run_dir)).model.named_parameters())
    for i, run_dir in enumerate(runs[kind]):
        saved = load_file(str(ckpt.latest_checkpoint(run_dir / "checkpoints") / ckpt.WEIGHTS))  # type: ignore[operator]
        adapters = {n: t for n, t in saved.items() if ".adapter." in n}
        assert adapters
        for name, tensor in adapters.items():
            assert torch.equal(params[name.replace(".adapter.", f".adapters.{i}.", 1)].detach(), tensor)


@pytest.mark.parametrize("kind", KINDS)
def test_export_reloads_without_the_run_folders(kind: str, fused: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from adapter_studio.engine.export.run_export import export_run, load_export
    from adapter_studio.engine.inference.trained import load_trained

    result, _ = fused[kind]
    out = export_run(Path(result.run_dir), "adapter", tmp_path / "export")  # compared with the run inside
    trained = load_trained(Path(result.run_dir))
    moved = tmp_path / "elsewhere"
    runs = [Path(r) for r in trained.spec.method.runs]  # type: ignore[attr-defined]
    for r in runs:
        shutil.move(r, moved / r.name)
    try:
        loaded = load_export(out.path, "adapter", trained.spec)
        ids = torch.tensor([[2, 5, 6, 7, 3]])
        with torch.no_grad():
            assert torch.allclose(loaded(input_ids=ids).logits, trained.model.eval()(input_ids=ids).logits, atol=1e-5)
    finally:
        for r in runs:
            shutil.move(moved / r.name, r)


def test_merged_export_is_refused(fused: dict[str, Any], tmp_path: Path) -> None:
    from adapter_studio.engine.export.run_export import export_run

    with pytest.raises(UserError, match="AdapterFusion"):
        export_run(Path(fused["llama"][0].run_dir), "merged", tmp_path / "merged")


@pytest.fixture(scope="module")
def others(tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Path]:  # fmt: skip
    """A LoRA run and a Houlsby run on the decoder: what the Pfeiffer runs cannot be fused with."""
    folder = tmp_path_factory.mktemp("other-runs")
    return {m: finished(make_spec, tiny_llama, alpaca_jsonl, m, folder, 0) for m in ("lora", "adapter_h")}


@pytest.mark.parametrize(("pick", "words"), [
    (lambda runs, others: [], "none are listed"),
    (lambda runs, others: runs["llama"][:1], "1 is listed"),
    (lambda runs, others: [runs["llama"][0], others["lora"]], "is a LoRA run; AdapterFusion fuses serial bottleneck"),
    (lambda runs, others: [runs["llama"][0], runs["llama"][0].parent / "missing"], "is not a run folder"),
    (lambda runs, others: [runs["llama"][0], runs["bert"][0]], "trained on different base models"),
    (lambda runs, others: [runs["llama"][0], others["adapter_h"]], "put their adapters in different places"),
])  # fmt: skip
def test_what_cannot_be_fused_is_refused(pick: Any, words: str, runs: dict[str, list[Path]], others: dict[str, Path],
                                         tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any) -> None:  # fmt: skip
    from adapter_studio.engine.training.run import run

    chosen = [str(p) for p in pick(runs, others)]
    result = run(make_spec(tiny_llama, alpaca_jsonl, {"name": "adapter_fusion", "runs": chosen}, max_steps=2),
                 emit=lambda e: None)  # fmt: skip
    assert result.status == "failed" and words in (result.error or ""), result.error


def test_runs_of_another_base_do_not_fit(runs: dict[str, list[Path]], tiny_gpt2: Path, alpaca_jsonl: Path,
                                         make_spec: Any) -> None:  # fmt: skip
    from adapter_studio.engine.training.run import run

    spec = make_spec(tiny_gpt2, alpaca_jsonl, {"name": "adapter_fusion", "runs": [str(r) for r in runs["llama"]]},
                     max_steps=2)  # fmt: skip
    result = run(spec, emit=lambda e: None)
    assert result.status == "failed" and "adapters do not fit this model" in result.error, result.error


@pytest.mark.gui
def test_fuse_from_the_runs_page_then_train_in_the_window(window: Any, qtbot: Any, runs: dict[str, list[Path]]) -> None:
    from adapter_studio.engine.methods.fusion import AdapterFusion
    from adapter_studio.engine.spec import TrainingSpec
    from adapter_studio.gui.combine_dialog import FUSION, CombineChoice, CombineDialog

    dialog = CombineDialog(["a", "b"])
    qtbot.addWidget(dialog)
    dialog.how.setCurrentIndex(dialog.how.findData(FUSION))
    assert dialog.choice().weights is None and not dialog.weights[0].isEnabled() and not dialog.name.isEnabled()

    page = window.runs_page
    page.error = lambda e: pytest.fail(f"error dialog: {e}")  # type: ignore[method-assign]
    window.state.runs_dir = str(runs["llama"][0].parent)
    page.refresh()
    page.select_runs(runs["llama"])
    page.ask_combine = lambda names: CombineChoice(FUSION, None, 0.5, None)  # type: ignore[method-assign]
    page.buttons["combine"].click()
    method = window.state.method
    assert isinstance(method, AdapterFusion) and sorted(method.runs) == sorted(str(r) for r in runs["llama"])
    assert window.state.training.learning_rate is None  # the fusion's own rate, not the adapters' run's
    assert "AdapterFusion of" in page.status.text()

    window.go_to("method")
    details = window.pages["method"].details.text()
    assert "Fuses" in details and runs["llama"][0].name in details and "Cannot train" not in details
    window.state.training = TrainingSpec(max_steps=4, batch_size=4, save_every=4, eval_samples=0,
                                         precision="float32")  # fmt: skip
    window.train_page.start()
    qtbot.waitUntil(lambda: not window.train_page.controller.running, timeout=120_000)
    assert window.train_page.last_status == "completed", window.train_page.last_error
    assert window.train_page.metrics[-1].step == 4


@pytest.mark.gui
def test_the_picker_says_what_adapter_fusion_needs(window: Any, qtbot: Any, tiny_llama: Path) -> None:
    window.pages["model"].choose(str(tiny_llama))
    qtbot.waitUntil(lambda: window.state.model_info is not None, timeout=60_000)
    window.go_to("method")
    page = window.pages["method"]
    page.select("adapter_fusion")
    details = page.details.text()
    assert "Cannot train:" in details and "none are listed" in details and "Combine" in details, details
    assert details.count("train Adapter (Pfeiffer) runs on other tasks") == 1, details  # its fix said once


def test_fuse_through_the_command_line(runs: dict[str, list[Path]], tmp_path: Path) -> None:
    import json

    from tests.test_cli import cli

    out = cli("combine", *map(str, runs["llama"]), "--how", "fusion", "--out", str(tmp_path), "--name", "fused",
              "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "completed" and result["run_dir"] == str(tmp_path / "fused")
    refused = cli("combine", str(runs["llama"][0]), "--how", "fusion")
    assert refused.returncode != 0 and "1 is listed" in refused.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_compare_counts_what_the_fusion_trains(kind: str, runs: dict[str, list[Path]], fused: dict[str, Any],
                                                tiny_llama: Path, tiny_bert_cls: Path) -> None:  # fmt: skip
    from adapter_studio.engine.estimate.table import estimate_table

    model = tiny_bert_cls if kind == "bert" else tiny_llama
    row = estimate_table(str(model), "adapter_fusion", [f"method.runs={','.join(map(str, runs[kind]))}"])[0]
    started = next(e for e in fused[kind][1] if isinstance(e, Started))
    assert "error" not in row, row
    assert row["trainable_params"] == started.trainable_params
    refused = estimate_table(str(model), "adapter_fusion", [])[0]
    assert "none are listed" in refused["error"]
