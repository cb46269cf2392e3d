"""The engine's architecture as checked rules, on the import graph read from the source (ast).

Every `import`/`from … import` of an `adapter_studio` module counts, also inside functions (a lazy import
is still an arrow); imports under `if TYPE_CHECKING:` do not (they never run). Rules: no import cycles
among modules, the engine never reaches up to the window or the command line, the sub-packages keep
their layers, and no engine module grows past 400 lines without saying why in its docstring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"adapter_studio.engine": ROOT / "engine", "adapter_studio.gui": ROOT / "gui",
           "adapter_studio": ROOT / "packaging" / "adapter_studio"}  # fmt: skip
MAX_LINES = 400
LONG_REASON = "Longer than 400 lines because"


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, name: str) -> set[str]:
    """The adapter_studio modules this module imports (a `from X import y` counts X.y where that is a module)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_cycles() -> None:
    # A package's __init__ is where its modules are registered (methods/__init__ imports every family):
    # an arrow back to it from one of its own modules is the usual registry, not a cycle between concerns.
    cycles = sorted(
        name for name in GRAPH if name in _reaches(name) and not name.endswith(("engine", "gui", "adapter_studio"))
    )
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("adapter_studio.engine", ("adapter_studio.gui", "adapter_studio.cli")),  # the engine never imports Qt
        ("adapter_studio.engine.data", ("adapter_studio.engine.training", "adapter_studio.engine.estimate",
                                        "adapter_studio.engine.export", "adapter_studio.engine.inference")),
        ("adapter_studio.engine.models", ("adapter_studio.engine.data", "adapter_studio.engine.training",
                                          "adapter_studio.engine.methods", "adapter_studio.engine.estimate")),
        ("adapter_studio.engine.methods", ("adapter_studio.engine.data", "adapter_studio.engine.estimate",
                                           "adapter_studio.engine.export", "adapter_studio.engine.inference")),
        ("adapter_studio.engine.export", ("adapter_studio.engine.training.session",
                                          "adapter_studio.engine.training.run")),
        ("adapter_studio.engine.inference", ("adapter_studio.engine.training.session",
                                             "adapter_studio.engine.training.run", "adapter_studio.engine.export")),
        ("adapter_studio.engine.evaluation", ("adapter_studio.engine.training.session",
                                              "adapter_studio.engine.training.run", "adapter_studio.engine.export",
                                              "adapter_studio.engine.search")),
    ],
)  # fmt: skip
def test_layers(importer: str, forbidden: tuple[str, ...]) -> None:
    arrows = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if name == importer or name.startswith(importer + ".")
        for target in targets
        if target.startswith(forbidden)
    ]
    assert not arrows, arrows


def test_engine_modules_stay_small_or_say_why() -> None:
    long = []
    for name, path in MODULES.items():
        if name.startswith("adapter_studio.gui"):
            continue  # the window's pages are one screen each (three run to ~500 lines today)
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{name} ({text.count(chr(10))} lines)")
    assert not long, f"over {MAX_LINES} lines without '{LONG_REASON} …' in the docstring: {long}"


def test_every_package_folder_is_installed() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_the_graph_sees_real_arrows() -> None:
    """The rules above would pass on an empty graph: check it holds arrows known to exist."""
    assert "adapter_studio.engine.training.session" in GRAPH["adapter_studio.engine.training.run"]
    assert "adapter_studio.engine.spec" in GRAPH["adapter_studio.cli"]
