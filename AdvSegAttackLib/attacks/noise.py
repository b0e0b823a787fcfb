"""Gaussian noise baseline: x + σ·N(0, 1), clamped to [0, 1] (σ given as k/255); needs no model gradient."""

from __future__ import annotations

from typing import Any

import torch

from .base import AttackContext, ModelSpaceAttack


class GaussianNoise(ModelSpaceAttack):
    """x + σ·N(0, 1), seeded; the reported loss is the DiceCE of the result (forward passes only)."""

    name = "gn"

    def _run(self, ctx: AttackContext) -> tuple[torch.Tensor, dict[str, Any]]:
        std = self.config.std / 255.0
        noisy = (ctx.image + std * ctx.normal(ctx.image.shape)).clamp_(0.0, 1.0)
        adversarial = ctx.restrict(noisy)
        ctx.objective.value(adversarial)
        ctx.report(1, ctx.objective.last_loss, adversarial=adversarial)
        return adversarial, {"std": std}
