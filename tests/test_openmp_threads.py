"""The window keeps OpenMP's threads from slowing its training down (openmp_probe.py says why and how)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("openmp_probe.py")


@pytest.fixture
def probe(tiny_llama: Path, alpaca_jsonl: Path, tmp_path: Path) -> dict:
    from adapter_studio.engine.imports import OPENMP_WAITING

    env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAITING}  # create_app's choice, not this process's
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, str(PROBE), str(tiny_llama), str(alpaca_jsonl), str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_thread_keeps_an_openmp_team_after_its_work(probe: dict) -> None:
    assert probe["load: its OpenMP threads while it ran"] >= 1, probe  # the probe sees a team
    assert probe["load: left after it"] == 0, probe  # gone with its thread once the job was done
    assert probe["train: status"] == "completed", probe
    assert probe["train: its OpenMP threads while it ran"] >= 1, probe
    assert probe["train: left after it"] == 0, probe
    assert probe["main: OpenMP threads after all that"] == 0, probe  # the window's thread made none
    assert probe["main: after a matmul of its own"] >= 1, probe  # and would be seen if it had


@pytest.fixture
def openmp_waiting_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from adapter_studio.engine.imports import OPENMP_WAITING

    for name in OPENMP_WAITING:
        monkeypatch.setenv(name, "")  # recorded, so that what the test's code sets goes again after it
        monkeypatch.delenv(name)


def test_create_app_lets_openmp_threads_spin_briefly(openmp_waiting_unset: None, thread_pool_kept) -> None:  # type: ignore[no-untyped-def]
    """Passive waiting alone made every op of a step wake its threads from sleep (training 40 % slower)."""
    from adapter_studio.gui.app import create_app

    create_app()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["GOMP_SPINCOUNT"] == "30000"
    assert thread_pool_kept.expiryTimeout() == 0


def test_the_eval_command_lets_openmp_threads_spin_briefly(openmp_waiting_unset: None) -> None:
    """Passive alone: 32 rows in 28.9 s against 21.8 with the short spin (each generated token is many ops)."""
    import argparse

    from adapter_studio.engine.errors import UserError
    from adapter_studio.engine.imports import OPENMP_WAITING
    from adapter_studio.eval_command import cmd_eval

    bad = argparse.Namespace(limit=0, batch_size=None, max_new_tokens=None, threads=None)
    with pytest.raises(UserError, match="--limit"):  # refused before anything loads, after the waiting is set
        cmd_eval(bad)
    assert {name: os.environ[name] for name in OPENMP_WAITING} == OPENMP_WAITING
