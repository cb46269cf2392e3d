"""A preference objective inside a run: the loss of a batch of pairs with the statistics the metrics
report, and evaluation on the held-out pairs (loss, rewards, margin, preference accuracy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from adapter_studio.engine.objectives.base import ObjectiveSpec
from adapter_studio.engine.objectives.logps import pair_logps, reference_logps

Reference = tuple[Any, tuple[Any, Any] | None] | None


def disable_dropout(model: Any) -> int:
    """Every dropout layer of `model` (the adapter's own, such as LoRA's, included) set to drop nothing, as
    TRL's preference trainers do by default (`disable_dropout`); how many there were."""
    from torch import nn

    layers = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    for layer in layers:
        layer.p = 0.0
    return len(layers)


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


@dataclass
class PairPass:
    """How a pass over a set of pairs without gradients runs: the model (with its decoder and head when the
    loss may skip unlabelled positions), batch size, padding id, autocast, device, and the reference."""

    model: Any
    parts: tuple[Any, Any] | None
    batch_size: int
    pad_id: int
    autocast: Callable[[], AbstractContextManager[Any]]
    device: Any
    reference: Reference = None

    def batches(self, pairs: Sequence[Any]) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(first index, pairs, batch on the device) for each batch of `pairs`, in order."""
        from adapter_studio.engine.data.batches import collate

        for i in range(0, len(pairs), self.batch_size):
            items = [pairs[j] for j in range(i, min(i + self.batch_size, len(pairs)))]
            yield i, len(items), {k: v.to(self.device) for k, v in collate(items, self.pad_id, False).items()}


def reference_table(run: PairPass, pairs: Sequence[Any]) -> Any:
    """Every pair's reference answer log-probabilities, shape (pairs, 2): chosen, rejected (float32, on the
    device), in one pass without gradients, for objective.precompute_reference."""
    import torch

    was_training = run.model.training
    run.model.eval()
    rows = []
    for _, n, batch in run.batches(pairs):
        with run.autocast():
            ref = reference_logps(run.model, run.parts, batch, run.reference).float()
        rows.append(torch.stack([ref[:n], ref[n:]], dim=1))
    run.model.train(was_training)
    return torch.cat(rows) if rows else torch.zeros((0, 2), device=run.device)


def with_reference(batch: dict[str, Any], table: Any, indices: Sequence[int]) -> dict[str, Any]:
    """The batch with its pairs' precomputed reference log-probabilities, in its rows' order (chosen, then
    rejected)."""
    import torch

    picked = table[torch.as_tensor(list(indices), device=table.device)]
    return {**batch, "ref_logps": torch.cat([picked[:, 0], picked[:, 1]])}


def evaluate_pairs(objective: ObjectiveSpec, run: PairPass, pairs: Sequence[Any], table: Any = None,
                   stopped: Callable[[], bool] | None = None) -> dict[str, float | None]:  # fmt: skip
    """The objective's loss (weighted by pairs) and the reward statistics over the held-out pairs;
    `table`: their precomputed reference log-probabilities (`reference_table`), if any; `stopped`: asked
    between batches (training.evaluation.EvaluationStopped)."""
    import torch
    from adapter_studio.engine.training.evaluation import check_stop

    run.model.eval()
    total, count, stats = 0.0, 0, []
    with torch.no_grad():
        for i, n, batch in run.batches(pairs):
            check_stop(stopped)
            if table is not None:
                batch = with_reference(batch, table, range(i, i + n))
            with run.autocast():
                loss, stat = pair_step(objective, run.model, run.parts, batch, run.reference)
            total += float(loss) * n
            count += n
            stats.append(stat)
    return {"eval_loss": total / max(count, 1), **summarise(stats, objective.paired)}


def progress_text(event: Any) -> str:
    """A preference run's reward margin and preference accuracy for a progress line ('' for other runs)."""
    margin = getattr(event, "reward_margin", None)
    if margin is None:
        return ""
    accuracy = getattr(event, "preference_accuracy", None)  # None for KTO: its answers come unpaired
    return f" margin {margin:.3f}" + ("" if accuracy is None else f" pref_acc {accuracy:.3f}")
