"""Model space and back: exact when no resampling is needed, untouched voxels bit-identical, same type."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AdvSegAttackLib.models.cards import ModelCard
from AdvSegAttackLib.volumes.io import read_image, read_label
from AdvSegAttackLib.volumes.preprocess import to_model_space


def card(spacing=(3.0, 3.0, 3.0), window=(-175.0, 250.0)) -> ModelCard:
    return ModelCard(
        name="t",
        architecture="unet",
        spacing_mm=list(spacing),
        intensity_window_hu=list(window),
        roi_size=[32, 32, 32],
    )


def test_matching_spacing_is_a_pure_reorientation(real_ct):
    image = read_image(real_ct)  # 3 mm, RAS voxel axes already
    space = to_model_space(image, **card().preprocessing)
    assert not space.resampled
    expected = (np.clip(sitk.GetArrayFromImage(image).transpose(2, 1, 0), -175, 250) + 175) / 425
    np.testing.assert_allclose(space.tensor[0, 0].numpy(), expected, atol=1e-6)


def test_lps_source_is_flipped_to_ras():
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 3.0))  # identity direction: LPS voxel axes
    space = to_model_space(image, **card(window=(0, 1000)).preprocessing)
    ras = array.transpose(2, 1, 0)[::-1, ::-1, :] / 1000.0
    np.testing.assert_allclose(space.tensor[0, 0].numpy(), ras, atol=1e-6)
    assert space.grid.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (1.5, 1.5, 2.0)])
def test_zero_perturbation_returns_the_source_bit_for_bit(real_ct, spacing):
    image = read_image(real_ct)
    space = to_model_space(image, **card(spacing).preprocessing)
    out = space.adversarial_to_source(space.tensor.clone())
    assert out.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image))
    for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(out, getter)() == getattr(image, getter)()


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (1.5, 1.5, 2.0)])
def test_local_perturbation_changes_only_voxels_it_reaches(real_ct, spacing):
    image = read_image(real_ct)
    space = to_model_space(image, **card(spacing).preprocessing)
    adversarial = space.tensor.clone()
    x, y, z = (s // 2 for s in adversarial.shape[-3:])
    adversarial[..., x - 4 : x + 4, y - 4 : y + 4, z - 4 : z + 4] += 0.02
    out = sitk.GetArrayFromImage(space.adversarial_to_source(adversarial.clamp(0, 1)))
    source = sitk.GetArrayFromImage(image)
    changed = np.argwhere(out != source)
    assert len(changed) > 0
    # Every changed voxel lies within one model voxel of the perturbed box (physical distance check).
    centre = np.array(space.grid.TransformIndexToPhysicalPoint((x, y, z)))
    half = np.array(spacing) * 5.0
    for zyx in changed[:: max(1, len(changed) // 200)]:
        point = np.array(image.TransformIndexToPhysicalPoint([int(i) for i in zyx[::-1]]))
        assert np.all(np.abs(point - centre) <= half + np.array(image.GetSpacing()))


def test_written_adversarial_is_what_the_model_sees(real_ct):
    image = read_image(real_ct)
    space = to_model_space(image, **card().preprocessing)
    generator = torch.Generator().manual_seed(0)
    noisy = (space.tensor + 0.02 * torch.randn(space.tensor.shape, generator=generator)).clamp(0, 1)
    adversarial = torch.where(space.attackable_mask(), noisy, space.tensor)
    written = space.adversarial_to_source(adversarial)
    again = to_model_space(written, **card().preprocessing)
    # Integer HU rounding is the only loss: half a HU in model units.
    assert (again.tensor - adversarial).abs().max().item() <= 0.5 / 425 + 1e-6


def test_only_voxels_inside_the_window_change():
    array = np.array([-1000, -500, -175, 0, 100, 250, 1000, 3000], dtype=np.int16)
    array = array.reshape(1, 1, 8).repeat(3, 0).repeat(3, 1)
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy())
    image.SetSpacing((3.0, 3.0, 3.0))
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    space = to_model_space(image, **card().preprocessing)
    np.testing.assert_array_equal(space.attackable_mask()[0, 0, 0, 0].numpy(), [0, 0, 0, 1, 1, 0, 0, 0])
    for sign in (-1, 1):
        written = space.adversarial_to_source((space.tensor + sign * 10 / 425).clamp(0, 1))
        row = sitk.GetArrayFromImage(written).transpose(2, 1, 0)[0, 0, :]
        # Out-of-window voxels stay; in-window ones (window edges included) move by the perturbation in HU.
        expected = [
            -1000,
            -500,
            -175 + 10 * (sign > 0),
            10 * sign,
            100 + 10 * sign,
            250 - 10 * (sign < 0),
            1000,
            3000,
        ]
        np.testing.assert_array_equal(row, expected)


def test_labels_round_trip_through_a_resampled_model_grid(real_ct, real_ct_labels):
    image = read_image(real_ct)
    label = read_label(real_ct_labels, image)
    space = to_model_space(image, **card((1.5, 1.5, 2.0)).preprocessing)
    assert space.resampled
    in_model = space.label_to_model(label)
    assert tuple(in_model.shape[-3:]) == tuple(space.tensor.shape[-3:])
    back = space.labels_to_source(in_model)
    assert back.GetOrigin() == image.GetOrigin() and back.GetSpacing() == image.GetSpacing()
    assert (sitk.GetArrayFromImage(back) == sitk.GetArrayFromImage(label)).mean() > 0.995


def test_oblique_source_keeps_its_geometry_on_the_way_back():
    from test_io import oblique_volume

    image = oblique_volume()
    space = to_model_space(image, **card((1.0, 1.0, 2.0), window=(-300, 300)).preprocessing)
    out = space.adversarial_to_source(space.tensor.clone())
    assert out.GetDirection() == image.GetDirection() and out.GetOrigin() == image.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image))


def dicom_series_with_rescale(image: sitk.Image, folder, slope: float, intercept: float) -> None:
    """Write `image` (int16 stored values) as a DICOM series whose slices declare RescaleSlope/Intercept."""
    import pydicom

    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        direction = image.GetDirection()
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.7"),
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.7.2"),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in origin)),
            ("0020|0037", "\\".join(f"{v:.6f}" for v in (*direction[0:7:3], *direction[1:8:3]))),
            ("0020|0013", str(k)),
            ("0028|0030", f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}"),
            ("0018|0050", f"{image.GetSpacing()[2]:.6f}"),
        ]:
            plane.SetMetaData(tag, value)
        path = folder / f"slice{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(plane)
        dataset = pydicom.dcmread(path)
        dataset.RescaleSlope, dataset.RescaleIntercept = f"{slope}", f"{intercept}"
        dataset.save_as(path)


def test_dicom_with_a_rescale_slope_stays_on_its_value_lattice(real_ct_small, tmp_path):
    """Stored values x 0.3 HU - 1024.5 (a DICOM rescale): the attacked voxels stay on that lattice, and any value
    the source holds is written with the source's exact float representation."""
    from AdvSegAttackLib.studies.export import encode_pixels

    hu = sitk.Cast(read_image(real_ct_small)[:, :, 10:16], sitk.sitkFloat64)
    stored = sitk.Cast(sitk.Round((hu + 1024.5) / 0.3), sitk.sitkInt16)  # HU to within 0.15
    dicom_series_with_rescale(stored, tmp_path / "dicom", 0.3, -1024.5)
    image = read_image(tmp_path / "dicom")
    assert image.GetPixelID() == sitk.sitkFloat64  # GDCM applies the non-integer slope
    source = sitk.GetArrayFromImage(image)
    space = to_model_space(image, **card((1.5, 1.5, 2.0)).preprocessing)
    generator = torch.Generator().manual_seed(0)
    noisy = (space.tensor + 0.01 * torch.randn(space.tensor.shape, generator=generator)).clamp(0, 1)
    out = sitk.GetArrayFromImage(space.adversarial_to_source(noisy))
    changed = out != source
    assert changed.mean() > 0.2
    steps = (out - -1024.5) / 0.3
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-6)
    # Where the source holds a lattice point, the written value is the source's float bit for bit (no near-miss).
    known = np.unique(source)
    above = np.clip(np.searchsorted(known, out[changed]), 1, known.size - 1)
    candidates = np.stack([known[above - 1], known[above]])
    nearest = candidates[np.abs(candidates - out[changed]).argmin(0), np.arange(above.size)]
    on_known = np.abs(nearest - out[changed]) < 0.15
    assert on_known.mean() > 0.1
    np.testing.assert_array_equal(out[changed][on_known], nearest[on_known])
    assert encode_pixels(out, 0.3, -1024.5).max_error_hu < 1e-9  # DICOM export: the same stored values


