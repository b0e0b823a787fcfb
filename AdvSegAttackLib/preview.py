"""A PNG preview of a case: clean and attacked axial slice with their segmentations, and the difference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io import atomic_path


def _axial_slice(image: sitk.Image, index: int) -> np.ndarray:
    """Axial slice `index` (along the most superior-inferior axis) shown in radiological convention."""
    oriented = sitk.DICOMOrient(image, "LPS")  # rows anterior->posterior, columns patient right->left
    return sitk.GetArrayFromImage(oriented)[index]


def best_axial_index(label: sitk.Image, organs: Sequence[int] | None) -> int:
    """The axial slice (LPS-oriented index) with the most voxels of the chosen organs (or any organ)."""
    array = sitk.GetArrayFromImage(sitk.DICOMOrient(label, "LPS"))  # a copy: the oriented image is temporary
    mask = np.isin(array, list(organs)) if organs else array > 0
    counts = mask.reshape(mask.shape[0], -1).sum(1)
    return int(counts.argmax()) if counts.any() else array.shape[0] // 2


def _overlay(ax, labels: np.ndarray, colors: Sequence[Sequence[int]]) -> None:
    rgba = np.zeros((*labels.shape, 4))
    for value in np.unique(labels):
        if value and value < len(colors):
            rgba[labels == value] = [*(np.array(colors[value]) / 255.0), 0.45]
    ax.imshow(rgba, interpolation="nearest")


def write_preview(
    path: str | Path,
    clean: sitk.Image,
    adversarial: sitk.Image,
    pred_clean: sitk.Image,
    pred_adv: sitk.Image,
    label_colors: Sequence[Sequence[int]],
    window_hu: tuple[float, float],
    organs: Sequence[int] | None = None,
    title: str = "",
) -> Path:
    """Write a 2×2 panel: clean | attacked (with segmentations), difference in HU, attacked without overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = best_axial_index(pred_clean, organs)
    clean_slice = _axial_slice(clean, index).astype(np.float32)
    adv_slice = _axial_slice(adversarial, index).astype(np.float32)
    spacing = sitk.DICOMOrient(clean, "LPS").GetSpacing()
    aspect = spacing[1] / spacing[0]
    low, high = window_hu
    difference = adv_slice - clean_slice
    limit = max(float(np.abs(difference).max()), 1.0)
    figure, axes = plt.subplots(1, 3, figsize=(13.5, 4.8), dpi=110)
    panels = [
        ("clean + clean prediction", clean_slice, _axial_slice(pred_clean, index)),
        ("attacked + attacked prediction", adv_slice, _axial_slice(pred_adv, index)),
    ]
    for ax, (name, slice_hu, labels) in zip(axes[:2], panels, strict=True):
        ax.imshow(slice_hu, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        _overlay(ax, np.asarray(labels), label_colors)
        ax.set_title(name, fontsize=11)
    shown = axes[2].imshow(
        difference, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect=aspect, interpolation="nearest"
    )
    axes[2].set_title("attacked − clean (HU)", fontsize=11)
    figure.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=12)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(path)
