"""VAFA (Rasheed et al., MICCAI 2023): learnable per-block quantisation tables on blockwise DCT coefficients.

On the 0–255 scale with −128 centring (as published), per step t = 0 … steps−1:
    C   = DCT(255·x − 128) per block (computed once), q ∈ [q_min, q_max] (one entry per coefficient per block)
    rec = IDCT(φ_α(C / q) · q) + 128,   φ_α = soft rounding of AdvDrop/DSQ, α_t = 0.1 − t·0.1/steps
    x'  = (rec − min_z + 1e-6) / (max_z − min_z + 1e-6)   per axial slice z (min/max over X, Y)
    L   = −DiceCE(windows of x') + (1 − mean over blocks of relu(SSIM3D(block of x, block of x')))   [3-D only]
    q  ← clip(q − 1·sign ∇q L, q_min, q_max)
and the result is clamp(x'(q_final), 0, 1) with the last step's α. VAFA-2D: 2-D blocks per axial slice, no SSIM.

The per-slice min–max renormalisation is the published code's (it maps every axial slice of the
reconstruction to [0, 1]; it is a contrast/offset change per slice that q does not bound). Here min and max
run over the whole axial slice of the volume (the box's reconstruction plus the clean voxels around it);
published: over the slice of each 96³ cube. The 1e-6 epsilon is the SAA repository's (VAFA-2D and the VAFA
repository divide without it and give NaN on constant slices).

Deliberate differences from the published code:
* The image returned is made from the final q (published: the image of the pass before the last update;
  `published_return` returns that one, and its last step is a forward pass only).
* One block grid over the whole volume (replicate padding, cropped back) against the mean DiceCE of the
  evaluation's sliding windows, instead of independent 96³ cubes; with a region only the blocks touching it
  are quantised.
* q_init "one" reproduces the paper (start 1, clip [1, q_max]); "max" (default) the code (start q_max,
  clip [5, q_max]).
* The blockwise SSIM uses the replicate-padded box (blocks that stick out of the volume see padding);
  device-agnostic (the published φ needed CUDA); targeted mode works; no early stop.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import dct
from .base import AttackContext, ModelSpaceAttack
from .box import block_box, paste
from .fast_ssim import ReferenceSSIM

ALPHA_START = 0.1  # soft-rounding temperature at the first step (published)
ALPHA_END = 1e-20  # published schedule end: α_t = 0.1 + t·(1e-20 − 0.1)/steps
RENORM_EPS = 1e-6  # added to numerator and denominator of the per-slice min–max (0–255 scale)


def soft_round(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """φ_α(x) = ⌊x⌋ + ½(1 + s·tanh(k(x − ⌊x⌋ − ½))), k = ln(2/α − 1), s = 1/(1 − α); → round as α → 0."""
    k = math.log(2.0 / alpha - 1.0)
    s = 1.0 / (1.0 - alpha)
    floor = torch.floor(x)
    return floor + 0.5 * (1.0 + s * torch.tanh(k * (x - floor - 0.5)))


def alpha_at(step_index: int, steps: int) -> float:
    """Temperature of step `step_index` (0-based): linear from 0.1 towards ~0, 0.1/steps at the last step."""
    return ALPHA_START + step_index * (ALPHA_END - ALPHA_START) / steps


class Quantiser:
    """x'(q, α) for a fixed clean image: precomputes the box, its DCT and the clean min/max around it."""

    def __init__(self, image: torch.Tensor, region: torch.Tensor | None, block: int, dims: int):
        self.image = image
        self.dims = dims
        self.block = block
        self.box = block_box(image.shape[2:], region, block, dims)
        self.clean_box = image[self.box.slices]
        self.region_box = None if region is None else region[self.box.slices]
        self.clean_padded = dct.pad_to_multiple(self.clean_box, block, axes=dims)
        self.coefficients = dct.block_dct(self.clean_padded * 255.0 - 128.0, block, dims)
        self.crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in self.box.size)
        self._block_ssim: ReferenceSSIM | None = None
        # Min/max (0–255) per axial slice of the clean voxels of the box's slices that lie outside the box.
        self.outside_min = self.outside_max = None
        if self.box.size[:2] != tuple(image.shape[2:4]):
            z = slice(self.box.low[2], self.box.high[2])
            slab = image[:, :, :, :, z] * 255.0
            inside = torch.zeros(slab.shape, dtype=torch.bool, device=image.device)
            inside[(slice(None), slice(None), *self.box.slices[2:4])] = True
            self.outside_min = slab.masked_fill(inside, math.inf).amin(dim=(2, 3), keepdim=True)
            self.outside_max = slab.masked_fill(inside, -math.inf).amax(dim=(2, 3), keepdim=True)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of q: [1, 1, nX, nY, nZ, b, b, b] (3-D) or [1, 1, Z, nX, nY, b, b] (2-D)."""
        return tuple(self.coefficients.shape)

    def box_values(self, q: torch.Tensor, alpha: float) -> torch.Tensor:
        """The renormalised reconstruction of the box (region-masked), [1, 1, *box.size], in [0, 1]."""
        quantised = soft_round(self.coefficients / q, alpha) * q
        rec = dct.block_idct(quantised, self.dims)[self.crop] + 128.0
        low = rec.amin(dim=(2, 3), keepdim=True)
        high = rec.amax(dim=(2, 3), keepdim=True)
        if self.outside_min is not None:
            low = torch.minimum(low, self.outside_min)
            high = torch.maximum(high, self.outside_max)
        values = (rec - low + RENORM_EPS) / (high - low + RENORM_EPS)
        if self.region_box is not None:
            values = torch.where(self.region_box, values, self.clean_box)
        return values

    def blockwise_ssim(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over 3-D blocks of relu(SSIM(clean block, adversarial block)) (3 taps, σ 1.5, range 1)."""
        b = self.block
        if self._block_ssim is None:
            clean = dct.blockify3d(self.clean_padded, b).reshape(-1, 1, b, b, b)
            self._block_ssim = ReferenceSSIM(clean, data_range=1.0, taps=3, sigma=1.5)
        padded = dct.pad_to_multiple(values, b, axes=3)
        per_block = self._block_ssim(dct.blockify3d(padded, b).reshape(-1, 1, b, b, b))
        return torch.relu(per_block).mean()


