"""Stopping a command-line run: Ctrl-C or SIGTERM asks the run to stop at a checkpoint, a second Ctrl-C
stops waiting; the exit status of a cancelled command."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

EXIT_CANCELLED = 130


def install_stop_handlers(stop: threading.Event) -> None:
    # A background process of a script ignores SIGINT unless it installs its own handler.
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for the checkpoint
            raise KeyboardInterrupt
        print(f"\nstopping ({signal.Signals(signum).name}): saving a checkpoint…", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
