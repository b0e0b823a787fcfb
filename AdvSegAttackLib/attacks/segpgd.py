"""SegPGD (Gu et al., "SegPGD: an effective and efficient adversarial attack for evaluating and boosting
segmentation robustness", ECCV 2022): PGD whose per-voxel cross-entropy is split between the voxels the model
still gets right and those it already gets wrong, with a weight that moves to the wrong ones over the steps.

Step t of T (1-based) weights each voxel's CE by 1 − λ_t where the current prediction (argmax of the window's
logits) equals the target and by λ_t where it does not, λ_t = (t − 1)/(2T) (the paper's schedule: all effort
on the correct voxels first, an even split at the end). Targeted (organ removal, toward target'): the weights
swap, as in the CosPGD authors' public SegPGD, so the voxels not yet at target' count most. The CE stays
divided by the number of voxels (the paper's 1/N), the Dice term of the objective is unchanged, and the rest
is PGD: uniform random start in [−ε, ε], sign steps of α, projection to the ε-ball and [0, 1].

The BMVC 2024 benchmark of volumetric segmentation robustness (Malik et al., code
`HashmatShadab/Robustness-of-Volumetric-Medical-Segmentation-Models`, `attacks/segpgd_orig.py`) fixed λ = 1
(a Dice loss over the wrong voxels only), which is not the paper's schedule; this follows the paper.
"""

from __future__ import annotations

import torch

from .gradient import SignGradient
from .objective import VoxelWeights


def segpgd_lambda(step: int, steps: int) -> float:
    """λ_t = (t − 1)/(2T) for step t of T (1-based): 0 at the first step, just under 1/2 at the last."""
    return (step - 1) / (2.0 * steps)


class SegPGD(SignGradient):
    """PGD with SegPGD's correct/wrong voxel weighting of the cross-entropy (λ_t = (t − 1)/(2T))."""

    name = "segpgd"
    random_start = True

    def _voxel_weights(self, step: int, targeted: bool) -> VoxelWeights:
        lam = segpgd_lambda(step, self.config.steps)
        correct_weight, wrong_weight = (lam, 1.0 - lam) if targeted else (1.0 - lam, lam)

        def weights(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            correct = logits.argmax(dim=1, keepdim=True) == target
            return torch.where(correct, correct_weight, wrong_weight).to(logits.dtype)

        return weights
