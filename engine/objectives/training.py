"""A preference objective inside a run: the loss of a batch of pairs with the statistics the metrics
report, and evaluation on the held-out pairs (loss, rewards, margin, preference accuracy)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from adapter_studio.engine.objectives.base import ObjectiveSpec
from adapter_studio.engine.objectives.logps import pair_logps

Reference = tuple[Any, tuple[Any, Any] | None] | None


def pair_step(
    objective: ObjectiveSpec, model: Any, parts: tuple[Any, Any] | None, batch: dict[str, Any], reference: Reference
) -> tuple[Any, Any]:
    """(the batch's loss, its detached per-pair statistics: rows of rewards chosen, rejected)."""
    import torch

    result = objective.pair_loss(pair_logps(objective, model, parts, batch, reference))
    return result.loss, torch.stack([result.rewards_chosen, result.rewards_rejected]).float()


def summarise(stats: Sequence[Any]) -> dict[str, float]:
    """Means over the pairs of a list of `pair_step` statistics (one host sync)."""
    import torch

    both = torch.cat(list(stats), dim=1).cpu()
    chosen, rejected = both[0], both[1]
    return {
        "rewards_chosen": float(chosen.mean()),
        "rewards_rejected": float(rejected.mean()),
        "reward_margin": float((chosen - rejected).mean()),
        "preference_accuracy": float((chosen > rejected).float().mean()),
    }


def evaluate_pairs(
    objective: ObjectiveSpec,
    model: Any,
    parts: tuple[Any, Any] | None,
    pairs: Sequence[Any],
    *,
    batch_size: int,
    pad_id: int,
    autocast: Callable[[], AbstractContextManager[Any]],
    device: Any,
    reference: Reference = None,
) -> dict[str, float]:
    """The objective's loss (weighted by pairs) and the reward statistics over the held-out pairs."""
    import torch
    from adapter_studio.engine.data.preference import collate_pairs

    model.eval()
    total, count, stats = 0.0, 0, []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            items = pairs[i : i + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs(items, pad_id).items()}
            with autocast():
                loss, stat = pair_step(objective, model, parts, batch, reference)
            total += float(loss) * len(items)
            count += len(items)
            stats.append(stat)
    return {"eval_loss": total / max(count, 1), **summarise(stats)}


def progress_text(event: Any) -> str:
    """A preference run's reward margin and preference accuracy for a progress line ('' for other runs)."""
    margin = getattr(event, "reward_margin", None)
    return "" if margin is None else f" margin {margin:.3f} pref_acc {event.preference_accuracy:.3f}"