def test_continuous_float_source_keeps_fractional_values():
    """A float source without a value lattice (e.g. already resampled) is written as floats, unrounded."""
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.uniform(-100, 100, (12, 12, 12)).astype(np.float32))
    image.SetSpacing((3.0, 3.0, 3.0))
    space = to_model_space(image, **card().preprocessing)
    out = sitk.GetArrayFromImage(space.adversarial_to_source((space.tensor + 2 / 425).clamp(0, 1)))
    delta = out.astype(np.float64) - sitk.GetArrayFromImage(image)
    np.testing.assert_allclose(delta, 2.0, atol=1e-4)


def test_float32_source_on_a_fractional_lattice_stays_on_it():
    """float32 voxels stored x 0.3 - 1024.5 HU (a NIfTI scl_slope read as float32): float32 rounding of the
    values must not throw the lattice off over its 15 000 steps."""
    rng = np.random.default_rng(2)
    stored = rng.integers(2500, 17500, (16, 16, 16))
    source = (stored * 0.3 - 1024.5).astype(np.float32)
    image = sitk.GetImageFromArray(source)
    image.SetSpacing((3.0, 3.0, 3.0))
    space = to_model_space(
        image, **card(window=(-1100.0, 4500.0)).preprocessing
    )  # every voxel inside, none clipped by +3.4
    out = sitk.GetArrayFromImage(space.adversarial_to_source((space.tensor + 3.4 / 5600).clamp(0, 1)))
    changed = out != source
    assert out.dtype == np.float32 and changed.mean() > 0.9
    steps = (out.astype(np.float64) + 1024.5) / 0.3
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-3)
    assert np.abs(steps - (stored + 11))[changed].max() < 1e-3  # +3.4 HU: 11 lattice steps (3.3 HU)
    # a lattice point the source holds is written as the source's float32, bit for bit
    for value in np.unique(out[changed])[:200]:
        holders = source[np.abs(source.astype(np.float64) - value) < 0.15]
        assert holders.size == 0 or np.all(holders == value)
