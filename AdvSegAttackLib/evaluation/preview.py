"""A PNG preview of a case, fit for slides and papers.

Three panels of one axial slice in radiological convention (patient right on the image's left, anterior at
the top; R/L and A/P markers): the clean slice with the clean prediction, the attacked slice with the
attacked prediction, and attacked − clean in HU over a faint copy of the anatomy. The slice is the one where
the attack changed the most labels (the title says so). A legend below names the organs on the slice with
their Dice clean → attacked; each organ has one colour in both panels: the card's colour where it differs
enough (CIE76 ΔE ≥ `MIN_DELTA_E`) from the colours already given, else a qualitative palette colour.
Anisotropic voxels keep their physical aspect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..volumes.io import atomic_path

MIN_DELTA_E = 25.0  # CIE76 distance below which two overlay colours are too alike to tell apart
_PALETTE = (  # matplotlib tab10 without its grey (invisible on CT), cool hues first (the cards' are warm), then Dark2
    (31, 119, 180),
    (44, 160, 44),
    (148, 103, 189),
    (23, 190, 207),
    (214, 39, 40),
    (188, 189, 34),
    (227, 119, 194),
    (140, 86, 75),
    (255, 127, 14),
    (27, 158, 119),
    (117, 112, 179),
    (231, 41, 138),
    (102, 166, 30),
    (230, 171, 2),
    (217, 95, 2),
)


@dataclass
class PreviewSlice:
    """Which axial slice a preview shows and why."""

    index: int  # along the superior axis of the LPS-oriented volume (0 = most inferior)
    changed_labels: int  # voxels of this slice whose label the attack changed
    reason: str  # for the title


def _lps(image: sitk.Image) -> sitk.Image:
    """The image with LPS voxel axes: array rows anterior → posterior, columns patient right → left."""
    return sitk.DICOMOrient(image, "LPS")


def changed_labels_per_slice(pred_clean: sitk.Image, pred_adv: sitk.Image) -> np.ndarray:
    """Voxels per LPS axial slice (inferior → superior) whose label differs between the two predictions."""
    clean, adv = sitk.GetArrayFromImage(_lps(pred_clean)), sitk.GetArrayFromImage(_lps(pred_adv))
    return (clean != adv).reshape(clean.shape[0], -1).sum(1)


def choose_slice(pred_clean: sitk.Image, pred_adv: sitk.Image, organs: Sequence[int] | None) -> PreviewSlice:
    """The slice where the attack changed the most labels; without any change, the one with the most voxels
    of the chosen organs (or of any organ) in the clean prediction."""
    changed = changed_labels_per_slice(pred_clean, pred_adv)
    if changed.any():
        index = int(changed.argmax())
        return PreviewSlice(index, int(changed[index]), "the slice where the attack changed the most labels")
    clean = sitk.GetArrayFromImage(_lps(pred_clean))
    mask = np.isin(clean, list(organs)) if organs else clean > 0
    counts = mask.reshape(mask.shape[0], -1).sum(1)
    index = int(counts.argmax()) if counts.any() else clean.shape[0] // 2
    what = "the chosen organs" if organs else "organ"
    return PreviewSlice(index, 0, f"no label changed; the slice with the most {what}")


def _lab(rgb: Sequence[float]) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour given as 0–255."""
    c = np.asarray(rgb, dtype=float) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e(a: Sequence[float], b: Sequence[float]) -> float:
    """CIE76 colour difference of two sRGB colours (0–255)."""
    return float(np.linalg.norm(_lab(a) - _lab(b)))


def organ_colors(
    values: Sequence[int], card_colors: Sequence[Sequence[int]]
) -> dict[int, tuple[int, int, int]]:
    """One distinguishable colour per label value, in the order given (earlier ones keep the card's colour
    when there is a conflict): the card's colour if it is at least `MIN_DELTA_E` from every colour given so
    far, else the first palette colour that is (or the palette colour farthest from them)."""
    given: dict[int, tuple[int, int, int]] = {}
    for value in values:
        card = tuple(card_colors[value]) if value < len(card_colors) else None
        candidates = ([card] if card is not None else []) + [c for c in _PALETTE if c not in given.values()]
        chosen = next(
            (c for c in candidates if all(delta_e(c, g) >= MIN_DELTA_E for g in given.values())),
            max(candidates, key=lambda c: min((delta_e(c, g) for g in given.values()), default=0.0)),
        )
        given[value] = tuple(int(v) for v in chosen)
    return given


