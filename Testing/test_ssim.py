"""The attacks' SSIM loss (fixed clean reference, hand-written gradient) equals the autograd SSIM."""

from __future__ import annotations

import torch

from AdvSegAttackLib.attacks.fast_ssim import ReferenceSSIM
from AdvSegAttackLib.evaluation.ssim import ssim


def test_reference_ssim_value_and_gradient_equal_autograd_ssim():
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(1, 1, 12, 11, 10, generator=generator, dtype=torch.float64)
    noisy = (
        clean + 0.05 * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    ).requires_grad_(True)
    expected = ssim(noisy, clean, data_range=1.0, taps=3, sigma=1.5)
    (expected_grad,) = torch.autograd.grad(expected, noisy)
    value = ReferenceSSIM(clean, data_range=1.0, taps=3, sigma=1.5)(noisy).mean()
    (grad,) = torch.autograd.grad(value, noisy)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert ReferenceSSIM(clean)(clean.clone()).item() == 1.0
