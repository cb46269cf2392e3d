"""How the command line reads what it is given: run folders (train --resume, export, eval, combine) and `--set`."""

from __future__ import annotations

import argparse
from pathlib import Path

RUN_FILES = ("spec.yaml", "events.jsonl")


def run_folder(text: str) -> str:
    """A run folder as typed: `~` expanded (bash leaves `--resume=~/runs/x` and a quoted '~/runs/x' as they
    are), and a run's spec.yaml or events.jsonl taken for its folder ("x/spec.yaml is not a run folder (no
    spec.yaml)" was said of one)."""
    path = Path(text).expanduser()
    if path.name in RUN_FILES and path.is_file():
        path = path.parent
    return str(path)


SET_HELP = ("change one spec field (repeatable), e.g. --set training.max_steps=200 --set method.r=16 "
            "--set method.target_modules=[q_proj,v_proj]")


def add_set(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE`, said the same way by every command that takes a spec (it had no help line)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
