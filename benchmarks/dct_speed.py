"""Blockwise DCT speed: ours (reshape + cached-matrix matmuls, transposed-transform backward) vs torch_dct.

One timed unit = what an SAA step does with the transform: forward DCT of the volume's blocks, inverse DCT of
the coefficients scaled by a learnable ξ, and the backward pass to ξ (and to the volume), on a 192×192×160
volume in 3-D blocks of b = 8, 16, 32 (and 2-D axial tiles). Both sides get the same blocks (our
`blockify3d` / `blockify2d`), so only the transform differs. Target: ours >= 2x faster.

    .venv/bin/python benchmarks/dct_speed.py [--repeats 5] [--threads 2] [--shape 192 192 160]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch_dct

from AdvSegAttackLib.attacks import dct


def unit_ours(volume: torch.Tensor, xi: torch.Tensor, block: int, dims: int) -> None:
    coefficients = dct.block_dct(volume - 0.5, block, dims)
    out = dct.block_idct(coefficients * xi, dims)
    out.backward(torch.ones_like(out))


def unit_torch_dct(volume: torch.Tensor, xi: torch.Tensor, block: int, dims: int) -> None:
    if dims == 3:
        blocks = dct.blockify3d(volume - 0.5, block)
        out = dct.unblockify3d(torch_dct.idct_3d(torch_dct.dct_3d(blocks, "ortho") * xi, "ortho"))
    else:
        blocks = dct.blockify2d(volume - 0.5, block)
        out = dct.unblockify2d(torch_dct.idct_2d(torch_dct.dct_2d(blocks, "ortho") * xi, "ortho"))
    out.backward(torch.ones_like(out))


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (matrix cache, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--shape", type=int, nargs=3, default=(192, 192, 160))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(
        f"volume {tuple(args.shape)}, {args.threads} thread(s), median of {args.repeats}, forward+inverse+backward"
    )
    print(f"{'blocks':>8} {'ours s':>9} {'torch_dct s':>12} {'speed-up':>9}  max |difference|")
    for dims in (3, 2):
        for block in (8, 16, 32):
            volume = dct.pad_to_multiple(torch.rand(1, 1, *args.shape, generator=generator), block, axes=dims)
            volume.requires_grad_(True)
            shape = dct.block_dct(volume.detach(), block, dims).shape
            xi = (0.8 + 0.4 * torch.rand(shape, generator=generator)).requires_grad_(True)
            with torch.no_grad():
                ours = dct.block_dct(volume, block, dims)
                theirs = (torch_dct.dct_3d if dims == 3 else torch_dct.dct_2d)(
                    (dct.blockify3d if dims == 3 else dct.blockify2d)(volume, block), "ortho"
                )
            difference = float((ours - theirs).abs().max())
            t_ours = median_seconds(
                lambda v=volume, x=xi, b=block, d=dims: unit_ours(v, x, b, d), args.repeats
            )
            t_theirs = median_seconds(
                lambda v=volume, x=xi, b=block, d=dims: unit_torch_dct(v, x, b, d), args.repeats
            )
            label = f"{block}^{dims}"
            print(f"{label:>8} {t_ours:9.3f} {t_theirs:12.3f} {t_theirs / t_ours:8.1f}x  {difference:.1e}")


if __name__ == "__main__":
    main()
