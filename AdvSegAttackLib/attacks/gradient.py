"""Voxel-space L∞ baselines as used by the SAA/VAFA papers: FGSM, BIM, PGD (sign-gradient ascent on DiceCE).

ε is given as k/255 of the [0, 1] model intensity (4 → 4/255 ≈ 6.7 HU on a −175…250 HU window); α is in
[0, 1] units as is (0.01 ≈ 2.55/255). After every step δ is projected to [−ε, ε] and x + δ to [0, 1].
FGSM: one step of size ε. BIM: `steps` steps of α from x. PGD: the same from a uniform random start in
[−ε, ε] (seeded). As published, except: the windows are the evaluation's sliding windows over the whole
volume, targeted mode is organ removal (see objective.py), and a region confines δ.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import AttackContext, ModelSpaceAttack
from .objective import VoxelWeights


class SignGradient(ModelSpaceAttack):
    """L∞ sign-gradient ascent on the objective; subclasses choose the start, the step and per-voxel weights."""

    random_start = False

    def _step_size(self) -> float:
        return self.config.alpha

    def _voxel_weights(self, step: int, targeted: bool) -> VoxelWeights | None:
        """The per-voxel CE weights of step `step` (1-based; see objective.py), None for the plain DiceCE."""
        return None

    def _run(self, ctx: AttackContext) -> tuple[torch.Tensor, dict[str, Any]]:
        eps = self.config.eps / 255.0
        step_size = self._step_size()
        x = ctx.image
        if self.random_start:
            adversarial = ctx.restrict((x + ctx.uniform(x.shape, -eps, eps)).clamp_(0.0, 1.0))
        else:
            adversarial = x.clone()
        for step in range(1, self.steps() + 1):
            weights = self._voxel_weights(step, ctx.objective.targeted)
            _, grad = ctx.objective.value_and_grad(adversarial, voxel_weights=weights)
            with torch.no_grad():
                adversarial.add_(grad.sign_(), alpha=step_size)
                adversarial.sub_(x).clamp_(-eps, eps).add_(x).clamp_(0.0, 1.0)
                adversarial = ctx.restrict(adversarial)
            ctx.report(step, ctx.objective.last_loss, adversarial=adversarial)
        return adversarial, {"eps": eps}


class FGSM(SignGradient):
    """Fast gradient sign method: x + ε·sign ∇, one step."""

    name = "fgsm"

    def _step_size(self) -> float:
        return self.config.eps / 255.0


class BIM(SignGradient):
    """Basic iterative method: FGSM steps of α, projected to the ε-ball and [0, 1]."""

    name = "bim"


class PGD(SignGradient):
    """Projected gradient descent (ascent): BIM from a uniform random start in [−ε, ε]."""

    name = "pgd"
    random_start = True
