"""Ranking runs by any metric (engine/evaluation/ranking.py): the catalogue, the order, the evaluation
columns a sweep's table gains, evaluating the runs a ranking needs, the sweep CLI's and the automatic
search's `--rank-by`. Tiny models; evaluations on a few held-out rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.evaluation import ranking
from adapter_studio.engine.search.auto import run_auto_search
from adapter_studio.engine.search.results import SearchLog
from adapter_studio.engine.training.sweep import (
    PEAK_NOTE,
    evaluate_sweep,
    format_rows,
    load_sweep,
    plan_sweep,
    run_sweep,
    sweep_rows,
)
from test_auto_search import RUNGS, SPACE
from test_cli import clis_at_once, write_spec


@pytest.mark.parametrize(
    ("name", "column", "higher", "evaluated"),
    [
        ("best_eval_loss", "best_eval_loss", False, False),
        ("accuracy", "accuracy", True, False),  # training's own evaluation
        ("exact_match", "exact_match", True, False),
        ("tuned_exact_match", "tuned_exact_match", True, True),
        ("rouge_l", "tuned_rouge_l", True, True),  # only an evaluation has it: no prefix needed
        ("macro-f1", "tuned_macro_f1", True, True),
        ("forgetting", "forgetting", False, True),  # a loss ratio: lower is better
    ],
)
def test_every_metric_has_one_column_and_a_direction(name: str, column: str, higher: bool, evaluated: bool) -> None:
    m = ranking.metric(name)
    assert (m.name, m.higher_is_better, m.evaluated) == (column, higher, evaluated)


def test_an_unknown_metric_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown metric 'rogue'") as e:
        ranking.metric("rogue")
    assert e.value.where == "--rank-by" and "tuned_rouge_l" in (e.value.fix or "")


@pytest.mark.parametrize(
    ("name", "order"),
    [
        ("tuned_exact_match", ["b", "a", "c", "d"]),  # best first; rows without it after, in their order
        ("best_eval_loss", ["c", "a", "b", "d"]),
        ("forgetting", ["a", "b", "c", "d"]),
    ],
)
def test_rank_puts_the_best_first_and_rows_without_the_metric_last(name: str, order: list[str]) -> None:
    rows = [
        {"method": "a", "tuned_exact_match": 0.5, "best_eval_loss": 1.0, "forgetting": 1.01},
        {"method": "b", "tuned_exact_match": 0.9, "best_eval_loss": 1.2, "forgetting": 1.1},
        {"method": "c", "tuned_exact_match": None, "best_eval_loss": 0.8, "forgetting": None},
        {"method": "d"},
    ]
    assert [r["method"] for r in ranking.rank(rows, name)] == order


def test_a_sweep_evaluates_its_runs_and_ranks_by_their_scores(make_spec, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, max_steps=4, eval_every=4)
    plan = plan_sweep(spec, ["lora", "ia3"], name="ranked")
    run_sweep(plan)
    rows = sweep_rows(load_sweep(plan.folder))
    assert all(r["tuned_exact_match"] is None and r["report"] is None for r in rows)  # not evaluated yet
    assert all(ranking.needs_evaluation(r["run_dir"], "token_f1") for r in rows)
    assert not ranking.needs_evaluation(rows[0]["run_dir"], "best_eval_loss")  # training has it
    said: list[str] = []
    evaluate_sweep(plan, "token_f1", said.append)
    assert [m.split(" to rank")[0] for m in said] == ["evaluating ranked-lora", "evaluating ranked-ia3"]
    rows = sweep_rows(load_sweep(plan.folder))
    runs = [r for r in rows if r["status"] != "baseline"]
    in_context = []
    for row in runs:
        assert 0 <= row["tuned_token_f1"] <= 1 and 0 <= row["tuned_rouge_l"] <= 1
        assert row["forgetting"] is None  # not asked for: the check is skipped
        assert Path(row["report"]).name == "report.md" and Path(row["report"]).exists()
        evaluation = json.loads(Path(row["report"]).with_name("results.json").read_text())
        in_context.append(bool(evaluation["metrics"]["in_context"]))
    assert in_context == [True, False]  # the same for every run: scored once, with the first
    # The approaches that train nothing, from that evaluation, beside the methods.
    baselines = [r for r in rows if r["status"] == "baseline"]
    assert [b["method"] for b in baselines] == ["base model (no training)", "in-context (no training)"]
    assert all(b["trainable_params"] == 0 and 0 <= b["tuned_token_f1"] <= 1 for b in baselines)
    assert "4 training rows before each prompt" in baselines[1]["note"]
    assert not any(ranking.needs_evaluation(r["run_dir"], "token_f1") for r in runs)
    said.clear()
    evaluate_sweep(plan, "tuned_exact_match", said.append)  # already evaluated on these rows: nothing to do
    assert said == []
    text = format_rows(rows, "token_f1")
    assert text.splitlines()[0].endswith("token F1 (evaluation)")
    best = ranking.rank(rows, "token_f1")[0]["method"]
    assert text.splitlines()[1].startswith(best) and len(text.splitlines()) == 1 + len(rows) + 1
    assert text.splitlines()[-1] == PEAK_NOTE  # the runs shared a process: what their peak memory means
    assert "tuned_token_f1" in (plan.folder / "sweep.csv").read_text().splitlines()[0]


def test_cli_sweep_rank_by(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, alpaca_jsonl, tmp_path / "runs", max_steps=3)
    sweep = ["sweep", str(spec), "--methods"]
    done, bad = clis_at_once([*sweep, "lora,ia3", "--name", "r", "--rank-by", "rouge_l", "--json"],
                             [*sweep, "lora", "--name", "r2", "--rank-by", "bleu2"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)  # the JSON alone: the progress is on stderr
    scores = [r["tuned_rouge_l"] for r in rows]
    assert None not in scores and scores == sorted(scores, reverse=True)
    assert "evaluating r-lora to rank by ROUGE-L (evaluation)" in done.stderr
    assert bad.returncode == 2 and "unknown metric 'bleu2'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "runs" / "r2-lora").exists()  # refused before anything trained


def test_auto_search_can_pick_its_winner_by_an_evaluation_metric(make_spec, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, max_steps=6)
    lines: list[str] = []

    def emit(event: object) -> None:
        if isinstance(event, SearchLog):
            lines.append(event.message)

    result = run_auto_search(spec, 600, emit, name="rk", space=SPACE, rungs=RUNGS, max_trials=3,
                             rank_by="token_f1")  # fmt: skip
    assert result.status == "completed", result.error
    finished = [t for t in result.trials if t.status == "completed"]
    assert finished and all(t.score is not None for t in finished)
    assert all(t.score is None for t in result.trials if t.status != "completed")
    assert result.best_trial == max(finished, key=lambda t: t.score or 0).number
    assert any(line.startswith("ranked by token F1 (evaluation): trial") for line in lines), lines
    data = result.to_json()
    assert data["rank_by"] == "tuned_token_f1" and "score" in data["trials"][0]
    # The approaches that train nothing, scored once on the same rows, stand beside the trials.
    baselines = {row["method"]: row for row in data["baselines"]}
    assert {"base model (no training)", "in-context (no training)"} <= set(baselines)
    assert all(row["tuned_token_f1"] is not None and row["trainable_params"] == 0 for row in baselines.values())
    with pytest.raises(UserError, match="unknown metric"):
        run_auto_search(spec, 600, None, name="rk2", space=SPACE, rungs=RUNGS, rank_by="nope")
