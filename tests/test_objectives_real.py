"""Every preference objective trains the embedded SmolLM2 through the command line, on the demo's dates as
preference pairs (KTO: the same pairs as marked single answers), a few steps each (heavy: make test-all)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.test_cli import cli

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo"
STEPS = 4


def kto_rows(pairs: Path, count: int) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in pairs.read_text().splitlines()[:count]]
    return [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in rows for side in ("chosen", "rejected")]  # fmt: skip


@pytest.mark.heavy
@pytest.mark.parametrize(("name", "start_loss"), [("dpo", math.log(2)), ("ipo", None), ("simpo", None),
                                                  ("orpo", None), ("kto", 0.5)])  # fmt: skip
def test_each_objective_trains_smollm2_through_the_cli(name: str, start_loss: float | None, tmp_path: Path) -> None:
    overrides = [f"objective.name={name}", f"training.max_steps={STEPS}", "training.eval_every=4",
                 "training.save_every=4", "training.batch_size=4", f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    if name == "kto":
        train = write_jsonl(tmp_path / "kto.jsonl", kto_rows(DEMO / "preference_train.jsonl", 40))
        held = write_jsonl(tmp_path / "kto_eval.jsonl", kto_rows(DEMO / "preference_eval.jsonl", 8))
        overrides += [f"data.path={train}", f"data.eval_path={held}"]
    args = [x for o in overrides for x in ("--set", o)]
    out = cli("train", str(DEMO / "walkthrough_dpo.yaml"), *args, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"finished completed at step {STEPS}" in out.stdout
    run_dir = next((tmp_path / "runs").iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert len(metrics) == STEPS and all(math.isfinite(m["loss"]) for m in metrics)
    # A KTO batch whose answers are all desirable (or all not) has no margin (the event leaves it out).
    margins = [m.get("reward_margin") is not None for m in metrics]
    assert any(margins) if name == "kto" else all(margins)
    if start_loss is not None:  # the policy starts as the reference
        assert abs(metrics[0]["loss"] - start_loss) < 1e-3, metrics[0]
    evals = [e for e in events if e["type"] == "eval"]
    assert evals and math.isfinite(evals[-1]["eval_loss"])
    assert (evals[-1].get("preference_accuracy") is None) == (name == "kto")  # None fields are left out
