"""Telling a run that diverged from one that is merely noisy, so it stops with a message instead of
training on to a useless model (issue 21: LoRA at lr 2e-3 and batch 4 ended at chance, 0.509, silently).

Judged on the median of the last WINDOW training losses (a few outlier batches do not move it):
  - rising: it stays above both RISE × the first window's and BEST_RISE × the best so far;
  - collapsed (classification): after the model learnt something (best below LEARNT × the loss of
    guessing the label frequencies), it is back at that guessing loss.
Rising must hold for WINDOW steps in a row (a spike that recovers is noise), collapsed for COLLAPSED_STEPS
(a hard task can hover near guessing for a while). MiniLM on AG News at lr 4.6e-3, batch 16: the median
fell to 0.84 × guessing, then sat at 1.0-1.07 × for the last 150 of 226 steps and ended at chance (0.248).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from collections.abc import Iterable

WINDOW = 10
RISE = 1.5
BEST_RISE = 2.0
LEARNT = 0.9
AT_CHANCE = 0.95
COLLAPSED_STEPS = 3 * WINDOW


def guessing_loss(labels: Iterable[int]) -> float | None:
    """Cross-entropy of always predicting the label frequencies (the entropy of the labels)."""
    counts = Counter(labels)
    total = sum(counts.values())
    if len(counts) < 2:
        return None
    return -sum(c / total * math.log(c / total) for c in counts.values())


class DivergenceWatch:
    """Feed each logged training loss to `add`; it returns a message once the run has diverged."""

    def __init__(self, chance: float | None = None) -> None:
        self.chance = chance
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.start: float | None = None
        self.best = math.inf
        self.rising_for = self.collapsed_for = 0

    def add(self, loss: float) -> str | None:
        self.recent.append(loss)
        if len(self.recent) < WINDOW:
            return None
        level = statistics.median(self.recent)
        if self.start is None:
            self.start = level
        self.best = min(self.best, level)
        rising = level > RISE * self.start and level > BEST_RISE * self.best
        collapsed = (self.chance is not None and self.best < LEARNT * self.chance
                     and level >= AT_CHANCE * self.chance)  # fmt: skip
        self.rising_for = self.rising_for + 1 if rising else 0
        self.collapsed_for = self.collapsed_for + 1 if collapsed else 0
        if self.rising_for >= WINDOW:
            return f"the loss rose from {self.start:.3g} to {level:.3g} (its best was {self.best:.3g})"
        if self.collapsed_for >= COLLAPSED_STEPS:
            return (f"the loss went back up to {level:.3g}, what guessing the label frequencies scores "
                    f"({self.chance:.3g}), after reaching {self.best:.3g}: the model stopped learning")  # fmt: skip
        return None
