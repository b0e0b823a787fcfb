"""Blockwise orthonormal DCT-II of whole volumes (3-D blocks, or 2-D blocks per axial slice).

Layouts (volume [..., X, Y, Z], Z = axial axis):

* 3-D blocks: `blockify3d` gives [..., nX, nY, nZ, b, b, b]; flattening the three block axes gives the
  published code's [..., N, b, b, b] with block index (iX·nY + iY)·nZ + iZ (C order, X outermost).
* 2-D blocks: `blockify2d` gives [..., Z, nX, nY, b, b] (published: [B, C, D, N, b, b]).

Blockify is one reshape + permute (a view) + one contiguous copy, never a loop over blocks. The transform
is a separable product with a cached orthonormal DCT-II matrix along each block axis (one batched matmul per
axis). Its backward is the transposed transform (= the inverse, the matrix being orthogonal), written as a
custom autograd function so the backward costs one transform and no broadcast-matmul bookkeeping.

Padding (`pad_to_multiple`) is *replicate* padding at the high end of each blocked axis: it continues the
image smoothly, so the padded part adds no artificial edge to the last blocks, and it works for any pad
width (reflect would need pad < size). Attacks crop back to the original size after the inverse.

Frequency bands (`band_mask`) follow the published `get_masks`/`get_masks_2d` (index sum s of a
coefficient; for even N: 3-D low s ≤ N/2−1, high s ≥ 5N/2−2; 2-D low s ≤ N/2−1, high s ≥ 3N/2−1; middle =
the rest). `perturbation_mask` is a band without the DC coefficient, which is never perturbed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .catalogue import BANDS


@functools.lru_cache(maxsize=64)
def _dct_matrix_cached(n: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(device=device, dtype=dtype)


def dct_matrix(
    n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Orthonormal DCT-II matrix M [n, n] (row k = frequency k): coefficients = M @ signal; M⁻¹ = Mᵀ.

    Cached per (n, device, dtype); do not modify the returned tensor.
    """
    return _dct_matrix_cached(int(n), str(torch.device(device or "cpu")), dtype)


