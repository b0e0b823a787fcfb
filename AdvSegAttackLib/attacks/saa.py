"""SAA / SA² (Hanif et al., ISBI 2025): learnable multiplicative noise ξ on blockwise DCT coefficients.

Per step (ξ ∈ [1−ρ, 1+ρ], one entry per DCT coefficient of every block):
    x_adv = x + IDCT(C ⊙ m ⊙ (ξ − 1)),   C = DCT(x − 0.5) per block (computed once), m = band mask without DC
          ( = IDCT(C ⊙ ξ_eff) + 0.5 with ξ_eff = 1 + m·(ξ − 1): DC and out-of-band coefficients keep ξ_eff = 1)
    L = −λ_dice·DiceCE(windows of x_adv) + λ_ssim·(1 − SSIM3D(x_adv, x))     (SSIM: 3 taps, σ 1.5, range 1)
    ξ ← clip(ξ − η·sign ∇ξ L, 1−ρ, 1+ρ)
and the result is clamp(x_adv(ξ_final), 0, 1). SAA-2D uses 2-D DCT blocks of every axial slice.

Deliberate differences from the published code (asif-hanif/saa, see reference/saa_vafa.md):
* The returned image is made from the FINAL ξ; the published code returns the image of the forward pass
  before the last update (so its `steps` = init + steps−1 updates). `published_return` does that: the last
  step is then a forward pass only (its update would not change the result).
* One ξ on one block grid over the whole volume (anchored at voxel 0, replicate-padded at the high ends to a
  multiple of the block, cropped back), optimised against the mean DiceCE over the evaluation's overlapping
  sliding windows — not independent 96³ cubes that overwrite each other's overlaps. With a region, only the
  blocks touching it carry ξ (the others could not change a region voxel anyway).
* x_adv = x + IDCT(C⊙m⊙(ξ−1)) instead of IDCT(DCT(x−0.5)⊙ξ)+0.5: same value, exact identity at ξ ≡ 1, and
  the clean DCT is computed once instead of every step.
* ξ is drawn from a seeded torch generator (published: unseeded NumPy) and stays on the device.
* The SSIM is one 3-D SSIM over the region's bounding box (whole volume without region); the published
  SAA-2D compared a [B,C,D,H,W]-permuted clean volume with an un-permuted adversarial one (bug, fixed here).
* Targeted mode works (organ removal, see objective.py); the published `--targeted` raised.
* No early stop (the published one needs 100 % of voxels misclassified, background included, and never fires).
As published: the model sees x_adv unclamped during the steps; the SSIM is clipped at 0 (nonnegative_ssim).
"""

from __future__ import annotations

from typing import Any

import torch

from . import dct
from .base import AttackContext, ModelSpaceAttack
from .box import block_box, paste, ssim_box
from .fast_ssim import ReferenceSSIM


class SpectralNoise:
    """x_adv(ξ) for a fixed clean image: precomputes the box, C ⊙ mask and the region crop."""

    def __init__(self, image: torch.Tensor, region: torch.Tensor | None, block: int, dims: int, band: str):
        self.image = image
        self.dims = dims
        self.box = block_box(image.shape[2:], region, block, dims)
        self.clean_box = image[self.box.slices]
        self.region_box = None if region is None else region[self.box.slices]
        padded = dct.pad_to_multiple(self.clean_box, block, axes=dims)
        mask = dct.perturbation_mask(block, band, dims, image.device, image.dtype)
        self.masked_coefficients = dct.block_dct(padded - 0.5, block, dims) * mask
        self.mask = mask
        self.crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in self.box.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ξ: [1, 1, nX, nY, nZ, b, b, b] (3-D) or [1, 1, Z, nX, nY, b, b] (2-D)."""
        return tuple(self.masked_coefficients.shape)

    def adversarial(self, xi: torch.Tensor) -> torch.Tensor:
        """Full volume x + IDCT(C ⊙ m ⊙ (ξ − 1)) inside the box ∩ region, x elsewhere (autograd to ξ)."""
        delta = dct.block_idct(self.masked_coefficients * (xi - 1.0), self.dims)[self.crop]
        values = self.clean_box + delta
        if self.region_box is not None:
            values = torch.where(self.region_box, values, self.clean_box)
        return paste(self.image, self.box, values)

    def effective(self, xi: torch.Tensor) -> torch.Tensor:
        """The perturbable entries of ξ (DC and out-of-band ones excluded), flattened."""
        return xi.detach().expand(self.shape)[self.mask.expand(self.shape) > 0]


class _SAA(ModelSpaceAttack):
    dims = 3

    def _run(self, ctx: AttackContext) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        noise = SpectralNoise(ctx.image, ctx.region, cfg.block_size, self.dims, cfg.band)
        rho = cfg.rho
        xi = ctx.uniform(noise.shape, 1 - rho, 1 + rho).requires_grad_(True)
        sbox = ssim_box(ctx.image.shape[2:], ctx.region)
        reference_ssim = ReferenceSSIM(ctx.image[sbox.slices], data_range=1.0, taps=3, sigma=1.5)
        ssim_values: list[float] = []
        for step in range(1, cfg.steps + 1):
            x_adv = noise.adversarial(xi)
            if cfg.published_return and step == cfg.steps:
                with torch.no_grad():
                    ctx.objective.value(x_adv)
                    if cfg.use_ssim_loss:
                        ssim_values.append(torch.relu(reference_ssim(x_adv[sbox.slices])).mean().item())
                ctx.report(step, ctx.objective.last_loss, xi=xi.detach(), adversarial=x_adv.detach())
                break
            _, grad = ctx.objective.value_and_grad(x_adv)
            outputs, grads = [x_adv], [grad.mul_(-cfg.lambda_dice)]
            if cfg.use_ssim_loss:
                similarity = torch.relu(reference_ssim(x_adv[sbox.slices])).mean()
                ssim_values.append(similarity.item())
                outputs.append(cfg.lambda_ssim * (1.0 - similarity))
                grads.append(torch.ones((), device=ctx.device))
            (xi_grad,) = torch.autograd.grad(outputs, [xi], grads)
            with torch.no_grad():
                xi.sub_(cfg.step_size * xi_grad.sign_()).clamp_(1 - rho, 1 + rho)
            ctx.report(step, ctx.objective.last_loss, xi=xi.detach(), adversarial=x_adv.detach())
        with torch.no_grad():
            adversarial = (x_adv.detach() if cfg.published_return else noise.adversarial(xi)).clamp(0.0, 1.0)
            used = noise.effective(xi)
        stats = {
            "xi_min": float(used.min()) if used.numel() else 1.0,
            "xi_max": float(used.max()) if used.numel() else 1.0,
            "xi_mean_abs_deviation": float((used - 1).abs().mean()) if used.numel() else 0.0,
            "n_perturbed_coefficients": int(used.numel()),
        }
        if cfg.use_ssim_loss:
            stats["ssim"] = ssim_values
        return adversarial, stats


class SAA3D(_SAA):
    """SAA with 3-D DCT blocks (b×b×b)."""

    name = "saa"
    dims = 3


class SAA2D(_SAA):
    """SAA with 2-D DCT blocks (b×b) of every axial slice; the SSIM term stays 3-D."""

    name = "saa-2d"
    dims = 2
