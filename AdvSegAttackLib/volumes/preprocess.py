"""Model space: a model's orientation, spacing and HU window (a card's `preprocessing`); and the inverse path
back to the source grid.

Forward: source volume -> reorient (axis permutation/flip, exact) -> resample to the model spacing (linear;
skipped when the spacing already matches) -> clip to the HU window and scale to [0, 1] -> tensor
[1, 1, X, Y, Z] in the orientation's voxel axis order (for "RAS": X to the right, ..., Z superior; as MONAI after
`Orientationd("RAS")`).

Inverse: a model-space perturbation is scaled to HU, resampled onto the source grid (linear) and added to the
source voxels inside the HU window; every other voxel is bit-identical to the source. Voxels outside the
window (air, fat, bone: the model sees them clipped) never change: moving them into the window would be a
jump of hundreds of HU that no reader could miss. Attacks are told so (`attackable_mask`), so what they
optimise is what gets written. Changed voxels are put back on the source's value lattice (`ValueLattice`):
integer HU whenever every source voxel is an integer, whatever the pixel type (int16, or float32/float64 as
archives often hold CT); offset + k * step for a source on another lattice (a DICOM rescale slope such as
0.3 HU per stored unit), with the source's own float value wherever it holds one; unrounded only for a
float source whose values lie on no lattice. The pixel type is the source's (integers clipped to its
range). Label maps go both ways by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

_CHUNK_VOXELS = 4_000_000  # voxels per chunk of the whole-volume passes of ValueLattice
_LOOKUP_MAX = 1 << 24  # largest lattice span (steps) with a table of the source's exact values
_FINEST_STEP_HU = 1e-3  # no CT value lattice is finer than this


def _chunks(array: np.ndarray):
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK_VOXELS):
        yield flat[start : start + _CHUNK_VOXELS]


@dataclass(frozen=True)
class ValueLattice:
    """The values a source volume's voxels take: offset + k * step HU for integer k (or no lattice at all).

    `snap` puts new values onto it, in the source's dtype. For a float source on a non-integer lattice it
    returns the source's own float value for a lattice point the source holds (so the written values are
    the source's bit for bit, not near-misses of them) and offset + k * step for any other.
    """

    dtype: np.dtype
    offset: float = 0.0
    step: float | None = 1.0  # None: a float source on no lattice (values are kept as they are)
    table_start: int = 0  # lattice index of table[0]
    table: np.ndarray | None = None  # the source's value at each lattice index (NaN where it has none)

    @classmethod
    def of(cls, source: np.ndarray) -> ValueLattice:
        """The lattice of `source`'s voxels: integers if every voxel is one, else found from the values."""
        source = np.asarray(source)
        if np.issubdtype(source.dtype, np.integer) or all(
            np.array_equal(chunk, np.rint(chunk)) for chunk in _chunks(source)
        ):
            return cls(source.dtype)
        found = _fit_lattice(source)
        if found is None:
            return cls(source.dtype, step=None)
        offset, step = found
        first, last = (int(np.rint((v - offset) / step)) for v in (source.min(), source.max()))
        if last - first >= _LOOKUP_MAX:
            return cls(source.dtype, offset, step)
        table = np.full(last - first + 1, np.nan, dtype=source.dtype)
        for chunk in _chunks(source):
            table[np.rint((chunk - offset) / step).astype(np.int64) - first] = chunk
        return cls(source.dtype, offset, step, first, table)

    def snap(self, values: np.ndarray) -> np.ndarray:
        """`values` (HU) on the lattice, as the source's dtype (integer types clipped to their range)."""
        values = np.asarray(values, dtype=np.float64)
        if self.step is None:
            return values.astype(self.dtype)
        if self.step == 1.0 and self.offset == 0.0:
            snapped = np.rint(values)
            if np.issubdtype(self.dtype, np.integer):
                info = np.iinfo(self.dtype)
                snapped = np.clip(snapped, info.min, info.max)
            return snapped.astype(self.dtype)
        steps = np.rint((values - self.offset) / self.step)
        snapped = (self.offset + steps * self.step).astype(self.dtype)
        if self.table is not None:
            index = steps.astype(np.int64) - self.table_start
            inside = (index >= 0) & (index < self.table.size)
            known = self.table[index[inside]]
            snapped[inside] = np.where(np.isnan(known), snapped[inside], known)
        return snapped


