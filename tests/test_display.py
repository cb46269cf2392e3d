"""The window says why it cannot open on this machine, rather than Qt aborting the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from adapter_studio.gui.display import NO_DISPLAY, NO_XCB_CURSOR, display_problem

FOUND, MISSING = (lambda name: f"lib{name}.so.0"), (lambda name: None)


@pytest.mark.parametrize(("platform", "environ", "find", "problem"), [
    ("linux", {}, FOUND, NO_DISPLAY),  # SSH or a server
    ("linux", {"DISPLAY": ":0"}, FOUND, None),
    ("linux", {"DISPLAY": ":0"}, MISSING, NO_XCB_CURSOR),  # a fresh Ubuntu desktop without libxcb-cursor0
    ("linux", {"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, MISSING, None),  # Qt takes Wayland
    ("linux", {"QT_QPA_PLATFORM": "offscreen"}, MISSING, None),  # the person's own choice
    ("darwin", {}, MISSING, None),
    ("win32", {}, MISSING, None),
], ids=["no display", "x11", "x11 without xcb-cursor", "wayland", "offscreen", "macos", "windows"])  # fmt: skip
def test_what_keeps_the_window_from_opening(platform: str, environ: dict[str, str], find, problem) -> None:  # type: ignore[no-untyped-def]
    assert display_problem(environ, platform, find) == problem


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a display server is Linux's question")
def test_without_a_display_the_command_says_so_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    out = subprocess.run([sys.executable, "-m", "adapter_studio.cli", "--demo"], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 2 and out.stderr == f"error: {NO_DISPLAY}\n", out.stderr
