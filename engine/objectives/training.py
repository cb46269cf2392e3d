"""A preference objective inside a run: the loss of a batch of pairs with the statistics the metrics
report, and evaluation on the held-out pairs (loss, rewards, margin, preference accuracy)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from adapter_studio.engine.objectives.base import ObjectiveSpec
from adapter_studio.engine.objectives.logps import pair_logps, reference_logps

Reference = tuple[Any, tuple[Any, Any] | None] | None


def pair_step(
    objective: ObjectiveSpec, model: Any, parts: tuple[Any, Any] | None, batch: dict[str, Any], reference: Reference
) -> tuple[Any, tuple[Any, Any]]:
    """(the batch's loss, its detached rewards: (of the chosen or desirable answers, of the others))."""
    result = objective.pair_loss(pair_logps(objective, model, parts, batch, reference))
    return result.loss, (result.rewards_chosen.float(), result.rewards_rejected.float())


def summarise(stats: Sequence[tuple[Any, Any]], paired: bool = True) -> dict[str, float | None]:
    """Means of a list of `pair_step` rewards (one host sync); accuracy only where rewards come in pairs."""
    import torch

    chosen = torch.cat([c for c, _ in stats]).cpu()
    rejected = torch.cat([r for _, r in stats]).cpu()
    mean_chosen = float(chosen.mean()) if len(chosen) else None
    mean_rejected = float(rejected.mean()) if len(rejected) else None
    both = mean_chosen is not None and mean_rejected is not None
    return {
        "rewards_chosen": mean_chosen,
        "rewards_rejected": mean_rejected,
        "reward_margin": mean_chosen - mean_rejected if both else None,  # type: ignore[operator]
        "preference_accuracy": float((chosen > rejected).float().mean()) if paired and len(chosen) else None,
    }


def reference_table(
    model: Any,
    parts: tuple[Any, Any] | None,
    pairs: Sequence[Any],
    *,
    batch_size: int,
    pad_id: int,
    autocast: Callable[[], AbstractContextManager[Any]],
    device: Any,
    reference: Reference = None,
) -> Any:
    """Every pair's reference answer log-probabilities, shape (pairs, 2): chosen, rejected (float32, on
    `device`), in one pass without gradients, for objective.precompute_reference."""
    import torch
    from adapter_studio.engine.data.batches import collate

    was_training = model.training
    model.eval()
    rows = []
    for i in range(0, len(pairs), batch_size):
        items = [pairs[j] for j in range(i, min(i + batch_size, len(pairs)))]
        batch = {k: v.to(device) for k, v in collate(items, pad_id, False).items()}
        with autocast():
            ref = reference_logps(model, parts, batch, reference).float()
        rows.append(torch.stack([ref[: len(items)], ref[len(items) :]], dim=1))
    model.train(was_training)
    return torch.cat(rows) if rows else torch.zeros((0, 2), device=device)


def with_reference(batch: dict[str, Any], table: Any, indices: Sequence[int]) -> dict[str, Any]:
    """The batch with its pairs' precomputed reference log-probabilities, in its rows' order (chosen, then
    rejected)."""
    import torch

    picked = table[torch.as_tensor(list(indices), device=table.device)]
    return {**batch, "ref_logps": torch.cat([picked[:, 0], picked[:, 1]])}


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
    table: Any = None,
) -> dict[str, float | None]:
    """The objective's loss (weighted by pairs) and the reward statistics over the held-out pairs;
    `table`: their precomputed reference log-probabilities (`reference_table`), if any."""
    import torch
    from adapter_studio.engine.data.batches import collate

    model.eval()
    total, count, stats = 0.0, 0, []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            items = pairs[i : i + batch_size]
            batch = {k: v.to(device) for k, v in collate(items, pad_id, False).items()}
            if table is not None:
                batch = with_reference(batch, table, range(i, i + len(items)))
            with autocast():
                loss, stat = pair_step(objective, model, parts, batch, reference)
            total += float(loss) * len(items)
            count += len(items)
            stats.append(stat)
    return {"eval_loss": total / max(count, 1), **summarise(stats, objective.paired)}


def progress_text(event: Any) -> str:
    """A preference run's reward margin and preference accuracy for a progress line ('' for other runs)."""
    margin = getattr(event, "reward_margin", None)
    return "" if margin is None else f" margin {margin:.3f} pref_acc {event.preference_accuracy:.3f}"
