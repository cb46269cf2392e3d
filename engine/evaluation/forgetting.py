"""The forgetting check: how likely the base and the tuned model find the answers of a small general
instruction set shipped with the app (resources/general), and a few of their greedy answers to it.

The loss is the mean cross-entropy per token of the answers' text, the prompt rendered the way the run
renders conversations; `ratio` = tuned / base, so 1.0 means nothing measurable was forgotten. The
end-of-turn token after each answer is left out: a model tuned to short answers makes it far more likely
after any short answer, which on the demo turned a 8 % rise of the loss on the answers' text into a 6 %
fall, while the tuned model's own general answers got worse.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.batches import collate
from adapter_studio.engine.data.shapes import Example
from adapter_studio.engine.data.tokenising import IGNORE, Tokenized, tokenize_rendered
from adapter_studio.engine.evaluation.generation import Tick, batch_size_for, batches, generate_greedy
from adapter_studio.resources import FOLDER

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.inference.playground import Playground

GENERAL_SET = FOLDER / "general" / "instructions.jsonl"
ANSWERS_SHOWN = 3
MAX_LENGTH = 512
BATCH = 8


@dataclass
class Forgetting:
    loss_base: float
    loss_tuned: float
    ratio: float
    pairs: int
    answers: list[dict[str, str]] = field(default_factory=list)  # {instruction, expected, base, tuned}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def general_set() -> list[tuple[str, str]]:
    """The shipped (instruction, answer) pairs."""
    rows = [json.loads(line) for line in GENERAL_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["instruction"], r["output"]) for r in rows]


def forgetting_steps() -> int:
    """Rows of work the check reports through `tick`: the loss of both models, then their answers."""
    return 2 * len(general_set()) + 2 * ANSWERS_SHOWN


def answer_text_only(item: Tokenized, special_ids: set[int]) -> Tokenized:
    """The item with loss only on the answer's text: from its first special token (end of turn) on, none."""
    labels, ended = [], False
    for label in item.labels:
        ended = ended or (label != IGNORE and label in special_ids)
        labels.append(IGNORE if ended else label)
    return Tokenized(item.input_ids, labels, item.row)


def _mean_answer_loss(model: torch.nn.Module, items: list[Any], pad_id: int, device: str, tick: Tick,
                      stop: threading.Event | None) -> float:  # fmt: skip
    import torch

    total, tokens = 0.0, 0
    for batch in batches(len(items), BATCH, stop):
        inputs = collate([items[i] for i in batch], pad_id, False)
        labels = inputs.pop("labels").to(device)
        with torch.no_grad():
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
        logits = logits[:, -labels.shape[1] :]  # a soft prompt's virtual tokens come first: not the text's
        total += float(torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            ignore_index=IGNORE, reduction="sum"))  # fmt: skip
        tokens += int((labels[:, 1:] != IGNORE).sum())
        tick(len(batch))
    return total / max(tokens, 1)


def check_forgetting(playground: Playground, tick: Tick, stop: threading.Event | None = None) -> Forgetting:
    """Loss on the general set's answers for base and tuned, and their greedy answers to the first few."""
    pairs = general_set()
    renderer, tokenizer = playground.renderer, playground.tokenizer
    rendered = [
        renderer.render(Example(row=i + 1, messages=[{"role": "user", "content": q},
                                                      {"role": "assistant", "content": a}]))
        for i, (q, a) in enumerate(pairs)
    ]  # fmt: skip
    special = not renderer.use_chat_template
    items, _, _ = tokenize_rendered(rendered, tokenizer, MAX_LENGTH, special)
    items = [answer_text_only(item, set(tokenizer.all_special_ids)) for item in items]
    stop_ids = playground.stop_token_ids()
    pad_id = playground.pad_token_id()
    losses = {}
    for which in ("base", "tuned"):
        with playground.using(which) as model:  # type: ignore[arg-type]
            losses[which] = _mean_answer_loss(model, items, pad_id, playground.device, tick, stop)
    shown = pairs[:ANSWERS_SHOWN]
    prompts = [tokenizer(renderer.prompt([{"role": "user", "content": q}]), add_special_tokens=special)["input_ids"]
               for q, _ in shown]  # fmt: skip
    answers: dict[str, list[str]] = {}
    for which in ("base", "tuned"):
        with playground.using(which) as model:  # type: ignore[arg-type]
            ids = generate_greedy(model, prompts, pad_id=pad_id, stop_ids=stop_ids, max_new_tokens=48,
                                  batch_size=batch_size_for(model, ANSWERS_SHOWN, adapter_on=which == "tuned"),
                                  device=playground.device,
                                  tick=tick, stop=stop)  # fmt: skip
        answers[which] = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids]
    return Forgetting(
        loss_base=losses["base"], loss_tuned=losses["tuned"], ratio=losses["tuned"] / max(losses["base"], 1e-12),
        pairs=len(items),
        answers=[{"instruction": q, "expected": a, "base": b, "tuned": t}
                 for (q, a), b, t in zip(shown, answers["base"], answers["tuned"], strict=True)],
    )  # fmt: skip
