"""The preference objectives: DPO, IPO, SimPO, ORPO (on pairs) and KTO (on marked answers), each with
the loss of its paper as TRL 1.16 computes it (tests/test_objectives.py compares them on the same
batch, to 1e-5 in float32).

Every loss reads per-pair answer log-probabilities (`PairLogps`, summed over the answer tokens; the
length-normalised objectives divide by the answer's token count) and returns the batch's mean loss
with each pair's rewards, which the metrics report (margin: chosen − rejected; accuracy: the share
of pairs whose chosen reward is the higher). KTO's rewards are of desirable and undesirable answers,
not pairs: it reports no accuracy.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from adapter_studio.engine.objectives.base import ObjectiveSpec, PairLogps, PairLoss
from pydantic import Field

BETA = "How far the tuned model may move from the reference: small values let it move further."


def _sigmoid_loss(logits, beta: float, label_smoothing: float):  # type: ignore[no-untyped-def]
    """−log σ(β·x), with conservative label smoothing ε: (1−ε)·that + ε·(−log σ(−β·x)) (cDPO)."""
    import torch.nn.functional as F

    loss = -F.logsigmoid(beta * logits)
    if label_smoothing:
        loss = loss * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return loss


class PairwiseObjective(ObjectiveSpec):
    pairwise: ClassVar[bool] = True
    data_formats: ClassVar[tuple[str, ...]] = ("preference",)

    disable_dropout: bool = Field(
        True,
        description="Turn dropout off in the model while training (TRL's default for preference tuning): the tuned "
        "model's log-probabilities are then compared with the reference's, and chosen with rejected, without noise.",
        json_schema_extra={"advanced": True},
    )


class ReferenceObjective(PairwiseObjective):
    """A pairwise objective that compares with the model before training."""

    needs_reference: ClassVar[bool] = True
    precompute_reference: bool = Field(
        False,
        description="Compute the reference's answer log-probabilities of every pair once, before the first step, "
        "instead of one extra forward pass per step: the steps get faster (clearly so over several epochs), and a "
        "method that changes the base weights needs no frozen copy of the model while training.",
        json_schema_extra={"advanced": True},
    )


class DPO(ReferenceObjective):
    name: Literal["dpo"] = "dpo"
    title: ClassVar[str] = "DPO"
    description: ClassVar[str] = (
        "Direct preference optimisation (Rafailov et al. 2023): raise the chosen answer's likelihood over the "
        "rejected one's, relative to the model before training (the base with the adapter switched off)."
    )
    beta: float = Field(0.1, gt=0, le=10.0, description=BETA)
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="Share of pairs assumed to be labelled the wrong way round (cDPO); 0: none."
    )

    def pair_loss(self, logps: PairLogps) -> PairLoss:
        assert logps.ref_chosen is not None and logps.ref_rejected is not None
        chosen_ratio = logps.chosen - logps.ref_chosen
        rejected_ratio = logps.rejected - logps.ref_rejected
        loss = _sigmoid_loss(chosen_ratio - rejected_ratio, self.beta, self.label_smoothing).mean()
        return PairLoss(loss, self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach())


class IPO(ReferenceObjective):
    name: Literal["ipo"] = "ipo"
    title: ClassVar[str] = "IPO"
    description: ClassVar[str] = (
        "Identity preference optimisation (Azar et al. 2023): a squared loss that pulls the per-token log-ratio "
        "gap towards 1/(2β) instead of pushing it without bound; steadier than DPO on near-deterministic data."
    )
    beta: float = Field(0.1, gt=0, le=10.0, description=BETA + " The target gap is 1/(2β).")

    def pair_loss(self, logps: PairLogps) -> PairLoss:
        assert logps.ref_chosen is not None and logps.ref_rejected is not None
        chosen_ratio = logps.chosen - logps.ref_chosen
        rejected_ratio = logps.rejected - logps.ref_rejected
        # Per answer token, as TRL and the IPO authors do (the squared loss would grow with the length).
        gap = chosen_ratio / logps.chosen_tokens.clamp(min=1) - rejected_ratio / logps.rejected_tokens.clamp(min=1)
        loss = ((gap - 1 / (2 * self.beta)) ** 2).mean()
        return PairLoss(loss, self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach())


class SimPO(PairwiseObjective):
    name: Literal["simpo"] = "simpo"
    title: ClassVar[str] = "SimPO"
    description: ClassVar[str] = (
        "Simple preference optimisation (Meng et al. 2024): the answers' average log-likelihoods with a target "
        "margin, and no reference model (no reference forward: faster)."
    )
    beta: float = Field(2.0, gt=0, le=20.0, description="Scale of the reward (the average log-likelihood).")
    gamma: float = Field(0.5, ge=0.0, le=10.0, description="Target margin between chosen and rejected rewards.")

    def pair_loss(self, logps: PairLogps) -> PairLoss:
        chosen = logps.chosen / logps.chosen_tokens.clamp(min=1)
        rejected = logps.rejected / logps.rejected_tokens.clamp(min=1)
        loss = _sigmoid_loss(chosen - rejected - self.gamma / self.beta, self.beta, 0.0).mean()
        return PairLoss(loss, self.beta * chosen.detach(), self.beta * rejected.detach())


def log1mexp(x):  # type: ignore[no-untyped-def]
    """log(1 − exp(x)) for x < 0, without cancellation (branch at −ln 2, as TRL's)."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPO(PairwiseObjective):
    name: Literal["orpo"] = "orpo"
    title: ClassVar[str] = "ORPO"
    description: ClassVar[str] = (
        "Odds-ratio preference optimisation (Hong et al. 2024): supervised loss on the chosen answers plus β "
        "times an odds-ratio penalty on the rejected ones; no reference model."
    )
    beta: float = Field(0.1, gt=0, le=10.0, description="Weight of the odds-ratio term (λ in the paper).")

    def pair_loss(self, logps: PairLogps) -> PairLoss:
        assert logps.chosen_nll is not None
        chosen = (logps.chosen / logps.chosen_tokens.clamp(min=1)).float()
        rejected = (logps.rejected / logps.rejected_tokens.clamp(min=1)).float()
        import torch.nn.functional as F

        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        loss = logps.chosen_nll - self.beta * F.logsigmoid(log_odds).mean()
        return PairLoss(loss, self.beta * chosen.detach(), self.beta * rejected.detach())


class KTO(PairwiseObjective):
    name: Literal["kto"] = "kto"
    title: ClassVar[str] = "KTO"
    description: ClassVar[str] = (
        "Kahneman-Tversky optimisation (Ethayarajh et al. 2024): single answers marked desirable or not, no pairs "
        "needed; each is pushed above or below a reference point, the batch's estimate of the KL divergence "
        "from the model before training (the base with the adapter switched off)."
    )
    needs_reference: ClassVar[bool] = True
    paired: ClassVar[bool] = False
    data_formats: ClassVar[tuple[str, ...]] = ("kto",)
    beta: float = Field(0.1, gt=0, le=10.0, description=BETA)
    desirable_weight: float = Field(
        1.0, gt=0, le=100.0, description="Weight of the desirable answers' loss (raise it when they are fewer)."
    )
    undesirable_weight: float = Field(1.0, gt=0, le=100.0, description="Weight of the undesirable answers' loss.")

    def pair_loss(self, logps: PairLogps) -> PairLoss:
        import torch

        assert logps.ref_chosen is not None and logps.ref_rejected is not None and logps.desirable is not None
        ratio = logps.chosen - logps.ref_chosen
        # The reference point: the mismatched rows' log-ratio, a batch estimate of KL(policy ‖ reference).
        kl = (logps.rejected - logps.ref_rejected).mean().detach().clamp(min=0)
        good, bad = ratio[logps.desirable], ratio[~logps.desirable]
        losses = torch.cat([
            self.desirable_weight * (1 - torch.sigmoid(self.beta * (good - kl))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - bad))),
        ])  # fmt: skip
        return PairLoss(losses.nanmean(), self.beta * good.detach(), self.beta * bad.detach())
