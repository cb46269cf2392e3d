"""Training objectives: supervised (today's) and the preference objectives, found by their `name` tag."""

from __future__ import annotations

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.objectives.base import SFT, ObjectiveSpec, PairLogps, PairLoss
from adapter_studio.engine.objectives.pairwise import DPO, IPO, KTO, ORPO, SimPO

# Picker order: supervised first, then DPO and its relatives.
OBJECTIVE_CLASSES: tuple[type[ObjectiveSpec], ...] = (SFT, DPO, IPO, SimPO, ORPO, KTO)
OBJECTIVES: dict[str, type[ObjectiveSpec]] = {cls.model_fields["name"].default: cls for cls in OBJECTIVE_CLASSES}


def objective_for(fmt: str) -> type[ObjectiveSpec]:
    """The first objective in picker order that trains on data of this format: preference pairs → DPO,
    KTO's marked answers → KTO, any other data → supervised."""
    return next(cls for cls in OBJECTIVE_CLASSES if cls.trains_on(fmt))


def objective_class(name: str) -> type[ObjectiveSpec]:
    try:
        return OBJECTIVES[name]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(name, OBJECTIVES, n=3)
        hint = f"did you mean {', '.join(near)}?" if near else f"known objectives: {', '.join(OBJECTIVES)}"
        raise UserError(f"unknown objective '{name}'", where="objective.name", fix=hint) from None


__all__ = [
    "OBJECTIVES", "OBJECTIVE_CLASSES", "ObjectiveSpec", "PairLogps", "PairLoss", "objective_class", "objective_for",
]  # fmt: skip
