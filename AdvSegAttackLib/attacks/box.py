"""Boxes of a volume that frequency attacks work on (block-aligned around the region), and pasting back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..evaluation.metrics import bounding_box, region_box


@dataclass(frozen=True)
class Box:
    """Axis-aligned box [low, high) in voxels of a volume of size `volume`."""

    low: tuple[int, int, int]
    high: tuple[int, int, int]
    volume: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, ...]:
        """Index [N, C, X, Y, Z] tensors with `x[box.slices]`."""
        return (slice(None), slice(None)) + tuple(
            slice(lo, hi) for lo, hi in zip(self.low, self.high, strict=True)
        )

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(hi - lo for lo, hi in zip(self.low, self.high, strict=True))

    @property
    def whole(self) -> bool:
        return self.low == (0, 0, 0) and self.high == self.volume


def block_box(volume: tuple[int, ...], region: torch.Tensor | None, block: int, blocked_axes: int) -> Box:
    """The blocks (of a grid anchored at voxel 0) that touch the region, clipped to the volume.

    blocked_axes 3: cubes; 2: X and Y blocked, Z (axial) taken as the region's own extent.
    """
    volume = tuple(int(n) for n in volume)
    if region is None:
        return Box((0, 0, 0), volume, volume)
    low, high = [], []
    for axis, extent in enumerate(bounding_box(region[0, 0])):
        lo, hi = extent.start, extent.stop
        if axis < blocked_axes:
            lo, hi = (lo // block) * block, min(-(-hi // block) * block, volume[axis])
        low.append(lo)
        high.append(hi)
    return Box(tuple(low), tuple(high), volume)


def ssim_box(volume: tuple[int, ...], region: torch.Tensor | None, min_size: int = 3) -> Box:
    """The region's bounding box (whole volume without region), grown symmetrically to >= min_size voxels
    per axis (`evaluation.metrics.region_box`)."""
    volume = tuple(int(n) for n in volume)
    if region is None:
        return Box((0, 0, 0), volume, volume)
    box = region_box(region[0, 0], min_size)
    return Box(tuple(s.start for s in box), tuple(s.stop for s in box), volume)


def paste(image: torch.Tensor, box: Box, values: torch.Tensor) -> torch.Tensor:
    """`image` with `values` written into `box` (autograd flows to values); values itself if box is whole."""
    if box.whole:
        return values
    out = image.clone()
    out[box.slices] = values
    return out
