"""The synthetic abdominal CT phantom: determinism, anatomy in world coordinates, HU, geometry, files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.models.labels import BTCV_LABEL_NAMES
from AdvSegAttackLib.volumes.phantom import make_phantom, write_phantom

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)


def organ_centroids(label: sitk.Image) -> dict[int, np.ndarray]:
    """World (LPS mm) centroid of every label value present (> 0), by SimpleITK's label statistics."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(label)
    return {int(value): np.array(statistics.GetCentroid(value)) for value in statistics.GetLabels()}


ORGAN = {name: value for value, name in enumerate(BTCV_LABEL_NAMES)}
SMALL = {"shape": (64, 56, 48), "spacing": (6.0, 6.0, 6.0)}
MEDIUM = {"shape": (96, 84, 72), "spacing": (4.0, 4.0, 4.0)}  # same 384 x 336 x 288 mm field of view


def arrays(pair):
    image, label = pair
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)


def geometry(image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


@pytest.fixture(scope="module")
def default_phantom():
    return make_phantom(0)


def test_same_seed_is_bit_identical():
    first, second = make_phantom(5, **SMALL), make_phantom(5, **SMALL)
    for a, b in zip(arrays(first), arrays(second), strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)
    assert geometry(first[0]) == geometry(second[0]) == geometry(first[1])


def test_different_seeds_differ():
    images, labels = zip(*(arrays(make_phantom(seed, **SMALL)) for seed in range(3)), strict=True)
    for i in range(3):
        for j in range(i + 1, 3):
            body = (labels[i] > 0) | (labels[j] > 0)
            assert (labels[i] != labels[j])[body].mean() > 0.05
            assert np.abs(images[i].astype(float) - images[j]).mean() > 5.0
    liver_volumes = {int((label == ORGAN["liver"]).sum()) for label in labels}
    assert len(liver_volumes) == 3


def test_default_phantom_geometry_and_all_13_organs(default_phantom):
    image, label = default_phantom
    assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
    for img in (image, label):
        assert img.GetSize() == (128, 112, 96)
        assert img.GetSpacing() == (3.0, 3.0, 3.0)
        assert img.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    # RAS voxel axes: reorienting to RAS changes nothing; the volume is centred on the world origin.
    assert sitk.DICOMOrient(image, "RAS").GetDirection() == image.GetDirection()
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    assert np.allclose(centre, 0.0, atol=1e-6)
    label_array = sitk.GetArrayFromImage(label)
    assert set(np.unique(label_array)) == set(range(14))
    ml = {value: (label_array == value).sum() * 27.0 / 1000 for value in range(1, 14)}
    assert 1000 < ml[ORGAN["liver"]] < 2600
    assert 80 < ml[ORGAN["spleen"]] < 450
    assert 80 < ml[ORGAN["right kidney"]] < 260 and 80 < ml[ORGAN["left kidney"]] < 260
    assert 15 < ml[ORGAN["gallbladder"]] < 90
    assert 25 < ml[ORGAN["pancreas"]] < 140
    assert 1 < ml[ORGAN["right adrenal gland"]] < 20 and 1 < ml[ORGAN["left adrenal gland"]] < 20
    assert 5 < ml[ORGAN["esophagus"]] < 60


@pytest.mark.parametrize("seed", [0, 2, 7])
def test_sides_and_depth_in_world_coordinates(seed):
    """LPS world: patient right is x < 0, anterior is y < 0, superior is z > 0."""
    image, label = make_phantom(seed, **MEDIUM)
    c = {name: organ_centroids(label)[ORGAN[name]] for name in BTCV_LABEL_NAMES[1:]}
    for name in ("liver", "right kidney", "gallbladder", "inferior vena cava", "right adrenal gland"):
        assert c[name][0] < -10, name
    for name in ("spleen", "left kidney", "stomach", "left adrenal gland"):
        assert c[name][0] > 10, name
    assert c["inferior vena cava"][0] < c["aorta"][0]
    assert c["aorta"][1] > c["pancreas"][1] + 5  # aorta posterior to the pancreas
    assert c["right kidney"][1] > c["gallbladder"][1] + 40 and c["left kidney"][1] > c["stomach"][1] + 40
    assert c["spleen"][1] > c["stomach"][1]
    assert c["liver"][2] > c["right kidney"][2] + 30
    assert c["right adrenal gland"][2] > c["right kidney"][2] + 20
    assert c["left adrenal gland"][2] > c["left kidney"][2] + 20
    assert c["esophagus"][2] > max(c[name][2] for name in ("liver", "stomach", "spleen", "pancreas"))
    assert c["gallbladder"][1] < c["liver"][1]  # under the liver, anteriorly
    # the spine: bone (> 400 HU) around the midline, posterior to the aorta
    index = np.argwhere(sitk.GetArrayFromImage(image) > 400)[:, ::-1]  # (x, y, z) voxel indices
    step = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    bone_world = np.array(image.GetOrigin()) + index @ step.T
    spine = bone_world[np.abs(bone_world[:, 0]) < 25]
    assert len(spine) > 200
    assert spine[:, 1].mean() > c["aorta"][1] + 15


def test_identity_direction_is_the_same_body_with_flipped_axes():
    """The same world anatomy on an LPS grid: x and y voxel axes reversed, voxel centres coincide."""
    image_ras, label_ras = make_phantom(2, noise_hu=0.0, **SMALL)
    image_lps, label_lps = make_phantom(2, noise_hu=0.0, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), **SMALL)
    assert label_lps.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert np.allclose(label_lps.GetOrigin(), -np.array(label_ras.GetOrigin()) * (1, 1, -1))
    hu_ras, lab_ras = arrays((image_ras, label_ras))
    hu_lps, lab_lps = arrays((image_lps, label_lps))
    assert np.array_equal(np.flip(lab_lps, axis=(1, 2)), lab_ras)
    assert np.abs(np.flip(hu_lps, axis=(1, 2)).astype(float) - hu_ras).mean() < 0.5


