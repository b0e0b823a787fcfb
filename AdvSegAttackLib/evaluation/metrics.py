"""Segmentation quality (Dice, HD95) and perturbation size/visibility (L-inf, L2, SSIM, PSNR) of CT volumes.

Arrays are numpy in the axis order of their `spacing` tuple (mm): SimpleITK arrays (z, y, x) go with the
spacing reversed, (sz, sy, sx). Label maps are integer arrays; intensities are HU. Background (label 0) is
excluded from every organ mean. Perturbation numbers come in HU and in model units: the image clipped to
the intensity window and scaled to [0, 1]. Everything runs on CPU in float32 torch / float64 numpy, in
slabs along axis 0, so ~250x250x200 volumes take seconds and bounded memory.

Choices: Dice is NaN for an organ absent from both maps (skipped by means) and 0 when it is in one only;
HD95 is NaN when absent from both and +inf when in one only (the finite mean skips it; the report lists
such organs). SSIM/PSNR are NaN when the image is smaller than the SSIM window; PSNR is +inf for equal
images.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import InputError
from .ssim import ssim_map, ssim_map_uniform

SSIM3D_TAPS = 11  # Gaussian window of the 3-D SSIM (sigma 1.5; skimage gaussian_weights=True)
SSIM3D_SIGMA = 1.5
SSIM2D_TAPS = 7  # box window of the axial SSIM (skimage default)
_SLAB_VOXELS = 2_000_000  # voxels per slab of the chunked computations

Progress = Callable[[int, int], None]
"""progress(done, total) of a report's slow parts (organs; perturbation parts), called after each."""


# ----------------------------------------------------------------------------------------------------------
# Segmentation metrics


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: the two arrays differ in shape, {tuple(a.shape)} vs {tuple(b.shape)}.")


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise InputError(f"spacing {spacing} must be {ndim} positive numbers (mm), one per array axis.")
    return spacing


