"""Training on several devices: the run is started as an `accelerate launch` job (DDP, or FSDP /
DeepSpeed ZeRO with a generated accelerate config), and followed through its events.jsonl."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import EventFollower, Finished
from adapter_studio.engine.runs import new_run_dir
from adapter_studio.engine.spec import MachinesSpec, RunSpec
from adapter_studio.engine.training.preflight import check_inputs

STRATEGIES = ("ddp", "fsdp", "deepspeed")


def launch_command(
    spec_file: Path, run_dir: Path, devices: int, strategy: str = "ddp", machines: MachinesSpec | None = None
) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment for `devices` processes on this machine, one
    of `machines.count` (`check_devices` first)."""
    import torch

    env = dict(os.environ)
    machines = machines or MachinesSpec()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(devices * machines.count)]
    # Each process sets its own precision and compiling (engine.training): said here only to keep accelerate's
    # "values were not passed … defaults used instead" notice out of the person's output.
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if machines.count > 1:
        # Every machine meets machine 0 at a fixed address and port (torchrun's static rendezvous).
        cmd += ["--num_machines", str(machines.count), "--machine_rank", str(machines.rank),
                "--main_process_ip", machines.main_address, "--main_process_port", str(machines.main_port)]  # fmt: skip
    else:
        cmd += ["--num_machines", "1", "--main_process_port", str(_free_port())]
    if strategy == "fsdp":
        cmd += ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD"]
    elif strategy == "deepspeed":
        cmd += ["--use_deepspeed", "--zero_stage", "2"]
    else:
        cmd += ["--multi_gpu"]
    if not torch.cuda.is_available():
        # Several CPU processes with the gloo backend (`--cpu` would silently start only one).
        env["ACCELERATE_USE_CPU"] = "1"
    cmd += ["-m", "adapter_studio.cli", "train", str(spec_file), "--devices", "1", "--run-dir", str(run_dir)]
    return cmd, env


LAUNCHER_LOG = "launcher.log"


def check_devices(devices: int, strategy: str) -> None:
    """Refuse, with what to change, a multi-device setup this machine cannot run."""
    import torch

    if strategy != "ddp" and not torch.cuda.is_available():
        title = {"fsdp": "FSDP", "deepspeed": "DeepSpeed ZeRO"}.get(strategy, strategy)
        raise UserError(f"{title} shards the model across CUDA GPUs; this machine has none",
                        where="training.distributed", fix="use ddp (CPU processes), or train on GPUs")
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise UserError("DeepSpeed is not installed", where="training.distributed",
                        fix="pip install deepspeed, or use ddp or fsdp")
    if torch.cuda.is_available() and torch.cuda.device_count() < devices:
        raise UserError(
            f"{devices} devices asked for, {torch.cuda.device_count()} GPUs present",
            where="training.devices",
            fix=f"set training.devices to at most {torch.cuda.device_count()}",
        )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WORKERS = ".machines"  # under output_dir: the folders of the machines that join another's run


