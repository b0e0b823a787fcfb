"""metrics.json (issue 12): one schema for `segment`, `attack` and `evaluate`, strict JSON, the grid in x, y, z as
`advseg info`, organs absent from the reference without a Dice or HD95 ("-" when printed), every mean with
the number of organs it covers; and its readers (CLI tables, Slicer scene tables, export README) follow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import save_tiny_model

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.models.labels import BTCV_LABEL_NAMES
from AdvSegAttackLib.volumes.phantom import write_phantom

MODULE_DIR = Path(__file__).resolve().parents[1] / "AdvSegAttack"


def strict_json(path: Path):
    """The JSON of `path`, refusing the NaN/Infinity tokens Python accepts and JSON.parse does not."""

    def refuse(token: str):
        raise ValueError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_organ_metrics_leave_organs_absent_from_the_reference_undefined():
    from AdvSegAttackLib.evaluation.metrics import organ_metrics

    reference = np.zeros((12, 12, 12), np.uint8)
    reference[2:6, 2:6, 2:6] = 1  # spleen
    reference[7:10, 7:10, 7:10] = 2  # right kidney: the prediction misses it
    clean = np.zeros_like(reference)
    clean[2:6, 2:6, 3:7] = 1  # 3/4 of the spleen
    clean[8:11, 1:3, 1:3] = 3  # left kidney: not in the reference
    adversarial = np.zeros_like(reference)
    adversarial[2:6, 2:6, 4:8] = 1
    result = organ_metrics(BTCV_LABEL_NAMES, (2.0, 1.0, 1.0), clean, reference, adversarial)
    spleen, right, left = (result["organs"][n] for n in ("spleen", "right kidney", "left kidney"))
    assert set(result["organs"]) == {"spleen", "right kidney", "left kidney"}
    assert spleen["dice_clean"] == pytest.approx(0.75) and spleen["dice_adv"] == pytest.approx(0.5)
    assert spleen["dice_adv_vs_clean_prediction"] == pytest.approx(0.75)
    assert right["dice_clean"] == 0.0 and right["hd95_clean_mm"] is None  # missed: Dice 0, no distance
    assert right["voxels_reference"] == 27 and right["voxels_clean"] == 0
    assert right["dice_adv_vs_clean_prediction"] is None  # not in the clean prediction either
    assert left["dice_clean"] is None and left["hd95_clean_mm"] is None and left["dice_adv"] is None
    assert (
        left["voxels_reference"] == 0
        and left["voxels_clean"] == 12
        and left["dice_adv_vs_clean_prediction"] == 0.0
    )
    assert result["mean_dice_clean"] == pytest.approx(0.375) and result["mean_dice_clean_organs"] == 2
    assert result["mean_hd95_clean_mm_organs"] == 1
    assert result["mean_hd95_clean_mm"] == pytest.approx(spleen["hd95_clean_mm"])
    assert result["mean_dice_adv_vs_clean_prediction_organs"] == 2  # spleen and left kidney
    without_reference = organ_metrics(BTCV_LABEL_NAMES, (2.0, 1.0, 1.0), clean)
    assert without_reference == {
        "organs": {
            "spleen": {"label": 1, "voxels_clean": 64},
            "left kidney": {"label": 3, "voxels_clean": 12},
        }
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`segment` and `attack` of a phantom whose reference holds only spleen and liver, with a tiny random model."""
    root = tmp_path_factory.mktemp("schema")
    model = save_tiny_model(root / "model", spacing_mm=6.0, roi=32)
    image, label = write_phantom(3, root / "data", shape=(36, 32, 30), spacing=(6.0, 6.5, 7.0))
    partial = sitk.ReadImage(str(label))
    partial = sitk.Mask(partial, (partial == 1) | (partial == 6))  # the other organs are absent from it
    sitk.WriteImage(partial, str(label))
    common = ["--image", str(image), "--label", str(label), "--model", str(model), "--device", "cpu"]
    attack = ["--attack", "pgd", "--steps", "1", "--organ", "liver", "--region", "bbox"]
    assert main(["segment", *common, "--out", str(root / "segment")]) == 0
    assert main(["attack", *common, *attack, "--out", str(root / "attack")]) == 0
    return root, model, {"segment": root / "segment", "attack": root / "attack"}


