"""Rendering: an example as the text the model trains on, with the character spans that carry loss.
Conversations go through the tokenizer's chat template (`ChatRenderer`, which renders each sequence of
roles once with markers and fills the contents in, checked against the template) or a plain
instruction template without one; prompt/completion pairs are joined as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adapter_studio.engine.data.shapes import Example
from adapter_studio.engine.errors import UserError

PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
CHAT_FORMATS = ("alpaca", "messages", "sharegpt")
# The shapes whose prompts are rendered with the chat template: a pair's or a KTO row's prompt is a conversation.
TEMPLATED_FORMATS = (*CHAT_FORMATS, "preference", "kto")


@dataclass
class Rendered:
    """An example as text, with the character spans that carry loss."""

    text: str
    spans: list[tuple[int, int]]
    row: int


# A message content the chat template cannot mistake for real text; the spaces and newlines around
# it reveal a template that trims or rewrites contents (those are rendered one by one instead).
_MARK = " \n\ue000{}\ue001\n "
_MARK_RE = re.compile(" \n\ue000(\\d+)\ue001\n ")
_VERIFY_FIRST, _VERIFY_EVERY = 2, 997


_TYPE_TESTS = {"string", "defined", "undefined", "none", "mapping", "sequence", "iterable"}


def _content_used_verbatim(source: str) -> bool:
    """Whether a chat template only prints message contents as they are (joined with + or ~) or tests
    them for being empty or of a type, so that a content can be filled in after rendering. Filters,
    methods, comparisons, `set`, macros: the template looks inside the content, render each row."""
    from jinja2 import Environment, TemplateSyntaxError, nodes

    def is_content(node: nodes.Node) -> bool:
        return (
            isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "content"
        ) or (isinstance(node, nodes.Getattr) and node.attr == "content")

    def fine(node: nodes.Node, context: str) -> bool:
        if is_content(node):
            return context in ("output", "truth")
        if isinstance(node, nodes.Output):
            return all(fine(child, "output") for child in node.nodes)
        if isinstance(node, (nodes.If, nodes.CondExpr)):
            branches = [c for c in node.iter_child_nodes() if c is not node.test]
            inner = context if isinstance(node, nodes.CondExpr) else "other"
            return fine(node.test, "truth") and all(fine(c, inner) for c in branches)
        if context == "output" and isinstance(node, (nodes.Add, nodes.Concat)):
            inner = "output"
        elif context == "truth" and (
            isinstance(node, (nodes.And, nodes.Or, nodes.Not))
            or (isinstance(node, nodes.Test) and node.name in _TYPE_TESTS)
        ):
            inner = "truth"
        else:
            inner = "other"
        return all(fine(child, inner) for child in node.iter_child_nodes())

    try:
        tree = Environment(extensions=["jinja2.ext.loopcontrols"]).parse(source)
    except TemplateSyntaxError:
        return False
    return fine(tree, "other")


class TemplateMismatch(Exception):
    """The fast renderer disagreed with the chat template on a later example: start again without it."""


@dataclass
class _Skeleton:
    """A chat template rendered once for a sequence of roles, with a marker where each content goes."""

    literals: list[str]
    order: list[int]  # message index of each marker, in text order
    spans: list[tuple[tuple[int, int], tuple[int, int]]]  # loss spans as (literal index, offset) pairs
    consistent: bool

    def fill(self, contents: list[str]) -> tuple[str, list[tuple[int, int]]]:
        parts: list[str] = []
        starts: list[int] = []
        pos = 0
        for j, literal in enumerate(self.literals):
            starts.append(pos)
            parts.append(literal)
            pos += len(literal)
            if j < len(self.order):
                content = contents[self.order[j]]
                parts.append(content)
                pos += len(content)
        spans = [(starts[a] + oa, starts[b] + ob) for (a, oa), (b, ob) in self.spans]
        return "".join(parts), spans


class ChatRenderer:
    """Renders conversations with the tokenizer's chat template, or a plain template without one.

    The chat template is rendered once per sequence of roles with markers for the contents, and
    each example fills the markers in: the same text as rendering it, checked against the template
    on the first examples of each shape and every ~1000th, at a fraction of the cost.
    """

    def __init__(
        self, tokenizer: Any, system_prompt: str | None = None, template: str | None = None, fast: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.template = template
        self.use_chat_template = template is None and bool(getattr(tokenizer, "chat_template", None))
        source = getattr(tokenizer, "chat_template", None)
        self.fast = fast and self.use_chat_template and isinstance(source, str) and _content_used_verbatim(source)
        self._skeletons: dict[tuple[str, ...], _Skeleton | None] = {}
        self._seen: dict[tuple[str, ...], int] = {}
        if template is not None:
            _check_template(template)

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system_prompt and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def _chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # jinja raises its own errors from inside the model's template
            raise UserError(
                f"the model's chat template cannot render this conversation ({type(e).__name__}: {e})",
                where="chat template",
                fix="check the roles' order (system, user, assistant, ...) or set data.template to a plain template",
            ) from None

    def _plain_prompt(self, messages: list[dict[str, str]]) -> str:
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        out = f"{system}\n\n" if system else ""
        for m in messages:
            if m["role"] == "user":
                instruction, extra = (m["instruction"], m["input"]) if "instruction" in m else (m["content"], "")
                template = self.template or (PLAIN_PROMPT_INPUT if extra else PLAIN_PROMPT)
                out += template.format(instruction=instruction, input=extra)
            elif m["role"] == "assistant":
                out += m["content"] + (self.tokenizer.eos_token or "") + "\n\n"
        return out

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The text a model is given to answer the last user turn (for generation)."""
        messages = self._with_system(messages)
        return self._chat(messages, True) if self.use_chat_template else self._plain_prompt(messages)

    def render(self, example: Example) -> Rendered:
        messages = self._with_system(example.messages)
        if self.fast:
            quick = self._render_fast(messages)
            if quick is not None:
                return Rendered(quick[0], quick[1], example.row)
        text, spans = self._render_slow(messages)
        return Rendered(text, spans, example.row)

    def _render_slow(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        if self.use_chat_template:
            full = self._chat(messages, False)
            spans: list[tuple[int, int]] = []
            consistent = True
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                prefix = self._chat(messages[:i], True)
                upto = self._chat(messages[: i + 1], False)
                # Templates that rewrite earlier turns break the prefix property: use the plain one.
                consistent = consistent and full.startswith(prefix) and full.startswith(upto)
                spans.append((len(prefix), len(upto)))
            if consistent:
                return full, spans
        return self._render_plain(messages)

    def _render_plain(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        # The answer and its end-of-text token carry the loss.
        spans = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                before = self._plain_prompt(messages[:i])
                answer = m["content"] + (self.tokenizer.eos_token or "")
                spans.append((len(before), len(before) + len(answer)))
        text = self._plain_prompt(messages)
        # The separator after the last answer only pads: nothing follows it.
        return (text[:-2] if messages and messages[-1]["role"] == "assistant" else text), spans

    def _render_fast(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]] | None:
        contents = [m["content"] for m in messages]
        if any(not c.strip() or "\ue000" in c for c in contents):
            return None  # templates often treat empty contents specially
        roles = tuple(m["role"] for m in messages)
        if roles not in self._skeletons:
            self._skeletons[roles] = self._skeleton(roles)
        skeleton = self._skeletons[roles]
        if skeleton is None:
            return None
        result = skeleton.fill(contents) if skeleton.consistent else self._render_plain(messages)
        seen = self._seen[roles] = self._seen.get(roles, 0) + 1
        if seen <= _VERIFY_FIRST or seen % _VERIFY_EVERY == 0:
            expected = self._render_slow(messages)
            if expected != result:
                if seen > _VERIFY_FIRST:
                    raise TemplateMismatch
                self._skeletons[roles] = None
                return expected
        return result

    def _skeleton(self, roles: tuple[str, ...]) -> _Skeleton | None:
        marked = [{"role": r, "content": _MARK.format(i)} for i, r in enumerate(roles)]
        try:
            full = self._chat(marked, False)
        except UserError:
            return None
        parts = _MARK_RE.split(full)
        literals, order = parts[0::2], [int(i) for i in parts[1::2]]
        if sorted(order) != list(range(len(roles))) or any("\ue000" in p or "\ue001" in p for p in literals):
            return None
        starts, pos = [], 0
        for j, literal in enumerate(literals):
            starts.append(pos)
            pos += len(literal) + (len(_MARK.format(order[j])) if j < len(order) else 0)

        def where(position: int) -> tuple[int, int] | None:
            for j in range(len(literals) - 1, -1, -1):
                if starts[j] <= position:
                    offset = position - starts[j]
                    return (j, offset) if offset <= len(literals[j]) else None
            return None

        spans = []
        consistent = True
        for i, role in enumerate(roles):
            if role != "assistant":
                continue
            prefix, upto = self._chat(marked[:i], True), self._chat(marked[: i + 1], False)
            consistent = consistent and full.startswith(prefix) and full.startswith(upto)
            a, b = where(len(prefix)), where(len(upto))
            if a is None or b is None:
                if consistent:
                    return None
                continue
            spans.append((a, b))
        return _Skeleton(literals, order, spans, consistent)


def _check_template(template: str) -> None:
    if "{instruction}" not in template:
        raise UserError(
            "data.template has no {instruction} field",
            where="data.template",
            fix="write where the instruction goes, e.g. 'Question: {instruction}\\nAnswer: '",
        )
    try:
        template.format(instruction="", input="")
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(
            f"data.template cannot be filled in ({type(e).__name__}: {e})",
            where="data.template",
            fix="use only {instruction} and {input}; write a literal brace as {{ or }}",
        ) from None


def _render_pairs(examples: list[Example], tokenizer: Any) -> list[Rendered]:
    eos = tokenizer.eos_token or ""
    return [
        Rendered(e.prompt + e.completion + eos, [(len(e.prompt), len(e.prompt) + len(e.completion) + len(eos))], e.row)
        for e in examples
    ]