def _fit_lattice(source: np.ndarray) -> tuple[float, float] | None:
    """(offset, step) HU with every voxel within 1 % of a step of offset + k * step, or None.

    The step is the greatest common divisor (Euclid, to the dtype's precision) of the gaps between the
    distinct values of a strided sample, refined by least squares over them; every voxel is then checked.
    """
    sample = np.unique(source.reshape(-1)[:: max(1, source.size // 1_000_000)]).astype(np.float64)
    if sample.size < 2:
        return None
    tolerance = 64 * np.finfo(source.dtype).eps * max(abs(sample[0]), abs(sample[-1]), 1.0)
    finest = max(_FINEST_STEP_HU, 4 * tolerance)
    step = 0.0
    for gap in np.unique(np.diff(sample)):
        while gap > tolerance:
            step, gap = gap, step % gap
        if 0.0 < step < finest:  # values on no lattice (Euclid wears the step down to rounding noise)
            return None
    if step == 0.0:
        return None
    # Euclid's step carries the values' rounding error (float32: ~1e-4 HU); refine it over ever longer spans
    # (10, 100, ... steps, then the whole sample: the count of steps in each stays exact), then fit by least
    # squares.
    spans = sample[1:] - sample[0]
    count = spans[-1] / step
    for target in [*(10.0 ** np.arange(1, np.ceil(np.log10(max(count, 10.0))))), count]:
        span = spans[np.abs(spans - target * step).argmin()]
        step = span / max(float(np.rint(span / step)), 1.0)
    steps = np.rint((sample - sample[0]) / step)
    step, offset = (float(v) for v in np.polyfit(steps, sample, 1))
    for chunk in _chunks(source):
        ratio = (chunk.astype(np.float64) - offset) / step
        if np.abs(ratio - np.rint(ratio)).max() > 0.01:
            return None
    return offset, step


def _array_xyz(image: sitk.Image) -> np.ndarray:
    """Voxels in index order (x, y, z) (SimpleITK arrays are (z, y, x))."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def _image_from_xyz(array: np.ndarray, geometry: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(geometry)
    return image


@dataclass
class ModelSpaceImage:
    """A source volume in a model's space, with what is needed to go back."""

    orientation: str  # the model's orientation code, e.g. "RAS"
    window: tuple[float, float]  # the model's HU window (low, high)
    source: sitk.Image
    grid: sitk.Image  # model-space geometry (voxels not used)
    tensor: torch.Tensor  # [1, 1, X, Y, Z] float32 in [0, 1]
    resampled: bool  # False when only a reorientation was needed

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

    def region_to_model(self, region: np.ndarray) -> torch.Tensor:
        """Bool [1, 1, X, Y, Z]: the model voxels whose perturbation reaches a voxel of `region` (a bool
        SimpleITK (z, y, x) array on the source grid) through the linear resampling back to the source.

        A source voxel at model index c takes its value from the model voxels floor(c) and ceil(c) along each
        axis; those of every region voxel are marked (one voxel each where c is a grid point).
        """
        source, grid = self.source, self.grid
        to_physical = np.array(source.GetDirection()).reshape(3, 3) * np.array(source.GetSpacing())
        from_physical = np.linalg.inv(
            np.array(grid.GetDirection()).reshape(3, 3) * np.array(grid.GetSpacing())
        )
        matrix = from_physical @ to_physical
        offset = from_physical @ (np.array(source.GetOrigin()) - np.array(grid.GetOrigin()))
        size = np.array(grid.GetSize())
        covered = np.zeros(tuple(size), dtype=bool)
        per_slab = max(1, _CHUNK_VOXELS // max(1, region[0].size))
        for start in range(0, region.shape[0], per_slab):
            zyx = np.argwhere(region[start : start + per_slab])
            zyx[:, 0] += start
            position = zyx[:, ::-1] @ matrix.T + offset  # continuous model index (x, y, z)
            position = position[np.all((position > -0.5) & (position < size - 0.5), axis=1)]
            below = np.clip(np.floor(position + 1e-6).astype(np.int64), 0, size - 1)
            above = np.clip(np.ceil(position - 1e-6).astype(np.int64), 0, size - 1)
            for corner in np.ndindex(2, 2, 2):
                index = np.where(np.array(corner, dtype=bool), above, below)
                covered[index[:, 0], index[:, 1], index[:, 2]] = True
        return torch.from_numpy(covered)[None, None]

    def label_to_model(self, label: sitk.Image) -> torch.Tensor:
        """A source-grid label map as a LongTensor [1, 1, X, Y, Z] on the model grid (nearest neighbour)."""
        oriented = sitk.DICOMOrient(label, self.orientation)
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

    def prediction_to_source(self, logits: torch.Tensor) -> sitk.Image:
        """The label map on the source grid of model-space logits [1, C, X, Y, Z]: argmax, then nearest neighbour.
        (`max(...).indices` is argmax with the same first-maximum rule, and 4x faster on the CPU.)"""
        return self.labels_to_source(logits.max(dim=1).indices)

    def perturbation_to_source_hu(self, adversarial: torch.Tensor) -> np.ndarray:
        """HU change on the source grid (SimpleITK (z, y, x) array, float32) of a model-space adversarial image."""
        delta = (
            (adversarial.detach().float().cpu() - self.tensor.cpu()).reshape(self.tensor.shape[-3:]).numpy()
        )
        low, high = self.window
        delta_hu = _image_from_xyz((delta * (high - low)).astype(np.float32), self.grid)
        return sitk.GetArrayFromImage(self._to_source(delta_hu, sitk.sitkLinear))

    def adversarial_to_source(
        self, adversarial: torch.Tensor, region: np.ndarray | None = None
    ) -> sitk.Image:
        """The adversarial volume on the source grid, in HU, with the source's pixel type and geometry.

        Only voxels inside the HU window and inside `region` (bool SimpleITK (z, y, x) array on the source grid,
        None = everywhere) change; they are put on the source's value lattice (`ValueLattice`).
        """
        delta = self.perturbation_to_source_hu(adversarial)
        source = sitk.GetArrayFromImage(self.source)
        low, high = self.window
        changed = (delta != 0) & (source >= low) & (source <= high)
        if region is not None:
            changed &= region
        out = source.copy()
        out[changed] = ValueLattice.of(source).snap(source[changed] + delta[changed].astype(np.float64))
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


def model_grid(source: sitk.Image, orientation: str, spacing_mm: Sequence[float]) -> tuple[sitk.Image, bool]:
    """(empty image with the model-space geometry, whether resampling is needed) of `source` reoriented to
    `orientation` and resampled to `spacing_mm` (mm, in that orientation's axis order)."""
    oriented_info = sitk.DICOMOrient(sitk.Image([2, 2, 2], sitk.sitkUInt8), orientation)  # direction only
    direction = oriented_info.GetDirection()
    oriented = sitk.DICOMOrient(source, orientation) if source.GetNumberOfPixels() else source
    spacing = np.array(oriented.GetSpacing())
    target = np.array(spacing_mm, dtype=float)
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


def to_model_space(
    source: sitk.Image, orientation: str, spacing_mm: Sequence[float], window_hu: tuple[float, float]
) -> ModelSpaceImage:
    """The source volume (HU) as a [1, 1, X, Y, Z] tensor in [0, 1] on the model grid: reoriented to
    `orientation`, resampled to `spacing_mm` and scaled from `window_hu` (a card gives them as
    `to_model_space(image, **card.preprocessing)`)."""
    grid, resample = model_grid(source, orientation, spacing_mm)
    oriented = sitk.DICOMOrient(sitk.Cast(source, sitk.sitkFloat32), orientation)
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
    low, high = (float(w) for w in window_hu)
    array = (np.clip(_array_xyz(oriented), low, high) - low) / (high - low)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return ModelSpaceImage(orientation, (low, high), source, grid, tensor, resample)
