"""Model space: the card's orientation, spacing and HU window; and the inverse path back to the source grid.

Forward: source volume -> reorient (axis permutation/flip, exact) -> resample to the card spacing (linear;
skipped when the spacing already matches) -> clip to the HU window and scale to [0, 1] -> tensor
[1, 1, X, Y, Z] in the card's voxel axis order (for "RAS": X to the right, ..., Z superior; as MONAI after
`Orientationd("RAS")`).

Inverse: a model-space perturbation is scaled to HU, resampled onto the source grid (linear) and added to the
source voxels inside the HU window; every other voxel is bit-identical to the source. Voxels outside the
window (air, fat, bone: the model sees them clipped) never change: moving them into the window would be a
jump of hundreds of HU that no reader could miss. Attacks are told so (`attackable_mask`), so what they
optimise is what gets written. Integer sources are written back as the same integer
type, rounded and clipped to its range. Label maps go both ways by nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from .cards import ModelCard

_INTEGER_RANGES = {
    sitk.sitkInt8: np.iinfo(np.int8),
    sitk.sitkUInt8: np.iinfo(np.uint8),
    sitk.sitkInt16: np.iinfo(np.int16),
    sitk.sitkUInt16: np.iinfo(np.uint16),
    sitk.sitkInt32: np.iinfo(np.int32),
    sitk.sitkUInt32: np.iinfo(np.uint32),
    sitk.sitkInt64: np.iinfo(np.int64),
    sitk.sitkUInt64: np.iinfo(np.uint64),
}


def _array_xyz(image: sitk.Image) -> np.ndarray:
    """Voxels in index order (x, y, z) (SimpleITK arrays are (z, y, x))."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def _image_from_xyz(array: np.ndarray, geometry: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(geometry)
    return image


@dataclass
class ModelSpaceImage:
    """A source volume in a card's model space, with what is needed to go back."""

    card: ModelCard
    source: sitk.Image
    grid: sitk.Image  # model-space geometry (voxels not used)
    tensor: torch.Tensor  # [1, 1, X, Y, Z] float32 in [0, 1]
    resampled: bool  # False when only a reorientation was needed

    @property
    def window(self) -> tuple[float, float]:
        low, high = self.card.intensity_window_hu
        return float(low), float(high)

    def _to_source(self, image: sitk.Image, interpolator: int, default: float = 0.0) -> sitk.Image:
        if not self.resampled:
            oriented = sitk.DICOMOrient(image, _orientation_code(self.source))
            if _same_grid(oriented, self.source):
                oriented.CopyInformation(self.source)
                return oriented
        return sitk.Resample(image, self.source, sitk.Transform(), interpolator, default, image.GetPixelID())

    def attackable_mask(self) -> torch.Tensor:
        """Bool [1, 1, X, Y, Z]: model voxels strictly inside the HU window, the only ones an attack may change."""
        return (self.tensor > 0) & (self.tensor < 1)

    def label_to_model(self, label: sitk.Image) -> torch.Tensor:
        """A source-grid label map as a LongTensor [1, 1, X, Y, Z] on the model grid (nearest neighbour)."""
        oriented = sitk.DICOMOrient(label, self.card.orientation)
        if not self.resampled and _same_grid(oriented, self.grid):
            on_grid = oriented
        else:
            on_grid = sitk.Resample(
                label, self.grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID()
            )
        return torch.from_numpy(_array_xyz(on_grid).astype(np.int64))[None, None]

    def labels_to_source(self, labels: torch.Tensor | np.ndarray) -> sitk.Image:
        """Model-space labels [X, Y, Z] (or [1, 1, X, Y, Z]) as a uint8/uint16 label map on the source grid."""
        array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        array = array.reshape(array.shape[-3:])
        dtype = np.uint8 if array.max(initial=0) <= 255 else np.uint16
        return self._to_source(_image_from_xyz(array.astype(dtype), self.grid), sitk.sitkNearestNeighbor)

    def perturbation_to_source_hu(self, adversarial: torch.Tensor) -> np.ndarray:
        """HU change on the source grid (SimpleITK (z, y, x) array, float32) of a model-space adversarial image."""
        delta = (
            (adversarial.detach().float().cpu() - self.tensor.cpu()).reshape(self.tensor.shape[-3:]).numpy()
        )
        low, high = self.window
        delta_hu = _image_from_xyz((delta * (high - low)).astype(np.float32), self.grid)
        return sitk.GetArrayFromImage(self._to_source(delta_hu, sitk.sitkLinear))

    def adversarial_to_source(self, adversarial: torch.Tensor) -> sitk.Image:
        """The adversarial volume on the source grid, in HU, with the source's pixel type and geometry."""
        delta = self.perturbation_to_source_hu(adversarial).astype(np.float64)
        source = sitk.GetArrayFromImage(self.source)
        low, high = self.window
        changed = (delta != 0) & (source >= low) & (source <= high)
        values = source + delta
        pixel_id = self.source.GetPixelID()
        if pixel_id in _INTEGER_RANGES:
            info = _INTEGER_RANGES[pixel_id]
            values = np.clip(np.rint(values), info.min, info.max)
        out = np.where(changed, values.astype(source.dtype), source)
        image = sitk.GetImageFromArray(out)
        image.CopyInformation(self.source)
        return image


def _orientation_code(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-6)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-5)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-9)
    )


def model_grid(source: sitk.Image, card: ModelCard) -> tuple[sitk.Image, bool]:
    """(empty image with the model-space geometry, whether resampling is needed) for `source` under `card`."""
    oriented_info = sitk.DICOMOrient(
        sitk.Image([2, 2, 2], sitk.sitkUInt8), card.orientation
    )  # direction only
    direction = oriented_info.GetDirection()
    oriented = sitk.DICOMOrient(source, card.orientation) if source.GetNumberOfPixels() else source
    spacing = np.array(oriented.GetSpacing())
    target = np.array(card.spacing_mm, dtype=float)
    if np.allclose(spacing, target, rtol=0, atol=1e-6):
        grid = sitk.Image(oriented.GetSize(), sitk.sitkUInt8)
        grid.CopyInformation(oriented)
        return grid, False
    size = np.maximum(np.round(np.array(oriented.GetSize()) * spacing / target), 1).astype(int)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(target.tolist())
    grid.SetDirection(oriented.GetDirection() if oriented is not source else direction)
    # Keep the physical centre of the volume: half a source voxel and half a model voxel in from each edge.
    first_corner = np.array(oriented.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))
    axes = np.array(oriented.GetDirection()).reshape(3, 3)
    extent_source = spacing * np.array(oriented.GetSize())
    extent_model = target * size
    origin = first_corner + axes @ ((extent_source - extent_model) / 2 + target / 2)
    grid.SetOrigin(origin.tolist())
    return grid, True


def to_model_space(source: sitk.Image, card: ModelCard) -> ModelSpaceImage:
    """The source volume (HU) as a [1, 1, X, Y, Z] tensor in [0, 1] on the card's grid."""
    grid, resample = model_grid(source, card)
    oriented = sitk.DICOMOrient(sitk.Cast(source, sitk.sitkFloat32), card.orientation)
    if resample:
        oriented = sitk.Resample(
            oriented,
            grid,
            sitk.Transform(),
            sitk.sitkLinear,
            0.0,
            sitk.sitkFloat32,
            useNearestNeighborExtrapolator=True,
        )
    low, high = card.intensity_window_hu
    array = (np.clip(_array_xyz(oriented), low, high) - low) / (high - low)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return ModelSpaceImage(card=card, source=source, grid=grid, tensor=tensor, resampled=resample)
