"""The answers' log-probabilities of a batch of pairs, from the policy and from the reference.

The policy's summed answer log-probabilities come from one forward over the 2·B rows (chosen rows,
then rejected ones); with a decoder and head that allow it (training.fast_loss), only the answer
positions are projected onto the vocabulary. The reference is the same model with its adapter
switched off (peft's `disable_adapter()`, no second copy in memory), or, for methods that change the
base weights themselves, a frozen copy made before the method was applied (`frozen_reference`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapter_studio.engine.objectives.base import ObjectiveSpec, PairLogps

if TYPE_CHECKING:
    import torch


def row_logps(model: Any, parts: tuple[Any, Any] | None, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(summed log-probability of each row's labelled tokens, their count), both float32, shape rows."""
    import torch

    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    targets = labels[:, 1:]
    keep = targets != -100
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits = logits[:, -ids.shape[1] :][:, :-1][keep]  # prompt-learning methods put virtual tokens first
    logits = logits.float()
    picked = logits.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(ids.shape[0], dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)
    return sums, keep.sum(dim=1).to(picked.dtype)


def is_adapter_model(model: Any) -> bool:
    """Whether the base is the model with its adapter switched off (a peft model)."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def frozen_reference(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the model before training, for methods that train the base weights themselves."""
    import copy

    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def pair_logps(
    objective: ObjectiveSpec,
    model: Any,
    parts: tuple[Any, Any] | None,
    batch: dict[str, Any],
    reference: tuple[Any, tuple[Any, Any] | None] | None = None,
) -> PairLogps:
    """The batch's PairLogps for `objective`: the policy's, and the reference's when it needs them.

    `reference` is (frozen model, its decoder and head) for a copy; None uses `model` with its adapter off.
    """
    import torch

    sums, counts = row_logps(model, parts, batch)
    n = sums.shape[0] // 2
    out = PairLogps(sums[:n], sums[n:], counts[:n], counts[n:])
    if objective.needs_reference:
        with torch.no_grad():
            if reference is None:
                inner = getattr(model, "module", model)  # a DDP-wrapped model's own
                if not is_adapter_model(inner):
                    raise ValueError("a reference needs an adapter to switch off, or a frozen copy")
                with inner.disable_adapter():
                    ref, _ = row_logps(model, parts, batch)
            else:
                ref, _ = row_logps(reference[0], reference[1], batch)
        out.ref_chosen, out.ref_rejected = ref[:n], ref[n:]
    out.desirable = batch.get("desirable")  # KTO's flags (its batches carry them)
    if objective.name == "orpo":  # the supervised part: mean next-token loss over the chosen answers' tokens
        out.chosen_nll = -sums[:n].sum() / counts[:n].sum().clamp(min=1)
    return out
