"""`adapter-studio cluster SPEC --out DIR [--accelerator H100|none]`: a Slurm batch script and a SkyPilot
task that train the spec on `training.machines` machines (engine.training.cluster_files)."""

from __future__ import annotations

import argparse

from adapter_studio.run_args import add_set


def add_cluster_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cluster = sub.add_parser("cluster", help="write a Slurm script and a SkyPilot task for a multi-machine run")
    cluster.add_argument("spec", help="spec file (YAML) with training.machines of 2 or more")
    add_set(cluster)
    cluster.add_argument("--out", required=True, help="folder for the spec copy and the two files")
    cluster.add_argument(
        "--accelerator",
        default="H100",
        help="GPU type SkyPilot asks for, training.devices of them per machine (default H100); "
        "'none' for CPU machines (Slurm then asks for no GPUs)",
    )


def cmd_cluster(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from adapter_studio.engine.spec import load_spec_file
    from adapter_studio.engine.training.cluster_files import write_cluster_files

    spec = load_spec_file(args.spec, args.overrides)
    accelerator = "" if args.accelerator.lower() == "none" else args.accelerator
    files = write_cluster_files(spec, Path(args.out), accelerator)
    print(f"spec: {files.spec}\nslurm: {files.slurm}\nskypilot: {files.skypilot}")
    for path in files.not_here:  # perhaps on the cluster's shared file system: said, not refused
        print(f"note: {path} is not on this machine: the SkyPilot task cannot copy it, and under Slurm every "
              "machine must see it at that path", file=sys.stderr)
    print("start it with one of:\n  " + "\n  ".join(files.commands()))
    return 0
