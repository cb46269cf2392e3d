"""An Ollama `Modelfile` beside an exported GGUF: the prompt format the run trained with, its stop token
and generation parameters, and the command that registers it.

Ollama's templates are Go templates, not the model's Jinja chat template. Rather than translate Jinja,
the chat template is rendered with marker texts for a conversation with and without a system message,
and the markers become Ollama's `{{ .System }}` / `{{ .Prompt }}`: exactly the text the model saw in
training, for any template."""

from __future__ import annotations

import re
from typing import Any

SYSTEM_MARK, PROMPT_MARK = "\ue000SYSTEM\ue000", "\ue000PROMPT\ue000"


def _go_literal(text: str) -> str:
    """Template text with Go template delimiters in it kept as text."""
    return re.sub(r"\{\{|\}\}", lambda m: f'{{{{ "{m.group(0)}" }}}}', text)


def _fill(text: str) -> str:
    return _go_literal(text).replace(SYSTEM_MARK, "{{ .System }}").replace(PROMPT_MARK, "{{ .Prompt }}")


def go_template(render: Any) -> str:
    """Ollama's TEMPLATE from `render(messages) -> prompt text` (the run's own prompt rendering)."""
    without = render([{"role": "user", "content": PROMPT_MARK}])
    try:
        with_system = render([{"role": "system", "content": SYSTEM_MARK}, {"role": "user", "content": PROMPT_MARK}])
    except Exception:  # templates that refuse a system role
        with_system = without
    if SYSTEM_MARK not in with_system:
        return _fill(without) + "{{ .Response }}"
    return f"{{{{ if .System }}}}{_fill(with_system)}{{{{ else }}}}{_fill(without)}{{{{ end }}}}{{{{ .Response }}}}"


def modelfile(source: str, template: str, stops: list[str], parameters: dict[str, float | int],
              adapter: str | None = None) -> str:  # fmt: skip
    """`source`: the GGUF for Ollama's FROM (`./file.gguf` beside it, or a base's path with `adapter`)."""
    lines = ["# Made by Adapter Studio. Register it with: ollama create <name> -f Modelfile", f"FROM {source}"]
    lines += [f"ADAPTER {adapter}"] if adapter else []
    lines.append(f'TEMPLATE """{template}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops if s]
    lines += [f"PARAMETER {k} {v}" for k, v in parameters.items()]
    return "\n".join(lines) + "\n"


def register_command(name: str, folder: str) -> str:
    return f'cd "{folder}" && ollama create {name} -f Modelfile && ollama run {name}'
