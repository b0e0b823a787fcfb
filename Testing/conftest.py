"""Shared fixtures: the real CT of ../shared (skipped on a user's machine, required when CI=true)."""

from __future__ import annotations

import contextlib
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


def save_tiny_model(folder: Path, spacing_mm: float, roi: int) -> Path:
    """A randomly initialised, very small UNet card (for pipeline plumbing, not for accuracy)."""
    from AdvSegAttackLib.cards import ModelCard, save_model

    card = ModelCard(
        name="tiny",
        architecture="unet",
        arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        spacing_mm=[spacing_mm] * 3,
        roi_size=[roi] * 3,
    )
    return save_model(card, card.build_network(), folder / "tiny")


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
    from AdvSegAttackLib.io import read_image, sha256_file, write_image, write_segmentation
    from AdvSegAttackLib.labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES

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


def engine_cli(argv: list[str]) -> int:
    """`advseg ARGV` in this process (`AdvSegAttackLib.cli.main`). Skips where torch is not installed (the
    Python 3.12 run with Slicer 5.10's packages): the parser still imports the attack catalogue, which needs
    torch until that catalogue is made torch-free (issue 14)."""
    pytest.importorskip("torch", reason="advseg's parser imports the attack catalogue, which needs torch")
    from AdvSegAttackLib.cli import main

    return main(argv)


def _parameter(name, kind, default, minimum=None, maximum=None, *, closed=(True, True), **extra) -> dict:
    """One parameter entry of the engine's attack catalogue (`AdvSegAttackLib.attacks.catalogue`)."""
    return {
        "name": name,
        "flag": "--" + name.replace("_", "-"),
        "label": extra.get("label", name.replace("_", " ").capitalize()),
        "type": kind,
        "default": default,
        "minimum": minimum,
        "maximum": maximum,
        "minimum_inclusive": closed[0],
        "maximum_inclusive": closed[1],
        "choices": extra.get("choices"),
        "unit": extra.get("unit", "dimensionless"),
        "doc": extra.get("doc", f"the {name.replace('_', ' ')}"),
        "advanced": extra.get("advanced", False),
    }


def attack_catalogue() -> dict:
    """A catalogue of the shape `AdvSegAttackLib.attacks.catalogue.catalogue()` returns (the contract between
    the engine and the Slicer module), with the engine's attacks, defaults, ranges and presets as on main
    before issue 14. A new dict on every call, so a test may change it."""
    steps = _parameter("steps", "int", 20, 1, None, unit="iterations (one model forward+backward each)")
    saa_parameters = [
        _parameter(
            "rho",
            "float",
            0.2,
            0.0,
            1.0,
            closed=(False, False),
            label="ρ (spectral bound)",
            unit="relative DCT-coefficient change",
        ),
        steps,
        _parameter("block_size", "int", 32, 2, None, unit="voxels (block edge)", advanced=True),
        _parameter("lambda_dice", "float", 0.01, 0.0, None, closed=(False, True), advanced=True),
        _parameter("use_ssim_loss", "bool", True, unit="on/off", advanced=True),
        _parameter("lambda_ssim", "float", 1.0, 0.0, None, advanced=True),
        _parameter(
            "step_size",
            "float",
            0.1,
            0.0,
            None,
            closed=(False, True),
            unit="ξ units per step (η)",
            advanced=True,
        ),
        _parameter(
            "band", "choice", "all", choices=["all", "low", "middle", "high"], unit="DCT band", advanced=True
        ),
    ]
    saa_presets = [
        {
            "name": "specified",
            "label": "Specified (ρ 0.2, 20 steps, 32³)",
            "values": {
                "rho": 0.2,
                "steps": 20,
                "block_size": 32,
                "lambda_dice": 0.01,
                "use_ssim_loss": True,
                "lambda_ssim": 1.0,
                "step_size": 0.1,
            },
        },
        {
            "name": "authors-final",
            "label": "Authors' final (ρ 0.4, 10 steps, 16³)",
            "values": {
                "rho": 0.4,
                "steps": 10,
                "block_size": 16,
                "lambda_dice": 0.2,
                "use_ssim_loss": True,
                "lambda_ssim": 0.75,
                "step_size": 0.1,
            },
        },
    ]
    vafa_parameters = [
        _parameter("q_max", "float", 20.0, 1.0, None, unit="quantisation step, 0–255 DCT scale"),
        _parameter("q_min", "float", None, 0.0, None, closed=(False, True), advanced=True),
        _parameter("q_init", "choice", "max", choices=["max", "one"], advanced=True),
        _parameter("block_size", "int", 32, 2, None, unit="voxels (block edge)", advanced=True),
    ]
    eps = _parameter(
        "eps",
        "float",
        4.0,
        0.0,
        255.0,
        closed=(False, True),
        label="ε (budget)",
        unit="k/255 of the [0, 1] model intensity",
    )
    alpha = _parameter(
        "alpha",
        "float",
        0.01,
        0.0,
        1.0,
        closed=(False, True),
        unit="[0, 1] model intensity per step",
        advanced=True,
    )

    def attack(name, label, parameters, presets=(), default_preset=None, **flags) -> dict:
        return {
            "name": name,
            "label": label,
            "description": f"The {label} attack.",
            "source_grid": flags.get("source_grid", False),
            "needs_organ": flags.get("needs_organ", False),
            "supports_region": flags.get("supports_region", True),
            "supports_targeted": flags.get("supports_targeted", True),
            "parameters": [dict(p) for p in parameters],
            "presets": [dict(p) for p in presets],
            "default_preset": default_preset,
        }

    return {
        "attacks": [
            attack("saa", "SA² – 3D frequency attack", saa_parameters, saa_presets, "specified"),
            attack("saa-2d", "SA² 2D – per axial slice", saa_parameters, saa_presets, "specified"),
            attack(
                "vafa",
                "VAFA – 3D quantization attack",
                [*vafa_parameters, steps, _parameter("use_ssim_loss", "bool", True, advanced=True)],
            ),
            attack("vafa-2d", "VAFA 2D – per axial slice", [*vafa_parameters, {**steps, "default": 10}]),
            attack("pgd", "PGD (L∞, random start)", [eps, alpha, steps]),
            attack("bim", "BIM (iterative FGSM)", [eps, alpha, steps]),
            attack("fgsm", "FGSM (one step)", [eps]),
            attack(
                "gn",
                "Gaussian noise (baseline)",
                [_parameter("std", "float", 4.0, 0.0, 255.0, closed=(False, True))],
            ),
            attack(
                "texture",
                "Texture – organ feature statistics",
                [
                    _parameter("noise_mu", "float", 0.3, 0.0, None),
                    _parameter("noise_sigma", "float", 0.3, 0.0, None),
                    _parameter("blend", "float", 1.0, 0.0, 1.0),
                    _parameter("feather_mm", "float", 4.0, 0.0, None, unit="mm", advanced=True),
                    _parameter("search", "bool", False, advanced=True),
                    _parameter("ssim_floor", "float", 0.9, 0.0, 1.0, closed=(False, True), advanced=True),
                ],
                source_grid=True,
                needs_organ=True,
                supports_region=False,
                supports_targeted=False,
            ),
        ]
    }


@pytest.fixture
def catalogue_dict() -> dict:
    """`attack_catalogue()`: the engine's attack catalogue as the module receives it."""
    return attack_catalogue()
