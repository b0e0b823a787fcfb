"""Volumes with their geometry: reading, validating and atomically writing images and label maps.

Images are `SimpleITK.Image`s, so origin, spacing and direction travel with the voxels. Readers accept
NIfTI, NRRD, MetaImage and DICOM series folders; labels also Slicer `.seg.nrrd`. Every write goes to a
temporary name in the destination folder and is renamed at the end, so a failure leaves nothing partial.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..models.labels import normalise_organ_name
from .staging import make_staging_dir, umask_mode

sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK warnings are noise for users; errors still raise

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def full_suffix(path: Path) -> str:
    """`.nii.gz`, `.seg.nrrd` or the plain suffix of `path` (lower case)."""
    name = path.name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it onto `path` if the block succeeds.

    The file gets the mode of a file created normally (0o666 less the umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{full_suffix(path)}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(umask_mode())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file, or of every file of a folder in sorted order (DICOM series)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder} is a folder without a DICOM series.")
    if len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM series; give a folder with exactly one.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


@dataclass(frozen=True)
class _NiftiLayout:
    """Where a NIfTI-1 (or Analyze) file keeps its voxels: the data file, the first voxel byte, the type."""

    data_path: Path  # the file itself (`.nii`, `.nii.gz`) or the `.img` of a `.hdr`/`.img` pair
    offset: int  # of the first voxel byte in the uncompressed data file
    voxels: int
    bitpix: int
    dtype: np.dtype | None  # with the file's byte order; None for types numpy does not read directly


# NIfTI datatype codes of the scalar types (complex and RGB types are refused later as multi-component)
_NIFTI_DTYPES = {
    2: "u1",
    4: "i2",
    8: "i4",
    16: "f4",
    64: "f8",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
}
NIFTI_SUFFIXES = (".nii.gz", ".hdr.gz", ".img.gz", ".nii", ".hdr", ".img")  # longest match first


def _nifti_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in NIFTI_SUFFIXES if name.endswith(s)), None)


def _open_maybe_gzip(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _pair_partner(path: Path, suffix: str) -> Path:
    """The other file of a `.hdr`/`.img` pair (compressed or not, whichever exists)."""
    stem = path.name[: -len(suffix)]
    wanted = ".img" if suffix.startswith(".hdr") else ".hdr"
    candidates = [path.with_name(stem + wanted + gz) for gz in ("", ".gz")]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _nifti_layout(path: Path) -> _NiftiLayout | None:
    """The voxel layout of a NIfTI-1 or Analyze file (single file or pair) from its header.

    None when the header is cut short; `voxels` -1 when its size field is not 348 in either byte order (not a
    NIfTI-1 header, e.g. NIfTI-2: SimpleITK read it, so it is left alone).
    """
    suffix = _nifti_suffix(path)
    header_path = _pair_partner(path, suffix) if suffix and suffix.startswith(".img") else path
    with _open_maybe_gzip(header_path) as handle:
        header = handle.read(348)
    if len(header) < 348:
        return None
    endian = next((e for e in "<>" if struct.unpack(e + "i", header[:4])[0] == 348), None)
    if endian is None:
        return _NiftiLayout(path, 0, -1, 0, None)
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
    offset = int(struct.unpack(endian + "f", header[108:112])[0])
    voxels = int(np.prod([max(d, 1) for d in dims[1 : 1 + min(max(dims[0], 1), 7)]]))
    code = _NIFTI_DTYPES.get(datatype)
    dtype = np.dtype(code).newbyteorder(endian) if code else None
    single_file = header[344:348] == b"n+1\0"
    data_path = (
        header_path if single_file else _pair_partner(header_path, _nifti_suffix(header_path) or ".hdr")
    )
    return _NiftiLayout(data_path, offset, voxels, bitpix, dtype)


def _nifti_is_complete(layout: _NiftiLayout) -> bool:
    """False when the data file holds fewer voxel bytes than the header promises (ITK reads such files silently).

    For a gzipped file the gzip trailer's uncompressed size (mod 2**32) must match the header's promise.
    """
    expected = layout.offset + layout.voxels * layout.bitpix // 8
    if not layout.data_path.is_file():
        return False
    if layout.data_path.name.lower().endswith(".gz"):
        with open(layout.data_path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer = struct.unpack("<I", handle.read(4))[0]
        return trailer == expected % (1 << 32)
    return layout.data_path.stat().st_size >= expected


def _nifti_non_finite(layout: _NiftiLayout, image: sitk.Image) -> int:
    """Number of NaN or infinite voxels stored in a floating-point NIfTI file (0 for other types).

    The NIfTI library under SimpleITK replaces them by 0 while reading, so when the read `image` holds exact
    zeros the file itself is scanned, in chunks of 16 MiB (one more decompression pass for `.nii.gz`).
    """
    if layout.dtype is None or layout.dtype.kind != "f" or sitk.GetArrayViewFromImage(image).all():
        return 0
    count, remaining = 0, layout.voxels
    chunk = (16 << 20) // layout.dtype.itemsize
    with _open_maybe_gzip(layout.data_path) as handle:
        handle.seek(layout.offset)
        while remaining > 0:
            data = handle.read(min(remaining, chunk) * layout.dtype.itemsize)
            values = np.frombuffer(data, dtype=layout.dtype, count=len(data) // layout.dtype.itemsize)
            if values.size == 0:
                break
            count += values.size - int(np.count_nonzero(np.isfinite(values)))
            remaining -= values.size
    return count


def _check_finite(image: sitk.Image, path: Path | str, stored_non_finite: int = 0) -> None:
    """InputError when the image, or the file behind it (`stored_non_finite`), has NaN or infinite voxels."""
    count = stored_non_finite
    if not count and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        voxels = sitk.GetArrayViewFromImage(image)
        count = voxels.size - int(np.count_nonzero(np.isfinite(voxels)))
    if count:
        raise InputError(f"{path} contains {count} NaN or infinite voxels.")


def _read_any(path: str | Path, what: str) -> sitk.Image:
    """Read with SimpleITK; NIfTI files are also checked for truncation and for NaN/Inf the reader zeroed."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    try:
        image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise InputError(f"{path} could not be read as {what} ({first[:160]}).") from None
    stored_non_finite = 0
    if path.is_file() and _nifti_suffix(path):
        layout = _nifti_layout(path)
        if layout is None or (layout.voxels >= 0 and not _nifti_is_complete(layout)):
            raise InputError(f"{path} is truncated: it holds fewer voxels than its header declares.")
        stored_non_finite = _nifti_non_finite(layout, image)
    _check_finite(image, path, stored_non_finite)
    return image


