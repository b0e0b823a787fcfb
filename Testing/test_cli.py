"""The `advseg` command line: outputs, progress protocol and bad input (status 2, one sentence, no output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import save_tiny_model

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.volumes.io import read_image, write_image


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), spacing_mm=6.0, roi=16)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "AdvSegAttackLib.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


def test_segment_writes_labels_on_the_source_grid_with_names(
    real_ct_small, real_ct_small_labels, tiny_model, tmp_path
):
    out = tmp_path / "seg"
    result = run(
        "segment",
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
        "--progress",
        "jsonl",
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1] == {"event": "done", "out": str(out)}
    steps = [e for e in events if e["event"] == "progress"]
    assert steps and steps[-1]["step"] == steps[-1]["total"] and steps[0]["stage"] == "segment"
    image, predicted = read_image(real_ct_small), sitk.ReadImage(str(out / "pred.nii.gz"))
    assert predicted.GetSize() == image.GetSize()
    assert predicted.GetOrigin() == image.GetOrigin() and predicted.GetDirection() == image.GetDirection()
    segmentation = slicerio.read_segmentation(str(out / "pred.seg.nrrd"))
    values = {int(v) for v in np.unique(sitk.GetArrayFromImage(predicted)) if v}
    assert {s["labelValue"] for s in segmentation["segments"]} == values
    metrics = strict_json(out / "metrics.json")
    assert metrics["kind"] == "segment" and metrics["reference"] == "reference label"
    assert metrics["background_excluded"] is True and set(metrics["organs"]) >= {"liver", "spleen"}
    assert metrics["size"] == list(image.GetSize()) and metrics["spacing_mm"] == list(image.GetSpacing())
    in_reference = [o for o in metrics["organs"].values() if o["voxels_reference"]]
    assert metrics["mean_dice_clean_organs"] == len(in_reference)
    assert metrics["mean_dice_clean"] == pytest.approx(np.mean([o["dice_clean"] for o in in_reference]))
    for organ in metrics["organs"].values():  # the random tiny model predicts organs the reference lacks
        if not organ["voxels_reference"]:
            assert organ["dice_clean"] is None and organ["hd95_clean_mm"] is None


def strict_json(path: Path):
    """The JSON of `path`, refusing the NaN/Infinity tokens Python would accept (JSON.parse does not)."""

    def refuse(token: str):
        raise ValueError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def bad_inputs(tmp_path: Path, real_ct_small: Path) -> dict[str, tuple[list[str], str]]:
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"\x00not an image" * 50)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(real_ct_small.read_bytes()[:4000])
    flat = write_image(sitk.Image([16, 16], sitk.sitkInt16), tmp_path / "flat.nii.gz")
    four = write_image(sitk.Image([8, 8, 8, 2], sitk.sitkInt16), tmp_path / "four.nii.gz")
    nan_array = np.zeros((20, 20, 20), np.float32)
    nan_array[5, 5, 5] = np.nan
    nan = write_image(sitk.GetImageFromArray(nan_array), tmp_path / "nan.nrrd")
    nan_nifti = tmp_path / "nan.nii.gz"  # SimpleITK's NIfTI reader hands NaN over as 0
    sitk.WriteImage(sitk.GetImageFromArray(nan_array), str(nan_nifti))
    empty = write_image(sitk.Image([122, 101, 30], sitk.sitkUInt8), tmp_path / "empty_label.nii.gz")
    unknown_card = tmp_path / "vnet.json"
    unknown_card.write_text(json.dumps({"name": "v", "architecture": "vnet"}), encoding="utf-8")
    wrong_keys = tmp_path / "wrong.pt"
    import torch

    torch.save({"state_dict": {"layer.weight": torch.zeros(3)}}, wrong_keys)
    image = ["--image", str(real_ct_small)]
    return {
        "unreadable": (["--image", str(garbage)], "garbage.nii.gz could not be read"),
        "truncated": (["--image", str(truncated)], "truncated.nii.gz is truncated"),
        "2-D": (["--image", str(flat)], "flat.nii.gz is a 2-D image"),
        "4-D": (["--image", str(four)], "four.nii.gz is a 4-D image"),
        "NaN": (["--image", str(nan)], "nan.nrrd contains 1 NaN"),
        "NaN in NIfTI": (["--image", str(nan_nifti)], "nan.nii.gz contains 1 NaN"),
        "empty label": ([*image, "--label", str(empty)], "empty_label.nii.gz is an empty label map"),
        "unknown architecture": ([*image, "--model", str(unknown_card)], "unknown architecture 'vnet'"),
        "checkpoint keys": ([*image, "--model", str(wrong_keys), "--card", "btcv-unet"], "keys do not fit"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unreadable",
        "truncated",
        "2-D",
        "4-D",
        "NaN",
        "NaN in NIfTI",
        "empty label",
        "unknown architecture",
        "checkpoint keys",
    ],
)
def test_bad_input_exits_2_with_one_sentence_and_no_output(case, tmp_path, real_ct_small, tiny_model, capsys):
    args, message = bad_inputs(tmp_path, real_ct_small)[case]
    out = tmp_path / "out"
    if "--model" not in args:
        args = [*args, "--model", str(tiny_model)]
    status = main(["segment", *args, "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and message in err[0] and err[0].endswith(".")
    assert not out.exists()
    # nothing staged is left; only the (released) lock file of the output folder may stay
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out") and p.name != ".out.lock"]


def test_jsonl_error_event_on_bad_input(tmp_path):
    result = run(
        "segment",
        "--image",
        str(tmp_path / "missing.nii.gz"),
        "--out",
        str(tmp_path / "o"),
        "--progress",
        "jsonl",
    )
    assert result.returncode == 2
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "event": "error",
        "message": f"{tmp_path / 'missing.nii.gz'} does not exist.",
    }
