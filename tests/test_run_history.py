"""Run history without training: hand-written run folders of every status, their summaries, spec diffs and curves.

`fabricate_history` is shared with tests/test_runs_page.py, which shows the same folders in the window.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.events import Checkpoint, Eval, EventLog, Export, Finished, Log, Metrics, Started
from adapter_studio.engine.run_compare import curves, flatten, spec_diff
from adapter_studio.engine.runs import LOCK, list_runs, summarize_run
from adapter_studio.engine.spec import parse_spec

T0 = 1_700_000_000.0  # event times are fixed so durations and ordering are exact
OOM = "CUDA out of memory while training step 3 — lower training.batch_size"


def write_spec(run_dir: Path, method: dict[str, Any], objective: dict[str, Any] | None = None,
               **training: Any) -> None:  # fmt: skip
    spec = parse_spec({
        "model": {"source": "/models/tiny-llama"},
        "data": {"path": "/data/reverse.jsonl"},
        "method": method,
        **({"objective": objective} if objective else {}),
        "training": {"max_steps": 10, "batch_size": 4, "learning_rate": 2e-4, **training},
        "output_dir": str(run_dir.parent),
    })  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    spec.save(run_dir / "spec.yaml")


def metrics(step: int, t: float, loss: float, memory_mib: int = 100) -> Metrics:
    return Metrics(step=step, epoch=step / 10, loss=loss, lr=1e-4, grad_norm=1.0, tokens_per_s=500.0,
                   tokens_seen=64 * step, memory_bytes=memory_mib * 2**20, time=t)  # fmt: skip


def started(run_dir: Path, t: float, method: str = "lora", resumed_from_step: int = 0) -> Started:
    return Started(run_dir=str(run_dir), model="/models/tiny-llama", method=method, trainable_params=16_384,
                   total_params=500_000, total_steps=10, device="cpu", resumed_from_step=resumed_from_step,
                   time=t)  # fmt: skip


def write_events(run_dir: Path, events: list[Any]) -> None:
    log = EventLog(run_dir / "events.jsonl")
    for event in events:
        log.write(event)
    log.close()


def dead_pid() -> int:
    """The pid of a process that has already exited (a crashed trainer)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fabricate_history(root: Path) -> dict[str, Path]:
    """Six run folders, one per status plus a resumed one; started one minute apart (newest last)."""
    runs = {name: root / name for name in ("done", "stopped", "broken", "crashed", "live", "resumed")}

    t = T0
    write_spec(runs["done"], {"name": "lora", "r": 8})
    write_events(runs["done"], [
        started(runs["done"], t),
        *[metrics(s, t + s, 2.0 - 0.1 * s, memory_mib=100 + s) for s in range(1, 11)],
        Eval(step=5, eval_loss=1.7, time=t + 5.5), Eval(step=10, eval_loss=1.5, time=t + 10.5),
        Checkpoint(step=10, path=str(runs["done"] / "checkpoints" / "step-10"), time=t + 11),
        Finished(status="completed", step=10, error=None, train_seconds=11.0, tokens_trained=640, time=t + 12),
        Export(kind="adapter", path="/exports/a", bytes=1, verified_max_diff=0.0, time=t + 86_400),  # a day on
    ])  # fmt: skip

    t = T0 + 60
    write_spec(runs["stopped"], {"name": "lora", "r": 16}, learning_rate=1e-3)
    write_events(runs["stopped"], [
        started(runs["stopped"], t),
        Eval(step=0, eval_loss=2.0, time=t + 0.5),  # training.eval_on_start: before any training
        *[metrics(s, t + s, 2.5 - 0.1 * s, memory_mib=200) for s in range(1, 5)],
        Eval(step=4, eval_loss=2.2, time=t + 4.5),
        Finished(status="cancelled", step=4, error=None, train_seconds=4.0, tokens_trained=256, time=t + 5),
    ])  # fmt: skip

    t = T0 + 120
    write_spec(runs["broken"], {"name": "ia3"})
    write_events(runs["broken"], [
        started(runs["broken"], t, method="ia3"),
        *[metrics(s, t + s, 3.0) for s in range(1, 3)],
        Log(level="error", message=OOM, time=t + 3),
        Finished(status="failed", step=2, error=OOM, train_seconds=3.0, tokens_trained=128, time=t + 3),
    ])  # fmt: skip

    t = T0 + 180
    write_spec(runs["crashed"], {"name": "lora", "r": 8})
    write_events(runs["crashed"], [started(runs["crashed"], t), *[metrics(s, t + s, 2.0) for s in range(1, 4)]])
    with (runs["crashed"] / "events.jsonl").open("a") as f:
        f.write('{"type": "metrics", "step": 4, "epoch": 0.4, "lo')  # the process died mid-line
    (runs["crashed"] / LOCK).write_text(str(dead_pid()))

    t = T0 + 240
    write_spec(runs["live"], {"name": "lora", "r": 8})
    write_events(runs["live"], [started(runs["live"], t), metrics(1, t + 1, 2.0)])
    (runs["live"] / LOCK).write_text(str(os.getpid()))

    # Stopped at step 6 with a checkpoint at 4, then resumed: steps 5 and 6 are trained twice.
    t = T0 + 300
    write_spec(runs["resumed"], {"name": "lora", "r": 8})
    write_events(runs["resumed"], [
        started(runs["resumed"], t),
        *[metrics(s, t + s, 9.0) for s in range(1, 7)],
        Finished(status="cancelled", step=6, error=None, train_seconds=6.0, tokens_trained=384, time=t + 7),
        started(runs["resumed"], t + 20, resumed_from_step=4),
        *[metrics(s, t + 20 + s, 1.0) for s in range(5, 11)],
        Finished(status="completed", step=10, error=None, train_seconds=12.0, tokens_trained=768, time=t + 31),
    ])  # fmt: skip
    return runs


