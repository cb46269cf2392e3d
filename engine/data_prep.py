"""From rows to training tensors: render each example as the model will see it, mark the tokens
that carry loss (the answers), truncate, split off the held-out set, and batch."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.data_files import read_all
from engine.data_shapes import Example, detect_format, label_mapping, resolve_columns, to_examples
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.spec import DataSpec

IGNORE = -100
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss; for classification, [label id]
    row: int


@dataclass
class Rendered:
    """An example as text, with the character spans that carry loss."""

    text: str
    spans: list[tuple[int, int]]
    row: int


@dataclass
class PreparedData:
    format: str
    columns: dict[str, str]
    train: list[Tokenized]
    eval: list[Tokenized]
    eval_prompts: list[tuple[str, str]] = field(default_factory=list)  # (prompt text, expected answer)
    id2label: dict[int, str] | None = None
    dropped: list[str] = field(default_factory=list)
    truncated: int = 0
    rows: int = 0

    @property
    def train_tokens(self) -> int:
        return sum(len(t.input_ids) for t in self.train)


class ChatRenderer:
    """Renders conversations with the tokenizer's chat template, or a plain template without one."""

    def __init__(self, tokenizer: Any, system_prompt: str | None = None, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.template = template
        self.use_chat_template = template is None and bool(getattr(tokenizer, "chat_template", None))

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system_prompt and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def _chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _plain_prompt(self, messages: list[dict[str, str]]) -> str:
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        out = f"{system}\n\n" if system else ""
        for m in turns:
            if m["role"] == "user":
                instruction, _, extra = m["content"].partition("\n\n")
                template = self.template or (PLAIN_PROMPT_INPUT if extra else PLAIN_PROMPT)
                out += template.format(instruction=instruction, input=extra)
            else:
                out += m["content"] + (self.tokenizer.eos_token or "") + "\n\n"
        return out

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The text a model is given to answer the last user turn (for generation)."""
        messages = self._with_system(messages)
        return self._chat(messages, True) if self.use_chat_template else self._plain_prompt(messages)

    def render(self, example: Example) -> Rendered:
        messages = self._with_system(example.messages)
        spans: list[tuple[int, int]] = []
        if self.use_chat_template:
            full = self._chat(messages, False)
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
                return Rendered(full, spans, example.row)
            spans = []
        # Plain template: the answer and its end-of-text token carry the loss.
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                before = self._plain_prompt(messages[:i])
                answer = m["content"] + (self.tokenizer.eos_token or "")
                spans.append((len(before), len(before) + len(answer)))
        text = self._plain_prompt(messages)
        return Rendered(text, spans, example.row)


def _render_pairs(examples: list[Example], tokenizer: Any) -> list[Rendered]:
    eos = tokenizer.eos_token or ""
    return [
        Rendered(e.prompt + e.completion + eos, [(len(e.prompt), len(e.prompt) + len(e.completion) + len(eos))], e.row)
        for e in examples
    ]


def tokenize_rendered(
    rendered: list[Rendered], tokenizer: Any, max_length: int, add_special_tokens: bool
) -> tuple[list[Tokenized], int, list[str]]:
    """Tokenise in one batched call; a token carries loss when it starts inside a loss span."""
    if not rendered:
        return [], 0, []
    enc = tokenizer(
        [r.text for r in rendered], add_special_tokens=add_special_tokens, return_offsets_mapping=True
    )
    out, truncated, dropped = [], 0, []
    for r, ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"], strict=True):
        labels = [
            tok if any(s <= start < e for s, e in r.spans) and end > start else IGNORE
            for tok, (start, end) in zip(ids, offsets, strict=True)
        ]
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE for label in labels):
            dropped.append(f"row {r.row}: longer than max_length {max_length}, nothing left to learn")
            continue
        out.append(Tokenized(list(ids), labels, r.row))
    return out, truncated, dropped


def tokenize_text(examples: list[Example], tokenizer: Any, max_length: int) -> list[Tokenized]:
    """Plain text for continued pre-training: concatenated and cut into max_length blocks."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer([e.text for e in examples], add_special_tokens=False)["input_ids"]:
        stream.extend(ids + eos)
    blocks = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    return [Tokenized(b, list(b), i + 1) for i, b in enumerate(blocks) if len(b) > 1]


def tokenize_classification(
    examples: list[Example], tokenizer: Any, max_length: int, label2id: dict[str, int], where: str
) -> list[Tokenized]:
    for e in examples:
        if str(e.label) not in label2id:
            raise UserError(
                f"row {e.row}: label '{e.label}' is not one of the training labels ({', '.join(label2id)})",
                where=f"{where}, row {e.row}",
                fix="fix the label, or add training rows with it",
            )
    pairs = [e.text_pair for e in examples]
    enc = tokenizer(
        [e.text for e in examples],
        pairs if any(p is not None for p in pairs) else None,
        truncation=True,
        max_length=max_length,
    )
    return [
        Tokenized(list(ids), [label2id[str(e.label)]], e.row)
        for e, ids in zip(examples, enc["input_ids"], strict=True)
    ]


def load_examples(spec: DataSpec, path: str | list[str]) -> tuple[str, dict[str, str], list[Example], list[str]]:
    rows = read_all(path)
    where = path if isinstance(path, str) else path[0]
    columns = list(dict.fromkeys(k for row in rows[:100] for k in row))
    fmt = spec.format or detect_format(columns, spec.columns)
    mapping = resolve_columns(fmt, columns, spec.columns, where)
    examples, dropped = to_examples(rows, fmt, mapping, where)
    return fmt, mapping, examples, dropped


def split_examples(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    if share <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(examples) * share)), len(examples) - 1)
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def prepare_data(spec: DataSpec, tokenizer: Any, task: str, max_length: int, seed: int) -> PreparedData:
    """Read, check, split and tokenise the data a run trains and evaluates on."""
    fmt, mapping, examples, dropped = load_examples(spec, spec.path)
    if spec.max_rows:
        examples = examples[: spec.max_rows]
    if spec.eval_path:
        _, _, held, held_dropped = load_examples(spec.model_copy(update={"format": fmt}), spec.eval_path)
        train_ex, eval_ex = examples, held
        dropped += [f"eval {d}" for d in held_dropped]
    else:
        train_ex, eval_ex = split_examples(examples, spec.eval_split, seed)
    where = spec.path if isinstance(spec.path, str) else spec.path[0]
    if not train_ex:
        raise UserError("no usable training rows", where=where, fix="; ".join(dropped[:5]) or "add rows")
    if (fmt == "classification") != (task == "classification"):
        raise UserError(
            f"{fmt} data needs a {'classification' if fmt == 'classification' else 'text-generation'} model",
            where="data.format",
            fix="pick a matching model (an encoder such as MiniLM for classification) or another data file",
        )
    data = PreparedData(fmt, mapping, [], [], dropped=list(dropped), rows=len(examples))
    if fmt == "classification":
        data.id2label = label_mapping(train_ex)
        label2id = {v: k for k, v in data.id2label.items()}
        data.train = tokenize_classification(train_ex, tokenizer, max_length, label2id, where)
        data.eval = tokenize_classification(eval_ex, tokenizer, max_length, label2id, spec.eval_path or where)
        return data
    if fmt == "text":
        data.train = tokenize_text(train_ex, tokenizer, max_length)
        data.eval = tokenize_text(eval_ex, tokenizer, max_length)
        return data
    if fmt == "prompt_completion":
        rendered_train, rendered_eval = _render_pairs(train_ex, tokenizer), _render_pairs(eval_ex, tokenizer)
        special = True
        data.eval_prompts = [(e.prompt, e.completion.strip()) for e in eval_ex]
    else:
        renderer = ChatRenderer(tokenizer, spec.system_prompt, spec.template)
        rendered_train = [renderer.render(e) for e in train_ex]
        rendered_eval = [renderer.render(e) for e in eval_ex]
        special = not renderer.use_chat_template
        data.eval_prompts = [
            (renderer.prompt(e.messages[:-1]), e.messages[-1]["content"].strip())
            for e in eval_ex
            if e.messages and e.messages[-1]["role"] == "assistant"
        ]
    data.train, data.truncated, more = tokenize_rendered(rendered_train, tokenizer, max_length, special)
    data.dropped += more
    data.eval, _, _ = tokenize_rendered(rendered_eval, tokenizer, max_length, special)
    if not data.train:
        raise UserError(
            f"every row is longer than max_length {max_length} before its answer starts",
            where=where,
            fix="raise data.max_length or shorten the prompts",
        )
    return data


# --- batching ---------------------------------------------------------------------------------


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch, a pure function of (seed, epoch) so a resumed run sees the same
    order. Examples of similar length share a batch (less padding); batch order stays random."""
    order = list(range(len(lengths)))
    rng = random.Random(seed * 100_003 + epoch)
    rng.shuffle(order)
    # Sort within windows of 50 batches: most of the padding saving, little loss of randomness.
    window = batch_size * 50
    grouped: list[int] = []
    for i in range(0, len(order), window):
        grouped += sorted(order[i : i + window], key=lambda j: lengths[j])
    batches = [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: list[Tokenized], pad_id: int, classification: bool) -> dict[str, Any]:
    import torch

    width = max(len(t.input_ids) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for i, t in enumerate(items):
        n = len(t.input_ids)
        ids[i, :n] = torch.tensor(t.input_ids)
        mask[i, :n] = 1
        if not classification:
            labels[i, :n] = torch.tensor(t.labels)
    if classification:
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([t.labels[0] for t in items])}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
