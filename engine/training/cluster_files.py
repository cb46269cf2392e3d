"""Ready files for clusters, written from a spec: a Slurm batch script and a SkyPilot task.

Both start the same spec on every machine with that machine's rank, machine 0's address and the
machine count filled in by the scheduler (`training.machines`), so `adapter-studio train` does the rest
through `accelerate launch` as on one machine. Paths in the spec must be the same on every machine
(a shared file system under Slurm; SkyPilot's file mounts copy them to the same place)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.spec import RunSpec

PROJECT = Path(__file__).resolve().parents[2]  # the checkout `pip install` takes on the cluster


class _BlockDumper(yaml.SafeDumper):
    """Scripts as `|` blocks, as SkyPilot's own examples write them."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


@dataclass(frozen=True)
class ClusterFiles:
    spec: Path
    slurm: Path
    skypilot: Path

    def commands(self) -> list[str]:
        return [
            f"sbatch {shlex.quote(str(self.slurm))}",
            f"sky launch -c adapter-studio {shlex.quote(str(self.skypilot))}",
        ]


def _rank_settings(count: str, rank: str, main: str, port: int, devices: str) -> str:
    """The `--set` arguments that make one machine's copy of the spec its own (shell words, unquoted
    variables expanded on that machine)."""
    return (
        f'--set training.machines.count="{count}" --set training.machines.rank="{rank}" '
        f'--set training.machines.main_address="{main}" --set training.machines.main_port={port} '
        f'--set training.devices="{devices}"'
    )


def _local_paths(spec: RunSpec) -> list[str]:
    """The model and data files the spec names that exist here (they go to the cluster's machines)."""
    named = [spec.model.source, *([spec.data.path] if isinstance(spec.data.path, str) else spec.data.path)]
    named += [spec.data.eval_path] if spec.data.eval_path else []
    here = [Path(os.path.expandvars(p)).expanduser() for p in named]  # as the data reader reads them
    return [str(p.resolve()) for p in here if p.exists()]


def slurm_script(spec: RunSpec, spec_file: Path, gpus: bool) -> str:
    machines, devices = spec.training.machines, spec.training.devices
    name = spec.name or spec.method.name
    lines = [
        "#!/bin/bash",
        f"# Adapter Studio: {name} on {machines.count} machines, {devices} processes each.",
        f"# Submit: sbatch {spec_file.stem}.slurm",
        f"#SBATCH --job-name=adapter-studio-{name}",
        f"#SBATCH --nodes={machines.count}",
        "#SBATCH --ntasks-per-node=1  # one launcher per machine; it starts that machine's processes",
        "#SBATCH --output=adapter-studio-%j.log",
    ]
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={devices}")
    if machines.hosts:
        lines.append(f"#SBATCH --nodelist={','.join(machines.hosts)}")
    settings = _rank_settings("$SLURM_NNODES", "$SLURM_NODEID", "$MAIN", machines.main_port, str(devices))
    lines += [
        "set -euo pipefail",
        "# The installed command; point ADAPTER_STUDIO at it when it is not on PATH on every machine.",
        'export ADAPTER_STUDIO="${ADAPTER_STUDIO:-adapter-studio}"',
        'MAIN=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export MAIN SPEC={shlex.quote(str(spec_file.resolve()))}",
        "# One task per machine; each reads its own node number from Slurm (single quotes: expanded there).",
        f'srun --kill-on-bad-exit=1 bash -c \'"$ADAPTER_STUDIO" train "$SPEC" {settings}\'',
        "",
    ]
    return "\n".join(lines)


def skypilot_task(spec: RunSpec, spec_file: Path, accelerator: str) -> str:
    machines, devices = spec.training.machines, spec.training.devices
    per_machine = "$SKYPILOT_NUM_GPUS_PER_NODE" if accelerator else str(devices)
    settings = _rank_settings("$SKYPILOT_NUM_NODES", "$SKYPILOT_NODE_RANK", "$MAIN", machines.main_port, per_machine)
    mounts = {path: path for path in _local_paths(spec)}
    setup = "pip install adapter-studio  # or the wheel you installed here\n"
    if (PROJECT / "pyproject.toml").exists():  # a checkout (make install): the same code on every machine
        mounts["~/adapter-studio"] = str(PROJECT)
        setup = "pip install ~/adapter-studio\n"
    task = {
        "name": f"adapter-studio-{spec.name or spec.method.name}",
        "num_nodes": machines.count,
        "resources": {"accelerators": f"{accelerator}:{devices}"} if accelerator else {"cpus": f"{devices}+"},
        "workdir": str(spec_file.parent.resolve()),
        "file_mounts": mounts,
        "setup": setup,
        "run": f'MAIN=$(echo "$SKYPILOT_NODE_IPS" | head -n1)\nadapter-studio train {spec_file.name} {settings}\n',
    }
    header = (
        f"# Adapter Studio: {machines.count} machines. Launch: sky launch -c adapter-studio {spec_file.stem}.sky.yaml\n"
        "# The run folder ends up on machine 0 (the head):\n"
        f"#   sky rsync-down adapter-studio '~/sky_workdir/{spec.output_dir}' .\n"
    )
    return header + yaml.dump(task, Dumper=_BlockDumper, sort_keys=False, width=1000)


def write_cluster_files(spec: RunSpec, out: Path, accelerator: str = "H100") -> ClusterFiles:
    """`out/<name>.yaml` (the spec, hosts left to the scheduler), `<name>.slurm` and `<name>.sky.yaml`.
    `accelerator` is the GPU type SkyPilot asks for ("" for CPU machines); Slurm asks for GPUs unless it is ""."""
    if spec.training.machines.count < 2:
        raise UserError(
            "the spec trains on one machine",
            where="training.machines",
            fix="set training.machines to the number of machines, e.g. --set training.machines=2",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot make {out}: {e.strerror or e}", where="--out", fix="pick a folder you can write to"
        ) from None
    name = spec.name or spec.method.name
    # The scheduler picks the machines: the copy keeps the count and port, not this machine's rank or hosts.
    machines = spec.training.machines.model_copy(update={"rank": 0, "hosts": [], "main_address": "127.0.0.1"})
    training = spec.training.model_copy(update={"machines": machines})
    shared = spec.model_copy(update={"training": training})
    files = ClusterFiles(out / f"{name}.yaml", out / f"{name}.slurm", out / f"{name}.sky.yaml")
    shared.save(files.spec)
    files.slurm.write_text(slurm_script(spec, files.spec, gpus=bool(accelerator)), encoding="utf-8")
    files.slurm.chmod(0o755)
    files.skypilot.write_text(skypilot_task(spec, files.spec, accelerator), encoding="utf-8")
    return files