def _transform_last_axes(x: torch.Tensor, matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """y = M_1 ⊗ … ⊗ M_k applied to the last k axes of x (matrices[0] acts on axis −k). No autograd."""
    x = x.contiguous()
    shape = x.shape
    k = len(matrices)
    for axis, matrix in enumerate(matrices):
        n = shape[-k + axis]
        inner = math.prod(shape[len(shape) - k + axis + 1 :])
        if inner == 1:  # last axis: one plain GEMM
            x = (x.reshape(-1, n) @ matrix.T).reshape(shape)
        else:  # middle axes: batched M @ [n, inner] matrices
            x = torch.matmul(matrix, x.reshape(-1, n, inner)).reshape(shape)
    return x


class _SeparableTransform(torch.autograd.Function):
    """Orthogonal separable transform; backward applies the transposed matrices."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, *matrices: torch.Tensor) -> torch.Tensor:
        ctx.transposed = tuple(m.T.contiguous() for m in matrices)
        return _transform_last_axes(x, matrices)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (_transform_last_axes(grad, ctx.transposed),) + (None,) * len(ctx.transposed)


def _matrices(shape: Sequence[int], like: torch.Tensor, inverse: bool) -> list[torch.Tensor]:
    mats = [dct_matrix(n, like.device, like.dtype) for n in shape]
    return [m.T.contiguous() for m in mats] if inverse else mats


def dct3(blocks: torch.Tensor) -> torch.Tensor:
    """Orthonormal 3-D DCT-II over the last three axes (= scipy `dctn(norm='ortho')` per block)."""
    return _SeparableTransform.apply(blocks, *_matrices(blocks.shape[-3:], blocks, inverse=False))


def idct3(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct3` (orthonormal DCT-III over the last three axes)."""
    return _SeparableTransform.apply(
        coefficients, *_matrices(coefficients.shape[-3:], coefficients, inverse=True)
    )


def dct2(blocks: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two axes."""
    return _SeparableTransform.apply(blocks, *_matrices(blocks.shape[-2:], blocks, inverse=False))


def idct2(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct2`."""
    return _SeparableTransform.apply(
        coefficients, *_matrices(coefficients.shape[-2:], coefficients, inverse=True)
    )


def pad_to_multiple(x: torch.Tensor, block: int, axes: int = 3) -> torch.Tensor:
    """Replicate-pad the high end of the last `axes` spatial axes of [N, C, X, Y, Z] to multiples of `block`.

    With axes=2 only X and Y are padded (2-D blocks per axial slice). Returns x itself if nothing to pad.
    """
    spatial = x.shape[-3:]
    pads = [(-n) % block if i < axes else 0 for i, n in enumerate(spatial)]
    if not any(pads):
        return x
    # F.pad takes (last axis low, high, second-to-last low, high, ...).
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")


def blockify3d(x: torch.Tensor, block: int) -> torch.Tensor:
    """[..., X, Y, Z] (multiples of `block`) → [..., nX, nY, nZ, b, b, b] (contiguous copy)."""
    *lead, X, Y, Z = x.shape
    b = block
    view = x.reshape(*lead, X // b, b, Y // b, b, Z // b, b)
    n = len(lead)
    return view.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3, n + 5).contiguous()


def unblockify3d(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of `blockify3d`: [..., nX, nY, nZ, b, b, b] → [..., X, Y, Z]."""
    *lead, nx, ny, nz, bx, by, bz = blocks.shape
    n = len(lead)
    view = blocks.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2, n + 5)
    return view.reshape(*lead, nx * bx, ny * by, nz * bz)


def blockify2d(x: torch.Tensor, block: int) -> torch.Tensor:
    """[..., X, Y, Z] (X, Y multiples of `block`) → [..., Z, nX, nY, b, b]: 2-D blocks of every axial slice."""
    *lead, X, Y, Z = x.shape
    b = block
    view = x.reshape(*lead, X // b, b, Y // b, b, Z)
    n = len(lead)
    return view.permute(*range(n), n + 4, n, n + 2, n + 1, n + 3).contiguous()


def unblockify2d(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of `blockify2d`: [..., Z, nX, nY, b, b] → [..., X, Y, Z]."""
    *lead, Z, nx, ny, bx, by = blocks.shape
    n = len(lead)
    view = blocks.permute(*range(n), n + 1, n + 3, n + 2, n + 4, n)
    return view.reshape(*lead, nx * bx, ny * by, Z)


def block_dct(x: torch.Tensor, block: int, dims: int = 3) -> torch.Tensor:
    """Blockwise DCT of a volume whose blocked axes are multiples of `block` (dims 3: cubes, 2: axial tiles)."""
    return dct3(blockify3d(x, block)) if dims == 3 else dct2(blockify2d(x, block))


def block_idct(coefficients: torch.Tensor, dims: int = 3) -> torch.Tensor:
    """Inverse of `block_dct`, back to the volume layout [..., X, Y, Z]."""
    return unblockify3d(idct3(coefficients)) if dims == 3 else unblockify2d(idct2(coefficients))


def _index_sum(n: int, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    grids = torch.meshgrid(*([torch.arange(n)] * dims), indexing="ij")
    return sum(grids), grids[-1]


@functools.lru_cache(maxsize=32)
def _band_mask_cpu(n: int, band: str, dims: int) -> torch.Tensor:
    if band not in BANDS:
        raise ValueError(f"unknown frequency band {band!r}; choose one of {', '.join(BANDS)}.")
    if band == "all":
        return torch.ones((n,) * dims, dtype=torch.bool)
    s, last = _index_sum(n, dims)
    half = n // 2
    if dims == 3:  # published get_masks: tetrahedra in the two opposite corners
        low = (s <= n - 1 - half) & (last < half)
        high = (s >= half + 2 * n - 2) & (last >= half)
    else:  # published get_masks_2d
        low = s <= n - 1 - half
        high = s >= n - 1 + half
    if band == "low":
        return low
    if band == "high":
        return high
    return ~(low | high)


def band_mask(
    n: int, band: str = "all", dims: int = 3, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool [n]*dims: the DCT coefficients of frequency band `band` (all/low/middle/high), DC included."""
    return _band_mask_cpu(int(n), band, int(dims)).to(device or "cpu")


def perturbation_mask(
    n: int,
    band: str = "all",
    dims: int = 3,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Float 0/1 [n]*dims: coefficients that may be changed (the band minus the DC coefficient)."""
    mask = band_mask(n, band, dims).clone()
    mask[(0,) * dims] = False
    return mask.to(device=device or "cpu", dtype=dtype)
