"""Sliding-window segmentation with MONAI, mapped back to the source grid, and the positions of MONAI's
sliding windows (`window_slices`), which the attacks' objective uses too."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from ..volumes.preprocess import ModelSpaceImage, to_model_space
from .cards import ModelCard

# progress(done_windows, total_windows)
WindowProgress = Callable[[int, int], None]


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's sliding-window step (voxels): int(roi·(1−overlap)) (≥ 1), or roi where roi == image size."""
    return tuple(
        int(r) if r == n else max(int(r * (1 - overlap)), 1)
        for n, r in zip(image_size, roi_size, strict=True)
    )


def window_slices(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> tuple[list[tuple[slice, ...]], tuple[tuple[int, int], ...]]:
    """Windows (slices into the padded volume) and per-axis (low, high) zero padding, as MONAI builds them."""
    pads = []
    for n, r in zip(image_size, roi_size, strict=True):
        diff = max(int(r) - int(n), 0)
        pads.append((diff // 2, diff - diff // 2))
    padded = tuple(int(n) + lo + hi for n, (lo, hi) in zip(image_size, pads, strict=True))
    slices = dense_patch_slices(
        padded, tuple(int(r) for r in roi_size), scan_interval(padded, roi_size, overlap)
    )
    return list(slices), tuple(pads)


def pad_for_windows(volume: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """`volume` [N, C, X, Y, Z] zero-padded by `window_slices`' per-axis (low, high) pads, as MONAI pads it."""
    if not any(low + high for low, high in pads):
        return volume
    (x0, x1), (y0, y1), (z0, z1) = pads
    return F.pad(volume, (z0, z1, y0, y1, x0, x1))


def count_windows(shape: tuple[int, ...], roi_size, overlap: float) -> int:
    """Number of sliding windows MONAI uses for a spatial `shape` (after its padding to the ROI)."""
    return len(window_slices(shape, roi_size, overlap)[0])


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
    """Blended logits [1, C, X, Y, Z] (on the CPU) of a model-space tensor: MONAI sliding window, Gaussian blending.

    `kept`: {window start (`window_start`): None}; the raw logits [C, *roi] of those windows are stored
    into it (for `predict_logits_changed`).
    """
    total = count_windows(tuple(tensor.shape[-3:]), card.roi_size, card.overlap)
    done = 0
    if progress is not None:
        progress(0, total)

    def predictor(windows: torch.Tensor, positions: list) -> torch.Tensor:
        nonlocal done
        logits = model(windows)
        for i, position in enumerate(positions if kept else ()):
            if window_start(position[2:]) in kept:
                kept[window_start(position[2:])] = logits[i].clone()
        done += windows.shape[0]
        if progress is not None:
            progress(min(done, total), total)
        return logits

    with torch.no_grad():
        return sliding_window_inference(
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
) -> tuple[torch.Tensor, int]:
    """(blended logits of `tensor`, windows run) given `clean_logits` = `predict_logits(clean_tensor)`.

    Only the windows whose input differs from `clean_tensor`'s are run; the difference of their logits from
    the clean ones (`clean_windows`, the raw logits `predict_logits` kept of some windows; the others are run
    on `clean_tensor` too, in the same batch) goes through MONAI's `sliding_window_inference` (zero for
    every other window), whose Gaussian blend is linear (Σ w·logits / Σ w), and is added to `clean_logits`.
    Where no changed window reaches, the result is `clean_logits` bit for bit; elsewhere it equals a full
    run to float rounding (tested: labels equal). Both tensors [1, 1, X, Y, Z] on one grid; logits on the CPU.
    """
    clean_windows = clean_windows or {}
    if tuple(tensor.shape) != tuple(clean_tensor.shape):
        raise ValueError(f"tensor {tuple(tensor.shape)} and clean tensor {tuple(clean_tensor.shape)} differ.")
    slices, pads = window_slices(tuple(tensor.shape[-3:]), card.roi_size, card.overlap)
    padded = pad_for_windows(tensor.to(device), pads)
    clean_padded = pad_for_windows(clean_tensor.to(device), pads)
    changed = {
        window_start(window)
        for window in slices
        if not torch.equal(padded[(0, 0, *window)], clean_padded[(0, 0, *window)])
    }
    if not changed:
        return clean_logits.clone(), 0
    total = len(slices)
    done = 0
    if progress is not None:
        progress(0, total)

    def predictor(windows: torch.Tensor, positions: list) -> torch.Tensor:
        nonlocal done
        starts = [window_start(p[2:]) for p in positions]
        run = [i for i, start in enumerate(starts) if start in changed]
        difference = windows.new_zeros((windows.shape[0], clean_logits.shape[1], *windows.shape[2:]))
        if run:
            again = [i for i in run if clean_windows.get(starts[i]) is None]  # clean logits not kept
            clean = [clean_padded[(0, slice(None), *positions[i][2:])] for i in again]
            logits = model(torch.cat([windows[run], *[c[None] for c in clean]]))
            rerun = dict(zip(again, logits[len(run) :], strict=True))
            for j, i in enumerate(run):
                before = rerun[i] if i in rerun else clean_windows[starts[i]].to(logits.device)
                difference[i] = logits[j] - before
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
    return clean_logits + difference, len(changed)


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


def segment_image(
    image: sitk.Image,
    card: ModelCard,
    model: torch.nn.Module,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 4,
    progress: WindowProgress | None = None,
) -> tuple[sitk.Image, ModelSpaceImage, torch.Tensor]:
    """(label map on the source grid, the model-space image, model-space labels) of a CT volume in HU."""
    space = to_model_space(image, **card.preprocessing)
    labels = predict_labels(model, space.tensor, card, device, sw_batch_size, progress)
    return space.labels_to_source(labels), space, labels
