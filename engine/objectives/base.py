"""The declaration every training objective makes, once: its fields, its facts, and its loss.

An objective is a pydantic model with a `name: Literal[...]` tag, like a method: its fields (with
description, bounds, defaults) are the spec's `objective` section, the CLI's `--set objective.beta=…`
and the window's form. `sft` is today's behaviour (next-token loss on the answer, or the
classifier's loss); the preference objectives (`engine.objectives.pairwise`) train on preference
pairs, or KTO on single answers marked desirable or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from adapter_studio.engine.errors import UserError
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

PREFERENCE_FORMATS = ("preference", "kto")


@dataclass
class PairLogps:
    """Per-pair answer log-probabilities of one batch (shape: pairs), and what the losses need besides."""

    chosen: torch.Tensor  # the policy's, summed over the answer tokens
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # answer tokens per row (float), for the length-normalised objectives
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None  # the reference's, summed; None for reference-free objectives
    ref_rejected: torch.Tensor | None = None
    chosen_nll: torch.Tensor | None = None  # mean next-token loss over the chosen answers' tokens (ORPO)
    # KTO: `chosen` holds the rows' own completions, `rejected` the mismatched rows' (its KL estimate),
    # and this which rows are desirable.
    desirable: torch.Tensor | None = None


@dataclass
class PairLoss:
    """The batch's loss and the per-pair rewards that the metrics report."""

    loss: torch.Tensor
    rewards_chosen: torch.Tensor
    rewards_rejected: torch.Tensor


class ObjectiveSpec(BaseModel):
    """Base of all objectives. Subclasses declare `name: Literal["..."]` and their fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str

    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    pairwise: ClassVar[bool] = False  # a preference objective (pairs, or KTO's marked completions)
    paired: ClassVar[bool] = True  # its rewards come in pairs (preference accuracy is defined)
    needs_reference: ClassVar[bool] = False  # compares with the model before training
    data_formats: ClassVar[tuple[str, ...]] = ()  # formats it trains on; empty: every non-preference one

    @classmethod
    def summary(cls) -> dict[str, Any]:
        return {
            "name": cls.model_fields["name"].default,
            "title": cls.title,
            "description": cls.description,
            "pairwise": cls.pairwise,
            "needs_reference": cls.needs_reference,
            "fields": [n for n in cls.model_fields if n != "name"],
        }

    @classmethod
    def trains_on(cls, fmt: str) -> bool:
        """Whether this objective can train on data of this format (`check_data` says why not)."""
        return fmt in cls.data_formats if cls.pairwise else fmt not in PREFERENCE_FORMATS

    def check_data(self, fmt: str) -> None:
        """Raise UserError when this objective cannot train on data of this format."""
        if self.trains_on(fmt):
            return
        if self.pairwise:
            wanted = {
                "preference": ("preference pairs", "prompt, chosen and rejected columns, or two answers and a "
                               "column saying which is better (data.format: preference)"),
                "kto": ("answers marked desirable or not", "prompt, completion and label columns (data.format: kto)"),
            }[self.data_formats[0]]
            raise UserError(
                f"{self.title} trains on {wanted[0]}, but the data is in the {fmt} format",
                where="objective.name",
                fix=f"use a file with {wanted[1]}, or set objective.name: sft",
            )
        what, names = ("preference data (chosen and rejected answers)", "dpo, ipo, simpo or orpo")
        if fmt == "kto":
            what, names = "KTO data (answers marked desirable or not)", "kto"
        raise UserError(f"{what} needs a preference objective", where="objective.name",
                        fix=f"set objective.name to {names}")  # fmt: skip

    def pair_loss(self, logps: PairLogps) -> PairLoss:
        raise NotImplementedError


class SFT(ObjectiveSpec):
    name: Literal["sft"] = "sft"
    title: ClassVar[str] = "Supervised"
    description: ClassVar[str] = (
        "Learn to write the answers in the data (next-token loss on the answer tokens); a classifier "
        "learns its labels. The usual choice; the preference objectives below train on pairs of answers."
    )
