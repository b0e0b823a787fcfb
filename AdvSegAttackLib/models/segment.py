"""Sliding-window segmentation with MONAI, mapped back to the source grid."""

from __future__ import annotations

from collections.abc import Callable

import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from ..volumes.preprocess import ModelSpaceImage, to_model_space
from .cards import ModelCard

# progress(done_windows, total_windows)
WindowProgress = Callable[[int, int], None]


def count_windows(shape: tuple[int, ...], roi_size, overlap: float) -> int:
    """Number of sliding windows MONAI uses for a spatial `shape` (after its padding to the ROI)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    padded = [max(s, r) for s, r in zip(shape, roi_size, strict=True)]
    interval = _get_scan_interval(padded, roi_size, len(padded), [overlap] * len(padded))
    return len(dense_patch_slices(padded, roi_size, interval))


def predict_logits(
    model: torch.nn.Module,
    tensor: torch.Tensor,
    card: ModelCard,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 4,
    progress: WindowProgress | None = None,
) -> torch.Tensor:
    """Blended logits [1, C, X, Y, Z] (on the CPU) of a model-space tensor: MONAI sliding window, Gaussian blending."""
    total = count_windows(tuple(tensor.shape[-3:]), card.roi_size, card.overlap)
    done = 0
    if progress is not None:
        progress(0, total)

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        nonlocal done
        logits = model(windows)
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
        )


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
