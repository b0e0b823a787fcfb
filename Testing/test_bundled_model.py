"""The bundled model segments real CT and unseen phantoms; its card says how it was made."""

from __future__ import annotations

import SimpleITK as sitk

from AdvSegAttackLib.evaluation.metrics import segmentation_report
from AdvSegAttackLib.models.cards import bundled_models, weights_path
from AdvSegAttackLib.models.networks import load_model
from AdvSegAttackLib.models.segment import segment_image
from AdvSegAttackLib.volumes.io import read_image, read_label, sha256_file
from AdvSegAttackLib.volumes.phantom import make_phantom

MODEL = "abdomen-unet"


def mean_dice(image: sitk.Image, label: sitk.Image) -> tuple[float, dict]:
    card, network = load_model(MODEL)
    predicted, _, _ = segment_image(image, card, network)
    report = segmentation_report(
        sitk.GetArrayFromImage(predicted),
        sitk.GetArrayFromImage(label),
        card.label_names,
        tuple(reversed(image.GetSpacing())),
    )
    assert predicted.GetOrigin() == image.GetOrigin() and predicted.GetSize() == image.GetSize()
    return report["mean_dice"], report["organs"]


def test_card_is_complete_and_small():
    assert MODEL in bundled_models()
    card, network = load_model(MODEL)
    weights = weights_path(card)
    assert weights is not None and weights.stat().st_size < 10 * 2**20
    assert card.architecture == "unet" and card.num_classes == 14
    training = card.provenance["training"]
    assert training["command"].startswith("advseg train") and "--phantoms" in training["command"]
    assert any("example_ct.nii.gz" in name for name in training["training_data"])
    assert len(sha256_file(weights)) == 64


def test_segments_the_real_training_ct(real_ct, real_ct_labels):
    image = read_image(real_ct)
    dice, organs = mean_dice(image, read_label(real_ct_labels, image))
    assert dice > 0.8  # training data: 0.874 when the model was made
    assert organs["liver"]["dice"] > 0.93 and organs["spleen"]["dice"] > 0.9


def test_segments_a_phantom_of_an_unseen_seed():
    dice, organs = mean_dice(*make_phantom(2024, contrast="portal-venous"))
    assert dice > 0.65  # unseen seeds 1000-1003: 0.767 on average when the model was made
    assert organs["liver"]["dice"] > 0.9 and organs["right kidney"]["dice"] > 0.8