def prepare_multi_run(spec: RunSpec) -> tuple[Path, Path]:
    """Make the run folder up front so every process writes into the same one. A machine other than
    machine 0 writes no run (machine 0 does): its folder, under `output_dir/.machines/`, holds only the
    spec it was started with and its processes' output, and stays out of the run history."""
    check_inputs(spec)
    machines = spec.training.machines
    if machines.rank > 0:
        name = f"{spec.name or spec.method.name}-machine{machines.rank}"
        run_dir = new_run_dir(str(Path(spec.output_dir) / WORKERS), f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", "")
    else:
        run_dir = new_run_dir(spec.output_dir, spec.name, spec.method.name)
    spec_file = run_dir / "launch-spec.yaml"
    spec.save(spec_file)
    return run_dir, spec_file


def start_multi(spec: RunSpec, devices: int, to_log: bool = False) -> tuple[subprocess.Popen[str], Path]:
    """Start this machine's processes (`training.distributed` says how they share the work); on machine 0
    the caller follows `run_dir/events.jsonl` and may `stop_multi`. Their output is the caller's to read
    (`proc.stdout`), or with `to_log` goes straight to `run_dir/launcher.log`: a caller that reads it only
    at the end would otherwise stall the run once the pipe fills (a few hundred progress lines)."""
    check_devices(devices, spec.training.distributed)  # before a run folder is made
    run_dir, spec_file = prepare_multi_run(spec)
    cmd, env = launch_command(spec_file, run_dir, devices, spec.training.distributed, spec.training.machines)
    output: Any = subprocess.PIPE
    if to_log:
        output = (run_dir / LAUNCHER_LOG).open("w", encoding="utf-8")
    # Its own process group, so one signal reaches the launcher and every worker.
    try:
        proc = subprocess.Popen(
            cmd, env=env, start_new_session=True, text=True, stdout=output, stderr=subprocess.STDOUT
        )
    finally:
        if to_log:
            output.close()  # the launcher holds its own copy
    return proc, run_dir


def stop_multi(proc: subprocess.Popen[Any]) -> None:
    """Ask every process to stop (each saves nothing but rank 0, which writes the checkpoint)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)


def launch_multi(args: argparse.Namespace, devices: int) -> int:
    """CLI: `adapter-studio train SPEC --devices N`; prints the main process's progress lines."""
    from adapter_studio.engine.spec import load_spec_file

    if args.resume:
        raise UserError("resuming a multi-device run is done with --devices 1 or from the window", where="--resume")
    spec = load_spec_file(args.spec, args.overrides)
    proc, run_dir = start_multi(spec, devices)
    machines, stopping = spec.training.machines, False
    if machines.count > 1 and machines.rank == 0:  # the rendezvous waits for them, silently, for minutes
        print(f"machine 0 of {machines.count}: waiting for machines 1 … {machines.count - 1} to join at "
              f"{machines.main_address}:{machines.main_port} (on each, the same spec with --set "
              "training.machines.rank=N)", flush=True)  # fmt: skip

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        stop_multi(proc)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    # Progress lines are shown as they come; once a process prints a traceback (torch's launcher then adds
    # its ChildFailedError report), the rest goes only to launcher.log and one error line ends the run.
    failing: list[str] = []
    with (run_dir / LAUNCHER_LOG).open("w", encoding="utf-8") as log:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.write(line)
            if failing or line.startswith("Traceback (most recent call last)"):
                failing.append(line.rstrip())
            elif not getattr(args, "quiet", False):  # --quiet: only the final line, said below
                print(line, end="", flush=True)
    proc.wait()
    if machines.rank > 0:
        return _worker_machine_exit(proc.returncode, spec, run_dir)
    time.sleep(0.1)
    finished = [e for e in EventFollower(run_dir / "events.jsonl").poll() if isinstance(e, Finished)]
    status = finished[-1].status if finished else "failed"
    if getattr(args, "quiet", False) and finished:
        print(f"finished {status} at step {finished[-1].step}{f': {finished[-1].error}' if finished[-1].error else ''}",
              flush=True)  # fmt: skip
    if stopping and not finished:  # stopped before the run began (the other machines had not joined)
        print("stopped before the run started: nothing was trained", flush=True)
        return 130
    if status == "failed":
        reason = finished[-1].error if finished and finished[-1].error else _last_exception(failing)
        print(f"error: {reason} (every process's output: {run_dir / LAUNCHER_LOG})", file=sys.stderr, flush=True)
    return {"completed": 0, "cancelled": 130}.get(status, 1)


def _last_exception(lines: list[str]) -> str:
    """The `Type: message` line of the first traceback, or a plain account when there is none."""
    for line in lines[1:]:
        if line and not line.startswith((" ", "Traceback")) and ":" in line:
            return f"a training process failed: {line.strip()[:300]}"
    return "a training process ended without finishing the run"


def _worker_machine_exit(code: int, spec: RunSpec, folder: Path) -> int:
    """A machine other than machine 0 has no log of its own to read the outcome from: its processes' exit
    says whether they all finished, and machine 0's run folder says how the run went."""
    machines = spec.training.machines
    where = f"machine 0 ({machines.main_address}) has the run folder"
    if code == 0:
        print(f"machine {machines.rank}: its processes ended with the run (completed or stopped); {where}", flush=True)
        return 0
    print(f"error: machine {machines.rank}: its processes ended early (exit code {code}); {where}, and their "
          f"output is in {folder / LAUNCHER_LOG}", file=sys.stderr, flush=True)  # fmt: skip
    return 1
