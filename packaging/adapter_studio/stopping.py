"""Stopping a command-line run: Ctrl-C or SIGTERM asks the run to stop at a checkpoint, a second Ctrl-C
stops waiting; the exit status of a cancelled command, and of one a person's error stopped."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

EXIT_CANCELLED = 130
EXIT_USER_ERROR = 2  # an error a person can cause (docs/contract.md, "Errors and exit codes")


def install_stop_handlers(stop: threading.Event) -> None:
    # A background process of a script ignores SIGINT unless it installs its own handler.
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for the checkpoint
            raise KeyboardInterrupt
        # Said in full: a step being compiled (its first minute) held the checkpoint back, unsaid, and a second
        # Ctrl-C then lost the steps since the last one.
        print(f"\nstopping ({signal.Signals(signum).name}): a checkpoint is saved when the step under way ends (a "
              "step being compiled can take a minute); Ctrl-C again quits at once, without one", file=sys.stderr,
              flush=True)  # fmt: skip
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def interrupt_on_sigterm() -> None:
    """SIGTERM as Ctrl-C: a command's KeyboardInterrupt handling (an export removes its half-written folder)
    runs for `kill` and `timeout` too, where the default ended the process on the spot."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
