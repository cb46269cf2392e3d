"""A spec file's YAML as a mapping: UTF-8 text, valid YAML, each key once; each error names the file and line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from adapter_studio.engine.errors import UserError


class _KeyTwice(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"{key!r} is given twice")
        self.key, self.first, self.again = key, first, again


class _OnceLoader(yaml.SafeLoader):
    """PyYAML keeps the last of a key given twice, silently: a spec with `learning_rate` twice trained at the
    second, unseen below the first. Here the second is an error. Each mapping's own keys are checked once,
    before merge keys (`<<`) bring others in, which may still be overridden."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        checked = self.__dict__.setdefault("_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                if key_node.value in lines:
                    raise _KeyTwice(key_node.value, lines[key_node.value], key_node.start_mark.line + 1)
                lines[key_node.value] = key_node.start_mark.line + 1
        super().flatten_mapping(node)


def read_spec_yaml(path: Path) -> tuple[dict[str, Any], str]:
    """(the spec file's mapping, its text); a UserError naming the file and line for anything else."""
    if not path.exists():
        raise UserError(f"spec file not found: {path}", fix="check the path")
    if path.is_dir():
        raise UserError("this is a folder, not a spec file", where=str(path),
                        fix="give the spec's .yaml file (a run folder's is its spec.yaml)")  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(
            f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})",
            where=f"{path}:{line}",
            fix="save the spec file as UTF-8",
        ) from None
    except OSError as e:
        raise UserError(f"cannot read the spec file: {e.strerror or e}", where=str(path)) from None
    try:
        data = yaml.load(text, Loader=_OnceLoader) or {}
    except _KeyTwice as e:
        raise UserError(f"{e.key!r} is given twice (first on line {e.first})", where=f"{path}:{e.again}",
                        fix="keep one of them: only the last would count") from None  # fmt: skip
    except yaml.YAMLError as e:
        raise _yaml_error(e, path, text) from None
    if not isinstance(data, dict):
        raise UserError(f"a spec file is a mapping with model, data, method and training, not a {type(data).__name__}",
                        where=str(path), fix="start it with 'model:' (docs/contract.md has an example)")  # fmt: skip
    return data, text


def _yaml_error(error: yaml.YAMLError, path: Path, text: str) -> UserError:
    """Where the reader stopped, and where what it was reading began: an unclosed quote on line 4 is found at the
    end of the file, and line 4 is the one to fix. The commonest mistakes are said in words, not the parser's."""
    problem = " ".join(str(getattr(error, "problem", None) or error).split())  # one line, whatever it said
    mark, begun = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
    context = getattr(error, "context", None)
    if mark is not None:
        said = _in_words(problem, mark.line, text.splitlines())
        if said is not None:
            what, line, fix = said
            return UserError(what, where=f"{path}:{line}", fix=fix)
    if begun is not None and context and (mark is None or begun.line != mark.line):
        return UserError(f"not valid YAML ({problem} {' '.join(context.split())} that starts here)",
                         where=f"{path}:{begun.line + 1}", fix="fix the syntax")  # fmt: skip
    return UserError(f"not valid YAML ({problem})", where=f"{path}:{mark.line + 1}" if mark else str(path),
                     fix="fix the syntax")  # fmt: skip


def _in_words(problem: str, at: int, lines: list[str]) -> tuple[str, int, str] | None:
    """(what, 1-based line, fix) for a tab, a line out of step with its section and a key without its ':'; None
    for anything else. `at`: the 0-based line the parser stopped on."""
    if "'\\t'" in problem and "cannot start any token" in problem:
        return "indented with a tab: YAML takes spaces only", at + 1, "indent with spaces"
    if problem.startswith("expected <block end>"):  # ` data:` one space in, or `{max_steps: 1} extra`
        return ("this line does not line up with the lines above it (indented differently), or has text after a "
                "closing } or ]", at + 1, "indent it as the other keys of its section, with spaces; keep a {…} "
                "value alone on its line")  # fmt: skip
    if problem.startswith("mapping values are not allowed"):  # `model embedded:…` above a line with a key
        before = next((i for i in range(at - 1, -1, -1) if lines[i].strip() and not lines[i].lstrip().startswith("#")),
                      None)  # fmt: skip
        if before is not None and not re.search(r":(\s|$)", lines[before]):
            return "no ':' after the key on this line", before + 1, "write it as key: value"
        return "a ': ' inside a value", at + 1, "put the value in quotes ('…')"
    return None
