"""Organ names: one normaliser (`models.labels.normalise_organ_name`) for --organ, Slicer segment names and
the module's organ lists."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.models.labels import BTCV_LABEL_NAMES, find_organ, normalise_organ_name, organ_index
from AdvSegAttackLib.volumes.io import read_label, write_segmentation

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)


@pytest.mark.parametrize(
    "spelling",
    ["right kidney", "Right_Kidney", "right-kidney", "RIGHT  KIDNEY", " right_kidney ", "Right-_Kidney"],
)
def test_every_spelling_of_an_organ_is_the_same_organ(spelling):
    assert normalise_organ_name(spelling) == "right kidney"
    assert find_organ(spelling, BTCV_LABEL_NAMES) == 2
    assert organ_index(spelling, BTCV_LABEL_NAMES) == 2


def test_organ_index_takes_label_values_and_names_the_option_when_wrong():
    assert organ_index(6, BTCV_LABEL_NAMES) == organ_index("6", BTCV_LABEL_NAMES) == 6
    for bad in (0, 14, "0", "99"):
        with pytest.raises(InputError, match=r"--organ .* is not a label value of this model \(1\.\.13\)"):
            organ_index(bad, BTCV_LABEL_NAMES)
    with pytest.raises(
        InputError, match="--organ 'tumour' is not an organ of this model; known organs: spleen"
    ):
        organ_index("tumour", BTCV_LABEL_NAMES)


def test_background_is_never_an_organ():
    assert find_organ("background", BTCV_LABEL_NAMES) is None
    with pytest.raises(InputError, match="--organ 'Background'"):
        organ_index("Background", BTCV_LABEL_NAMES)


def test_slicer_segment_names_map_to_the_models_values_like_organ_names(tmp_path):
    """A segmentation from Slicer names its segments as people type them (`Right-Kidney`): its segments get
    the model's label values by the same normaliser as --organ."""
    array = np.zeros((6, 8, 10), np.uint8)
    array[1:3, 2:5, 2:6] = 1
    array[3:5, 2:5, 5:9] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 3.0))
    names = ["background", "Right-Kidney", "LEFT_kidney"]
    path = write_segmentation(image, tmp_path / "kidneys.seg.nrrd", names, [(0, 0, 0), (1, 2, 3), (4, 5, 6)])
    again = sitk.GetArrayFromImage(read_label(path, label_names=BTCV_LABEL_NAMES))
    np.testing.assert_array_equal(again, np.choose(array, [0, 2, 3]))


def test_totalsegmentator_names_normalise_to_the_btcv_ones():
    from AdvSegAttackLib.models.labels import BTCV_LABEL_NAMES, find_organ, normalise_organ_name

    assert normalise_organ_name("kidney_left") == normalise_organ_name("Left_Kidney") == "left kidney"
    assert normalise_organ_name("adrenal_gland_right") == "right adrenal gland"
    assert normalise_organ_name("rib_left_1") == "rib left 1"  # a side in the middle stays where it is
    assert normalise_organ_name("left") == "left"
    for name in ("spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach"):
        assert find_organ(name, BTCV_LABEL_NAMES) is not None
    for name in ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas"):
        assert find_organ(name, BTCV_LABEL_NAMES) is not None
    assert find_organ("adrenal_gland_left", BTCV_LABEL_NAMES) == BTCV_LABEL_NAMES.index("left adrenal gland")
