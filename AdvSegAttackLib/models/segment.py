"""Sliding-window segmentation, mapped back to the source grid, and the positions of the sliding windows
(`window_slices`), which the attacks' objective uses too: MONAI's (`sliding_window_inference`, Gaussian
blending) for MONAI models, nnU-Net's (`nnUNetPredictor`: even steps of at most half a patch, its Gaussian
importance map) for nnU-Net v2 models. `model_space` puts a volume into a card's model space."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from ..volumes.nnunet_space import NnUNetPreprocessing, Resampling, to_nnunet_space
from ..volumes.preprocess import ModelSpaceImage, to_model_space
from .cards import ModelCard
from .nnunet_networks import NnUNetNetwork

# progress(done_windows, total_windows)
WindowProgress = Callable[[int, int], None]


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's sliding-window step (voxels): int(roi·(1−overlap)) (≥ 1), or roi where roi == image size."""
    return tuple(
        int(r) if r == n else max(int(r * (1 - overlap)), 1)
        for n, r in zip(image_size, roi_size, strict=True)
    )


def nnunet_steps(image_size: int, patch: int, step_size: float) -> list[int]:
    """nnU-Net's window starts along one axis: the fewest windows whose steps are at most step_size · patch,
    spread evenly from 0 to image_size − patch (rounded)."""
    count = int(np.ceil((image_size - patch) / (patch * step_size))) + 1
    stride = (image_size - patch) / (count - 1) if count > 1 else 0.0
    return [int(np.round(stride * i)) for i in range(count)]


def window_slices(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float, rule: str = "monai"
) -> tuple[list[tuple[slice, ...]], tuple[tuple[int, int], ...]]:
    """Windows (slices into the padded volume) and per-axis (low, high) padding to the ROI, as MONAI (`rule`
    "monai") or nnU-Net ("nnunet", step size 1 − overlap) build them (both pad (d // 2, d − d // 2))."""
    pads = []
    for n, r in zip(image_size, roi_size, strict=True):
        diff = max(int(r) - int(n), 0)
        pads.append((diff // 2, diff - diff // 2))
    padded = tuple(int(n) + lo + hi for n, (lo, hi) in zip(image_size, pads, strict=True))
    roi = tuple(int(r) for r in roi_size)
    if rule == "nnunet":
        starts = [nnunet_steps(n, r, 1 - overlap) for n, r in zip(padded, roi, strict=True)]
        slices = [
            tuple(slice(s, s + r) for s, r in zip(corner, roi, strict=True))
            for corner in itertools.product(*starts)
        ]
    else:
        slices = dense_patch_slices(padded, roi, scan_interval(padded, roi, overlap))
    return list(slices), tuple(pads)


def count_windows(shape: tuple[int, ...], roi_size, overlap: float, rule: str = "monai") -> int:
    """Number of sliding windows for a spatial `shape` (after the padding to the ROI)."""
    return len(window_slices(shape, roi_size, overlap, rule)[0])


def pad_for_windows(
    volume: torch.Tensor, pads: Sequence[tuple[int, int]], value: float = 0.0
) -> torch.Tensor:
    """`volume` [N, C, X, Y, Z] padded by `window_slices`' per-axis (low, high) pads with `value` (MONAI: 0;
    nnU-Net: the value that is z = 0 after its normalisation, the card's `pad_value`)."""
    if not any(low + high for low, high in pads):
        return volume
    (x0, x1), (y0, y1), (z0, z1) = pads
    return F.pad(volume, (z0, z1, y0, y1, x0, x1), value=value)


@lru_cache(maxsize=2)
def nnunet_importance(patch: tuple[int, ...]) -> torch.Tensor:
    """nnU-Net's Gaussian importance map of a patch: a unit impulse at the centre (patch // 2) smoothed with
    σ = patch / 8 (scipy, zero outside), scaled to a maximum of 10, rounded to float16 as nnU-Net keeps it,
    zeros replaced by the smallest nonzero value."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    smooth = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
    weights = torch.from_numpy(smooth / (smooth.max() / 10)).to(torch.float16)
    weights[weights == 0] = weights[weights != 0].min()
    return weights.float()


def _nnunet_sliding_window(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    tensor: torch.Tensor,
    card: ModelCard,
    device: str | torch.device,
    sw_batch_size: int,
) -> torch.Tensor:
    """Logits [1, C, ...] (CPU, float16) as nnUNetPredictor blends them: windows at nnU-Net's steps on the volume
    padded with the card's `pad_value`, each window's logits weighted by the Gaussian importance map and summed,
    like the weights, in float16 in nnU-Net's window order (nnU-Net keeps its sums in float16; doing the same
    makes the labels nnU-Net's, also where two classes are within float16 rounding of each other)."""
    size = tuple(tensor.shape[-3:])
    slices, pads = window_slices(size, card.roi_size, card.overlap, "nnunet")
    padded = pad_for_windows(tensor, pads, card.pad_value)
    weights = nnunet_importance(tuple(int(r) for r in card.roi_size))
    total = weight_sum = None
    for start in range(0, len(slices), sw_batch_size):
        batch = slices[start : start + sw_batch_size]
        windows = torch.cat([padded[(slice(None), slice(None), *sl)] for sl in batch]).to(device)
        logits = predictor(windows).float().cpu()
        if total is None:
            total = torch.zeros((logits.shape[1], *padded.shape[2:]), dtype=torch.float16)
            weight_sum = torch.zeros(padded.shape[2:], dtype=torch.float16)
        for window, sl in zip(logits, batch, strict=True):
            total[(slice(None), *sl)] += window * weights
            weight_sum[sl] += weights.half()
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, size, strict=True))
    return (total / weight_sum)[(slice(None), *crop)][None]


