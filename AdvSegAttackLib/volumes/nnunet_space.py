"""nnU-Net v2's model space: the preprocessing of `nnUNetPredictor` and its way back, reproduced from the plans
(nnU-Net itself is never imported; `Testing/test_nnunet.py` checks equality against it).

Forward, as nnU-Net's `DefaultPreprocessor` on a SimpleITK-read file:

1. the voxel array in SimpleITK's (z, y, x) order, as nnU-Net's SimpleITKIO reads it (no reorientation: the
   direction is not used), transposed by the plans' `transpose_forward` (with its spacing);
2. cropped to the bounding box of the nonzero voxels;
3. clipped to the foreground 0.5/99.5 percentiles of the plans (`window_hu`);
4. resampled to the plans' spacing: shape round(spacing / target · shape) per axis, spline order 3 (the
   plans' `order`) as skimage's `resize(mode="edge", anti_aliasing=False)` computes it (scipy's `zoom` with
   `grid_mode`, clipped to the input's range); where the spacing is anisotropic (largest / smallest > 3) in-plane
   slice by slice and order `order_z` (0) across slices.

The engine's model space is that clipped range scaled to [0, 1] (so the attacks see [0, 1] as for every model
and every budget is relative to `window_hu`); nnU-Net's z-score, (HU − mean) / std, is the first layer of the
network (`models.nnunet_networks`). Resampling commutes with that affine map, so the network sees nnU-Net's
input up to float rounding. Where the volume is smaller than the patch, nnU-Net pads with z = 0, i.e. with
the card's `pad_value` = (mean − low) / (high − low) here.

Back, as nnU-Net's `convert_predicted_logits_to_segmentation_with_correct_shape`: the logits resampled to the
cropped shape (order 1, order 0 across anisotropic slices), argmax, put into the crop box (background
elsewhere), transposed back (`prediction_to_source`). A perturbation goes back the same linear way; a reference
label map comes in by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .preprocess import _CHUNK_VOXELS, ModelSpaceImage

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD: slices are resampled apart beyond this spacing ratio


@dataclass(frozen=True)
class Resampling:
    """nnU-Net's `resample_data_or_seg_to_shape` arguments (a plans' `resampling_fn_*_kwargs`)."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None


@dataclass(frozen=True)
class NnUNetPreprocessing:
    """What a plans.json configuration says about the input (spacing in transposed array axis order, mm)."""

    transpose_forward: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    window_hu: tuple[float, float]  # foreground percentiles 0.5 and 99.5 (CTNormalization's clip)
    mean_hu: float
    std_hu: float
    data: Resampling = Resampling(3, 0, None)
    probabilities: Resampling = Resampling(1, 0, None)

    @property
    def transpose_backward(self) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))


def separate_axis(resampling: Resampling, spacing: Sequence[float], target: Sequence[float]) -> int | None:
    """The axis nnU-Net resamples apart (in-plane first, then across it with `order_z`), or None."""

    def low_resolution_axis(values: Sequence[float]) -> list[int]:
        values = np.asarray(values, dtype=float)
        return [int(i) for i in np.where(values.max() / values == 1)[0]]

    if resampling.force_separate_z is not None:
        axes = low_resolution_axis(spacing) if resampling.force_separate_z else []
    elif max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD:
        axes = low_resolution_axis(spacing)
    elif max(target) / min(target) > ANISOTROPY_THRESHOLD:
        axes = low_resolution_axis(target)
    else:
        axes = []
    return axes[0] if len(axes) == 1 else None