def bounding_box(
    mask: np.ndarray | torch.Tensor, margin: int | Sequence[int] = 0
) -> tuple[slice, ...] | None:
    """Bounding box of the True voxels of a mask (numpy array, or torch tensor on any device) as slices
    (stop exclusive), grown by `margin` voxels (per axis) and clipped to the array; None if the mask is empty.
    MONAI's `generate_spatial_bounding_box`."""
    from monai.transforms.utils import generate_spatial_bounding_box

    start, stop = generate_spatial_bounding_box(mask[None], margin=margin, allow_smaller=True)
    if not stop[0]:  # MONAI's box of an empty mask is all zeros; any other ends after voxel 0
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def region_box(region: np.ndarray | torch.Tensor, min_size: int) -> tuple[slice, ...] | None:
    """Bounding box of `region`, grown symmetrically (and shifted inside the volume) to at least `min_size`
    voxels per axis (the whole axis where it is shorter); None if the region is empty."""
    box = bounding_box(region)
    if box is None:
        return None
    grown = []
    for s, n in zip(box, region.shape, strict=True):
        want = min(max(s.stop - s.start, min_size), n)
        start = max(0, min(s.start - (want - (s.stop - s.start)) // 2, n - want))
        grown.append(slice(start, start + want))
    return tuple(grown)


def _dice(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """Dice of two bool masks, with their voxel counts."""
    na, nb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if na + nb == 0:
        return float("nan"), na, nb
    return 2.0 * int(np.count_nonzero(a & b)) / (na + nb), na, nb


def _hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """MONAI's symmetric 95th-percentile Hausdorff distance (mm) of two bool masks; NaN / inf if empty."""
    has_a, has_b = bool(a.any()), bool(b.any())
    if not (has_a or has_b):
        return float("nan")
    if not (has_a and has_b):
        return float("inf")
    from monai.metrics import compute_hausdorff_distance

    # Crop to the union's box plus one voxel (clipped to the array): distances do not change, and MONAI
    # crops the same way (it pads with background where the box touches the border, as does the erosion).
    box = bounding_box(a | b, margin=1)
    ta = torch.from_numpy(np.ascontiguousarray(a[box]))[None, None]
    tb = torch.from_numpy(np.ascontiguousarray(b[box]))[None, None]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = compute_hausdorff_distance(
            ta, tb, include_background=True, percentile=95, spacing=list(spacing), distance_metric="euclidean"
        )
    return float(hd.reshape(-1)[0])


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice 2|A∩B|/(|A|+|B|) per label value: NaN if the label is in neither map, 0 if in one only."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_same_shape(pred, ref, "Dice")
    return {int(v): _dice(pred == v, ref == v)[0] for v in labels}


def hd95_per_label(
    pred: np.ndarray, ref: np.ndarray, labels: Iterable[int], spacing: Sequence[float]
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance (mm, MONAI) per label value.

    NaN if the label is in neither map, +inf if it is in one only. `spacing` (mm) is in the arrays' axis order.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_same_shape(pred, ref, "HD95")
    spacing = _check_spacing(spacing, pred.ndim)
    return {int(v): _hd95(pred == v, ref == v, spacing) for v in labels}


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def segmentation_report(
    pred: np.ndarray,
    ref: np.ndarray,
    label_names: Sequence[str],
    spacing: Sequence[float],
    progress: Progress | None = None,
) -> dict:
    """Per-organ Dice and HD95 (mm) of `pred` against the reference `ref`, and their means.

    `label_names[v]` names label value v; value 0 is background and is excluded (no entry, not in any mean).
    `mean_dice` and `mean_hd95_mm` average the organs present in `ref` (NaN Dice skipped; HD95 only finite
    values, so an organ missing from `pred` lowers the mean Dice but is listed in `organs_missed` instead
    of entering the HD95 mean). Organs only in `pred` (Dice 0, HD95 inf) are listed in `organs_spurious`.
    `progress(done, total)` is called after each organ. A map scored against itself (`pred is ref`) has
    HD95 0 without computing it.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_same_shape(pred, ref, "Segmentation report")
    spacing = _check_spacing(spacing, pred.ndim)
    organs: dict[str, dict] = {}
    for value, name in enumerate(label_names):
        if value == 0:
            continue
        a, b = pred == value, ref == value
        dice, n_pred, n_ref = _dice(a, b)
        itself = pred is ref
        organs[name] = {
            "label": value,
            "dice": dice,
            "hd95_mm": (0.0 if n_ref else float("nan")) if itself else _hd95(a, b, spacing),
            "voxels_ref": n_ref,
            "voxels_pred": n_pred,
        }
        if progress is not None:
            progress(value, len(label_names) - 1)
    in_ref = [o for o in organs.values() if o["voxels_ref"] > 0]
    dices = [o["dice"] for o in in_ref]
    return {
        "organs": organs,
        "mean_dice": float(np.nanmean(dices)) if dices else float("nan"),
        "mean_hd95_mm": _finite_mean(o["hd95_mm"] for o in in_ref),
        "n_organs_ref": len(in_ref),
        "organs_missed": [n for n, o in organs.items() if o["voxels_ref"] > 0 and o["voxels_pred"] == 0],
        "organs_spurious": [n for n, o in organs.items() if o["voxels_ref"] == 0 and o["voxels_pred"] > 0],
        "spacing_mm": list(spacing),
        "background_excluded": True,
    }


# ----------------------------------------------------------------------------------------------------------
# Perturbation metrics


def _slab(shape: tuple[int, ...], extra: int = 0) -> int:
    """Number of axis-0 slices per slab so that a slab holds about _SLAB_VOXELS voxels."""
    per_slice = max(int(np.prod(shape[1:])), 1)
    return max(1, _SLAB_VOXELS // per_slice - extra)


def to_model_units(hu: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """HU clipped to `window_hu` = (low, high) and scaled to [0, 1], as float32."""
    low, high = (float(w) for w in window_hu)
    out = np.asarray(hu, dtype=np.float32) - np.float32(low)
    out /= np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def _difference_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, int]:
    """Max |b-a|, sum (b-a)^2, sum |b-a| (float64) and the number of voxels where b != a, by slabs."""
    linf, sq, ab, changed = 0.0, 0.0, 0.0, 0
    step = _slab(a.shape)
    for start in range(0, a.shape[0], step):
        d = b[start : start + step].astype(np.float64) - a[start : start + step]
        d = np.abs(d, out=d)
        if d.size:
            linf = max(linf, float(d.max()))
        ab += float(d.sum())
        changed += int(np.count_nonzero(d))
        # numpy's pairwise sum, not BLAS dot: the result must not depend on the number of threads
        sq += float(np.square(d, out=d).sum())
    return linf, sq, ab, changed


@torch.inference_mode()
def ssim3d(a: np.ndarray, b: np.ndarray) -> float:
    """3-D SSIM (data range 1, Gaussian 11 taps sigma 1.5, population covariance, valid region) of [0,1] images.

    Equals skimage `structural_similarity(gaussian_weights=True, use_sample_covariance=False,
    data_range=1)`; NaN if any axis is shorter than 11 voxels. Computed in overlapping slabs along axis 0.
    """
    if a.ndim != 3 or any(n < SSIM3D_TAPS for n in a.shape):
        return float("nan")
    halo = SSIM3D_TAPS - 1
    n_out = a.shape[0] - halo
    step = _slab(a.shape, extra=halo)
    total = 0.0
    for start in range(0, n_out, step):
        stop = min(start + step, n_out) + halo
        ta = torch.from_numpy(np.ascontiguousarray(a[start:stop], dtype=np.float32))[None, None]
        tb = torch.from_numpy(np.ascontiguousarray(b[start:stop], dtype=np.float32))[None, None]
        total += float(ssim_map(ta, tb, 1.0, SSIM3D_TAPS, SSIM3D_SIGMA).double().sum())
    count = n_out * (a.shape[1] - halo) * (a.shape[2] - halo)
    return total / count


@torch.inference_mode()
def ssim_axial_mean(a: np.ndarray, b: np.ndarray, axial_axis: int = 0) -> float:
    """Mean over the slices along `axial_axis` of 2-D SSIM with skimage's defaults on [0,1] images.

    Per slice: 7x7 box window, sample covariance, data range 1, mean over the valid region (as
    `skimage.metrics.structural_similarity(data_range=1)`); NaN if a slice is smaller than 7x7.
    """
    a, b = np.moveaxis(a, axial_axis, 0), np.moveaxis(b, axial_axis, 0)
    if a.ndim != 3 or a.shape[0] == 0 or any(n < SSIM2D_TAPS for n in a.shape[1:]):
        return float("nan")
    step = _slab(a.shape)
    total = 0.0
    for start in range(0, a.shape[0], step):
        ta = torch.from_numpy(np.ascontiguousarray(a[start : start + step], dtype=np.float32))[:, None]
        tb = torch.from_numpy(np.ascontiguousarray(b[start : start + step], dtype=np.float32))[:, None]
        total += float(ssim_map_uniform(ta, tb, 1.0, SSIM2D_TAPS).double().mean(dim=(1, 2, 3)).sum())
    return total / a.shape[0]


def _psnr_db(sum_sq: float, n: int) -> float:
    """PSNR (dB, data range 1) from the sum of squared differences over n voxels; +inf if it is 0."""
    if n == 0:
        return float("nan")
    return float("inf") if sum_sq == 0.0 else 10.0 * math.log10(n / sum_sq)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two [0,1] images, data range 1: 10 log10(1 / MSE); +inf when they are equal."""
    return _psnr_db(_difference_stats(a, b)[1], int(np.asarray(a).size))


PERTURBATION_PARTS = 3  # differences, 3-D SSIM, axial SSIM: the progress steps of one _perturbation_numbers


def _perturbation_numbers(
    clean_hu: np.ndarray, adv_hu: np.ndarray, window_hu, axial_axis: int, tick: Callable[[], None]
) -> dict:
    linf_hu, sq_hu, abs_hu, changed = _difference_stats(clean_hu, adv_hu)
    clean01, adv01 = to_model_units(clean_hu, window_hu), to_model_units(adv_hu, window_hu)
    linf_m, sq_m, _, _ = _difference_stats(clean01, adv01)
    tick()
    n = int(clean_hu.size)
    numbers = {
        "linf_hu": linf_hu,
        "l2_hu": math.sqrt(sq_hu),
        "mean_abs_hu": abs_hu / n if n else float("nan"),
        "linf_model": linf_m,
        "l2_model": math.sqrt(sq_m),
        "voxels": n,
        "voxels_changed": changed,
        "fraction_changed": changed / n if n else float("nan"),
        "ssim_3d": ssim3d(clean01, adv01),
    }
    tick()
    numbers["ssim_axial_mean"] = ssim_axial_mean(clean01, adv01, axial_axis)
    numbers["psnr_db"] = _psnr_db(sq_m, n)
    tick()
    return numbers


def perturbation_report(
    clean_hu: np.ndarray,
    adv_hu: np.ndarray,
    window_hu: tuple[float, float],
    region: np.ndarray | None = None,
    axial_axis: int = 0,
    progress: Progress | None = None,
) -> dict:
    """How large and how visible the perturbation `adv_hu - clean_hu` is.

    HU: `linf_hu`, `l2_hu` (Euclidean norm over all voxels), `mean_abs_hu`. Model units (clipped to
    `window_hu` = (low, high) HU and scaled to [0, 1]): `linf_model`, `l2_model`. `voxels_changed` and
    `fraction_changed` (voxels whose HU differ / all voxels). On the [0,1] images, data range 1: `ssim_3d`
    (Gaussian 11 taps, sigma 1.5, as skimage gaussian_weights=True, use_sample_covariance=False),
    `ssim_axial_mean` (mean over slices along `axial_axis` of skimage's default 2-D SSIM: 7x7 box window,
    sample covariance; how the SAA paper reports SSIM), `psnr_db` (+inf for equal images).
    With a bool `region` mask, the same numbers on its bounding box (grown to at least 11 voxels per axis,
    inside the volume, so SSIM is defined) under "region", with the box as `bbox` [[start, stop), ...] and
    the mask's voxel count; "region" is None when the mask is empty. `progress(done, total)` is called
    after each of its slow parts (differences, 3-D SSIM, axial SSIM; again for the region).
    """
    clean_hu, adv_hu = np.asarray(clean_hu), np.asarray(adv_hu)
    _check_same_shape(clean_hu, adv_hu, "Perturbation report")
    low, high = (float(w) for w in window_hu)
    if not high > low:
        raise InputError(f"intensity window {window_hu} HU must be (low, high) with low < high.")
    if clean_hu.ndim != 3:
        raise InputError(f"Perturbation report needs 3-D volumes, got shape {tuple(clean_hu.shape)}.")
    if not -3 <= axial_axis < 3:
        raise InputError(f"axial_axis {axial_axis} is not an axis of a 3-D volume.")
    total, done = PERTURBATION_PARTS * (2 if region is not None else 1), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    report = _perturbation_numbers(clean_hu, adv_hu, (low, high), axial_axis, tick)
    report.update({"window_hu": [low, high], "axial_axis": axial_axis % 3, "shape": list(clean_hu.shape)})
    if region is not None:
        region = np.asarray(region, dtype=bool)
        _check_same_shape(clean_hu, region, "Perturbation report region")
        box = region_box(region, SSIM3D_TAPS)
        if box is None:
            report["region"] = None
        else:
            sub = _perturbation_numbers(clean_hu[box], adv_hu[box], (low, high), axial_axis, tick)
            sub["bbox"] = [[s.start, s.stop] for s in box]
            sub["mask_voxels"] = int(np.count_nonzero(region))
            report["region"] = sub
    return report


# ----------------------------------------------------------------------------------------------------------
# metrics.json: one schema for `segment`, `attack` and `evaluate` (field table in the README)

METRICS_VERSION = 1


def _finite_mean_and_count(values: Iterable[float | None]) -> tuple[float | None, int]:
    """(mean, count) of the finite values; (None, 0) when there is none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return (float(np.mean(finite)) if finite else None), len(finite)


def organ_metrics(
    label_names: Sequence[str],
    spacing: Sequence[float],
    clean: np.ndarray,
    reference: np.ndarray | None = None,
    adversarial: np.ndarray | None = None,
    progress_part: Callable[[], Progress | None] | None = None,
) -> dict:
    """The organ part of metrics.json: per organ and as means over organs, background excluded.

    `clean` is the model's label map of the clean volume (the one `segment` segments), `adversarial` that of
    the attacked volume, `reference` the map both are scored against (`attack` without a reference label
    passes the clean prediction); arrays in the axis order of `spacing` (mm). Every organ present in any of
    the maps gets its voxel counts and, against the reference, `dice_*` and `hd95_*_mm`: None where the organ
    is absent from the reference (undefined there), HD95 None where a prediction misses it. Each `mean_*` is
    over the organs of the reference with a finite value, and `mean_*_organs` says how many that is.
    `progress_part()` gives the progress callback of each Dice/HD95 report (one per comparison made: two when
    `reference is clean`, else three).
    """
    names = list(label_names)
    maps = {"reference": reference, "clean": clean, "adv": adversarial}
    counts = {  # one comparison per label: no volume-sized integer copy as np.bincount would make
        key: [int(np.count_nonzero(np.asarray(array) == value)) for value in range(len(names))]
        for key, array in maps.items()
        if array is not None
    }

    def report(pred: np.ndarray, ref: np.ndarray) -> dict:
        return segmentation_report(pred, ref, names, spacing, progress_part() if progress_part else None)

    reports = {}
    if reference is not None:
        reports["clean"] = report(clean, reference)
        if adversarial is not None:
            reports["adv"] = report(adversarial, reference)
    if adversarial is not None:  # against the clean prediction: the same report when that is the reference
        reports["adv_vs_clean_prediction"] = (
            reports["adv"] if reference is clean else report(adversarial, clean)
        )

    organs: dict[str, dict] = {}
    for value, name in enumerate(names):
        if value == 0 or not any(c[value] for c in counts.values()):
            continue
        n_ref = int(counts["reference"][value]) if reference is not None else 0
        row: dict = {"label": value}
        if reference is not None:
            row["voxels_reference"] = n_ref
        row["voxels_clean"] = int(counts["clean"][value])
        if adversarial is not None:
            row["voxels_adv"] = int(counts["adv"][value])
        for key in ("clean", "adv"):
            if key in reports:
                scored = reports[key]["organs"][name]
                row[f"dice_{key}"] = scored["dice"] if n_ref else None
                row[f"hd95_{key}_mm"] = (
                    scored["hd95_mm"] if n_ref and math.isfinite(scored["hd95_mm"]) else None
                )
        if adversarial is not None:
            versus = reports["adv_vs_clean_prediction"]["organs"][name]
            row["dice_adv_vs_clean_prediction"] = versus["dice"] if row["voxels_clean"] else None
        organs[name] = row

    result: dict = {"organs": organs}
    in_reference = [row for row in organs.values() if row.get("voxels_reference")]
    for side in ("clean", "adv"):
        for key in (f"dice_{side}", f"hd95_{side}_mm") if side in reports else ():
            mean, count = _finite_mean_and_count(row[key] for row in in_reference)
            result[f"mean_{key}"], result[f"mean_{key}_organs"] = mean, count
    if adversarial is not None:
        in_clean = [row for row in organs.values() if row["voxels_clean"]]
        mean, count = _finite_mean_and_count(row["dice_adv_vs_clean_prediction"] for row in in_clean)
        result["mean_dice_adv_vs_clean_prediction"] = mean
        result["mean_dice_adv_vs_clean_prediction_organs"] = count
    return result


def _perturbation_in_image_order(report: dict) -> dict:
    """A `perturbation_report` of SimpleITK arrays for metrics.json: the region box in x, y, z index order
    (as `size`), without the array-order `shape` and `axial_axis`."""
    converted = {key: value for key, value in report.items() if key not in ("shape", "axial_axis")}
    region = report.get("region")
    if region:
        converted["region"] = {**region, "bbox": [list(bounds) for bounds in reversed(region["bbox"])]}
    return converted


def metrics_document(
    kind: str,
    model: str,
    size: Sequence[int],
    spacing_mm: Sequence[float],
    reference: str | None,
    organs: dict,
    perturbation: dict | None = None,
    **extra,
) -> dict:
    """metrics.json of `segment`, `attack` or `evaluate` (`kind`), strict-JSON-ready (NaN/inf become None).

    `size` (voxels) and `spacing_mm` are the source grid's, in x, y, z order as `advseg info`; `reference`
    names what the Dice is against ("reference label", "clean prediction" or None); `organs` comes from
    `organ_metrics`; `perturbation` is a `perturbation_report` of SimpleITK (z, y, x) arrays.
    """
    from ..volumes.io import json_safe

    document = {
        "metrics_version": METRICS_VERSION,
        "kind": kind,
        "model": model,
        "size": [int(n) for n in size],
        "spacing_mm": [float(s) for s in spacing_mm],
        "reference": reference,
        "background_excluded": True,
        **organs,
    }
    if perturbation is not None:
        document["perturbation"] = _perturbation_in_image_order(perturbation)
    document.update(extra)
    return json_safe(document)