def _check_volume(image: sitk.Image, path: Path | str) -> None:
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}-D image; a 3-D volume is needed.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar CT is needed."
        )
    if min(image.GetSize()) < 2:
        raise InputError(f"{path} has size {image.GetSize()}: a single slice is not a 3-D volume.")


def read_image(path: str | Path) -> sitk.Image:
    """A 3-D scalar image (HU for CT) from a file or a DICOM series folder, validated (finite voxels, also in NIfTI)."""
    image = _read_any(path, "an image")
    _check_volume(image, path)
    return image


def check_image(image: sitk.Image, name: str) -> sitk.Image:
    """An image given in memory, validated as `read_image` validates a file (3-D, scalar, finite voxels);
    InputError naming it as `name` (e.g. "the image")."""
    _check_finite(image, name)
    _check_volume(image, name)
    return image


def same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within `tolerance_mm`)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    )


def _physical_corners(image: sitk.Image) -> np.ndarray:
    size = np.array(image.GetSize()) - 1
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.array(bits) * size])
        for bits in np.ndindex(2, 2, 2)
    ]
    return np.array(corners)


def covers_same_space(a: sitk.Image, b: sitk.Image) -> bool:
    """True when the voxel-centre boxes of `a` and `b` coincide within one voxel of the coarser grid."""
    tolerance = max(max(a.GetSpacing()), max(b.GetSpacing()))
    ca, cb = _physical_corners(a), _physical_corners(b)
    box_a = np.stack([ca.min(0), ca.max(0)])
    box_b = np.stack([cb.min(0), cb.max(0)])
    return bool(np.all(np.abs(box_a - box_b) <= tolerance))


def _label_from_seg_nrrd(path: Path, label_names: Sequence[str] | None) -> sitk.Image:
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:  # slicerio raises plain exceptions of several kinds on bad files
        raise InputError(f"{path} could not be read as a Slicer segmentation ({error}).") from None
    voxels = np.asarray(segmentation["voxels"])
    layers = voxels[np.newaxis] if voxels.ndim == 3 else np.moveaxis(voxels, -1, 0)
    by_name = {normalise_organ_name(name): value for value, name in enumerate(label_names or [])}
    labels = np.zeros(layers.shape[1:], dtype=np.uint8)
    for segment in segmentation["segments"]:
        value = by_name.get(normalise_organ_name(segment.get("name", "")), segment["labelValue"])
        layer = layers[int(segment.get("layer", 0))]
        labels[layer == segment["labelValue"]] = value
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(labels.transpose(2, 1, 0).copy())
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).flatten().tolist())
    return image


def read_label(
    path: str | Path,
    reference: sitk.Image | None = None,
    label_names: Sequence[str] | None = None,
    allow_empty: bool = False,
) -> sitk.Image:
    """An integer label map (uint8/uint16) from NIfTI/NRRD/MHA, a DICOM folder or a Slicer `.seg.nrrd`.

    `.seg.nrrd` segments are mapped to label values by name when `label_names` knows them. A label on another
    grid than `reference` is resampled (nearest neighbour) when it covers the same physical space, else refused.
    A map without any labelled voxel is refused unless `allow_empty` (a model's prediction may be empty).
    """
    path = Path(path)
    if full_suffix(path) == ".seg.nrrd":
        if not path.is_file():
            raise InputError(f"{path} does not exist.")
        label = _label_from_seg_nrrd(path, label_names)
    else:
        label = _read_any(path, "a label map")
    return check_label(label, path, reference, allow_empty)