@pytest.fixture
def history(tmp_path: Path) -> dict[str, Path]:
    return fabricate_history(tmp_path / "runs")


def test_every_status_is_read_from_the_run_folder(history: dict[str, Path]) -> None:
    runs = list_runs(history["done"].parent)
    assert [r.name for r in runs] == ["resumed", "live", "crashed", "broken", "stopped", "done"]  # newest first
    assert {r.name: r.status for r in runs} == {
        "done": "completed", "stopped": "cancelled", "broken": "failed", "crashed": "interrupted",
        "live": "running", "resumed": "completed",
    }  # fmt: skip


def test_summary_numbers(history: dict[str, Path]) -> None:
    done = summarize_run(history["done"])
    assert (done.model, done.method, done.trainable_params) == ("/models/tiny-llama", "lora", 16_384)
    assert (done.steps, done.total_steps) == (10, 10)
    assert done.final_loss == pytest.approx(1.0)
    assert (done.final_eval_loss, done.best_eval_loss) == (1.5, 1.5)
    assert done.duration_s == pytest.approx(12.0)  # the export a day later is not the run's time
    assert done.started == T0
    assert done.error is None

    stopped = summarize_run(history["stopped"])  # its step-0 evaluation is from before training, not the run's
    assert (stopped.final_eval_loss, stopped.best_eval_loss) == (2.2, 2.2)
    assert curves(history["stopped"])["eval_loss"] == ([0.0, 4.0], [2.0, 2.2])  # the curve starts there

    assert summarize_run(history["broken"]).error == OOM
    crashed = summarize_run(history["crashed"])
    assert crashed.steps == 3  # the half-written step 4 is skipped, not an error
    assert crashed.error is None
    assert summarize_run(history["resumed"]).steps == 10


def test_a_lock_is_running_only_while_its_process_lives(history: dict[str, Path]) -> None:
    live = history["live"]
    assert summarize_run(live).status == "running"
    (live / LOCK).write_text(str(dead_pid()))
    assert summarize_run(live).status == "interrupted"
    (live / LOCK).unlink()
    assert summarize_run(live).status == "interrupted"


def test_flatten_makes_dotted_fields_and_keeps_lists_whole() -> None:
    nested = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None, "f": {}}
    assert flatten(nested) == {"a.b": 1, "a.c.d": [1, 2], "e": None, "f": {}}


def test_spec_diff_lists_only_the_fields_that_differ(history: dict[str, Path]) -> None:
    assert spec_diff(history["done"], history["stopped"]) == [
        ("method.r", 8, 16),
        ("training.learning_rate", 0.0002, 0.001),
    ]
    assert spec_diff(history["done"], history["crashed"]) == []


def test_spec_diff_across_methods_shows_fields_only_one_method_has(history: dict[str, Path]) -> None:
    diff = {field: (a, b) for field, a, b in spec_diff(history["done"], history["broken"])}
    assert diff["method.name"] == ("lora", "ia3")
    assert diff["method.r"] == (8, None)
    assert all(field.startswith("method.") for field in diff)