def test_segment_and_attack_write_one_strict_schema(runs, capsys):
    root, _, out = runs
    segment, attack = (
        strict_json(out["segment"] / "metrics.json"),
        strict_json(out["attack"] / "metrics.json"),
    )
    assert (segment["kind"], attack["kind"]) == ("segment", "attack")
    shared = ("metrics_version", "model", "size", "spacing_mm", "reference", "background_excluded")
    assert {k: segment[k] for k in shared} == {k: attack[k] for k in shared}
    assert segment["spacing_mm"] == [6.0, 6.5, 7.0] and segment["size"] == [36, 32, 30]  # x, y, z as `info`
    for name, organ in segment["organs"].items():  # the same clean prediction, the same numbers
        for key in ("label", "voxels_reference", "voxels_clean", "dice_clean", "hd95_clean_mm"):
            assert attack["organs"][name][key] == organ[key]
    for key in (
        "mean_dice_clean",
        "mean_dice_clean_organs",
        "mean_hd95_clean_mm",
        "mean_hd95_clean_mm_organs",
    ):
        assert attack[key] == segment[key]
    absent = [name for name, organ in attack["organs"].items() if not organ["voxels_reference"]]
    assert absent, "the random tiny model predicts organs the phantom lacks"
    for name in absent:
        assert all(attack["organs"][name][k] is None for k in ("dice_clean", "dice_adv", "hd95_adv_mm"))
    assert attack["mean_dice_clean_organs"] == sum(
        bool(o["voxels_reference"]) for o in attack["organs"].values()
    )
    region = attack["perturbation"]["region"]  # --region bbox around the liver: its box holds the liver
    assert "shape" not in attack["perturbation"] and "axial_axis" not in attack["perturbation"]
    liver = np.nonzero(
        sitk.GetArrayFromImage(sitk.ReadImage(str(root / "data" / "phantom_seed3_label.nii.gz"))) == 6
    )
    for (start, stop), indices, n in zip(region["bbox"], reversed(liver), attack["size"], strict=True):
        assert 0 <= start <= indices.min() and indices.max() < stop <= n  # x, y, z: the order of `size`


def test_tables_print_a_dash_for_organs_absent_from_the_reference(runs, tmp_path, capsys):
    root, model, out = runs
    image, label = root / "data" / "phantom_seed3_image.nii.gz", root / "data" / "phantom_seed3_label.nii.gz"
    common = ["--image", str(image), "--label", str(label), "--model", str(model), "--device", "cpu"]
    capsys.readouterr()
    assert main(["attack", *common, "--attack", "gn", "--no-preview", "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert main(["segment", *common, "--out", str(tmp_path / "s")]) == 0
    printed += capsys.readouterr().out
    metrics = strict_json(tmp_path / "a" / "metrics.json")
    absent = [name for name, organ in metrics["organs"].items() if not organ["voxels_reference"]]
    cells = [
        line[len(name) :].split() for line in printed.splitlines() if (name := line.split("  ")[0]) in absent
    ]
    assert len(cells) == 2 * len(absent)  # a row in the attack table and one in the segment table
    assert sorted(map(len, cells)) == [3] * len(absent) + [4] * len(
        absent
    )  # segment rows also show the label
    assert all(row[-2:] == ["-", "-"] and set(row) <= {"-"} | set(map(str, range(14))) for row in cells)
    assert f"({metrics['mean_dice_clean_organs']} organs)" in printed


def test_scene_tables_and_export_readme_follow_the_schema(runs, tmp_path):
    root, _, out = runs
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    from AdvSegAttackSceneLib import scene  # the Slicer module's scene code (Qt-free, MRML imported lazily)

    metrics = strict_json(out["attack"] / "metrics.json")
    rows = scene.organRows(metrics)
    assert rows[-1][0] == "mean"
    assert rows[-1][5] == pytest.approx(metrics["mean_hd95_clean_mm"])
    assert rows[-1][6] == pytest.approx(metrics["mean_hd95_adv_mm"])
    assert f"({metrics['mean_dice_clean_organs']} organs)" in scene.formatSummary(metrics)
    bundle = tmp_path / "bundle"
    assert main(["export", str(out["attack"]), "--out", str(bundle)]) == 0
    readme = (bundle / "README.txt").read_text(encoding="utf-8")
    assert f"(over {metrics['mean_dice_clean_organs']} organs of the reference)" in readme


def test_model_card_json_is_strict(tmp_path):
    from AdvSegAttackLib.models.cards import ModelCard

    card = ModelCard(
        name="c", architecture="unet", provenance={"training": {"validation_dice": {"mean": float("nan")}}}
    )
    (tmp_path / "card.json").write_text(card.to_json(), encoding="utf-8")  # what save_model writes
    assert strict_json(tmp_path / "card.json")["provenance"]["training"]["validation_dice"] == {"mean": None}
