"""preview.png: the slice the attack changed most, a legend of the organs on it with Dice, distinguishable
colours, orientation markers, titles that do not collide, and the physical aspect of anisotropic voxels."""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pytest
import SimpleITK as sitk

from AdvSegAttackLib.evaluation.preview import MIN_DELTA_E, preview_figure, write_preview
from AdvSegAttackLib.models.labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES
from AdvSegAttackLib.volumes.phantom import make_phantom

matplotlib.use("Agg")
WINDOW = (-175.0, 250.0)
LIVER, STOMACH, SPLEEN = 6, 7, 1


def _like(array: np.ndarray, geometry: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(geometry)
    return image


def _lps_slices_changed(clean: sitk.Image, adv: sitk.Image) -> np.ndarray:
    a = sitk.GetArrayFromImage(sitk.DICOMOrient(clean, "LPS"))
    b = sitk.GetArrayFromImage(sitk.DICOMOrient(adv, "LPS"))
    return (a != b).sum(axis=(1, 2))


@pytest.fixture(scope="module")
def real_case(real_ct_small, real_ct_small_labels):
    """The real CT, its label map as the clean prediction, and an 'attacked' prediction that loses part of the
    liver on three slices (most on file slice 20) and gains stomach voxels on another."""
    from AdvSegAttackLib.volumes.io import read_image, read_label

    image, labels = read_image(real_ct_small), read_label(real_ct_small_labels)
    clean = sitk.GetArrayFromImage(labels)
    attacked = clean.copy()
    for k, rows in ((20, 40), (12, 25), (25, 10)):  # (z, y, x) arrays: axis 0 is the file's slice axis
        liver = np.argwhere(attacked[k] == LIVER)[: rows * 10]
        attacked[k][tuple(liver.T)] = STOMACH
    attacked[5][attacked[5] == SPLEEN] = 0
    return image, labels, _like(attacked, labels)


def _legend_texts(figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_the_chosen_slice_is_the_one_with_most_changed_labels(real_case):
    image, clean, attacked = real_case
    figure, chosen = preview_figure(
        image, image, clean, attacked, BTCV_LABEL_NAMES, BTCV_LABEL_COLORS, WINDOW, organs=[LIVER]
    )
    per_slice = _lps_slices_changed(clean, attacked)
    assert chosen.index == int(per_slice.argmax()) and chosen.changed_labels == int(per_slice.max())
    # example_ct_sm has RAS-like voxel axes along z too: LPS slice index = file slice index 20.
    assert chosen.index == 20
    assert "axial slice 21 of 30 (voxel index 20" in figure._suptitle.get_text()
    assert "changed the most labels" in figure._suptitle.get_text()
    matplotlib.pyplot.close(figure)


def test_legend_lists_the_organs_on_the_slice_with_their_dice(real_case):
    image, clean, attacked = real_case
    dice = {LIVER: (0.968, 0.612), STOMACH: (0.9, 0.8)}
    figure, chosen = preview_figure(
        image, image, clean, attacked, BTCV_LABEL_NAMES, BTCV_LABEL_COLORS, WINDOW, organ_dice=dice
    )
    on_slice = set()
    for volume in (clean, attacked):
        labels = sitk.GetArrayFromImage(sitk.DICOMOrient(volume, "LPS"))[chosen.index]
        on_slice |= {int(v) for v in np.unique(labels) if v}
    texts = _legend_texts(figure)
    assert sorted(t.split("  ")[0] for t in texts) == sorted(BTCV_LABEL_NAMES[v] for v in on_slice)
    assert "liver  Dice 0.968 → 0.612" in texts and "stomach  Dice 0.900 → 0.800" in texts
    colours = {
        text.get_text().split("  ")[0]: np.array(handle.get_facecolor()[:3]) * 255
        for legend in figure.legends
        for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }
    from skimage.color import deltaE_cie76, rgb2lab

    for (a, ca), (b, cb) in itertools.combinations(colours.items(), 2):
        difference = deltaE_cie76(rgb2lab(ca[None, None] / 255), rgb2lab(cb[None, None] / 255))[0, 0]
        assert difference >= MIN_DELTA_E - 0.5, (a, b, difference)
    # liver and stomach have near-identical card colours: one of them keeps its card colour, not both
    card = {name: np.array(BTCV_LABEL_COLORS[BTCV_LABEL_NAMES.index(name)]) for name in colours}
    assert not (
        np.allclose(colours["liver"], card["liver"]) and np.allclose(colours["stomach"], card["stomach"])
    )
    assert np.allclose(colours["liver"], card["liver"], atol=0.5)  # the attacked organ keeps the card's
    matplotlib.pyplot.close(figure)


def test_orientation_markers_in_every_panel(real_case):
    image, clean, attacked = real_case
    figure, _ = preview_figure(image, image, clean, attacked, BTCV_LABEL_NAMES, BTCV_LABEL_COLORS, WINDOW)
    for ax in figure.axes[:3]:
        assert {t.get_text() for t in ax.texts} >= {"R", "L", "A", "P"}
        right = next(t for t in ax.texts if t.get_text() == "R")
        assert right.get_position()[0] < 0.5  # radiological convention: the patient's right on the left
    matplotlib.pyplot.close(figure)


def test_titles_do_not_overlap_on_512_slices(real_ct_small, tmp_path):
    from AdvSegAttackLib.volumes.io import read_image

    image = read_image(real_ct_small)[:, :, 10:14]
    grid = sitk.Image([512, 512, 4], sitk.sitkUInt8)
    grid.SetSpacing((366 / 512, 303 / 512, 3.0))  # the CT's field of view on 512 x 512 voxels
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.GetOrigin())
    big = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, image.GetPixelID())
    labels = np.zeros((4, 512, 512), np.uint8)
    labels[:, 200:300, 150:350] = LIVER
    attacked = labels.copy()
    attacked[2, 220:260, 150:200] = 0
    figure, _ = preview_figure(
        big,
        big,
        _like(labels, big),
        _like(attacked, big),
        BTCV_LABEL_NAMES,
        BTCV_LABEL_COLORS,
        WINDOW,
        title="pgd on a 512 x 512 CT: mean organ Dice 0.968 → 0.612 (against the reference label)",
    )
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    suptitle = figure._suptitle.get_window_extent(renderer)
    boxes = [ax.title.get_window_extent(renderer) for ax in figure.axes[:3]]
    boxes += [ax.get_window_extent(renderer) for ax in figure.axes[:3]]
    boxes += [legend.get_window_extent(renderer) for legend in figure.legends]
    for box in boxes:
        assert not suptitle.overlaps(box)
    for a, b in itertools.combinations([ax.get_window_extent(renderer) for ax in figure.axes[:3]], 2):
        assert not a.overlaps(b)
    matplotlib.pyplot.close(figure)


