"""The positions of the sliding windows: `models.segment.window_slices` (what the attacks' objective and the
window count use) against the windows MONAI's `sliding_window_inference` really feeds the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from AdvSegAttackLib.models.segment import count_windows, window_slices


def monai_window_starts(shape, roi, overlap) -> set[tuple[int, ...]]:
    """Start (voxel index in the volume; negative in MONAI's zero padding) of every window
    sliding_window_inference gives the model: each voxel holds 1 + its linear index, so the first non-zero
    voxel of a window says where the window lies."""
    image = torch.arange(1, int(np.prod(shape)) + 1, dtype=torch.float64).reshape(1, 1, *shape)
    starts = set()

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        for window in windows[:, 0]:
            inside = torch.nonzero(window)[0]
            voxel = np.unravel_index(int(window[tuple(inside)]) - 1, shape)
            starts.add(tuple(int(v - i) for v, i in zip(voxel, inside.tolist(), strict=True)))
        return windows

    sliding_window_inference(image, roi, 3, predictor, overlap=overlap, mode="constant")
    return starts


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [
        ((20, 20, 20), (8, 8, 8), 0.5),
        ((30, 10, 17), (12, 12, 12), 0.25),  # padded along one axis
        ((7, 9, 12), (8, 8, 8), 0.5),  # padded by one voxel
        ((5, 20, 13), (8, 8, 16), 0.5),  # padded by 3 voxels: one before, two after
        ((16, 16, 16), (16, 16, 16), 0.5),  # one window
        ((33, 21, 40), (16, 8, 12), 0.0),
        ((25, 25, 25), (10, 10, 10), 0.7),
    ],
)
def test_window_slices_are_the_windows_monai_uses(shape, roi, overlap):
    slices, pads = window_slices(shape, roi, overlap)
    ours = {tuple(s.start - low for s, (low, _) in zip(window, pads, strict=True)) for window in slices}
    assert ours == monai_window_starts(shape, roi, overlap)
    assert count_windows(shape, roi, overlap) == len(ours)
