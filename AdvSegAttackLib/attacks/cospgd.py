"""CosPGD (Agnihotri, Jung and Keuper, "CosPGD: an efficient white-box adversarial attack for pixel-wise
prediction tasks", ICML 2024): PGD whose per-voxel cross-entropy is weighted by the cosine similarity between
the voxel's softmax and the one-hot target.

Untargeted, a voxel's weight is cos(softmax(z), onehot(y)) = p_y / ‖p‖₂: voxels the model still predicts
confidently keep their weight and those already fooled fade out, so the budget goes where the prediction is
still right. Targeted (organ removal, toward target'), the weight is 1 − cos(softmax(z), onehot(y')), as in the
authors' code. The weights are constants of each step (detached, as in the authors' `cospgd_scale`), the CE is
divided by the number of voxels, the Dice term of the objective is unchanged, and the rest is PGD: uniform
random start in [−ε, ε], sign steps of α, projection to the ε-ball and [0, 1].

The BMVC 2024 volumetric benchmark (`HashmatShadab/Robustness-of-Volumetric-Medical-Segmentation-Models`)
multiplies the whole loss by the volume's mean cosine instead (one scalar, which a sign step ignores); this
weights every voxel, as the paper does.
"""

from __future__ import annotations

import torch

from .gradient import SignGradient
from .objective import VoxelWeights


def cosine_to_one_hot(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cos(softmax(logits), onehot(target)) per voxel = p_target / ‖p‖₂; logits [n, C, ...], target [n, 1, ...]."""
    probs = torch.softmax(logits, dim=1)
    return probs.gather(1, target) / torch.linalg.vector_norm(probs, dim=1, keepdim=True)


class CosPGD(SignGradient):
    """PGD with CosPGD's cosine-similarity weighting of the per-voxel cross-entropy."""

    name = "cospgd"
    random_start = True

    def _voxel_weights(self, step: int, targeted: bool) -> VoxelWeights:
        if targeted:
            return lambda logits, target: 1.0 - cosine_to_one_hot(logits, target)
        return cosine_to_one_hot
