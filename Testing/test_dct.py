"""Blockwise DCT of AdvSegAttackLib.attacks.dct: values, orthonormality, block order, band masks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
import torch_dct
from monai.data.utils import dense_patch_slices

from AdvSegAttackLib.attacks import dct


def _published_block_splitting_3d(image: torch.Tensor, block: int) -> torch.Tensor:
    """The published loop (asif-hanif/saa compression.block_splitting_3d), re-typed as the reference order."""
    B, C, H, W, D = image.shape
    slices = dense_patch_slices((H, W, D), (block,) * 3, (block,) * 3)
    out = torch.zeros((B, C, len(slices), block, block, block), dtype=image.dtype)
    for b in range(B):
        for c in range(C):
            for i, sl in enumerate(slices):
                out[b, c, i] = image[b, c][sl]
    return out


def _published_block_splitting_2d(image_bcdhw: torch.Tensor, block: int) -> torch.Tensor:
    B, C, D, H, W = image_bcdhw.shape
    slices = dense_patch_slices((H, W), (block,) * 2, (block,) * 2)
    out = torch.zeros((B, C, D, len(slices), block, block), dtype=image_bcdhw.dtype)
    for b in range(B):
        for c in range(C):
            for d in range(D):
                for i, sl in enumerate(slices):
                    out[b, c, d, i] = image_bcdhw[b, c, d][sl]
    return out


@pytest.mark.parametrize("block", [4, 8])
def test_block_dct3d_equals_scipy_per_block(block):
    x = torch.rand(1, 1, 2 * block, 3 * block, block, dtype=torch.float64)
    coefficients = dct.block_dct(x, block, dims=3)
    assert coefficients.shape == (1, 1, 2, 3, 1, block, block, block)
    for ix in range(2):
        for iy in range(3):
            sub = x[0, 0, ix * block : (ix + 1) * block, iy * block : (iy + 1) * block, :].numpy()
            expected = scipy.fft.dctn(sub, norm="ortho")
            np.testing.assert_allclose(coefficients[0, 0, ix, iy, 0].numpy(), expected, atol=1e-12)


def test_block_dct2d_equals_scipy_per_axial_tile():
    block = 4
    x = torch.rand(1, 1, 8, 12, 5, dtype=torch.float64)
    coefficients = dct.block_dct(x, block, dims=2)
    assert coefficients.shape == (1, 1, 5, 2, 3, block, block)
    for z in range(5):
        for ix in range(2):
            for iy in range(3):
                tile = x[0, 0, ix * block : (ix + 1) * block, iy * block : (iy + 1) * block, z].numpy()
                expected = scipy.fft.dctn(tile, norm="ortho")
                np.testing.assert_allclose(coefficients[0, 0, z, ix, iy].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("dims", [3, 2])
@pytest.mark.parametrize("block", [4, 8, 16])
def test_round_trip_and_parseval(dims, block):
    x = torch.rand(2, 1, 2 * block, block, 2 * block)
    coefficients = dct.block_dct(x, block, dims)
    assert torch.allclose(dct.block_idct(coefficients, dims), x, atol=1e-5)
    assert torch.allclose((coefficients**2).sum(), (x**2).sum(), rtol=1e-5)


def test_dct_matrix_is_orthonormal_and_matches_torch_dct():
    for n in (2, 5, 8, 32):
        matrix = dct.dct_matrix(n, dtype=torch.float64)
        assert torch.allclose(matrix @ matrix.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    blocks = torch.rand(3, 8, 8, 8)
    assert torch.allclose(dct.dct3(blocks), torch_dct.dct_3d(blocks, "ortho"), atol=2e-6)
    assert torch.allclose(dct.idct3(blocks), torch_dct.idct_3d(blocks, "ortho"), atol=2e-6)
    assert torch.allclose(dct.dct2(blocks), torch_dct.dct_2d(blocks, "ortho"), atol=2e-6)


def test_dct_matrix_is_cached_per_device_and_dtype():
    assert dct.dct_matrix(8) is dct.dct_matrix(8, "cpu")
    assert dct.dct_matrix(8, dtype=torch.float64).dtype == torch.float64


def test_backward_is_the_inverse_transform():
    x = torch.rand(1, 1, 8, 8, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dct.block_dct(t, 4, 3), (x,))
    assert torch.autograd.gradcheck(lambda t: dct.block_dct(t, 4, 2), (x,))
    upstream = torch.rand(1, 1, 2, 2, 1, 4, 4, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad(dct.block_dct(x, 4, 3), x, upstream)
    assert torch.allclose(grad, dct.block_idct(upstream, 3))


@pytest.mark.parametrize("block", [8, 16, 32])
def test_block_order_equals_published_split_3d(block):
    x = torch.rand(2, 1, 2 * block, 3 * block, 2 * block)
    ours = dct.blockify3d(x, block)
    n = ours.shape[2] * ours.shape[3] * ours.shape[4]
    assert torch.equal(ours.reshape(2, 1, n, block, block, block), _published_block_splitting_3d(x, block))
    # The published vectorised equivalent (reference note §1.2).
    b = block
    permuted = x.reshape(2, 1, 2, b, 3, b, 2, b).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(2, 1, n, b, b, b)
    assert torch.equal(ours.reshape(2, 1, n, b, b, b), permuted)
    assert torch.equal(dct.unblockify3d(ours), x)


def test_block_order_equals_published_split_2d():
    block = 4
    x = torch.rand(1, 1, 8, 12, 3)  # [B, C, H, W, D]
    ours = dct.blockify2d(x, block)  # [B, C, D, nH, nW, b, b]
    published = _published_block_splitting_2d(x.permute(0, 1, 4, 2, 3), block)
    assert torch.equal(ours.reshape(1, 1, 3, 6, block, block), published)
    assert torch.equal(dct.unblockify2d(ours), x)


@pytest.mark.parametrize(("n", "low", "middle", "high"), [(16, 120, 3856, 120), (8, 20, 472, 20)])
def test_band_mask_sizes_3d(n, low, middle, high):
    sizes = {band: int(dct.band_mask(n, band, 3).sum()) for band in dct.BANDS}
    assert sizes == {"all": n**3, "low": low, "middle": middle, "high": high}
    s = sum(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"))
    assert torch.equal(dct.band_mask(n, "low", 3), s <= n // 2 - 1)
    assert torch.equal(dct.band_mask(n, "high", 3), s >= 5 * n // 2 - 2)


@pytest.mark.parametrize("n", [8, 16])
def test_band_masks_2d(n):
    s = sum(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"))
    assert torch.equal(dct.band_mask(n, "low", 2), s <= n // 2 - 1)
    assert torch.equal(dct.band_mask(n, "high", 2), s >= 3 * n // 2 - 1)
    middle = dct.band_mask(n, "middle", 2)
    assert torch.equal(middle, ~(dct.band_mask(n, "low", 2) | dct.band_mask(n, "high", 2)))


def test_perturbation_mask_excludes_dc():
    for dims in (2, 3):
        for band in dct.BANDS:
            mask = dct.perturbation_mask(8, band, dims)
            assert mask[(0,) * dims] == 0
            assert int(mask.sum()) == int(dct.band_mask(8, band, dims).sum()) - (band in ("all", "low"))


def test_pad_to_multiple_replicates_and_keeps_content():
    x = torch.rand(1, 1, 5, 9, 7)
    padded = dct.pad_to_multiple(x, 4, axes=3)
    assert padded.shape == (1, 1, 8, 12, 8)
    assert torch.equal(padded[:, :, :5, :9, :7], x)
    assert torch.equal(padded[:, :, 7, :9, :7], x[:, :, 4])
    assert dct.pad_to_multiple(x, 4, axes=2).shape == (1, 1, 8, 12, 7)
    aligned = torch.rand(1, 1, 8, 8, 8)
    assert dct.pad_to_multiple(aligned, 4) is aligned
