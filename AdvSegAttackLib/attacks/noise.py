"""Gaussian noise baseline: x + σ·N(0, 1), clamped to [0, 1] (σ given as k/255); needs no model gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import Attack, AttackConfig, AttackContext, is_number, option, register, require


@dataclass
class GaussianNoiseConfig(AttackConfig):
    """Gaussian-noise parameters."""

    std: float = option(4.0, "--std", "k/255 of the [0, 1] model intensity", "noise standard deviation")

    def __post_init__(self) -> None:
        require(
            is_number(self.std) and 0 < self.std <= 255,
            f"--std must be in (0, 255] (units of 1/255), got {self.std!r}.",
        )


@register
class GaussianNoise(Attack):
    """x + σ·N(0, 1), seeded; the reported loss is the DiceCE of the result (forward passes only)."""

    name = "gn"
    Config = GaussianNoiseConfig
    needs_gradient = False

    def _run(self, ctx: AttackContext) -> tuple[torch.Tensor, dict[str, Any]]:
        std = self.config.std / 255.0
        noisy = (ctx.image + std * ctx.normal(ctx.image.shape)).clamp_(0.0, 1.0)
        adversarial = ctx.restrict(noisy)
        ctx.objective.value(adversarial)
        ctx.report(1, ctx.objective.last_loss, adversarial=adversarial)
        return adversarial, {"std": std}
