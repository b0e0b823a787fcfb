"""SSIM against a fixed reference, as a loss: same value as `AdvSegAttackLib.evaluation.ssim.ssim`, ~4× cheaper.

The attacks compare a changing image with the constant clean one every step, so the reference's local
mean and variance are computed once, the symmetric Gaussian blur is done with in-place shifted adds instead
of depthwise convolutions, and the backward is written out (adjoint blur = the same taps, "full" mode).
"""

from __future__ import annotations

import torch

from ..evaluation.ssim import gaussian_taps


def _blur_valid(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable valid-mode correlation of the last three axes with symmetric taps."""
    width = len(taps)
    for axis in (-3, -2, -1):
        n = x.shape[axis] - width + 1
        out = x.narrow(axis, 0, n) * taps[0]
        for k in range(1, width):
            out.add_(x.narrow(axis, k, n), alpha=taps[k])
        x = out
    return x


def _blur_adjoint(g: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Adjoint of `_blur_valid` (full mode): every axis grows by len(taps) − 1."""
    width = len(taps)
    for axis in (-3, -2, -1):
        n = g.shape[axis]
        shape = list(g.shape)
        shape[axis] = n + width - 1
        out = g.new_empty(shape)
        torch.mul(g, taps[0], out=out.narrow(axis, 0, n))
        out.narrow(axis, n, width - 1).zero_()
        for k in range(1, width):
            out.narrow(axis, k, n).add_(g, alpha=taps[k])
        g = out
    return g


class ReferenceSSIM:
    """Mean local SSIM of x against a fixed reference, per item of the batch (first axis).

    reference [N, 1, *3 spatial axes]; each spatial axis must be >= taps. Differentiable in x.
    """

    def __init__(self, reference: torch.Tensor, data_range: float = 1.0, taps: int = 3, sigma: float = 1.5):
        self.taps = gaussian_taps(taps, sigma, dtype=torch.float64).tolist()
        self.c1 = (0.01 * data_range) ** 2
        self.c2 = (0.03 * data_range) ** 2
        self.reference = reference.detach()
        self.mu_y = _blur_valid(self.reference, self.taps)
        self.mu_y2 = self.mu_y * self.mu_y
        self.var_y = _blur_valid(self.reference * self.reference, self.taps) - self.mu_y2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.reference.shape:
            raise ValueError(
                f"SSIM needs equal shapes, got {tuple(x.shape)} and {tuple(self.reference.shape)}."
            )
        return _ReferenceSSIMFunction.apply(x, self)


class _ReferenceSSIMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, ref: ReferenceSSIM) -> torch.Tensor:
        y = ref.reference
        stacked = x.new_empty((x.shape[0], 3, *x.shape[2:]))
        stacked[:, 0:1] = x
        torch.mul(x, x, out=stacked[:, 1:2])
        torch.mul(x, y, out=stacked[:, 2:3])
        blurred = _blur_valid(stacked, ref.taps)
        mu_x, e_xx, e_xy = blurred[:, 0:1], blurred[:, 1:2], blurred[:, 2:3]
        mu_xy = mu_x * ref.mu_y
        mu_x2 = mu_x * mu_x
        a1 = 2 * mu_xy + ref.c1
        a2 = 2 * (e_xy - mu_xy) + ref.c2
        b1 = mu_x2 + ref.mu_y2 + ref.c1
        b2 = e_xx - mu_x2 + ref.var_y + ref.c2
        ssim_map = a1 * a2 / (b1 * b2)
        ctx.ref = ref
        ctx.save_for_backward(x, mu_x, a1, a2, b1, b2, ssim_map)
        return ssim_map.flatten(1).mean(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ref: ReferenceSSIM = ctx.ref
        x, mu_x, a1, a2, b1, b2, ssim_map = ctx.saved_tensors
        count = ssim_map[0].numel()
        scale = (grad / count).view(-1, 1, 1, 1, 1)
        inv_b1 = b1.reciprocal()
        inv_b2 = b2.reciprocal()
        d = x.new_empty((x.shape[0], 3, *mu_x.shape[2:]))
        # d SSIM / d E[xy] = 2·a1 / (b1·b2)
        torch.mul(a1, inv_b1, out=d[:, 2:3]).mul_(inv_b2).mul_(2 * scale)
        # d SSIM / d E[x²] = −SSIM / b2
        torch.mul(ssim_map, inv_b2, out=d[:, 1:2]).mul_(-scale)
        # d SSIM / d μx = 2·μy·(a2 − a1)/(b1·b2) + 2·μx·SSIM·(1/b2 − 1/b1)
        term = (a2 - a1).mul_(ref.mu_y).mul_(inv_b1).mul_(inv_b2)
        term.addcmul_(mu_x * ssim_map, inv_b2 - inv_b1)
        torch.mul(term, 2 * scale, out=d[:, 0:1])
        full = _blur_adjoint(d, ref.taps)
        grad_x = full[:, 1:2].mul_(2 * x).add_(full[:, 0:1]).addcmul_(ref.reference, full[:, 2:3])
        return grad_x, None