def check_label(
    label: sitk.Image, name: str | Path, reference: sitk.Image | None = None, allow_empty: bool = False
) -> sitk.Image:
    """A label map read or given in memory, validated and cast to uint8/uint16, on the grid of `reference`
    (see `read_label`); InputError naming it as `name` (its path, or e.g. "the label")."""
    path = name
    _check_finite(label, path)
    _check_volume(label, path)
    voxels = sitk.GetArrayViewFromImage(label)
    if np.any(voxels < 0) or np.any(np.rint(voxels) != voxels):
        raise InputError(f"{path} is not a label map: its voxels must be non-negative integers.")
    if voxels.max() == 0 and not allow_empty:
        raise InputError(f"{path} is an empty label map: it has no labelled voxel.")
    label = sitk.Cast(label, sitk.sitkUInt16 if voxels.max() > 255 else sitk.sitkUInt8)
    if reference is not None and not same_grid(label, reference):
        if not covers_same_space(label, reference):
            raise InputError(
                f"{path} does not cover the same physical space as the image "
                f"(label size {label.GetSize()} spacing {tuple(round(s, 3) for s in label.GetSpacing())} vs image size "
                f"{reference.GetSize()} spacing {tuple(round(s, 3) for s in reference.GetSpacing())})."
            )
        label = sitk.Resample(
            label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID()
        )
    return label


def write_image(image: sitk.Image, path: str | Path) -> Path:
    """Write an image (NIfTI, NRRD or MetaImage by suffix) atomically, compressed; returns the path.

    OSError when the file on disk is incomplete (a NIfTI write that failed without an exception).
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in IMAGE_SUFFIXES or suffix in (".mhd", ".nhdr"):
        raise InputError(
            f"{path}: cannot write {suffix or 'a file without suffix'}; use .nii.gz, .nii, .nrrd or .mha."
        )
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        # ITK's NIfTI writer reports a failed write (disk full, file size limit) on stderr only: check the file
        layout = _nifti_layout(tmp) if _nifti_suffix(tmp) else None
        if _nifti_suffix(tmp) and (layout is None or not _nifti_is_complete(layout)):
            raise OSError(f"{path} could not be written completely (disk full or a file size limit?).")
    return path


def write_segmentation(
    label: sitk.Image,
    path: str | Path,
    label_names: Sequence[str],
    label_colors: Sequence[Sequence[int]],
) -> Path:
    """Write a label map as a Slicer `.seg.nrrd` with one named, coloured segment per label present."""
    import slicerio

    voxels = sitk.GetArrayFromImage(label).transpose(2, 1, 0)
    spacing = np.array(label.GetSpacing())
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.array(label.GetDirection()).reshape(3, 3) * spacing
    ijk_to_lps[:3, 3] = label.GetOrigin()
    segments = []
    for value in sorted(int(v) for v in np.unique(voxels) if v != 0):
        name = label_names[value] if value < len(label_names) else f"label {value}"
        color = label_colors[value] if value < len(label_colors) else (128, 128, 128)
        segments.append(
            {
                "id": f"Segment_{value}",
                "labelValue": value,
                "layer": 0,
                "name": name,
                "color": [c / 255.0 for c in color],
            }
        )
    segmentation = {
        "voxels": voxels.astype(np.uint8 if voxels.max(initial=0) <= 255 else np.uint16),
        "ijkToLPS": ijk_to_lps,
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return Path(path)


def describe_image(image: sitk.Image) -> dict:
    """Geometry and intensity summary of an image (for `advseg info` and provenance)."""
    voxels = sitk.GetArrayViewFromImage(image)
    return {
        "size": list(image.GetSize()),
        "spacing_mm": [round(s, 6) for s in image.GetSpacing()],
        "origin_mm": [round(o, 6) for o in image.GetOrigin()],
        "direction": [round(d, 6) for d in image.GetDirection()],
        "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "min": float(voxels.min()),
        "max": float(voxels.max()),
    }


@contextlib.contextmanager
def staged_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside `out_dir`; on success move its files into `out_dir`.

    A command that fails part-way therefore leaves no partial output in `out_dir`.
    """
    import shutil

    out_dir = Path(out_dir)
    staging = make_staging_dir(out_dir, "staging")
    try:
        yield staging
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(staging.iterdir()):
            target = out_dir / item.name
            if target.is_dir() and item.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def json_safe(value):
    """A copy of `value` fit for strict JSON: NaN and infinities become None, numpy scalars plain numbers."""
    import math

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | Path, data) -> None:
    """Write strict JSON (no NaN/Infinity tokens) atomically."""
    import json

    write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
