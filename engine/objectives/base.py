"""The declaration every training objective makes, once: its fields, its facts, and its loss.

An objective is a pydantic model with a `name: Literal[...]` tag, like a method: its fields (with
description, bounds, defaults) are the spec's `objective` section, the CLI's `--set objective.beta=…`
and the window's form. `sft` is today's behaviour (next-token loss on the answer, or the
classifier's loss); the pairwise objectives train on preference pairs (`engine.objectives.pairwise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from adapter_studio.engine.errors import UserError
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

PREFERENCE_FORMATS = ("preference",)


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
    pairwise: ClassVar[bool] = False  # trains on preference pairs
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

    def check_data(self, fmt: str) -> None:
        """Raise UserError when this objective cannot train on data of this format."""
        preference = fmt in PREFERENCE_FORMATS
        if self.pairwise and not preference:
            raise UserError(
                f"{self.title} trains on preference pairs, but the data is in the {fmt} format",
                where="objective.name",
                fix="use a file with prompt, chosen and rejected columns (data.format: preference), "
                "or set objective.name: sft",
            )
        if not self.pairwise and preference:
            raise UserError(
                "preference data (chosen and rejected answers) needs a preference objective",
                where="objective.name",
                fix="set objective.name to dpo, ipo, simpo or orpo",
            )

    def pair_loss(self, logps: PairLogps) -> PairLoss:
        raise NotImplementedError


class SFT(ObjectiveSpec):
    name: Literal["sft"] = "sft"
    title: ClassVar[str] = "Supervised"
    description: ClassVar[str] = (
        "Learn to write the answers in the data (next-token loss on the answer tokens); a classifier "
        "learns its labels. Today's training."
    )


class KTO(ObjectiveSpec):
    """Declared so that a spec naming it gets a clear refusal, not an 'unknown objective'."""

    name: Literal["kto"] = "kto"
    title: ClassVar[str] = "KTO (not built yet)"
    description: ClassVar[str] = "Kahneman-Tversky optimisation on single answers marked desirable or not."
    beta: float = Field(0.1, gt=0, le=10.0, description="How far the tuned model may move from the reference.")
    desirable_weight: float = Field(1.0, gt=0, le=100.0, description="Weight of the desirable answers' loss.")
    undesirable_weight: float = Field(1.0, gt=0, le=100.0, description="Weight of the undesirable answers' loss.")

    def check_data(self, fmt: str) -> None:
        raise UserError(
            "the KTO objective is not built yet",
            where="objective.name",
            fix="use dpo, ipo, simpo or orpo on preference pairs (prompt, chosen, rejected)",
        )
