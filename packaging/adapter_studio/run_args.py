"""How the command line reads the run folders it is given (train --resume, export, eval, combine)."""

from __future__ import annotations

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