def test_custom_origin_moves_the_grid_not_the_body():
    _, label = make_phantom(1, noise_hu=0.0, **SMALL)
    origin = np.array(label.GetOrigin()) + (0.0, 0.0, 30.0)  # five 6-mm slices higher
    image_up, label_up = make_phantom(1, noise_hu=0.0, origin=tuple(origin), **SMALL)
    assert np.allclose(image_up.GetOrigin(), origin) and np.allclose(label_up.GetOrigin(), origin)
    assert np.array_equal(sitk.GetArrayFromImage(label_up)[:-5], sitk.GetArrayFromImage(label)[5:])


def test_oblique_direction_gives_the_same_anatomy_in_world_coordinates():
    seed = 4
    image, label = make_phantom(seed, **MEDIUM)
    direction = np.diag([-1.0, -1.0, 1.0]) @ rotation((0.3, -0.5, 1.0), 28.0)
    oblique_image, oblique = make_phantom(
        seed, shape=(112, 104, 96), spacing=(4.0, 4.0, 4.0), direction=tuple(direction.ravel())
    )
    for img in (oblique_image, oblique):
        assert np.allclose(np.array(img.GetDirection()).reshape(3, 3), direction, atol=1e-12)
        assert img.GetSpacing() == (4.0, 4.0, 4.0) and img.GetSize() == (112, 104, 96)
        centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
        assert np.allclose(centre, 0.0, atol=1e-6)
    straight, tilted = organ_centroids(label), organ_centroids(oblique)
    # organs that lie inside both fields of view (aorta and esophagus leave the axis-aligned one)
    for name in ("liver", "spleen", "right kidney", "left kidney", "gallbladder", "stomach", "pancreas",
                 "portal and splenic veins", "right adrenal gland", "left adrenal gland"):  # fmt: skip
        value = ORGAN[name]
        assert np.linalg.norm(straight[value] - tilted[value]) < 4.0, name
    resampled = sitk.GetArrayFromImage(
        sitk.Resample(oblique, label, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    reference = sitk.GetArrayFromImage(label)
    for name in ("liver", "spleen", "right kidney", "left kidney", "stomach", "aorta"):
        a, b = resampled == ORGAN[name], reference == ORGAN[name]
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.85, (name, dice)


PLAUSIBLE_HU = {
    "portal-venous": {
        "liver": (85, 135),
        "spleen": (95, 150),
        "right kidney": (125, 200),
        "left kidney": (125, 200),
        "aorta": (135, 205),
        "inferior vena cava": (115, 185),
        "portal and splenic veins": (115, 190),
        "pancreas": (70, 125),
        "gallbladder": (-10, 35),
        "right adrenal gland": (40, 105),
    },
    "native": {
        "liver": (45, 75),
        "spleen": (32, 60),
        "right kidney": (20, 50),
        "left kidney": (20, 50),
        "aorta": (25, 55),
        "inferior vena cava": (25, 55),
        "portal and splenic veins": (25, 55),
        "pancreas": (25, 55),
        "gallbladder": (-10, 35),
        "right adrenal gland": (15, 55),
    },
}


@pytest.mark.parametrize("contrast", ["portal-venous", "native"])
@pytest.mark.parametrize("seed", [0, 3])
def test_mean_hu_per_organ_is_plausible(contrast, seed):
    hu, label = arrays(make_phantom(seed, contrast=contrast, **MEDIUM))
    for name, (low, high) in PLAUSIBLE_HU[contrast].items():
        mean = hu[label == ORGAN[name]].mean()
        assert low < mean < high, (name, mean)
    assert hu[0, 0, 0] < -950 and hu[-1, -1, -1] < -950  # air in the corners
    assert hu.max() > 600  # cortical bone


def test_portal_venous_enhances_and_native_does_not():
    pv_hu, pv_label = arrays(make_phantom(6, contrast="portal-venous", **SMALL))
    nat_hu, nat_label = arrays(make_phantom(6, contrast="native", **SMALL))
    assert np.array_equal(pv_label, nat_label)  # contrast changes intensities only
    for name in ("liver", "spleen", "aorta", "left kidney"):
        value = ORGAN[name]
        assert pv_hu[pv_label == value].mean() > nat_hu[nat_label == value].mean() + 40, name


def test_noise_hu_is_the_noise_std():
    clean, label = arrays(make_phantom(8, noise_hu=0.0, **SMALL))
    noisy, _ = arrays(make_phantom(8, noise_hu=20.0, **SMALL))
    difference = (noisy.astype(float) - clean)[label > 0]
    assert 18.0 < difference.std() < 22.0
    assert abs(difference.mean()) < 1.0


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"contrast": "arterial"}, "--contrast"),
        ({"shape": (0, 56, 48)}, "--shape"),
        ({"shape": (64, -3, 48)}, "--shape"),
        ({"shape": (64, 56)}, "--shape"),
        ({"spacing": (6.0, 0.0, 6.0)}, "--spacing"),
        ({"spacing": (6.0, 6.0, -1.0)}, "--spacing"),
        ({"direction": (1, 0, 0, 0, 2, 0, 0, 0, 1)}, "--direction"),
        ({"direction": (1, 0, 0, 0, 1, 0)}, "--direction"),
        ({"noise_hu": -1.0}, "--noise-hu"),
        ({"seed": -1}, "--seed"),
        ({"origin": (0.0, 0.0)}, "--origin"),
    ],
)
def test_bad_arguments_raise_input_error_naming_the_option(kwargs, option):
    with pytest.raises(InputError) as caught:
        make_phantom(**{"seed": 0, **kwargs})
    message = str(caught.value)
    assert option in message
    assert message.endswith(".") and "\n" not in message