def _zoom(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """skimage's resize(order, mode="edge", anti_aliasing=False, clip=True) of a float64 array."""
    if tuple(array.shape) == tuple(shape):
        return array
    factors = [1 / (n / m) for n, m in zip(array.shape, shape, strict=True)]
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    if order > 1:  # a spline overshoots; linear and nearest stay within the input's range
        np.clip(out, array.min(), array.max(), out=out)
    return out


def resample(array: np.ndarray, shape: Sequence[int], resampling: Resampling, axis: int | None) -> np.ndarray:
    """`array` (3-D) resampled to `shape` as nnU-Net's `resample_data_or_seg` (not a segmentation), float64."""
    array = np.asarray(array, dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    if array.shape == shape:
        return array
    if axis is None:
        return _zoom(array, shape, resampling.order)
    plane = tuple(n for i, n in enumerate(shape) if i != axis)
    slices = [_zoom(np.take(array, i, axis=axis), plane, resampling.order) for i in range(array.shape[axis])]
    stacked = np.stack(slices, axis=axis)
    if stacked.shape[axis] == shape[axis]:
        return stacked
    # Across the slices: map_coordinates(order_z, mode="nearest") at (j + 0.5) · n / m − 0.5.
    n, m = stacked.shape[axis], shape[axis]
    position = (np.arange(m) + 0.5) * (n / m) - 0.5
    if resampling.order_z == 0:
        index = np.clip(np.floor(position + 0.5).astype(np.int64), 0, n - 1)
        return np.take(stacked, index, axis=axis)
    factors = [m / n if i == axis else 1.0 for i in range(3)]
    return ndimage.zoom(stacked, factors, order=resampling.order_z, mode="nearest", grid_mode=True)


def nonzero_box(array: np.ndarray) -> tuple[slice, slice, slice]:
    """nnU-Net's crop: the bounding box of the nonzero voxels (the whole array when there is none)."""
    boxes = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(array != 0, axis=other))
        boxes.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, array.shape[axis]))
    return tuple(boxes)