def test_anisotropic_voxels_keep_their_physical_aspect(tmp_path):
    image, labels = make_phantom(5, shape=(96, 48, 24), spacing=(1.0, 2.5, 4.0), noise_hu=0.0)
    clean = sitk.GetArrayFromImage(labels)
    attacked = clean.copy()
    attacked[12][attacked[12] == LIVER] = 0
    figure, _ = preview_figure(
        image, image, labels, _like(attacked, labels), BTCV_LABEL_NAMES, BTCV_LABEL_COLORS, WINDOW
    )
    figure.canvas.draw()
    for ax in figure.axes[:3]:
        box = ax.get_window_extent()
        # 96 voxels of 1 mm across, 48 of 2.5 mm down: 96 mm wide, 120 mm tall on paper too
        assert box.width / box.height == pytest.approx(96 * 1.0 / (48 * 2.5), rel=0.02)
    matplotlib.pyplot.close(figure)


def test_written_png_and_unchanged_prediction(real_case, tmp_path):
    image, clean, _ = real_case
    chosen = write_preview(
        tmp_path / "preview.png",
        image,
        image,
        clean,
        clean,
        BTCV_LABEL_NAMES,
        BTCV_LABEL_COLORS,
        WINDOW,
        [SPLEEN],
    )
    assert (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spleen = (sitk.GetArrayFromImage(sitk.DICOMOrient(clean, "LPS")) == SPLEEN).sum(axis=(1, 2))
    assert chosen.changed_labels == 0 and chosen.index == int(spleen.argmax())
    assert "no label changed" in chosen.reason