def window_start(window: Sequence[slice]) -> tuple[int, ...]:
    """A window's key: its start (voxels) in the padded volume, as `window_slices` and MONAI give it."""
    return tuple(int(s.start) for s in window)


def predict_logits(
    model: torch.nn.Module,
    tensor: torch.Tensor,
    card: ModelCard,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 4,
    progress: WindowProgress | None = None,
    kept: dict[tuple[int, ...], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Blended logits [1, C, X, Y, Z] (on the CPU) of a model-space tensor: the card's sliding windows (MONAI's
    or nnU-Net's), Gaussian blending. An nnU-Net model's folds are blended one by one and their float16 logits
    averaged, as nnUNetPredictor does.

    `kept` (MONAI windows only): {window start (`window_start`): None}; the raw logits [C, *roi] of those
    windows are stored into it (for `predict_logits_changed`).
    """
    if kept and card.window_rule != "monai":
        raise ValueError("Raw window logits are kept for MONAI's sliding windows only.")
    folds = model.fold_models() if isinstance(model, NnUNetNetwork) else [model]
    total = count_windows(tuple(tensor.shape[-3:]), card.roi_size, card.overlap, card.window_rule) * len(
        folds
    )
    done = 0
    if progress is not None:
        progress(0, total)

    def predictor_of(network: torch.nn.Module) -> Callable[..., torch.Tensor]:
        def predictor(windows: torch.Tensor, positions: Sequence = ()) -> torch.Tensor:
            nonlocal done
            logits = network(windows)
            for i, position in enumerate(positions if kept else ()):
                if window_start(position[2:]) in kept:
                    kept[window_start(position[2:])] = logits[i].clone()
            done += windows.shape[0]
            if progress is not None:
                progress(min(done, total), total)
            return logits

        return predictor

    with torch.no_grad():
        if card.window_rule == "nnunet":
            summed = None
            for network in folds:
                logits = _nnunet_sliding_window(predictor_of(network), tensor, card, device, sw_batch_size)
                summed = logits if summed is None else summed + logits
            return (summed / len(folds)).float()
        return sliding_window_inference(
            tensor.to(device),
            roi_size=tuple(card.roi_size),
            sw_batch_size=sw_batch_size,
            predictor=predictor_of(model),
            overlap=card.overlap,
            mode="gaussian",
            sw_device=device,
            device="cpu",
            with_coord=True,
        )


def predict_logits_changed(
    model: torch.nn.Module,
    tensor: torch.Tensor,
    clean_tensor: torch.Tensor,
    clean_logits: torch.Tensor,
    card: ModelCard,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 4,
    progress: WindowProgress | None = None,
    clean_windows: Mapping[tuple[int, ...], torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, int, tuple[slice, ...] | None]:
    """(blended logits of `tensor`, windows run, changed box) given `clean_logits` = `predict_logits(clean_tensor)`.

    Only the windows whose input differs from `clean_tensor`'s are run; the difference of their logits from
    the clean ones (`clean_windows`, the raw logits `predict_logits` kept of some windows; the others are run
    on `clean_tensor` too, in the same batch) goes through MONAI's `sliding_window_inference` (zero for
    every other window), whose Gaussian blend is linear (Σ w·logits / Σ w), and is added to `clean_logits`.
    Where no changed window reaches, the result is `clean_logits` bit for bit; elsewhere it equals a full
    run to float rounding (tested: labels equal). Both tensors [1, 1, X, Y, Z] on one grid; logits on the CPU.
    The changed box (slices of the X, Y, Z grid; None when no window changed) holds every voxel a changed
    window covers: outside it the logits are `clean_logits`, and so are their labels.
    """
    if card.window_rule != "monai":
        raise ValueError("Changed windows are re-run alone only with MONAI's sliding windows.")
    clean_windows = clean_windows or {}
    if tuple(tensor.shape) != tuple(clean_tensor.shape):
        raise ValueError(f"tensor {tuple(tensor.shape)} and clean tensor {tuple(clean_tensor.shape)} differ.")
    slices, pads = window_slices(tuple(tensor.shape[-3:]), card.roi_size, card.overlap)
    padded = pad_for_windows(tensor.to(device), pads)
    clean_padded = pad_for_windows(clean_tensor.to(device), pads)
    changed_windows = [
        window for window in slices if not torch.equal(padded[(0, 0, *window)], clean_padded[(0, 0, *window)])
    ]
    if not changed_windows:
        return clean_logits.clone(), 0, None
    box = tuple(
        slice(
            max(min(w[axis].start for w in changed_windows) - low, 0),
            min(max(w[axis].stop for w in changed_windows) - low, n),
        )
        for axis, ((low, _), n) in enumerate(zip(pads, tensor.shape[-3:], strict=True))
    )
    changed = {window_start(window) for window in changed_windows}
    total = len(slices)
    done = 0
    # zero logits per batch size, for the batches without a changed window
    nothing: dict[int, torch.Tensor] = {}
    if progress is not None:
        progress(0, total)

    def predictor(windows: torch.Tensor, positions: list) -> torch.Tensor:
        nonlocal done
        starts = [window_start(p[2:]) for p in positions]
        run = [i for i, start in enumerate(starts) if start in changed]
        shape = (windows.shape[0], clean_logits.shape[1], *windows.shape[2:])
        if not run:  # MONAI scales it in place by the importance map: zeros stay zeros
            difference = nothing.get(windows.shape[0])
            if difference is None:
                difference = nothing[windows.shape[0]] = windows.new_zeros(shape)
        else:
            difference = windows.new_empty(shape)
            difference[[i for i in range(shape[0]) if i not in run]] = 0.0  # the run ones are written below
            again = [i for i in run if clean_windows.get(starts[i]) is None]  # clean logits not kept
            clean = [clean_padded[(0, slice(None), *positions[i][2:])] for i in again]
            logits = model(torch.cat([windows[run], *[c[None] for c in clean]]))
            rerun = dict(zip(again, logits[len(run) :], strict=True))
            for j, i in enumerate(run):
                before = rerun[i] if i in rerun else clean_windows[starts[i]].to(logits.device)
                torch.sub(logits[j], before, out=difference[i])
        done += windows.shape[0]
        if progress is not None:
            progress(min(done, total), total)
        return difference

    with torch.no_grad():
        difference = sliding_window_inference(
            tensor.to(device),
            roi_size=tuple(card.roi_size),
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=card.overlap,
            mode="gaussian",
            sw_device=device,
            device="cpu",
            with_coord=True,
        )
    return clean_logits + difference, len(changed), box


def predict_labels(
    model: torch.nn.Module,
    tensor: torch.Tensor,
    card: ModelCard,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 4,
    progress: WindowProgress | None = None,
) -> torch.Tensor:
    """Argmax labels [1, 1, X, Y, Z] (int64, CPU) of a model-space tensor."""
    logits = predict_logits(model, tensor, card, device, sw_batch_size, progress)
    return logits.argmax(dim=1, keepdim=True)


def nnunet_preprocessing(card: ModelCard) -> NnUNetPreprocessing:
    """The nnU-Net preprocessing of an nnU-Net card (`nnunet.nnunet_card`)."""
    settings = card.nnunet
    return NnUNetPreprocessing(
        transpose_forward=tuple(settings["transpose_forward"]),
        spacing_mm=tuple(float(s) for s in card.spacing_mm),
        window_hu=(float(card.intensity_window_hu[0]), float(card.intensity_window_hu[1])),
        mean_hu=float(settings["mean_hu"]),
        std_hu=float(settings["std_hu"]),
        data=Resampling(**settings["resampling_data"]),
        probabilities=Resampling(**settings["resampling_probabilities"]),
    )


def model_space(image: sitk.Image, card: ModelCard) -> ModelSpaceImage:
    """A CT volume (HU) in the card's model space: nnU-Net's preprocessing for an nnU-Net card, else the
    card's orientation, spacing and HU window."""
    if card.nnunet:
        return to_nnunet_space(image, nnunet_preprocessing(card))
    return to_model_space(image, **card.preprocessing)


def segment_image(
    image: sitk.Image,
    card: ModelCard,
    model: torch.nn.Module,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 4,
    progress: WindowProgress | None = None,
) -> tuple[sitk.Image, ModelSpaceImage, torch.Tensor]:
    """(label map on the source grid, the model-space image, model-space labels) of a CT volume in HU; the
    source labels from the logits (`ModelSpaceImage.prediction_to_source`: nnU-Net resamples the logits)."""
    space = model_space(image, card)
    logits = predict_logits(model, space.tensor, card, device, sw_batch_size, progress)
    return space.prediction_to_source(logits), space, logits.argmax(dim=1, keepdim=True)
