"""Shared fixtures: the real CT of ../shared (skipped on a user's machine, required when CI=true)."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ADVSEG_SHARED", REPO.parent / "shared"))


def shared_path(relative: str) -> Path:
    """Path of a file in ../shared; skips the test when it is missing (fails under CI=true)."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} not found: the real CT and weights of ../shared are not on this machine"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def real_ct() -> Path:
    return shared_path("data/real/totalsegmentator/example_ct.nii.gz")


@pytest.fixture(scope="session")
def real_ct_labels() -> Path:
    return shared_path("data/real/btcv13/example_ct_btcv13_from_tsv1highres.nii.gz")


@pytest.fixture(scope="session")
def real_ct_small() -> Path:
    return shared_path("data/real/totalsegmentator/example_ct_sm.nii.gz")


@pytest.fixture(scope="session")
def real_ct_small_labels() -> Path:
    return shared_path("data/real/btcv13/example_ct_sm_btcv13_from_tsv2.nii.gz")


@pytest.fixture(scope="session")
def msd_spleen() -> tuple[Path, Path]:
    return (
        shared_path("data/real/msd_spleen/sub-spleen2_ct.nii.gz"),
        shared_path("data/real/msd_spleen/sub-spleen2_ct_seg-manual.nii.gz"),
    )


def save_tiny_model(
    folder: Path, spacing_mm: float, roi: int, name: str = "tiny", seed: int | None = None
) -> Path:
    """A randomly initialised, very small UNet card (for pipeline plumbing, not for accuracy), in
    `folder/name`; `seed` seeds its weights (default: torch's global generator as it is)."""
    import torch

    from AdvSegAttackLib.models.cards import ModelCard
    from AdvSegAttackLib.models.networks import build_network, save_model

    if seed is not None:
        torch.manual_seed(seed)
    card = ModelCard(
        name=name,
        architecture="unet",
        arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        spacing_mm=[spacing_mm] * 3,
        roi_size=[roi] * 3,
    )
    return save_model(card, build_network(card), folder / name)


@contextlib.contextmanager
def application_scene(slicer):
    """A real MRML scene (`slicer-core`, no Qt) set up the way the Slicer application sets up its scene:
    default colour tables, slice orientation presets, the subject hierarchy, a layout logic, and a slice
    logic for every slice view (in Slicer the layout manager makes one per view; it makes the view's slice
    composite node). Yields (scene, layout node)."""
    import vtk

    scene = slicer.vtkMRMLScene()
    colorLogic = slicer.vtkMRMLColorLogic()
    colorLogic.SetMRMLScene(scene)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    sliceLogics = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(caller, event, node):
        if node.IsA("vtkMRMLSliceNode"):
            sliceLogic = slicer.vtkMRMLSliceLogic()
            sliceLogic.SetMRMLScene(scene)
            sliceLogic.SetSliceNode(node)
            sliceLogics.append(sliceLogic)

    observer = scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, onNodeAdded)
    layoutLogic = slicer.vtkMRMLLayoutLogic()
    layoutLogic.SetMRMLScene(scene)  # adds the layout node and the Red, Yellow and Green slice nodes
    try:
        yield scene, layoutLogic.GetLayoutNode()
    finally:
        scene.RemoveObserver(observer)
        for logic in (*sliceLogics, layoutLogic, colorLogic):
            logic.SetMRMLScene(None)
        scene.Clear(True)


def write_case_folder(
    source: Path, folder: Path, attack: str = "pgd", parameters: dict | None = None, seed: int = 0
) -> Path:
    """A case folder of the engine's shape, made with SimpleITK only (no torch, no model): what
    ``advseg attack`` would write for `source` (a volume file or a DICOM folder).

    adversarial.nii.gz is the source's voxels plus a reproducible ±3 HU change, on the source's grid and
    pixel type; the predictions are thresholds of the volume (liver = label 6, spleen = label 1) as label
    maps and Slicer segmentations; metrics.json and provenance.json have the engine's fields.
    """
    import json
    from datetime import datetime, timezone

    import numpy as np
    import SimpleITK as sitk

    from AdvSegAttackLib import __version__
    from AdvSegAttackLib.models.labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES
    from AdvSegAttackLib.volumes.io import read_image, sha256_file, write_image, write_segmentation

    folder.mkdir(parents=True)
    image = read_image(source)
    voxels = sitk.GetArrayFromImage(image)
    change = np.random.default_rng(seed).integers(-3, 4, voxels.shape)
    adversarial = sitk.GetImageFromArray((voxels + change).astype(voxels.dtype))
    adversarial.CopyInformation(image)
    write_image(adversarial, folder / "adversarial.nii.gz")
    clean = np.zeros(voxels.shape, np.uint8)
    clean[voxels > 40] = 6
    clean[: max(1, voxels.shape[0] // 3), : voxels.shape[1] // 4, : voxels.shape[2] // 4] = 1
    attacked = clean.copy()
    attacked[:, : voxels.shape[1] // 2][attacked[:, : voxels.shape[1] // 2] == 6] = 0
    for name, labels in (("pred_clean", clean), ("pred_adv", attacked)):
        label = sitk.GetImageFromArray(labels)
        label.CopyInformation(image)
        write_image(label, folder / f"{name}.nii.gz")
        write_segmentation(label, folder / f"{name}.seg.nrrd", BTCV_LABEL_NAMES, BTCV_LABEL_COLORS)
    metrics = {
        "reference": "clean prediction",
        "organs": {
            "spleen": {
                "label": 1,
                "dice_clean": 1.0,
                "dice_adv": 1.0,
                "hd95_clean_mm": 0.0,
                "hd95_adv_mm": 0.0,
            },
            "liver": {
                "label": 6,
                "dice_clean": 1.0,
                "dice_adv": 0.5,
                "hd95_clean_mm": 0.0,
                "hd95_adv_mm": 9.0,
            },
        },
        "mean_dice_clean": 1.0,
        "mean_dice_adv": 0.75,
        "perturbation": {"ssim_3d": 0.99, "psnr_db": 50.0, "linf_hu": 3.0},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    now = datetime.now(timezone.utc).isoformat()
    provenance = {
        "tool": "AdvSegAttack",
        "version": __version__,
        "command_line": f"advseg attack --image {source} --attack {attack}",
        "input": {"path": str(Path(source).resolve()), "sha256": sha256_file(source)},
        "reference_label": None,
        "target": "clean prediction",
        "model": {"name": "none (written by the tests without a model)", "weights_sha256": None},
        "attack": {
            "name": attack,
            "preset": None,
            "parameters": {name: {"value": value, "unit": ""} for name, value in (parameters or {}).items()},
        },
        "organs": {},
        "region": {"mode": "whole", "dilation_mm": None},
        "targeted": False,
        "seed": seed,
        "device": "cpu",
        "versions": {},
        "start_time": now,
        "end_time": now,
    }
    (folder / "provenance.json").write_text(json.dumps(provenance), encoding="utf-8")
    preview = sitk.GetImageFromArray(np.full((8, 8), 128, np.uint8))
    sitk.WriteImage(preview, str(folder / "preview.png"))
    return folder


def attack_catalogue() -> dict:
    """The engine's attack catalogue (`AdvSegAttackLib.attacks.catalogue`, torch-free) as the module receives
    it: a new deep copy on every call, so a test may change it."""
    from AdvSegAttackLib.attacks.catalogue import catalogue

    return copy.deepcopy(catalogue())


@pytest.fixture
def catalogue_dict() -> dict:
    """`attack_catalogue()`: the engine's attack catalogue as the module receives it."""
    return attack_catalogue()
