"""Volumes keep their geometry through every read and write; bad files get one clear sentence."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.models.labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES
from AdvSegAttackLib.volumes.io import (
    covers_same_space,
    read_image,
    read_label,
    staged_output_dir,
    write_image,
    write_segmentation,
)

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)


def oblique_volume(size=(40, 36, 24), spacing=(0.8, 0.9, 2.5)) -> sitk.Image:
    """A float volume on an oblique grid (rotated about two axes) with a non-trivial origin."""
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.normal(0, 100, size[::-1]).astype(np.float32))
    a, b = np.deg2rad(17.0), np.deg2rad(-8.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    image.SetDirection((rz @ rx).flatten().tolist())
    image.SetSpacing(spacing)
    image.SetOrigin((-123.456789, 45.678912, -789.012345))
    return image


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-6) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm, rtol=0)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm, rtol=0)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_real_ct_round_trip_keeps_geometry_and_voxels(real_ct, tmp_path, suffix):
    image = read_image(real_ct)
    path = write_image(image, tmp_path / f"ct{suffix}")
    again = read_image(path)
    assert_same_geometry(image, again)
    assert again.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_oblique_round_trip_to_a_micrometre(tmp_path, suffix):
    image = oblique_volume()
    again = read_image(write_image(image, tmp_path / f"oblique{suffix}"))
    # NIfTI stores the affine in float32 (sform): about 1e-5 mm at 800 mm from the origin.
    assert_same_geometry(image, again, 1e-6 if suffix != ".nii.gz" else 1e-4)
    corner = image.TransformIndexToPhysicalPoint((39, 35, 23))
    np.testing.assert_allclose(again.TransformIndexToPhysicalPoint((39, 35, 23)), corner, atol=1e-4)


def test_dicom_series_folder_reads_with_its_geometry(real_ct_small, tmp_path):
    image = sitk.Cast(read_image(real_ct_small), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder = tmp_path / "dicom"
    folder.mkdir()
    direction = image.GetDirection()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in origin)),
            (
                "0020|0037",
                "\\".join(
                    f"{v:.6f}"
                    for v in direction[0:3] + direction[3:6][:0] + (direction[1], direction[4], direction[7])
                ),
            ),
            ("0020|0013", str(k)),
            ("0028|0030", f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}"),
            ("0018|0050", f"{image.GetSpacing()[2]:.6f}"),
        ]:
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    again = read_image(folder)
    assert again.GetSize() == image.GetSize()
    np.testing.assert_allclose(again.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(again.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(image))


def test_seg_nrrd_round_trip_names_colours_geometry(real_ct_small_labels, tmp_path):
    import slicerio

    label = read_label(real_ct_small_labels)
    path = write_segmentation(label, tmp_path / "labels.seg.nrrd", BTCV_LABEL_NAMES, BTCV_LABEL_COLORS)
    segmentation = slicerio.read_segmentation(str(path))
    names = {s["name"] for s in segmentation["segments"]}
    present = {BTCV_LABEL_NAMES[v] for v in np.unique(sitk.GetArrayFromImage(label)) if v}
    assert names == present
    liver = next(s for s in segmentation["segments"] if s["name"] == "liver")
    np.testing.assert_allclose(np.array(liver["color"]) * 255, BTCV_LABEL_COLORS[6], atol=0.5)
    again = read_label(path, label_names=BTCV_LABEL_NAMES)
    assert_same_geometry(label, again)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(label))


def test_seg_nrrd_segments_map_to_the_models_values_by_name(real_ct_small_labels, tmp_path):
    label = read_label(real_ct_small_labels)
    # Write liver as value 1 named "liver": reading with BTCV names must give it value 6 again.
    only_liver = sitk.Cast(sitk.GetArrayFromImage(label) == 6, sitk.sitkUInt8) if False else None
    array = (sitk.GetArrayFromImage(label) == 6).astype(np.uint8)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(label)
    path = write_segmentation(
        image, tmp_path / "liver.seg.nrrd", ["background", "liver"], [(0, 0, 0), (200, 100, 100)]
    )
    assert only_liver is None
    again = sitk.GetArrayFromImage(read_label(path, label_names=BTCV_LABEL_NAMES))
    assert set(np.unique(again)) == {0, 6}


def test_label_on_another_grid_is_resampled_when_it_covers_the_same_space(real_ct, real_ct_labels):
    image = read_image(real_ct)
    label = read_label(real_ct_labels)
    fine = sitk.Resample(
        label,
        [244, 202, 224],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        label.TransformContinuousIndexToPhysicalPoint((-0.25, -0.25, -0.25)),
        (1.5, 1.5, 1.5),
        label.GetDirection(),
        0,
        label.GetPixelID(),
    )
    assert covers_same_space(fine, image)
    back = read_label_from_image(fine, image)
    agreement = (sitk.GetArrayFromImage(back) == sitk.GetArrayFromImage(label)).mean()
    assert agreement > 0.995


def read_label_from_image(label: sitk.Image, reference: sitk.Image, tmp=None) -> sitk.Image:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = write_image(label, Path(folder) / "label.nii.gz")
        return read_label(path, reference)


def test_label_covering_other_space_is_refused(real_ct, real_ct_small_labels):
    # example_ct_sm's labels cover only the top 30 slices (and carry the source's wrong z-origin).
    with pytest.raises(InputError, match="does not cover the same physical space"):
        read_label(real_ct_small_labels, read_image(real_ct))


def test_bad_files_get_one_sentence(tmp_path, real_ct_small):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a volume" * 10)
    with pytest.raises(InputError, match="garbage.nii.gz could not be read"):
        read_image(garbage)

    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(real_ct_small.read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated.nii.gz"):
        read_image(truncated)

    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")

    flat = write_image(sitk.Image([20, 20], sitk.sitkInt16), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="2-D image; a 3-D volume is needed"):
        read_image(flat)

    four = write_image(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), tmp_path / "four.nii.gz")
    with pytest.raises(InputError, match="4-D image"):
        read_image(four)

    array = np.zeros((8, 9, 10), np.float32)
    array[2, 3, 4] = np.nan
    array[1, 1, 1] = np.inf
    nan = write_image(sitk.GetImageFromArray(array), tmp_path / "nan.nrrd")
    with pytest.raises(InputError, match="2 NaN or infinite voxels"):
        read_image(nan)

    empty = write_image(sitk.Image([8, 8, 8], sitk.sitkUInt8), tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="empty label map"):
        read_label(empty)

    fractional = write_image(
        sitk.GetImageFromArray(np.full((4, 4, 4), 1.5, np.float32)), tmp_path / "frac.nii.gz"
    )
    with pytest.raises(InputError, match="non-negative integers"):
        read_label(fractional)


def test_gzip_header_damage_is_a_clear_error(tmp_path, real_ct_small):
    data = gzip.decompress(real_ct_small.read_bytes())
    damaged = tmp_path / "damaged.nii"
    damaged.write_bytes(b"\x00" * 348 + data[348:])
    with pytest.raises(InputError, match="damaged.nii"):
        read_image(damaged)


def test_staged_output_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output_dir(out) as staging:
            (staging / "a.txt").write_text("half", encoding="utf-8")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with staged_output_dir(out) as staging:
        (staging / "a.txt").write_text("whole", encoding="utf-8")
    assert (out / "a.txt").read_text(encoding="utf-8") == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- non-finite voxels: SimpleITK's NIfTI reader hands NaN/Inf over as 0 ------------------------------------


def _with_non_finite(dtype, kind: str) -> np.ndarray:
    array = np.linspace(-1000, 1000, 9 * 10 * 11, dtype=dtype).reshape(9, 10, 11)
    array[4, 5, 6] = np.nan if kind == "nan" else np.inf
    array[1, 2, 3] = np.nan if kind == "nan" else -np.inf
    return array


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_voxels_are_refused_in_every_format(tmp_path, dtype, suffix, kind):
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(_with_non_finite(dtype, kind)), str(path))
    with pytest.raises(
        InputError, match=rf"volume{suffix.replace('.', '[.]')} contains 2 NaN or infinite voxels\."
    ):
        read_image(path)
    with pytest.raises(InputError, match="2 NaN or infinite voxels"):
        read_label(path)


def test_non_finite_voxels_of_a_nifti_pair_are_refused(tmp_path):
    header = tmp_path / "pair.hdr"  # NIfTI-1 as a .hdr/.img pair: the same NIfTI library, the same zeroing
    sitk.WriteImage(sitk.GetImageFromArray(_with_non_finite(np.float32, "nan")), str(header))
    assert (tmp_path / "pair.img").is_file()
    with pytest.raises(InputError, match="pair.hdr contains 2 NaN or infinite voxels"):
        read_image(header)


def test_finite_float_nifti_reads_unchanged_and_big_endian_is_scanned(tmp_path):
    array = _with_non_finite(np.float32, "nan")
    array[~np.isfinite(array)] = 7.5
    path = tmp_path / "finite.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), array)
    # the same volume with a big-endian header and data (NIfTI allows both byte orders)
    little = gzip.decompress(path.read_bytes())
    big = _nifti1_byteswapped(little, np.dtype("<f4"))
    swapped = tmp_path / "big.nii"
    swapped.write_bytes(big)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(swapped)), array)
    data = np.frombuffer(big, dtype=">f4", offset=len(big) - array.size * 4).copy()
    data[17] = np.inf
    swapped.write_bytes(big[: len(big) - array.size * 4] + data.tobytes())
    with pytest.raises(InputError, match="big.nii contains 1 NaN or infinite voxels"):
        read_image(swapped)


def _nifti1_byteswapped(raw: bytes, dtype: np.dtype) -> bytes:
    """A little-endian single-file NIfTI-1 (no extension data) rewritten big-endian, field by field."""
    import struct

    fields = [(0, "i"), (32, "i"), (36, "h"), *[(40 + 2 * k, "h") for k in range(8)]]
    fields += [(56 + 4 * k, "f") for k in range(3)] + [(68, "h"), (70, "h"), (72, "h"), (74, "h")]
    fields += [(76 + 4 * k, "f") for k in range(8)] + [(108, "f"), (112, "f"), (116, "f"), (120, "h")]
    fields += [(122, "b"), (123, "b"), (124, "f"), (128, "f"), (132, "f"), (136, "f"), (140, "i"), (144, "i")]
    fields += [(252, "h"), (254, "h")] + [(256 + 4 * k, "f") for k in range(7)]
    fields += [(280 + 4 * k, "f") for k in range(12)]
    header = bytearray(raw)
    for offset, code in fields:
        (value,) = struct.unpack_from("<" + code, raw, offset)
        struct.pack_into(">" + code, header, offset, value)
    offset = int(struct.unpack_from("<f", raw, 108)[0])
    voxels = np.frombuffer(raw, dtype=dtype, offset=offset)
    return bytes(header[:offset]) + voxels.astype(dtype.newbyteorder(">")).tobytes()
