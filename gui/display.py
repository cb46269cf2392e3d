"""Whether this session can show a window at all, said in words before Qt aborts the process.

Without a display, or on X11 without the xcb-cursor library Qt 6.5+ needs, Qt prints a hint about
reinstalling and ends the process with SIGABRT (a core dump on many desktops). Both are facts of the
machine a person can fix, so the app says which one it is and what to do.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping

NO_DISPLAY = (
    "no display to open the window on (DISPLAY and WAYLAND_DISPLAY are both unset: an SSH session or a "
    "server?) — start it from a desktop session or over `ssh -X`, or train headless with "
    "`adapter-studio train spec.yaml` (README, Headless)"
)
NO_XCB_CURSOR = (
    "the window needs the system library libxcb-cursor0 on X11 (Qt 6.5 and later) — install it: "
    "`sudo apt-get install libxcb-cursor0` (Debian, Ubuntu) or `sudo dnf install xcb-util-cursor` (Fedora)"
)


def display_problem(environ: Mapping[str, str] = os.environ, platform: str = sys.platform,
                    find_library: Callable[[str], str | None] = ctypes.util.find_library) -> str | None:  # fmt: skip
    """What keeps the window from opening here, or None. Only Linux needs a display server named in the
    environment; a platform the person chose (QT_QPA_PLATFORM=offscreen, vnc, …) is theirs."""
    if not platform.startswith("linux") or environ.get("QT_QPA_PLATFORM"):
        return None
    if not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        return NO_DISPLAY
    if not environ.get("WAYLAND_DISPLAY") and find_library("xcb-cursor") is None:
        return NO_XCB_CURSOR
    return None
