"""A preference run scored on held-out pairs: which answer of each pair the base and the tuned model prefer.

A preference run is judged, like any other, by how it answers the held-out prompts (compared with the
chosen answers). On pairs it is also judged by what it was trained for, ranking the chosen answer above
the rejected one. Three shares of the pairs are reported for each model:

- prefers chosen: the chosen answer gets the higher summed log-probability. This is the model's own
  ranking, so the base model has a real starting value;
- prefers chosen per token: the same ranking with each answer's mean log-probability per token, which
  takes answer length out of the comparison;
- reward accuracy: the chosen answer gained more log-probability over the base than the rejected one
  did. This is DPO's implicit reward (for DPO and IPO runs the `preference_accuracy` of the training and
  eval events; SimPO and ORPO reward the mean log-probability instead), and it is 0 for the base, whose
  margins are all 0. In bf16 a pair near a tie may fall the other way than in the run's own evaluation,
  whose batches differ (the defaults' HH run: 188 of 296 pairs here, 189 there).

Each side is tokenised as training tokenises it (the run's chat template, max_length, loss on the answer
only). A pair goes when either answer starts past max_length.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.preference import PairItem, collate_pairs, render_pairs
from adapter_studio.engine.data.tokenising import tokenize_rendered
from adapter_studio.engine.evaluation.generation import Tick, batches
from adapter_studio.engine.objectives.logps import row_logps
from adapter_studio.engine.training.fast_loss import causal_lm_parts

if TYPE_CHECKING:
    from adapter_studio.engine.data.shapes import Example
    from adapter_studio.engine.inference.playground import Playground

PAIR_METRICS = {
    "prefers_chosen": "prefers the chosen answer",
    "prefers_chosen_per_token": "prefers the chosen answer, per token",
    "reward_accuracy": "reward accuracy (gained more on the chosen answer than the base)",
}


@dataclass
class PairScores:
    pairs: int  # pairs scored
    skipped: int  # pairs left out: an answer starts past max_length
    base: dict[str, float]  # PAIR_METRICS → share of the pairs
    tuned: dict[str, float]
    margin_base: float  # mean summed log-probability of the chosen answer minus the rejected one
    margin_tuned: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pair_items(playground: Playground, rows: list[Example]) -> tuple[list[PairItem], int]:
    """Each pair with both sides tokenised as the run trained, and how many pairs had to be left out."""
    from adapter_studio.engine.defaults import DEFAULT_MAX_LENGTH

    renderer, tokenizer = playground.renderer, playground.tokenizer
    max_length = playground.spec.data.max_length or DEFAULT_MAX_LENGTH
    items, skipped = [], 0
    for e in rows:
        sides, _, _ = tokenize_rendered(render_pairs([e], renderer), tokenizer, max_length,
                                        not renderer.use_chat_template)  # fmt: skip
        if len(sides) < 2:
            skipped += 1
            continue
        chosen, rejected = sides
        items.append(PairItem(chosen.input_ids + rejected.input_ids, chosen.labels + rejected.labels, e.row,
                              len(chosen.input_ids)))  # fmt: skip
    return items, skipped


def pair_steps(rows: list[Example]) -> int:
    """Rows of work `score_pairs` reports through `tick`: every pair, once per model."""
    return 2 * len(rows)


def score_pairs(playground: Playground, rows: list[Example], batch_size: int, tick: Tick,
                stop: threading.Event | None = None) -> PairScores | None:  # fmt: skip
    """The three shares for base and tuned over `rows` (preference pairs); None when no pair fits."""
    import torch

    items, skipped = pair_items(playground, rows)
    tick(2 * skipped)  # nothing to score in them: done
    if not items:
        return None
    pad_id = playground.pad_token_id()
    sums: dict[str, Any] = {}
    per_token: dict[str, Any] = {}
    for which in ("base", "tuned"):
        done_sums, done_means = [], []
        with playground.using(which) as model, torch.no_grad():  # type: ignore[arg-type]
            parts = causal_lm_parts(model)  # as training reads pairs: answer positions only, prompts once
            for batch in batches(len(items), max(1, batch_size // 2), stop):
                chosen = [items[i] for i in batch]
                inputs = {k: v.to(playground.device) for k, v in collate_pairs(chosen, pad_id).items()}
                logps, counts = row_logps(model, parts, inputs)
                n = len(chosen)
                done_sums.append(torch.stack([logps[:n], logps[n:]], dim=1).float().cpu())
                done_means.append(done_sums[-1] / torch.stack([counts[:n], counts[n:]], dim=1).float().cpu())
                tick(n)
        sums[which], per_token[which] = torch.cat(done_sums), torch.cat(done_means)
    margins = {k: v[:, 0] - v[:, 1] for k, v in sums.items()}
    rewards = {k: margins[k] - margins["base"] for k in margins}

    def shares(which: str) -> dict[str, float]:
        return {
            "prefers_chosen": float((margins[which] > 0).float().mean()),
            "prefers_chosen_per_token": float((per_token[which][:, 0] > per_token[which][:, 1]).float().mean()),
            "reward_accuracy": float((rewards[which] > 0).float().mean()),
        }

    margin_base, margin_tuned = float(margins["base"].mean()), float(margins["tuned"].mean())
    return PairScores(pairs=len(items), skipped=skipped, base=shares("base"), tuned=shares("tuned"),
                      margin_base=margin_base, margin_tuned=margin_tuned)  # fmt: skip


def summary(scores: PairScores, strong: Callable[[str], str] = str) -> str:
    """One sentence for the command line and the Evaluate page (which passes `strong` to set the tuned
    model's two main figures in bold)."""
    b, t = scores.base, scores.tuned
    left_out = f" ({scores.skipped} left out: an answer starts past max_length)" if scores.skipped else ""
    per_token = "prefers_chosen_per_token"
    prefers, accuracy = strong(f"{t['prefers_chosen']:.3f}"), strong(f"{t['reward_accuracy']:.3f}")
    return (f"preference pairs: {scores.pairs} scored{left_out}; the chosen answer preferred by the base "
            f"{b['prefers_chosen']:.3f} -> tuned {prefers} (per token {b[per_token]:.3f} -> {t[per_token]:.3f}); "
            f"reward accuracy {accuracy} (training's preference accuracy, here in float32: a near-tie may fall "
            f"the other way); mean log-probability margin {scores.margin_base:+.2f} -> "
            f"{scores.margin_tuned:+.2f}")  # fmt: skip
