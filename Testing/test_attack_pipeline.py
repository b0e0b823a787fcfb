"""`advseg attack` end to end: the case folder, geometry, region, provenance, the written file, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import save_tiny_model
from test_io import assert_same_geometry

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.evaluation.casefolder import read_case
from AdvSegAttackLib.volumes.io import read_image, read_label


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), spacing_mm=3.0, roi=32)


@pytest.fixture(scope="module")
def organ_case(tmp_path_factory, real_ct_small, real_ct_small_labels, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("case") / "liver-pgd"
    args = [
        "attack",
        "--image",
        str(real_ct_small),
        "--label",
        str(real_ct_small_labels),
        "--model",
        str(tiny_model),
        "--attack",
        "pgd",
        "--steps",
        "2",
        "--organ",
        "liver",
        "--region",
        "organ",
        "--dilation-mm",
        "6",
        "--seed",
        "3",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--progress",
        "jsonl",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "AdvSegAttackLib.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1] == {"event": "done", "out": str(out)}
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    for stage in ("load", "segment-clean", "attack", "write", "segment-adv", "metrics"):
        assert stage in stages
    attack_steps = [e for e in events if e.get("stage") == "attack"]
    assert [e["step"] for e in attack_steps] == [0, 1, 2] and all("loss" in e for e in attack_steps[1:])
    return out


def test_case_folder_is_complete_and_on_the_source_geometry(organ_case, real_ct_small):
    case = read_case(organ_case)
    source = read_image(real_ct_small)
    adversarial = read_image(case.adversarial)
    assert adversarial.GetPixelID() == source.GetPixelID()
    for getter in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(adversarial, getter)() == getattr(source, getter)()
    for path in (case.pred_clean_nifti, case.pred_adv_nifti):
        prediction = read_label(path)
        assert prediction.GetSize() == source.GetSize() and prediction.GetOrigin() == source.GetOrigin()
    assert case.preview.is_file() and case.preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outside_the_organ_region_the_volume_is_bit_identical(
    organ_case, real_ct_small, real_ct_small_labels
):
    from scipy.ndimage import distance_transform_edt

    source = sitk.GetArrayFromImage(read_image(real_ct_small))
    adversarial = sitk.GetArrayFromImage(read_image(read_case(organ_case).adversarial))
    changed = adversarial != source
    assert changed.any()
    liver = sitk.GetArrayFromImage(read_label(real_ct_small_labels)) == 6
    distance = distance_transform_edt(~liver, sampling=(3.0, 3.0, 3.0))
    # Region: liver dilated by 6 mm on the (identical) 3 mm model grid; nothing changes beyond it.
    assert distance[changed].max() <= 6.0 + 1e-6
    # Only voxels inside the HU window move, and by at most eps = 4/255 of the window (6.7 HU) + rounding.
    assert np.all((source[changed] >= -175) & (source[changed] <= 250))
    assert np.abs(adversarial.astype(int) - source)[changed].max() <= np.ceil(4 / 255 * 425)


def test_metrics_and_provenance(organ_case, real_ct_small, tiny_model):
    case = read_case(organ_case)
    metrics = case.load_metrics()
    assert metrics["reference"] == "reference label" and metrics["background_excluded"] is True
    liver = metrics["organs"]["liver"]
    assert {"dice_clean", "dice_adv", "hd95_clean_mm", "hd95_adv_mm", "dice_adv_vs_clean_prediction"} <= set(
        liver
    )
    perturbation = metrics["perturbation"]
    assert 0 < perturbation["fraction_changed"] < 0.5 and perturbation["linf_hu"] <= 7
    assert perturbation["ssim_3d"] > 0.95 and perturbation["region"]["bbox"]
    assert set(metrics["seconds"]) >= {"load", "segment_clean", "attack", "write", "segment_adv", "metrics"}
    provenance = case.load_provenance()
    from AdvSegAttackLib.volumes.io import sha256_file

    assert provenance["input"]["sha256"] == sha256_file(real_ct_small)
    assert provenance["model"]["weights_sha256"] == sha256_file(tiny_model.parent / "model.safetensors")
    assert provenance["attack"]["parameters"]["eps"] == {
        "value": 4.0,
        "unit": "k/255 of the [0, 1] model intensity",
        "flag": "--eps",
    }
    assert provenance["seed"] == 3 and provenance["organs"] == {"liver": 6} and provenance["device"] == "cpu"
    assert {"torch", "monai", "advsegattack"} <= set(provenance["versions"])
    assert provenance["start_time"] <= provenance["end_time"]


def test_predictions_are_of_the_written_file(organ_case, tiny_model, tmp_path):
    case = read_case(organ_case)
    assert (
        main(
            [
                "segment",
                "--image",
                str(case.adversarial),
                "--model",
                str(tiny_model),
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    again = (
        sitk.GetArrayFromImage(read_label(tmp_path / "pred.nii.gz"))
        if (tmp_path / "pred.nii.gz").is_file()
        else None
    )
    recorded = sitk.GetArrayFromImage(sitk.ReadImage(str(case.pred_adv_nifti)))
    if again is None:  # the tiny random model may predict background only, which read_label refuses as empty
        again = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred.nii.gz")))
    np.testing.assert_array_equal(again, recorded)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--attack", "saa", "--rho", "1.5"], "--rho"),
        (["--attack", "saa", "--block-size", "1"], "--block-size"),
        (["--attack", "pgd", "--steps", "0"], "--steps"),
        (["--attack", "pgd", "--eps", "-1"], "--eps"),
        (["--attack", "fgsm", "--rho", "0.2"], "--rho does not apply to --attack fgsm"),
        (["--attack", "pgd", "--organ", "esophagus"], "--organ esophagus is not present in the target"),
        (["--attack", "pgd", "--organ", "heart"], "--organ 'heart' is not an organ of this model"),
        (["--attack", "pgd", "--region", "organ"], "--region organ needs --organ"),
        (["--attack", "saa", "--preset", "fastest"], "--preset 'fastest' is not a preset"),
    ],
)
def test_bad_attack_parameters_exit_2_without_output(
    extra, message, real_ct_small, real_ct_small_labels, tiny_model, tmp_path, capsys
):
    out = tmp_path / "case"
    status = main(
        [
            "attack",
            "--image",
            str(real_ct_small),
            "--label",
            str(real_ct_small_labels),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--device",
            "cpu",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    errors = [line for line in err if line.startswith("advseg: error: ")]  # after the stages' log lines
    assert len(errors) == 1 and message in errors[0] and err[-1] == errors[0]
    assert not out.exists()


@pytest.mark.parametrize("pixel_type", [sitk.sitkFloat32, sitk.sitkFloat64])
def test_float_source_of_integer_hu_is_written_as_integer_hu(
    pixel_type, real_ct_small, tiny_model, tmp_path, capsys
):
    """A float-typed NIfTI holding integer HU (common in archives) gets integer HU back, in its own type."""
    source = sitk.Cast(read_image(real_ct_small), pixel_type)
    path = tmp_path / "float_ct.nii.gz"
    sitk.WriteImage(source, str(path), useCompression=True)
    out = tmp_path / "case"
    arguments = ["attack", "--image", str(path), "--model", str(tiny_model), "--attack", "fgsm"]
    status = main([*arguments, "--out", str(out), "--device", "cpu", "--no-preview", "--progress", "jsonl"])
    assert status == 0, capsys.readouterr().out
    written = sitk.ReadImage(str(read_case(out).adversarial))
    assert written.GetPixelID() == pixel_type
    values, clean = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source)
    assert np.count_nonzero(values != clean) > 0.05 * values.size  # FGSM moved many in-window voxels
    np.testing.assert_array_equal(values, np.rint(values))
    assert len(np.unique(values)) <= len(np.unique(clean)) + 2 * int(np.ceil(4 / 255 * 425))


# -- the region on the source grid ---------------------------------------------------------------------------

GALLBLADDER = 4


def _rotation(z_degrees: float, x_degrees: float) -> np.ndarray:
    a, b = np.deg2rad(z_degrees), np.deg2rad(x_degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture(scope="module")
def oblique_source(tmp_path_factory, real_ct_small, real_ct_small_labels) -> tuple[Path, Path]:
    """The real CT and its label map resampled to 0.8 x 0.8 x 2.5 mm on an oblique grid with LPS-like voxel axes
    (the CT's are RAS-like), 100 x 100 x 60 mm around the gallbladder: a grid unlike the model's 3 mm one."""
    folder = tmp_path_factory.mktemp("oblique")
    image, label = read_image(real_ct_small), read_label(real_ct_small_labels)
    organ = np.argwhere(sitk.GetArrayFromImage(label) == GALLBLADDER)[:, ::-1].mean(0)
    centre = np.array(label.TransformContinuousIndexToPhysicalPoint(organ.tolist()))
    spacing, size = np.array([0.8, 0.8, 2.5]), np.array([125, 125, 24])
    direction = _rotation(15.0, 7.0)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin((centre - direction @ (spacing * (size - 1) / 2)).tolist())
    hu = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    sitk.WriteImage(sitk.Cast(sitk.Round(hu), sitk.sitkInt16), str(folder / "ct.nii.gz"), True)
    labels = sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    sitk.WriteImage(labels, str(folder / "labels.nii.gz"), True)
    return folder / "ct.nii.gz", folder / "labels.nii.gz"


def _expected_region(labels: np.ndarray, spacing_zyx, dilation_mm: float, mode: str) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    region = distance_transform_edt(labels != GALLBLADDER, sampling=spacing_zyx) <= dilation_mm
    if mode == "bbox":
        box = tuple(slice(hits.min(), hits.max() + 1) for hits in np.nonzero(region))
        region = np.zeros_like(region)
        region[box] = True
    return region


@pytest.mark.parametrize("mode", ["organ", "bbox"])
def test_region_holds_on_an_anisotropic_oblique_source_grid(
    mode, oblique_source, tiny_model, tmp_path, capsys
):
    """Outside region.nii.gz (the organ grown by --dilation-mm on the source grid, or its box) every voxel is the
    source's, bit for bit; the region file has the source's geometry; the attack reaches the region's edge."""
    image_path, label_path = oblique_source
    out = tmp_path / "case"
    arguments = ["attack", "--image", str(image_path), "--label", str(label_path), "--model", str(tiny_model)]
    arguments += ["--attack", "pgd", "--steps", "2", "--organ", "gallbladder", "--region", mode]
    arguments += ["--dilation-mm", "6", "--out", str(out), "--device", "cpu", "--no-preview"]
    assert main([*arguments, "--progress", "jsonl"]) == 0, capsys.readouterr().out
    case = read_case(out)
    source_image = read_image(image_path)
    region_image = sitk.ReadImage(str(case.region))
    assert_same_geometry(region_image, source_image)  # to NIfTI's float32 precision of oblique directions
    assert region_image.GetPixelID() == sitk.sitkUInt8
    region = sitk.GetArrayFromImage(region_image)
    assert set(np.unique(region)) == {0, 1}
    labels = sitk.GetArrayFromImage(read_label(label_path))
    expected = _expected_region(labels, tuple(reversed(source_image.GetSpacing())), 6.0, mode)
    np.testing.assert_array_equal(region.astype(bool), expected)

    source = sitk.GetArrayFromImage(source_image)
    adversarial = sitk.GetArrayFromImage(read_image(case.adversarial))
    changed = adversarial != source
    assert not changed[~expected].any(), f"{int(changed[~expected].sum())} voxels changed outside the region"
    # The model-grid region covers the source region: PGD's random start reaches its edge voxels too.
    attackable = expected & (source >= -175) & (source <= 250)
    edge = attackable & ~_expected_region(labels, tuple(reversed(source_image.GetSpacing())), 3.0, mode)
    assert changed[attackable].mean() > 0.7 and changed[edge].mean() > 0.7
    assert case.load_metrics()["perturbation"]["region"]["mask_voxels"] == int(expected.sum())
    assert case.load_provenance()["region"]["mode"] == mode
    bundle = tmp_path / "bundle"  # export carries the mask along
    assert main(["export", str(out), "--out", str(bundle), "--format", "nifti", "nrrd"]) == 0
    for name in ("region.nii.gz", "region.nrrd"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(bundle / name))), region)


