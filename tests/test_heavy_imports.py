"""engine.imports: the heavy imports with the cycle collector paused, bitsandbytes without inductor, frozen only
where the process owner asked (each case in a fresh process: the test process has imported them already)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from adapter_studio.engine.imports import compiled_on_first_call

PROBE = textwrap.dedent("""
    import gc, json, sys
    import adapter_studio.engine
    from adapter_studio.engine import imports
    case = sys.argv[1]
    if case == "collector off":
        gc.disable()
    if case == "frozen":
        imports.freeze_imports_in_this_process()
    import torch
    compile_before = torch.compile
    HEAVY = ("bitsandbytes", "peft", "accelerate", "transformers.modeling_utils")
    imports.import_heavy_modules()
    print(json.dumps({
        "imported": all(m in sys.modules for m in HEAVY),
        "inductor": "torch._inductor.compile_fx" in sys.modules,
        "torch.compile restored": torch.compile is compile_before,
        "collecting": gc.isenabled(),
        "frozen": gc.get_freeze_count() > 0,
    }))
""")


@pytest.mark.parametrize(
    ("case", "collecting", "frozen"),
    [
        ("a library caller", True, False),  # nothing of the caller's is frozen
        ("collector off", False, False),  # the window runs the collector itself: left off
        ("frozen", True, True),  # the CLI's one-command process
    ],
)
def test_heavy_imports_leave_the_collector_as_found_and_freeze_only_when_asked(
    case: str, collecting: bool, frozen: bool
) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, case], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "imported": True,
        "inductor": False,  # bitsandbytes' compiled kernels are made when first called, not as it imports
        "torch.compile restored": True,
        "collecting": collecting,
        "frozen": frozen,
    }


def _fake_compile(made: list[tuple[Any, dict[str, Any]]]) -> Any:
    def compile_now(fn: Any, **options: Any) -> Any:
        made.append((fn, options))
        return lambda *args, **kwargs: ("compiled", fn(*args, **kwargs))

    return compile_now


def double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize(
    ("form", "options"),
    [
        ("torch.compile(fn)", {}),
        ("torch.compile(fn, dynamic=False)", {"dynamic": False}),
        ("@torch.compile(dynamic=False)", {"dynamic": False}),
    ],
)
def test_a_deferred_compile_compiles_once_on_the_first_call(form: str, options: dict[str, Any]) -> None:
    made: list[tuple[Any, dict[str, Any]]] = []
    compile_later = compiled_on_first_call(_fake_compile(made))
    fn = compile_later(**options)(double) if form.startswith("@") else compile_later(double, **options)
    assert made == [] and fn.__name__ == "double"
    assert [fn(1), fn(2)] == [("compiled", 2), ("compiled", 4)]
    assert made == [(double, options)]


def test_the_command_line_freezes_only_its_own_process() -> None:
    code = (
        "import gc, sys\nfrom adapter_studio.cli import main\n"
        "sys.argv = ['adapter-studio', 'methods']\nmain(['methods'])\nprint(gc.get_freeze_count())\n"
        "main()\nprint(gc.get_freeze_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [int(line) for line in done.stdout.splitlines() if line.strip().isdigit()]
    assert counts[0] == 0 and counts[1] > 0  # a caller's list: nothing frozen; the command line: frozen at exit
