"""Combining finished LoRA runs (engine.combine_runs): the result is a run folder the app loads, exports
and merges like a trained run; `cat` gives exactly the weighted sum of the runs' updates; runs that
cannot be combined are refused with the reason."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(scope="module")
def lora_runs(tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any, tmp_path_factory: pytest.TempPathFactory
              ) -> list[Path]:  # fmt: skip
    from adapter_studio.engine.training.run import run

    folder, runs = tmp_path_factory.mktemp("lora-runs"), []  # one runs folder, as the Runs page shows it
    for seed, method in ((1, {"name": "lora", "r": 4}), (2, {"name": "lora", "r": 4}), (3, {"name": "lora", "r": 8})):
        spec = make_spec(tiny_llama, alpaca_jsonl, {**method, "target_modules": ["q_proj", "v_proj"]}, max_steps=6,
                         learning_rate=3e-2, seed=seed).model_copy(update={"output_dir": str(folder)})  # fmt: skip
        result = run(spec, emit=lambda e: None)
        assert result.status == "completed", result.error
        runs.append(Path(result.run_dir))
    return runs


def q_weight(run_dir: Path) -> torch.Tensor:
    from adapter_studio.engine.inference.trained import load_trained

    trained = load_trained(run_dir)
    merged = trained.spec.method.merge(trained.model)
    return merged.model.layers[0].self_attn.q_proj.weight.detach().clone()


def test_cat_is_the_weighted_sum_of_the_updates_and_loads_like_a_run(lora_runs: list[Path], tiny_llama: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    from adapter_studio.engine.combine_runs import combine_runs
    from adapter_studio.engine.events import iter_events
    from adapter_studio.engine.export.run_export import export_run
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama).model.layers[0].self_attn.q_proj.weight.detach()
    runs = lora_runs[:2]
    combined = combine_runs(runs, [0.7, 0.3], "cat", output_dir=tmp_path)
    assert combined.rank == 8 and (combined.run_dir / "spec.yaml").exists()
    expected = base + sum(w * (q_weight(r) - base) for w, r in zip((0.7, 0.3), runs, strict=True))
    assert torch.allclose(q_weight(combined.run_dir), expected, atol=1e-5)
    events = list(iter_events(combined.run_dir / "events.jsonl"))
    assert [e.type for e in events] == ["started", "log", "finished"] and events[-1].status == "completed"
    assert runs[0].name in events[1].message and "cat" in events[1].message
    out = export_run(combined.run_dir, "adapter", tmp_path / "export")  # reloaded and compared inside
    assert json.loads((out.path / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.parametrize("how", ["linear", "svd", "ties", "dare_linear"])
def test_each_combination_makes_a_loadable_run(how: str, lora_runs: list[Path], tmp_path: Path) -> None:
    from adapter_studio.engine.combine_runs import combine_runs
    from adapter_studio.engine.inference.trained import load_trained
    from adapter_studio.engine.runs import summarize_run

    combined = combine_runs(lora_runs[:2], None, how, output_dir=tmp_path)
    trained = load_trained(combined.run_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.isfinite(trained.model(input_ids=ids).logits).all()
    assert combined.trainable_params == sum(p.numel() for n, p in trained.model.named_parameters() if "lora_" in n)
    started = summarize_run(combined.run_dir)  # the base and the adapter, as a trained run's (it was the base's)
    assert started.total_params == sum(p.numel() for p in trained.model.parameters())


@pytest.mark.parametrize(("pick", "how", "weights", "words"), [
    ([0], "linear", None, "at least two runs"),
    ([0, 2], "linear", None, "'linear' needs runs of one rank; these have ranks 4, 8"),
    ([0, 1], "linear", [1.0], "1 weights for 2 runs"),
    ([0, 1], "mean", None, "unknown combination 'mean'"),
    ([0, 1], "linear", [0.0, 0.0], "every weight is 0"),  # made a run that changed nothing
    ([0, 0], "cat", None, "a run is given twice"),  # 'linear' doubled its update
])  # fmt: skip
def test_runs_that_cannot_combine_are_refused(pick: list[int], how: str, weights: list[float] | None, words: str,
                                              lora_runs: list[Path]) -> None:  # fmt: skip
    from adapter_studio.engine.combine_runs import combine_runs
    from adapter_studio.engine.errors import UserError

    with pytest.raises(UserError, match=words):
        combine_runs([lora_runs[i] for i in pick], weights, how)


def test_a_dora_run_is_refused(lora_runs: list[Path], tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any) -> None:
    from adapter_studio.engine.combine_runs import combine_runs
    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.training.run import run

    result = run(make_spec(tiny_llama, alpaca_jsonl, "dora", max_steps=2), emit=lambda e: None)
    with pytest.raises(UserError, match="is a DoRA run; only LoRA-family runs combine"):
        combine_runs([lora_runs[0], Path(result.run_dir)])


def test_combine_through_the_command_line(lora_runs: list[Path], tmp_path: Path) -> None:
    from tests.test_cli import clis_at_once

    runs = [str(lora_runs[0]), str(lora_runs[1])]
    out, hub, bad, unused = clis_at_once(
        ["combine", *runs, "--how", "cat", "--weights", "0.5,0.5", "--out", str(tmp_path), "--name", "both", "--json"],
        ["combine", *runs, "--how", "lorahub", "--examples", "4", "--trials", "3", "--out", str(tmp_path), "--name",
         "hub", "--json"],
        ["combine", *runs, "--weights", "half,half"],
        ["combine", *runs, "--density", "0.3"],  # taken and unused by cat, unsaid
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["run_dir"] == str(tmp_path / "both") and result["rank"] == 8
    assert hub.returncode == 0, hub.stderr
    assert json.loads(hub.stdout)["how"] == "lorahub" and (tmp_path / "hub" / "spec.yaml").exists()
    assert bad.returncode == 2 and "--weights 'half,half' is not a comma-separated list" in bad.stderr
    assert unused.returncode == 2 and "error: --density: --density is for ties and dare, not cat" in unused.stderr


@pytest.mark.gui
def test_combine_from_the_runs_page(lora_runs: list[Path], qtbot: Any) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from adapter_studio.gui.combine_dialog import CombineChoice, CombineDialog
    from adapter_studio.gui.pages.runs_page import RunsPage
    from adapter_studio.gui.state import StudioState

    dialog = CombineDialog(["a", "b"])
    qtbot.addWidget(dialog)
    assert dialog.choice() == CombineChoice("cat", [0.5, 0.5], 0.5, None) and not dialog.density.isEnabled()
    dialog.how.setCurrentIndex(dialog.how.findData("ties"))
    assert dialog.density.isEnabled()
    dialog.how.setCurrentIndex(dialog.how.findData("lorahub"))
    assert not dialog.weights[0].isEnabled() and dialog.choice().weights is None

    page = RunsPage(StudioState(runs_dir=str(lora_runs[0].parent)))
    qtbot.addWidget(page)
    page.error = lambda e: pytest.fail(f"error dialog: {e}")  # type: ignore[method-assign]
    page.select_runs([lora_runs[0]])
    assert not page.buttons["combine"].isEnabled()  # one run: nothing to combine
    page.select_runs(lora_runs[:2])
    assert page.buttons["combine"].isEnabled(), [(r.name, r.status) for r in page.selected_runs()]
    page.ask_combine = lambda names: CombineChoice("cat", [0.5, 0.5], 0.5, "from-window")  # type: ignore[method-assign]
    page.buttons["combine"].click()
    qtbot.waitUntil(lambda: not page.combining, timeout=120_000)
    assert "Combined into from-window: cat, rank 8" in page.status.text()
    assert [r.name for r in page.selected_runs()] == ["from-window"]
    assert (lora_runs[0].parent / "from-window" / "spec.yaml").exists()
    # It trained no step: "lora", steps 0, and nothing said where it came from
    assert page.selected_run().method_label == "lora · combined"  # type: ignore[union-attr]
    line = next(x for x in page.details.toPlainText().splitlines() if x.startswith("Combined (cat, weights 0.5, 0.5) "))
    assert lora_runs[0].name in line and lora_runs[1].name in line
    said: list[str] = []
    page.error = lambda e: said.append(e.message)  # type: ignore[method-assign]
    page.select_runs([lora_runs[0], lora_runs[2]])  # ranks 4 and 8
    page.ask_combine = lambda names: CombineChoice("linear", [0.5, 0.5], 0.5, None)  # type: ignore[method-assign]
    page.buttons["combine"].click()
    qtbot.waitUntil(lambda: not page.combining, timeout=120_000)
    assert said and said[0].startswith("Combination: 'linear' needs runs of one rank"), said  # was "--how: …"



def test_lorahub_makes_a_run_with_the_weights_it_found(lora_runs: list[Path], alpaca_jsonl: Path,
                                                       tmp_path: Path) -> None:  # fmt: skip
    from adapter_studio.engine.combine_runs import combine_runs
    from adapter_studio.engine.combine_weights import BOUND
    from adapter_studio.engine.events import iter_events
    from adapter_studio.engine.inference.trained import load_trained

    combined = combine_runs(lora_runs[:2], None, "lorahub", output_dir=tmp_path, data=alpaca_jsonl, examples=8,
                            trials=6)  # fmt: skip
    assert combined.how == "lorahub" and combined.rank == 4
    log = [e.message for e in iter_events(combined.run_dir / "events.jsonl") if e.type == "log"]
    assert len(log) == 2 and log[1].startswith("LoraHub weights") and "6 trials on 8 examples" in log[1]
    weights = [float(w) for w in log[0].split("weights ")[1].split(")")[0].split(", ")]
    assert len(weights) == 2 and all(-BOUND <= w <= BOUND for w in weights)
    trained = load_trained(combined.run_dir)  # loads like a trained run
    with torch.no_grad():
        assert torch.isfinite(trained.model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits).all()


def test_lorahub_search_scores_at_least_as_well_as_equal_weights(lora_runs: list[Path], alpaca_jsonl: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    from adapter_studio.engine.combine_weights import examples, find_weights
    from adapter_studio.engine.inference.trained import load_base, load_trained
    from peft import PeftModel

    for i, run_dir in enumerate(lora_runs[:2]):
        run = load_trained(run_dir)
        run.spec.method.save_adapter(run.model, str(tmp_path / f"a{i}"))
    base, tokenizer, task = load_base(run.spec)
    model = PeftModel.from_pretrained(base, str(tmp_path / "a0"), adapter_name="a0")
    model.load_adapter(str(tmp_path / "a1"), adapter_name="a1")
    rows = examples(run.spec, tokenizer, task, alpaca_jsonl, 8)
    found = find_weights(model, ["a0", "a1"], rows, task, tokenizer.pad_token_id or 0, 6, seed=0)
    assert found.score <= found.start_score and found.trials == 6 and found.examples == 8
    assert "lorahub-trial" not in model.peft_config  # the scratch adapter is gone


def test_lorahub_refusals(lora_runs: list[Path]) -> None:
    from adapter_studio.engine.combine_runs import combine_runs
    from adapter_studio.engine.errors import UserError

    with pytest.raises(UserError, match="lorahub finds the weights itself"):
        combine_runs(lora_runs[:2], [0.5, 0.5], "lorahub")
    with pytest.raises(UserError, match="'lorahub' needs runs of one rank"):
        combine_runs([lora_runs[0], lora_runs[2]], None, "lorahub")


def test_a_run_that_did_not_finish_is_refused(lora_runs: list[Path], tmp_path: Path) -> None:
    """Only a check for a checkpoint stood between an interrupted or failed run and a combination."""
    import shutil

    from adapter_studio.engine.combine_runs import combine_runs
    from adapter_studio.engine.errors import UserError

    cut = tmp_path / "cut"
    shutil.copytree(lora_runs[1], cut)
    events = (cut / "events.jsonl").read_text().splitlines()
    (cut / "events.jsonl").write_text("\n".join(e for e in events if '"finished"' not in e) + "\n")
    with pytest.raises(UserError, match="cut is interrupted, not finished"):
        combine_runs([lora_runs[0], cut])


@pytest.mark.parametrize(("word", "said"), [("LoRA", "a LoRA"), ("IA3", "an IA3"), ("Adapter (Houlsby)",
                                            "an Adapter (Houlsby)"), ("HRA", "an HRA"), ("UniPELT", "a UniPELT"),
                                            ("DoRA", "a DoRA"), ("OFT", "an OFT"), ("MiSS", "a MiSS")])  # fmt: skip
def test_a_method_is_named_with_its_article(word: str, said: str) -> None:
    from adapter_studio.engine.errors import a_or_an

    assert a_or_an(word) == said  # "a IA3 run"