def _slice_position(image: sitk.Image, index: int) -> tuple[int, int, float]:
    """(the source file's voxel index of LPS slice `index` along its most superior-inferior axis, that axis's
    size, the slice's S coordinate in mm)."""
    oriented = _lps(image)
    centre = [oriented.GetSize()[0] // 2, oriented.GetSize()[1] // 2, index]
    point = oriented.TransformIndexToPhysicalPoint(centre)
    axis = int(np.argmax(np.abs(np.array(image.GetDirection()).reshape(3, 3)[2])))
    file_index = image.TransformPhysicalPointToIndex(point)[axis]
    return file_index, image.GetSize()[axis], float(point[2])


def _markers(ax) -> None:
    """R/L and A/P at the panel edges (radiological convention: the patient's right on the image's left)."""
    style = {"color": "white", "fontsize": 10, "fontweight": "bold", "transform": ax.transAxes}
    import matplotlib.patheffects as effects

    style["path_effects"] = [effects.withStroke(linewidth=2, foreground="black")]
    ax.text(0.015, 0.5, "R", ha="left", va="center", **style)
    ax.text(0.985, 0.5, "L", ha="right", va="center", **style)
    ax.text(0.5, 0.985, "A", ha="center", va="top", **style)
    ax.text(0.5, 0.015, "P", ha="center", va="bottom", **style)


def _draw_labels(ax, labels: np.ndarray, colors: Mapping[int, tuple[int, int, int]], aspect: float) -> None:
    """Organs as a translucent fill with a solid outline of the same colour."""
    rgba = np.zeros((*labels.shape, 4))
    for value, rgb in colors.items():
        mask = labels == value
        if mask.any():
            rgba[mask] = [*(np.array(rgb) / 255.0), 0.35]
            ax.contour(mask.astype(float), levels=[0.5], colors=[np.array(rgb) / 255.0], linewidths=0.9)
    ax.imshow(rgba, interpolation="nearest", aspect=aspect)


def _dice_text(name: str, dice: tuple[float, float] | None) -> str:
    if dice is None:
        return name
    clean, adv = (f"{v:.3f}" if v is not None and np.isfinite(v) else "–" for v in dice)
    return f"{name}  Dice {clean} → {adv}"


def preview_figure(
    clean: sitk.Image,
    adversarial: sitk.Image,
    pred_clean: sitk.Image,
    pred_adv: sitk.Image,
    label_names: Sequence[str],
    label_colors: Sequence[Sequence[int]],
    window_hu: tuple[float, float],
    organs: Sequence[int] | None = None,
    title: str = "",
    organ_dice: Mapping[int, tuple[float, float]] | None = None,
):
    """(matplotlib Figure, PreviewSlice) of the preview; `organ_dice` maps a label value to its Dice
    (clean, attacked) for the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    chosen = choose_slice(pred_clean, pred_adv, organs)
    index = chosen.index
    clean_lps, adv_lps = _lps(clean), _lps(adversarial)
    clean_slice = sitk.GetArrayFromImage(clean_lps)[index].astype(np.float32)
    adv_slice = sitk.GetArrayFromImage(adv_lps)[index].astype(np.float32)
    labels_clean = sitk.GetArrayFromImage(_lps(pred_clean))[index]
    labels_adv = sitk.GetArrayFromImage(_lps(pred_adv))[index]
    spacing = clean_lps.GetSpacing()
    aspect = spacing[1] / spacing[0]  # rows (posterior) over columns (left), so the slice keeps its shape

    present = [int(v) for v in np.union1d(np.unique(labels_clean), np.unique(labels_adv)) if v > 0]
    area = {v: int(np.count_nonzero(labels_clean == v) + np.count_nonzero(labels_adv == v)) for v in present}
    priority = sorted(present, key=lambda v: (v not in (organs or ()), -area[v], v))
    colors = organ_colors(priority, label_colors)

    low, high = window_hu
    difference = adv_slice - clean_slice
    limit = max(float(np.abs(difference).max()), 1.0)
    figure, axes = plt.subplots(1, 3, figsize=(15.0, 6.2), dpi=150, layout="constrained")
    for ax, name, slice_hu, labels in (
        (axes[0], "clean CT + clean prediction", clean_slice, labels_clean),
        (axes[1], "attacked CT + attacked prediction", adv_slice, labels_adv),
    ):
        ax.imshow(slice_hu, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        _draw_labels(ax, labels, colors, aspect)
        ax.set_title(name, fontsize=11)
    axes[2].imshow(clean_slice, cmap="gray", vmin=low, vmax=high, aspect=aspect, alpha=0.3)
    shown = axes[2].imshow(
        np.ma.masked_equal(difference, 0),
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        aspect=aspect,
        interpolation="nearest",
    )
    changed_voxels = int(np.count_nonzero(difference))
    axes[2].set_title(f"attacked − clean (HU), {changed_voxels} voxels changed", fontsize=11)
    figure.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.02, label="HU")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        _markers(ax)

    file_index, file_slices, superior_mm = _slice_position(clean, index)
    where = (
        f"axial slice {file_index + 1} of {file_slices} (voxel index {file_index}, S {superior_mm:.1f} mm): "
        f"{chosen.reason}" + (f", {chosen.changed_labels} voxels" if chosen.changed_labels else "")
    )
    figure.suptitle(f"{title}\n{where}" if title else where, fontsize=12)
    handles = [
        Patch(
            facecolor=np.array(colors[v]) / 255.0,
            edgecolor="black",
            label=_dice_text(
                label_names[v] if v < len(label_names) else f"label {v}", (organ_dice or {}).get(v)
            ),
        )
        for v in present
    ]
    if handles:
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 4),
            fontsize=9,
            frameon=False,
            title="organs on this slice (Dice of the whole volume, clean → attacked)",
            title_fontsize=9,
        )
    else:
        figure.text(0.5, 0.01, "no organ on this slice", ha="center", fontsize=9)
    return figure, chosen


def write_preview(path: str | Path, *args, **kwargs) -> PreviewSlice:
    """Write the preview PNG (arguments as `preview_figure`) atomically; returns the slice it shows."""
    import matplotlib.pyplot as plt

    figure, chosen = preview_figure(*args, **kwargs)
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
    return chosen