def test_curves_are_read_from_the_events(history: dict[str, Path]) -> None:
    done = curves(history["done"])
    assert done["loss"] == ([float(s) for s in range(1, 11)], [pytest.approx(2.0 - 0.1 * s) for s in range(1, 11)])
    assert done["eval_loss"] == ([5.0, 10.0], [1.7, 1.5])
    assert done["memory_bytes"][1][-1] == 110 * 2**20
    assert "accuracy" not in done and "memory_peak_bytes" not in done  # no points, no curve

    assert curves(history["crashed"])["loss"][0] == [1.0, 2.0, 3.0]


def test_a_resumed_run_keeps_the_steps_trained_after_its_checkpoint(history: dict[str, Path]) -> None:
    xs, ys = curves(history["resumed"])["loss"]
    assert xs == [float(s) for s in range(1, 11)]
    assert ys == [9.0] * 4 + [1.0] * 6  # steps 5 and 6 come from the resumed session


def test_a_resumed_runs_duration_is_its_sessions_not_the_gap_between_them(history: dict[str, Path]) -> None:
    """A run resumed half an hour later read 30.9 minutes for 3 s of training."""
    summary = summarize_run(history["resumed"])
    assert summary.duration_s == pytest.approx(7 + 11)  # 0→7 s, then 20→31 s; not 31
    assert summarize_run(history["done"]).duration_s == pytest.approx(12)  # the export a day on is not the run's


def test_a_crashed_session_counts_to_its_last_event(tmp_path: Path) -> None:
    """kill -9 writes no finish: the half hour before the resume was counted (1,811 s for 18 s)."""
    run = tmp_path / "crashed-then-resumed"
    write_spec(run, {"name": "lora"})
    write_events(run, [
        started(run, T0), *[metrics(s, T0 + s, 1.0) for s in range(1, 8)],  # killed after step 7
        started(run, T0 + 1800, resumed_from_step=4), *[metrics(s, T0 + 1800 + s, 1.0) for s in range(5, 11)],
        Finished(status="completed", step=10, error=None, train_seconds=13.0, tokens_trained=640, time=T0 + 1811),
    ])  # fmt: skip
    assert summarize_run(run).duration_s == pytest.approx(7 + 11)


def test_a_folder_without_events_has_no_curves(tmp_path: Path) -> None:
    assert curves(tmp_path) == {}
    assert spec_diff(tmp_path, tmp_path) == []