class _VAFA(ModelSpaceAttack):
    dims = 3

    def _run(self, ctx: AttackContext) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        quantiser = Quantiser(ctx.image, ctx.region, cfg.block_size, self.dims)
        start = cfg.q_max if cfg.q_init == "max" else 1.0
        q = torch.full(quantiser.shape, start, dtype=torch.float32, device=ctx.device).requires_grad_(True)
        use_ssim = self.dims == 3 and cfg.use_ssim_loss
        ssim_values: list[float] = []
        alpha = ALPHA_START
        for index in range(cfg.steps):
            alpha = alpha_at(index, cfg.steps)
            values = quantiser.box_values(q, alpha)
            x_adv = paste(ctx.image, quantiser.box, values)
            if cfg.published_return and index == cfg.steps - 1:
                with torch.no_grad():
                    ctx.objective.value(x_adv)
                    if use_ssim:
                        ssim_values.append(quantiser.blockwise_ssim(values).item())
                ctx.report(index + 1, ctx.objective.last_loss, q=q.detach(), adversarial=x_adv.detach())
                break
            _, grad = ctx.objective.value_and_grad(x_adv)
            outputs, grads = [x_adv], [grad.neg_()]
            if use_ssim:
                similarity = quantiser.blockwise_ssim(values)
                ssim_values.append(similarity.item())
                outputs.append(1.0 - similarity)
                grads.append(torch.ones((), device=ctx.device))
            (q_grad,) = torch.autograd.grad(outputs, [q], grads)
            with torch.no_grad():
                q.sub_(q_grad.sign_()).clamp_(cfg.q_min, cfg.q_max)
            ctx.report(index + 1, ctx.objective.last_loss, q=q.detach(), adversarial=x_adv.detach())
        with torch.no_grad():
            if cfg.published_return:
                adversarial = x_adv.detach().clamp(0.0, 1.0)
            else:
                adversarial = paste(ctx.image, quantiser.box, quantiser.box_values(q, alpha)).clamp_(0.0, 1.0)
        stats: dict[str, Any] = {
            "q_min": q.detach().min().item(),
            "q_max": q.detach().max().item(),
            "q_mean": q.detach().mean().item(),
            "alpha_final": alpha,
        }
        if use_ssim:
            stats["ssim"] = ssim_values
        return adversarial, stats


class VAFA3D(_VAFA):
    """VAFA with 3-D DCT blocks and the blockwise SSIM term."""

    name = "vafa"
    dims = 3


class VAFA2D(_VAFA):
    """VAFA with 2-D DCT blocks of every axial slice, no SSIM term."""

    name = "vafa-2d"
    dims = 2