@pytest.mark.slow
def test_with_a_region_segment_adv_runs_only_the_changed_windows_and_equals_a_full_segmentation(tmp_path):
    """--region organ: segment-adv reuses the clean logits of every window whose model-space input the written
    file leaves unchanged; its labels equal a full segmentation of the written file (bundled model, phantom)."""
    import torch

    from AdvSegAttackLib.models.segment import count_windows, window_slices, window_start
    from AdvSegAttackLib.pipeline.case import LoadedModel, run_attack, windows_reached
    from AdvSegAttackLib.pipeline.request import AttackRequest
    from AdvSegAttackLib.progress import LogReporter
    from AdvSegAttackLib.volumes.phantom import write_phantom
    from AdvSegAttackLib.volumes.preprocess import to_model_space

    torch.set_num_threads(1)
    image, label = write_phantom(1000, tmp_path / "input", shape=(80, 70, 60), spacing=(4.5, 4.5, 4.5))
    model = LoadedModel.load("abdomen-unet")
    request = AttackRequest(
        image=image,
        model="abdomen-unet",
        out=tmp_path / "case",
        attack="pgd",
        params={"steps": 2, "eps": 32.0},
        label=label,
        organs=("spleen",),
        region="organ",
        dilation_mm=3.0,
        preview=False,
    )
    metrics = run_attack(request, LogReporter(), model)
    case = read_case(tmp_path / "case")
    recorded = sitk.GetArrayFromImage(sitk.ReadImage(str(case.pred_adv_nifti)))
    space, _, full = model.segment(read_image(case.adversarial))
    np.testing.assert_array_equal(recorded, sitk.GetArrayFromImage(full))
    clean = sitk.GetArrayFromImage(sitk.ReadImage(str(case.pred_clean_nifti)))
    assert (
        recorded != clean
    ).any()  # the attack changed labels, so the reused blend is not just the clean one
    run = metrics["attack"]["diagnostics"]["segment_adv_windows"]
    total = count_windows(tuple(space.tensor.shape[2:]), model.card.roi_size, model.card.overlap)
    assert 0 < run < total / 2
    # segment-clean kept the raw clean logits of every window the region can reach (known up front from the
    # reference label), so segment-adv ran no window on the clean input again.
    region = sitk.GetArrayFromImage(sitk.ReadImage(str(case.region))).astype(bool)
    reached = windows_reached(space, region, model.card)
    clean_tensor = to_model_space(read_image(image), **model.card.preprocessing).tensor
    slices, _ = window_slices(tuple(space.tensor.shape[2:]), model.card.roi_size, model.card.overlap)
    changed = {
        window_start(w) for w in slices if not torch.equal(space.tensor[(0, 0, *w)], clean_tensor[(0, 0, *w)])
    }
    assert len(changed) == run and changed <= reached and len(reached) < total / 2


def test_a_request_is_validated_once(tiny_model, tmp_path, monkeypatch):
    """`run_attack` validates the request (parameters, organs, region) once, before the label is read, and
    `attack_volume` reuses that instead of validating again."""
    import AdvSegAttackLib.pipeline.case as case_steps
    from AdvSegAttackLib.volumes.phantom import write_phantom

    calls = []
    real_validate = case_steps.validate_request

    def counted_validate(request, label_names):
        calls.append(request.organs)
        return real_validate(request, label_names)

    monkeypatch.setattr(case_steps, "validate_request", counted_validate)
    image, label = write_phantom(0, tmp_path / "data", shape=(36, 32, 30), spacing=(6.0, 6.0, 6.0))
    argv = ["attack", "--image", str(image), "--label", str(label), "--model", str(tiny_model)]
    argv += ["--attack", "pgd", "--steps", "1", "--organ", "liver", "--region", "bbox", "--no-preview"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "case")]) == 0
    assert calls == [["liver"]]