def test_spec_diff_treats_a_missing_field_as_unset(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for run, text in ((a, "method: {name: x, r: 8}\n"), (b, "method: {name: y, modules: null, r: 8, k: [1, 2]}\n")):
        run.mkdir()
        (run / "spec.yaml").write_text(text)
    assert spec_diff(a, b) == [("method.name", "x", "y"), ("method.k", None, [1, 2])]


def test_tensorboard_logging_writes_standard_event_files(make_spec, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    from adapter_studio.engine.training.run import run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = make_spec(tiny_llama, alpaca_jsonl, max_steps=4, eval_every=2, tensorboard=True)
    result = run(spec)
    assert result.status == "completed"
    board = EventAccumulator(str(result.run_dir / "tensorboard"))
    board.Reload()
    tags = board.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss", "memory/allocated_mib"} <= set(tags)
    assert [e.step for e in board.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in board.Scalars("eval/loss")] == [2, 4]


@pytest.mark.parametrize(("objective", "label"), [(None, "lora"), ({"name": "dpo"}, "lora · DPO"),
                                                  ({"name": "simpo"}, "lora · SimPO")])  # fmt: skip
def test_a_preference_run_names_its_objective_beside_its_method(tmp_path: Path, objective: dict[str, Any] | None,
                                                               label: str) -> None:  # fmt: skip
    run_dir = tmp_path / "run"
    write_spec(run_dir, {"name": "lora"}, objective)
    write_events(run_dir, [started(run_dir, T0)])
    assert summarize_run(run_dir).method_label == label


def test_no_runs_says_why_when_the_folder_is_a_run_or_missing(history: dict[str, Path], tmp_path: Path) -> None:
    from adapter_studio.engine.runs import why_no_runs

    run = history["done"]
    assert list_runs(run) == [] and why_no_runs(run) == (
        f": it is a run folder itself — list its runs folder with --dir {run.resolve().parent}")
    assert why_no_runs(tmp_path / "nowhere") == " (no such folder yet)" and why_no_runs(tmp_path) == ""


@pytest.mark.parametrize(
    ("where", "name", "message"),
    [
        ("a-file", "run", "output_dir: {root}/a-file is a file, not a folder for runs — give output_dir a folder"),
        ("runs", "n" * 300, "name: cannot make the run folder {root}/runs/{name}: the name is too long for this disk "
                            "— give a shorter name"),
    ],
    ids=["output_dir a file", "name too long"],
)
def test_a_run_folder_that_cannot_be_made_says_which_setting_to_change(
    tmp_path: Path, where: str, name: str, message: str
) -> None:
    """Both said "pick a runs folder you can write to" (after "File exists" or "File name too long")."""
    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.runs import new_run_dir

    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError) as caught:
        new_run_dir(str(tmp_path / where), name, "lora")
    assert caught.value.message.startswith(message.format(root=tmp_path, name=name)), caught.value.message


def _finished_run(run_dir: Path, status: str = "completed") -> EventLog:
    """A run of one step that ended `status`; its log is left open to write more."""
    log = EventLog(run_dir / "events.jsonl")
    log.write(Started(run_dir=str(run_dir), model="m", method="lora", trainable_params=1, total_params=2,
                      total_steps=4, device="cpu"))  # fmt: skip
    log.write(Metrics(step=1, epoch=0.1, loss=2.0, lr=1e-3, grad_norm=1.0, tokens_per_s=1.0, tokens_seen=1,
                      memory_bytes=1))  # fmt: skip
    log.write(Finished(status=status, step=1, error=None, train_seconds=1.0, tokens_trained=1))
    return log


def test_a_runs_summary_and_curves_are_read_again_only_once_its_log_changes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The Runs page read every run's log on each refresh (151 runs: 0.9 s with the window held) and again to
    plot: kept while the files are unchanged; a live run's status is looked at each time (its lock's process)."""
    from adapter_studio.engine import run_compare, runs

    run_dir = tmp_path / "r"
    log = _finished_run(run_dir, "cancelled")
    reads = []
    real = runs.iter_events
    monkeypatch.setattr(runs, "iter_events", lambda path: reads.append(path) or real(path))
    first = runs.summarize_run(run_dir)
    assert runs.summarize_run(run_dir) is first and len(reads) == 1
    assert run_compare.curves(run_dir) is run_compare.curves(run_dir)
    log.write(Started(run_dir=str(run_dir), model="m", method="lora", trainable_params=1, total_params=2,
                      total_steps=4, device="cpu", resumed_from_step=1))  # fmt: skip
    log.close()
    again = runs.summarize_run(run_dir)  # resumed: the log grew
    assert len(reads) == 2 and again.status == "interrupted"  # no lock, no finish
    runs.summarize_run(run_dir)
    assert len(reads) == 3  # not kept: a live run's status is the lock's
    assert run_compare.curves(run_dir)["loss"] == ([1.0], [2.0])


@pytest.mark.parametrize(
    ("change", "read_again"),
    [
        (lambda run_dir, store: None, False),  # the next process: from disk, the log unread
        (lambda run_dir, store: (run_dir / "spec.yaml").write_text("method: {name: dora}\n"), True),
        (lambda run_dir, store: [f.write_text("{") for f in store.glob("*.json")], True),  # cut short
        (lambda run_dir, store: [f.write_text('{"key": 1}') for f in store.glob("*.json")], True),  # other fields
        (lambda run_dir, store: [f.unlink() for f in store.glob("*.json")], True),  # the cache emptied
    ],
    ids=["unchanged", "spec changed", "cut short", "another version's", "cache emptied"],
)
def test_a_finished_runs_summary_is_kept_for_the_next_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any, read_again: bool
) -> None:
    """The window read every run's log as it opened (154 runs of 3,000 steps: 10 s before it showed): a
    finished run's summary is kept in the app's cache until its log or spec changes; a cache that cannot be
    read is read around."""
    from adapter_studio.engine import runs
    from adapter_studio.engine.file_memo import FileMemo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_dir = tmp_path / "runs" / "r"
    _finished_run(run_dir).close()
    first = runs.summarize_run(run_dir)
    store = tmp_path / "cache" / "adapter-studio" / "run-summaries"
    assert len(list(store.glob("*.json"))) == 1
    change(run_dir, store)
    monkeypatch.setattr(runs, "_SUMMARIES", FileMemo(keep=runs._SUMMARIES._keep, disk=runs._SUMMARIES._disk))
    reads = []
    real = runs.iter_events
    monkeypatch.setattr(runs, "iter_events", lambda path: reads.append(path) or real(path))
    again = runs.summarize_run(run_dir)
    assert len(reads) == read_again
    assert again == first


def test_a_runs_summary_is_read_where_the_cache_cannot_be_written(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from adapter_studio.engine import runs

    (tmp_path / "cache").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _finished_run(tmp_path / "r").close()
    assert runs.summarize_run(tmp_path / "r").status == "completed"
