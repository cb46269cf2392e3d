"""The answers' log-probabilities of a batch of pairs, from the policy and from the reference.

The policy's summed answer log-probabilities come from one forward over the 2·B rows (chosen rows,
then rejected ones); with a decoder and head that allow it (training.fast_loss), only the answer
positions are projected onto the vocabulary, and each prompt is read once for both of its answers
(`shared_row_logps`: the prompt's keys and values are computed once, copied for the two answers, and
the answers are read after them; gradients flow through both). On the HH pairs, whose prompts are
about three times their answers, that is 240 positions per pair instead of 390 (batches whose padding
would eat the saving are read whole: engine.data.preference.shared_prefix_rows). The reference is the
same model with its adapter switched off (peft's `disable_adapter()`, no second copy in memory), or,
for methods that change the base weights themselves, a frozen copy made before the method was applied
(`frozen_reference`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapter_studio.engine.objectives.base import ObjectiveSpec, PairLogps

if TYPE_CHECKING:
    import torch


def row_logps(model: Any, parts: tuple[Any, Any] | None, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(summed log-probability of each row's labelled tokens, their count), both float32, shape rows."""
    if parts is not None and can_share_prompts(parts, batch):
        return shared_row_logps(parts, batch)
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
    return _labelled_logps(logits, targets)


def can_share_prompts(parts: tuple[Any, Any] | None, batch: dict[str, Any]) -> bool:
    """Whether the batch may be read as shared prompts: a decoder we call directly, a batch that carries
    the layout, and no gradient checkpointing while training (it turns the key/value cache off)."""
    import torch

    if parts is None or "prefix_ids" not in batch:
        return False
    decoder = parts[0]
    name = next((n for n in ("is_activation_checkpointing", "is_gradient_checkpointing") if hasattr(type(decoder), n)),
                None)  # fmt: skip  # the newer name first: the older one warns
    return not (torch.is_grad_enabled() and name is not None and getattr(decoder, name))


def shared_row_logps(parts: tuple[Any, Any], batch: dict[str, Any]) -> tuple[Any, Any]:
    """`row_logps` of the 2·B rows (chosen first, then rejected), reading each pair's prompt once."""
    import torch

    decoder, head = parts
    prefix_mask, suffix_mask = batch["prefix_mask"], batch["suffix_mask"]
    lengths = prefix_mask.sum(dim=1)
    prompt = decoder(input_ids=batch["prefix_ids"], attention_mask=prefix_mask,
                     position_ids=(prefix_mask.cumsum(dim=1) - 1).clamp(min=0), use_cache=True)  # fmt: skip
    # transformers renames past_key_values to `cache` (5.2x keeps both, 5.40 only the new name).
    cache = prompt.cache if hasattr(prompt, "cache") else prompt.past_key_values
    cache.batch_repeat_interleave(2)  # each prompt's keys and values, for its chosen and its rejected answer
    width = batch["suffix_ids"].shape[1]
    positions = lengths.repeat_interleave(2).unsqueeze(1) + torch.arange(width, device=lengths.device)
    answers = decoder(
        input_ids=batch["suffix_ids"],
        attention_mask=torch.cat([prefix_mask.repeat_interleave(2, dim=0), suffix_mask], dim=1),
        position_ids=positions,
        use_cache=True,
        **{_cache_argument(decoder): cache},
    ).last_hidden_state
    # The prompt's last position predicts each answer's first token; the answer's own positions the rest.
    first = prompt.last_hidden_state[:, -1:].repeat_interleave(2, dim=0)
    states = torch.cat([first, answers[:, :-1]], dim=1)
    targets = batch["suffix_labels"]
    sums, counts = _labelled_logps(head(states[targets != -100]), targets)
    order = torch.arange(sums.shape[0], device=sums.device).view(-1, 2).t().reshape(-1)  # chosen rows, then rejected
    return sums[order], counts[order]


def _cache_argument(decoder: Any) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _labelled_logps(logits: Any, targets: Any) -> tuple[Any, Any]:
    """Per row, the summed log-probability of the labelled `targets` (logits: of those positions only), and
    their count."""
    import torch

    keep = targets != -100
    logits = logits.float()
    picked = logits.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(targets.shape[0], dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)
    return sums, keep.sum(dim=1).to(picked.dtype)


def is_adapter_model(model: Any) -> bool:
    """Whether the base is the model with its adapter switched off (a peft model)."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def keeps_reference_copy(objective: ObjectiveSpec, method: Any) -> bool:
    """Whether a run compares with a frozen copy of the model: its objective needs the model before
    training and its method changes the base weights (peft methods switch their adapter off instead)."""
    from adapter_studio.engine.methods.peft_base import PeftMethod

    return objective.needs_reference and (not isinstance(method, PeftMethod) or method.changes_base)


def frozen_reference(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the model before training, for methods that train the base weights themselves."""
    import copy

    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def reference_logps(
    model: Any, parts: tuple[Any, Any] | None, batch: dict[str, Any], reference: tuple[Any, Any | None] | None
) -> Any:
    """The reference's summed answer log-probabilities of the batch's rows: `model` with its adapter off,
    or the frozen copy `reference` = (model, its decoder and head)."""
    import torch

    with torch.no_grad():
        if reference is not None:
            return row_logps(reference[0], reference[1], batch)[0]
        inner = getattr(model, "module", model)  # a DDP-wrapped model's own
        if not is_adapter_model(inner):
            raise ValueError("a reference needs an adapter to switch off, or a frozen copy")
        with inner.disable_adapter():
            return row_logps(model, parts, batch)[0]


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
    sums, counts = row_logps(model, parts, batch)
    n = sums.shape[0] // 2
    out = PairLogps(sums[:n], sums[n:], counts[:n], counts[n:])
    if objective.needs_reference:
        # `ref_logps`: computed once before training (objective.precompute_reference), in the rows' order.
        ref = batch["ref_logps"] if "ref_logps" in batch else reference_logps(model, parts, batch, reference)
        out.ref_chosen, out.ref_rejected = ref[:n], ref[n:]
    out.desirable = batch.get("desirable")  # KTO's flags (its batches carry them)
    if objective.name == "orpo":  # the supervised part: mean next-token loss over the chosen answers' tokens
        out.chosen_nll = -sums[:n].sum() / counts[:n].sum().clamp(min=1)
    return out