@dataclass
class NnUNetSpaceImage(ModelSpaceImage):
    """A source volume in an nnU-Net model's space (see the module docstring), with the way back."""

    preprocessing: NnUNetPreprocessing | None = None
    shape_transposed: tuple[int, int, int] = (0, 0, 0)  # the source array after transpose_forward
    box: tuple[slice, slice, slice] = (slice(None),) * 3  # nnU-Net's crop, in transposed axes
    spacing_transposed: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def _cropped_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.box)

    def _back_axis(self) -> int | None:
        return separate_axis(
            self.preprocessing.probabilities, self.preprocessing.spacing_mm, self.spacing_transposed
        )

    def _to_source_array(self, cropped: np.ndarray, fill=0) -> np.ndarray:
        """A cropped transposed array put into the whole volume and transposed back: (z, y, x) of the source."""
        whole = np.full(self.shape_transposed, fill, dtype=cropped.dtype)
        whole[self.box] = cropped
        return whole.transpose(self.preprocessing.transpose_backward)

    def _source_image(self, array_zyx: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
        image.CopyInformation(self.source)
        return image

    def prediction_to_source(self, logits: torch.Tensor) -> sitk.Image:
        """Labels on the source grid from model-space logits [1, C, ...]: each class's logits resampled to the
        cropped shape as nnU-Net does (kept in float16, as it keeps them), then argmax (first class on ties),
        background outside the crop."""
        logits = logits.detach().float().cpu()[0]
        axis, shape = self._back_axis(), self._cropped_shape
        best = labels = None
        for value in range(logits.shape[0]):
            resampled = resample(logits[value].numpy(), shape, self.preprocessing.probabilities, axis)
            resampled = resampled.astype(np.float16)
            if best is None:
                best, labels = resampled, np.zeros(shape, dtype=np.uint16)
            else:
                better = resampled > best
                best = np.where(better, resampled, best)
                labels[better] = value
        dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
        return self._source_image(self._to_source_array(labels.astype(dtype)))

    def labels_to_source(self, labels: torch.Tensor | np.ndarray) -> sitk.Image:
        """Model-space labels as a label map on the source grid (nearest neighbour)."""
        array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        array = array.reshape(array.shape[-3:])
        dtype = np.uint8 if array.max(initial=0) <= 255 else np.uint16
        nearest = Resampling(0, 0, None)
        resampled = resample(array.astype(np.float64), self._cropped_shape, nearest, self._back_axis())
        return self._source_image(self._to_source_array(resampled.astype(dtype)))

    def label_to_model(self, label: sitk.Image) -> torch.Tensor:
        """A source-grid label map as a LongTensor [1, 1, ...] on the model grid (nearest neighbour)."""
        array = sitk.GetArrayFromImage(label).transpose(self.preprocessing.transpose_forward)[self.box]
        nearest = Resampling(0, 0, None)
        axis = separate_axis(nearest, self.spacing_transposed, self.preprocessing.spacing_mm)
        resampled = resample(array.astype(np.float64), self.tensor.shape[-3:], nearest, axis)
        return torch.from_numpy(np.rint(resampled).astype(np.int64))[None, None]

    def perturbation_to_source_hu(self, adversarial: torch.Tensor) -> np.ndarray:
        """HU change on the source grid ((z, y, x), float32), resampled back as the logits are (linear)."""
        delta = (adversarial.detach().float().cpu() - self.tensor.cpu()).reshape(self.tensor.shape[-3:])
        low, high = self.window
        linear = Resampling(1, self.preprocessing.probabilities.order_z, None)
        back = resample(delta.numpy() * (high - low), self._cropped_shape, linear, self._back_axis())
        return self._to_source_array(back.astype(np.float32))

    def region_to_model(self, region: np.ndarray) -> torch.Tensor:
        """Bool [1, 1, ...]: the model voxels whose perturbation reaches a voxel of `region` ((z, y, x) on the
        source grid) through the resampling back: per axis, the floor and ceil of the model position
        (j + 0.5) · n / m − 0.5 of every region voxel index j (m source voxels, n model voxels)."""
        cropped = region.transpose(self.preprocessing.transpose_forward)[self.box]
        covered = np.zeros(self.tensor.shape[-3:], dtype=bool)
        model_shape = np.array(self.tensor.shape[-3:])
        scale = model_shape / np.array(cropped.shape)
        per_slab = max(1, _CHUNK_VOXELS // max(1, cropped[0].size))
        for start in range(0, cropped.shape[0], per_slab):
            index = np.argwhere(cropped[start : start + per_slab])
            index[:, 0] += start
            position = np.clip((index + 0.5) * scale - 0.5, 0, model_shape - 1)
            below = np.floor(position + 1e-6).astype(np.int64)
            above = np.ceil(position - 1e-6).astype(np.int64)
            for corner in np.ndindex(2, 2, 2):
                chosen = np.where(np.array(corner, dtype=bool), above, below)
                covered[chosen[:, 0], chosen[:, 1], chosen[:, 2]] = True
        return torch.from_numpy(covered)[None, None]


def to_nnunet_space(source: sitk.Image, preprocessing: NnUNetPreprocessing) -> NnUNetSpaceImage:
    """The source volume (HU) in an nnU-Net model's space: [1, 1, ...] float32, [0, 1] over `window_hu`."""
    transpose = preprocessing.transpose_forward
    array = sitk.GetArrayFromImage(source).astype(np.float32).transpose(transpose)
    spacing = tuple(float(s) for s in np.array(source.GetSpacing()[::-1])[list(transpose)])
    box = nonzero_box(array)
    cropped = array[box]
    target = preprocessing.spacing_mm
    shape = [int(round(s / t * n)) for s, t, n in zip(spacing, target, cropped.shape, strict=True)]
    low, high = preprocessing.window_hu
    scaled = (np.clip(cropped, low, high) - np.float32(low)) / np.float32(high - low)
    axis = separate_axis(preprocessing.data, spacing, target)
    resampled = resample(scaled, shape, preprocessing.data, axis).astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(resampled))[None, None]
    return NnUNetSpaceImage(
        orientation="nnU-Net array axes",
        window=(float(low), float(high)),
        source=source,
        grid=None,
        tensor=tensor,
        resampled=True,
        preprocessing=preprocessing,
        shape_transposed=tuple(int(n) for n in array.shape),
        box=box,
        spacing_transposed=spacing,
    )