def test_write_phantom_writes_both_files_with_their_geometry(tmp_path):
    direction = tuple((np.diag([-1.0, -1.0, 1.0]) @ rotation((1.0, 0.2, 0.0), 15.0)).ravel())
    kwargs = {"contrast": "native", "direction": direction, "origin": (10.0, -20.0, 5.0), **SMALL}
    out_dir = tmp_path / "new" / "folder"
    image_path, label_path = write_phantom(3, out_dir, **kwargs)
    assert image_path == out_dir / "phantom_seed3_image.nii.gz"
    assert label_path == out_dir / "phantom_seed3_label.nii.gz"
    assert sorted(p.name for p in out_dir.iterdir()) == [image_path.name, label_path.name]  # no temp files
    expected_image, expected_label = make_phantom(3, **kwargs)
    for path, expected in ((image_path, expected_image), (label_path, expected_label)):
        read = sitk.ReadImage(str(path))
        assert read.GetPixelID() == expected.GetPixelID()
        assert read.GetSize() == expected.GetSize()
        assert np.allclose(read.GetSpacing(), expected.GetSpacing(), atol=1e-5)
        assert np.allclose(read.GetOrigin(), expected.GetOrigin(), atol=1e-4)
        assert np.allclose(read.GetDirection(), expected.GetDirection(), atol=1e-5)
        assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(expected))
