"""PyInstaller entry script for the frozen `adapter-studio` executable (see adapter-studio.spec).

In the frozen app, `sys.executable` is the app itself, and it is also the Python that a multi-device
run starts: engine/launch.py runs `APP -m accelerate.commands.launch ...`, and torch's launcher runs
each worker as `APP -u -m adapter_studio.cli train ...`. Such command lines run the module, as `python` would.
"""

from __future__ import annotations

import multiprocessing
import runpy
import sys

# Interpreter flags that launchers put before `-m` (torch.distributed.run adds -u).
INTERPRETER_FLAGS = ("-u", "-B", "-E", "-s")


def module_command(argv: list[str]) -> tuple[str, list[str], bool] | None:
    """(module, its arguments, unbuffered) for `[-u] -m MODULE ARGS...`, else None (an app command)."""
    args = list(argv)
    unbuffered = False
    while args and args[0] in INTERPRETER_FLAGS:
        unbuffered = unbuffered or args[0] == "-u"
        args.pop(0)
    if len(args) >= 2 and args[0] == "-m":
        return args[1], args[2:], unbuffered
    return None


def run_module(module: str, args: list[str], unbuffered: bool) -> None:
    if unbuffered:
        sys.stdout.reconfigure(write_through=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(write_through=True)  # type: ignore[union-attr]
    sys.argv = [module, *args]  # runpy puts the module's file in argv[0]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # datasets/torch may start worker processes; in a frozen app they re-enter this script.
    multiprocessing.freeze_support()
    command = module_command(sys.argv[1:])
    if command is not None:
        run_module(*command)
        sys.exit(0)
    from adapter_studio.cli import main

    sys.exit(main())
