"""Scene code of the Slicer module against a real MRML scene (the `slicer-core` wheel, no Qt).

The case folder is made here (SimpleITK NIfTI with an oblique direction, slicerio `.seg.nrrd`, a
metrics.json of the engine's shape), so these tests do not depend on the attack engine. The progress
parser and engine-location tests need no MRML at all and run even without `slicer-core`; the attack panel
and command line are tested in test_slicer_catalogue.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AdvSegAttack"
for _path in (REPO, MODULE_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from AdvSegAttackSceneLib import engine, progress  # noqa: E402
from conftest import application_scene  # noqa: E402

from AdvSegAttackLib.models.labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES  # noqa: E402

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)


LABEL_NAMES = list(BTCV_LABEL_NAMES[:7])
LABEL_COLORS = list(BTCV_LABEL_COLORS[:7])
METRICS = {
    "organs": {
        "liver": {
            "label": 6,
            "dice_clean": 0.91,
            "dice_adv": 0.42,
            "hd95_clean_mm": 3.5,
            "hd95_adv_mm": 21.0,
        },
        "spleen": {
            "label": 1,
            "dice_clean": 0.85,
            "dice_adv": 0.80,
            "hd95_clean_mm": 2.0,
            "hd95_adv_mm": None,
        },
    },
    "mean_dice_clean": 0.88,
    "mean_dice_adv": 0.61,
    "perturbation": {
        "ssim_3d": 0.95,
        "ssim_axial_mean": 0.96,
        "psnr_db": 41.5,
        "linf_hu": 6.7,
        "l2_hu": 120.0,
        "fraction_changed": 0.5,
    },
    "seconds": {"attack": 12.5, "total": 20.0},
}
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-100.5, 50.25, 300.0)
ANGLE = 0.2


# ------------------------------------------------------------------------------------------------
# Fixtures


def _direction():
    c, s = math.cos(ANGLE), math.sin(ANGLE)
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def expectedIJKToRAS() -> np.ndarray:
    """IJK-to-RAS of the test geometry, computed from the ITK (LPS) description."""
    direction = np.array(_direction()).reshape(3, 3)
    lpsToRas = np.diag([-1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = lpsToRas @ direction @ np.diag(SPACING)
    matrix[:3, 3] = lpsToRas @ np.array(ORIGIN)
    return matrix


@pytest.fixture(scope="module")
def caseData(tmp_path_factory):
    """A source CT (NRRD) and the case folder an attack on it would write."""
    sitk = pytest.importorskip("SimpleITK")
    from AdvSegAttackLib.volumes.io import write_segmentation

    root = tmp_path_factory.mktemp("advseg_case")
    rng = np.random.default_rng(0)
    shape = (10, 24, 20)  # k, j, i
    source = (rng.normal(40, 30, shape)).astype(np.int16)
    clean = np.zeros(shape, np.uint8)
    clean[2:8, 4:16, 3:12] = 6
    clean[1:4, 17:22, 14:19] = 1
    attacked = clean.copy()
    attacked[2:8, 4:10, 3:12] = 0
    perturbation = rng.integers(-3, 4, shape).astype(np.int16)
    adversarial = (source + perturbation).astype(np.int16)

    def image(array):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(SPACING)
        img.SetOrigin(ORIGIN)
        img.SetDirection(_direction())
        return img

    sourcePath = root / "source.nrrd"
    sitk.WriteImage(image(source), str(sourcePath))
    case = root / "case"
    case.mkdir()
    sitk.WriteImage(image(adversarial), str(case / "adversarial.nii.gz"))
    for name, labels in (("pred_clean", clean), ("pred_adv", attacked)):
        sitk.WriteImage(image(labels), str(case / f"{name}.nii.gz"))
        # Segment names deliberately not the card's: the card must win.
        names = [f"Segment_{value}" for value in range(7)]
        write_segmentation(image(labels), case / f"{name}.seg.nrrd", names, [(128, 128, 128)] * 7)
    (case / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    (case / "provenance.json").write_text(
        json.dumps({"attack": {"name": "saa", "rho": 0.2}}), encoding="utf-8"
    )
    (case / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    region = np.zeros(shape, np.uint8)
    region[1:9, 3:17, 2:13] = 1  # an organ-region attack's mask (the liver grown)
    sitk.WriteImage(image(region), str(case / "region.nii.gz"))
    cardPath = root / "card.json"
    cardPath.write_text(
        json.dumps({"name": "test-card", "label_names": LABEL_NAMES, "label_colors": LABEL_COLORS}),
        encoding="utf-8",
    )
    return {
        "root": root,
        "source": sourcePath,
        "case": case,
        "card": cardPath,
        "sourceArray": source,
        "regionArray": region,
        "adversarialArray": adversarial,
        "cleanLabels": clean,
        "attackedLabels": attacked,
    }


_RULES_REGISTERED = []


@pytest.fixture(scope="module")
def slicerModule():
    slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML without Qt) is not installed")
    if not _RULES_REGISTERED:
        # What the Segmentations module does when Slicer starts (once per process).
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
        _RULES_REGISTERED.append(True)
    return slicer


@pytest.fixture
def mrml(slicerModule):
    """A fresh scene set up the way the Slicer application sets up its scene."""
    from AdvSegAttackSceneLib import scene as sceneLib

    with application_scene(slicerModule) as (scene, layoutNode):
        yield {"slicer": slicerModule, "scene": scene, "layoutNode": layoutNode, "lib": sceneLib}


def _loadInput(mrml, caseData, study=True):
    scene, lib, slicer = mrml["scene"], mrml["lib"], mrml["slicer"]
    inputVolume = lib.readVolumeFile(scene, caseData["source"], "CT 1")
    if study:
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient")
        studyItem = shNode.CreateStudyItem(patient, "Study")
        shNode.CreateItem(studyItem, inputVolume)
    return inputVolume


def _loaded(mrml, caseData):
    inputVolume = _loadInput(mrml, caseData)
    loaded = mrml["lib"].loadCase(
        mrml["scene"], caseData["case"], inputVolume, labelNames=LABEL_NAMES, labelColors=LABEL_COLORS
    )
    return inputVolume, loaded


def _segmentLabelArray(mrml, segmentationNode, segmentName, referenceVolume):
    slicer, scene = mrml["slicer"], mrml["scene"]
    import vtk

    segmentation = segmentationNode.GetSegmentation()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentation.GetSegmentIdBySegmentName(segmentName))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tmp")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentationNode, ids, labelmap, referenceVolume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    )
    array = np.array(slicer.util.arrayFromVolume(labelmap)) > 0
    mrml["lib"].removeNodes(scene, [labelmap])
    return array


def _cell(table, row, column):
    return table.GetTable().GetValueByName(row, column)


# ------------------------------------------------------------------------------------------------
# Loading a case folder


def test_adversarial_volume_has_the_source_geometry(mrml, caseData):
    inputVolume, loaded = _loaded(mrml, caseData)
    lib = mrml["lib"]
    adversarial = loaded.adversarialVolume
    assert loaded.geometryMatchesInput
    # Bit for bit the input node's matrix (NIfTI's float32 rounding does not leak into the scene) ...
    assert np.array_equal(lib.ijkToRAS(adversarial), lib.ijkToRAS(inputVolume))
    # ... which is the source's geometry: spacing, origin and the oblique direction.
    np.testing.assert_allclose(lib.ijkToRAS(adversarial), expectedIJKToRAS(), atol=1e-5)
    np.testing.assert_allclose(adversarial.GetSpacing(), SPACING, atol=1e-6)
    assert adversarial.GetImageData().GetDimensions() == inputVolume.GetImageData().GetDimensions()
    voxels = mrml["slicer"].util.arrayFromVolume(adversarial)
    assert voxels.dtype == np.int16
    assert np.array_equal(voxels, caseData["adversarialArray"])
    assert adversarial.GetName() == "CT 1 adversarial (saa)"
    assert adversarial.GetAttribute(lib.CASE_FOLDER_ATTRIBUTE) == str(caseData["case"])
    # The window/level of the input, so clean and attacked look alike.
    assert adversarial.GetDisplayNode().GetWindow() == pytest.approx(inputVolume.GetDisplayNode().GetWindow())


def test_geometry_without_input_comes_from_the_file(mrml, caseData):
    loaded = mrml["lib"].loadCase(mrml["scene"], caseData["case"])
    assert not loaded.geometryMatchesInput
    np.testing.assert_allclose(mrml["lib"].ijkToRAS(loaded.adversarialVolume), expectedIJKToRAS(), atol=1e-5)
    assert loaded.adversarialVolume.GetName() == "case adversarial (saa)"


def test_results_go_into_the_input_study(mrml, caseData):
    inputVolume, loaded = _loaded(mrml, caseData)
    slicer = mrml["slicer"]
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml["scene"])
    study = shNode.GetItemParent(shNode.GetItemByDataNode(inputVolume))
    assert shNode.GetItemLevel(study) == "Study"
    for node in loaded.nodes():
        assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == study, node.GetName()


def test_attack_region_loads_hidden_on_the_source_geometry(mrml, caseData):
    inputVolume, loaded = _loaded(mrml, caseData)
    region = loaded.regionSegmentation
    assert region is not None and region in loaded.nodes() and not region.GetDisplayNode().GetVisibility()
    assert region.GetAttribute(mrml["lib"].ROLE_ATTRIBUTE) == "attack region"
    voxels = _segmentLabelArray(mrml, region, "attack region", inputVolume)
    assert np.array_equal(voxels, caseData["regionArray"] > 0)


def test_segments_have_the_card_names_and_colours(mrml, caseData):
    _, loaded = _loaded(mrml, caseData)
    for node, labels in (
        (loaded.cleanSegmentation, caseData["cleanLabels"]),
        (loaded.attackedSegmentation, caseData["attackedLabels"]),
    ):
        segmentation = node.GetSegmentation()
        segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
        assert sorted(s.GetName() for s in segments) == ["liver", "spleen"]
        for segment in segments:
            value = LABEL_NAMES.index(segment.GetName())
            assert segment.GetLabelValue() == value
            np.testing.assert_allclose(segment.GetColor(), np.array(LABEL_COLORS[value]) / 255.0, atol=1e-6)
            voxels = _segmentLabelArray(mrml, node, segment.GetName(), loaded.adversarialVolume)
            assert np.array_equal(voxels, labels == value), segment.GetName()
        reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
        assert reference is loaded.adversarialVolume
    assert loaded.cleanSegmentation.GetName() == "CT 1 clean prediction"
    assert loaded.attackedSegmentation.GetName() == "CT 1 attacked prediction (saa)"


def test_labelmap_file_becomes_named_segments(mrml, caseData):
    lib, scene = mrml["lib"], mrml["scene"]
    before = scene.GetNumberOfNodes()
    node = lib.readSegmentationFile(
        scene, caseData["case"] / "pred_clean.nii.gz", "from nifti", None, LABEL_NAMES, LABEL_COLORS
    )
    segmentation = node.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    assert names == {"spleen", "liver"}
    liver = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("liver"))
    np.testing.assert_allclose(liver.GetColor(), np.array(LABEL_COLORS[6]) / 255.0, atol=1e-6)
    # Only the segmentation (and its display/storage helpers) was added: temporaries are gone.
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
    assert scene.GetNumberOfNodes() - before <= 3


def test_metrics_tables_hold_the_metrics(mrml, caseData):
    _, loaded = _loaded(mrml, caseData)
    table = loaded.metricsTable
    assert table.GetName() == "CT 1 attack metrics (saa)"
    assert table.GetNumberOfRows() == 3
    organs = [_cell(table, row, "Organ").ToString() for row in range(3)]
    assert organs == ["spleen", "liver", "mean"]  # by label value, then the mean
    assert _cell(table, 1, "Label").ToString() == "6"
    assert _cell(table, 1, "Dice clean").ToDouble() == pytest.approx(0.91)
    assert _cell(table, 1, "Dice attacked").ToDouble() == pytest.approx(0.42)
    assert _cell(table, 1, "Dice change").ToDouble() == pytest.approx(0.42 - 0.91)
    assert _cell(table, 1, "HD95 attacked").ToDouble() == pytest.approx(21.0)
    assert math.isnan(_cell(table, 0, "HD95 attacked").ToDouble())  # null in metrics.json
    assert _cell(table, 2, "Dice clean").ToDouble() == pytest.approx(0.88)
    assert _cell(table, 2, "Dice attacked").ToDouble() == pytest.approx(0.61)
    assert table.GetColumnUnitLabel("HD95 clean") == "mm"
    assert "mean Dice 0.880 → 0.610" in table.GetAttribute(mrml["lib"].SUMMARY_ATTRIBUTE)
    perturbation = loaded.perturbationTable
    rows = {
        _cell(perturbation, r, "Metric").ToString(): (
            _cell(perturbation, r, "Value").ToDouble(),
            _cell(perturbation, r, "Unit").ToString(),
        )
        for r in range(perturbation.GetNumberOfRows())
    }
    assert rows["SSIM 3D"] == (pytest.approx(0.95), "")
    assert rows["L∞"] == (pytest.approx(6.7), "HU")
    assert rows["PSNR"] == (pytest.approx(41.5), "dB")
    assert rows["Time: total"] == (pytest.approx(20.0), "s")


def test_metrics_are_read_defensively(mrml):
    lib = mrml["lib"]
    assert lib.organRows({}) == []
    assert lib.organRows({"organs": [1, 2]}) == []
    rows = lib.organRows({"organs": {"liver": {"dice_clean": "n/a"}, "odd": None}})
    assert [r[0] for r in rows] == ["liver", "odd", "mean"]
    assert all(math.isnan(v) for v in rows[0][2:])
    assert lib.perturbationRows({"perturbation": {"new_metric": 3}}) == [("new_metric", 3.0, "")]
    assert "mean Dice 0.880 → 0.610" in lib.formatSummary(METRICS)
    assert "L∞ 6.7 HU" in lib.formatSummary(METRICS)
    assert lib.formatSummary(None) == ""


def test_failed_load_leaves_the_scene_unchanged(mrml, caseData, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(caseData["case"], broken)
    (broken / "pred_adv.seg.nrrd").write_bytes(b"not a segmentation")
    (broken / "pred_adv.nii.gz").write_bytes(b"not a volume either")
    scene = mrml["scene"]
    inputVolume = _loadInput(mrml, caseData)
    before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError):
        mrml["lib"].loadCase(scene, broken, inputVolume, labelNames=LABEL_NAMES)
    assert scene.GetNumberOfNodes() == before
    incomplete = tmp_path / "incomplete"
    shutil.copytree(caseData["case"], incomplete)
    (incomplete / "metrics.json").unlink()
    with pytest.raises(Exception, match="metrics.json is missing"):
        mrml["lib"].loadCase(scene, incomplete, inputVolume)
    assert scene.GetNumberOfNodes() == before


# ------------------------------------------------------------------------------------------------
# Compare view and difference map


def test_compare_layout_puts_each_volume_and_prediction_in_its_view(mrml, caseData):
    inputVolume, loaded = _loaded(mrml, caseData)
    lib, scene, layoutNode = mrml["lib"], mrml["scene"], mrml["layoutNode"]
    views = lib.showCompareLayout(
        scene,
        layoutNode,
        inputVolume,
        loaded.adversarialVolume,
        loaded.cleanSegmentation,
        loaded.attackedSegmentation,
    )
    assert layoutNode.GetViewArrangement() == lib.COMPARE_LAYOUT_ID
    assert layoutNode.IsLayoutDescription(lib.COMPARE_LAYOUT_ID)
    assert layoutNode.IsLayoutDescription(lib.COMPARE_WITH_DIFFERENCE_LAYOUT_ID)
    assert lib.CLEAN_VIEW in layoutNode.GetCurrentLayoutDescription()
    assert set(views) == {lib.CLEAN_VIEW, lib.ATTACKED_VIEW}
    expected = {lib.CLEAN_VIEW: inputVolume, lib.ATTACKED_VIEW: loaded.adversarialVolume}
    for viewName, volume in expected.items():
        composite = lib.sliceCompositeNode(scene, viewName)
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() is None
        assert composite.GetLinkedControl()
    clean = loaded.cleanSegmentation.GetDisplayNode()
    attacked = loaded.attackedSegmentation.GetDisplayNode()
    assert clean.GetViewNodeIDs() == (views[lib.CLEAN_VIEW].GetID(),)
    assert attacked.GetViewNodeIDs() == (views[lib.ATTACKED_VIEW].GetID(),)
    assert clean.IsDisplayableInView(views[lib.CLEAN_VIEW].GetID())
    assert not clean.IsDisplayableInView(views[lib.ATTACKED_VIEW].GetID())
    # Exactly one composite node per view, even when called again.
    lib.showCompareLayout(scene, layoutNode, inputVolume, loaded.adversarialVolume)
    names = [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetLayoutName()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]
    assert names.count(lib.CLEAN_VIEW) == 1


def test_difference_view_shows_attacked_minus_clean_in_hu(mrml, caseData):
    inputVolume, loaded = _loaded(mrml, caseData)
    lib, scene, slicer = mrml["lib"], mrml["scene"], mrml["slicer"]
    difference = lib.createDifferenceVolume(scene, loaded.adversarialVolume, inputVolume)
    values = slicer.util.arrayFromVolume(difference)
    assert values.dtype == np.float32
    expected = caseData["adversarialArray"].astype(np.float32) - caseData["sourceArray"].astype(np.float32)
    assert np.array_equal(values, expected)
    assert np.array_equal(lib.ijkToRAS(difference), lib.ijkToRAS(loaded.adversarialVolume))
    display = difference.GetDisplayNode()
    assert display.GetLevel() == 0.0
    assert display.GetWindow() == pytest.approx(2 * max(np.abs(expected).max(), 1.0))
    colors = display.GetColorNode()
    assert colors.GetName() == lib.DIVERGING_COLOR_NODE_NAME
    rgba = [0.0] * 4
    colors.GetColor(0, rgba)
    assert rgba[2] > rgba[0]  # blue end
    colors.GetColor(255, rgba)
    assert rgba[0] > rgba[2]  # red end
    for middle in (127, 128):
        colors.GetColor(middle, rgba)
        assert rgba[:3] == pytest.approx([1.0, 1.0, 1.0])
    assert lib.divergingColorNode(scene) is colors  # one per scene
    views = lib.showCompareLayout(
        scene, mrml["layoutNode"], inputVolume, loaded.adversarialVolume, difference=difference
    )
    assert mrml["layoutNode"].GetViewArrangement() == lib.COMPARE_WITH_DIFFERENCE_LAYOUT_ID
    assert set(views) == {lib.CLEAN_VIEW, lib.ATTACKED_VIEW, lib.DIFFERENCE_VIEW}
    assert lib.sliceCompositeNode(scene, lib.DIFFERENCE_VIEW).GetBackgroundVolumeID() == difference.GetID()


def test_difference_needs_the_same_grid(mrml, caseData):
    lib, scene, slicer = mrml["lib"], mrml["scene"], mrml["slicer"]
    inputVolume = _loadInput(mrml, caseData, study=False)
    other = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(other)
    slicer.util.updateVolumeFromArray(other, np.zeros((3, 4, 5), np.int16))
    with pytest.raises(ValueError, match="same voxel grid"):
        lib.createDifferenceVolume(scene, other, inputVolume)


# ------------------------------------------------------------------------------------------------
# Node files


@pytest.mark.parametrize("fileName", ["adversarial.nii.gz", "adversarial.nrrd"])
def test_nodes_written_through_storage_nodes_reload_with_the_same_geometry(
    mrml, caseData, tmp_path, fileName
):
    lib, scene, slicer = mrml["lib"], mrml["scene"], mrml["slicer"]
    inputVolume, loaded = _loaded(mrml, caseData)
    path = lib.writeVolumeNode(loaded.adversarialVolume, tmp_path / fileName)
    assert sorted(os.listdir(tmp_path)) == [fileName]
    reloaded = lib.readVolumeFile(scene, path, "reloaded")
    np.testing.assert_allclose(lib.ijkToRAS(reloaded), lib.ijkToRAS(inputVolume), atol=1e-5)
    assert np.array_equal(slicer.util.arrayFromVolume(reloaded), caseData["adversarialArray"])
    segPath = lib.writeSegmentationNode(loaded.attackedSegmentation, tmp_path / "pred_adv.seg.nrrd")
    segNode = lib.readSegmentationFile(scene, segPath, "reloaded seg", reloaded)
    segmentation = segNode.GetSegmentation()
    liver = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("liver"))
    np.testing.assert_allclose(liver.GetColor(), np.array(LABEL_COLORS[6]) / 255.0, atol=1e-6)
    voxels = _segmentLabelArray(mrml, segNode, "liver", reloaded)
    assert np.array_equal(voxels, caseData["attackedLabels"] == 6)


# ------------------------------------------------------------------------------------------------
# Reference segmentation handed to the engine


def test_reference_segmentation_is_written_with_the_card_label_values(mrml, caseData, tmp_path):
    lib, scene, slicer = mrml["lib"], mrml["scene"], mrml["slicer"]
    inputVolume = _loadInput(mrml, caseData, study=False)
    reference = lib.readSegmentationFile(
        scene, caseData["case"] / "pred_clean.seg.nrrd", "reference", inputVolume
    )
    segmentation = reference.GetSegmentation()
    # Named as other tools write them; matched with the engine's organ-name normaliser.
    segmentation.GetNthSegment(0).SetName(" Spleen ")  # label 1 in the file
    segmentation.GetNthSegment(1).SetName("LIVER")  # label 6 in the file
    segmentation.AddEmptySegment("tumour", "tumour")
    assert lib.organsInReference(reference, LABEL_NAMES) == {1, 6}
    before = scene.GetNumberOfNodes()
    values = lib.writeReferenceLabelmap(scene, reference, inputVolume, LABEL_NAMES, tmp_path / "ref.nii.gz")
    assert values == [1, 6]
    assert scene.GetNumberOfNodes() == before  # temporaries removed
    written = lib.readVolumeFile(scene, tmp_path / "ref.nii.gz", "written", labelmap=True)
    assert np.array_equal(slicer.util.arrayFromVolume(written), caseData["cleanLabels"])
    assert lib.organsInReference(written, LABEL_NAMES) == {1, 6}
    segmentation.GetNthSegment(0).SetName("kidney stone")
    segmentation.GetNthSegment(1).SetName("bowel")
    with pytest.raises(ValueError, match="named like an organ"):
        lib.writeReferenceLabelmap(scene, reference, inputVolume, LABEL_NAMES, tmp_path / "none.nii.gz")


# ------------------------------------------------------------------------------------------------
# Progress protocol (no MRML needed)


def test_progress_lines_are_parsed():
    event = progress.parseProgressLine(
        '{"event": "progress", "stage": "attack", "step": 3, "total": 20, "loss": 0.71}'
    )
    assert (event.kind, event.stage, event.step, event.total, event.loss) == (
        "progress",
        "attack",
        3,
        20,
        0.71,
    )
    assert event.stageFraction == pytest.approx(0.15)
    assert event.describe() == "Attacking: step 3/20, loss 0.71"
    done = progress.parseProgressLine(b'{"event": "done", "out": "/tmp/case"}\n')
    assert (done.kind, done.out, done.fraction) == ("done", "/tmp/case", 1.0)
    error = progress.parseProgressLine('{"event": "error", "message": "input.nrrd is not a 3D volume."}')
    assert (error.kind, error.message) == ("error", "input.nrrd is not a 3D volume.")
    assert error.describe() == "input.nrrd is not a 3D volume."


@pytest.mark.parametrize(
    "line",
    [
        "Traceback (most recent call last):",
        "{not json",
        "[1, 2, 3]",
        '"a string"',
        "42",
        '{"stage": "attack"}',
        '{"event": 3}',
        '{"event": "heartbeat"}',
    ],
)
def test_garbage_lines_become_log_events(line):
    event = progress.parseProgressLine(line)
    assert event.kind == "log"
    assert event.message == line
    assert event.fraction is None


def test_odd_values_in_protocol_lines_are_tolerated():
    assert progress.parseProgressLine("") is None
    assert progress.parseProgressLine("   \n") is None
    event = progress.parseProgressLine('{"event": "progress", "stage": "attack", "step": true, "loss": NaN}')
    assert event.step is None and event.loss is None and event.stageFraction is None
    event = progress.parseProgressLine('{"event": "progress", "stage": "attack", "step": 2.0, "total": 0}')
    assert event.step == 2 and event.stageFraction is None
    error = progress.parseProgressLine('{"event": "error"}')
    assert error.kind == "error" and "see the log" in error.message
    unknown = progress.parseProgressLine('{"event": "progress", "stage": "warm-up"}')
    assert unknown.fraction is None and unknown.describe() == "Warm up"


def test_overall_fraction_grows_through_the_stages():
    fractions = []
    for stage, _ in progress.STAGES:
        for step in (0, 5, 10):
            line = json.dumps({"event": "progress", "stage": stage, "step": step, "total": 10})
            fractions.append(progress.parseProgressLine(line).fraction)
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)


def test_line_buffer_reassembles_chunks():
    buffer = progress.ProgressLineBuffer()
    data = (
        '{"event": "progress", "stage": "load"}\r\n'
        "noise\n"
        '{"event": "error", "message": "Fichier déjà écrit."}\n'
        '{"event": "done", "out": "x"}'
    ).encode()
    events = []
    for start in range(0, len(data), 7):  # splits lines and the UTF-8 of é
        events += buffer.feed(data[start : start + 7])
    assert [e.kind for e in events] == ["progress", "log", "error"]
    assert events[2].message == "Fichier déjà écrit."
    tail = buffer.flush()
    assert [e.kind for e in tail] == ["done"]
    assert buffer.flush() == []


# ------------------------------------------------------------------------------------------------
# Where the engine and its models are (no MRML needed)


def test_devices():
    for device in ("auto", "cpu", "cuda", "cuda:0", "CUDA:12", " cpu "):
        assert engine.isValidDevice(device)
    for device in ("gpu", "cuda:", "cuda:x", "mps", ""):
        assert not engine.isValidDevice(device)


def test_where_the_engine_and_python_are(tmp_path):
    assert engine.findEngineRoot(MODULE_DIR) == REPO  # a source checkout: one level up
    installed = tmp_path / "qt-scripted-modules"
    (installed / "AdvSegAttackLib").mkdir(parents=True)
    (installed / "AdvSegAttackLib" / "__init__.py").write_text("", encoding="utf-8")
    assert engine.findEngineRoot(installed) == installed  # installed: side by side
    assert engine.findEngineRoot(tmp_path / "elsewhere") is None
    env = engine.childEnvironment(REPO, base={"PYTHONPATH": f"/a{os.pathsep}{REPO}", "HOME": "/h"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/a"]
    assert env["HOME"] == "/h" and env["PYTHONUNBUFFERED"] == "1"
    assert engine.pythonSlicerExecutable(which=lambda name: f"/opt/bin/{name}") == "/opt/bin/PythonSlicer"
    found = engine.pythonSlicerExecutable(
        which=lambda name: None, executable="/s/bin/python-real", osName="posix"
    )
    assert found == str(Path("/s/bin/PythonSlicer"))
    found = engine.pythonSlicerExecutable(
        which=lambda name: None, executable="C:/S/bin/python.exe", osName="nt"
    )
    assert found.endswith("PythonSlicer.exe")


def test_model_cards(tmp_path, caseData, monkeypatch):
    monkeypatch.delenv("ADVSEG_MODELS_DIR", raising=False)
    names, colors = engine.cardLabels(str(caseData["card"]))
    assert names == LABEL_NAMES and colors[6] == (221, 130, 101)
    assert engine.cardLabels(str(tmp_path / "missing.pt")) == ([], [])
    # A bundled model by name (engine root/Resources/Models/<name>/card.json) and a model folder.
    bundled = tmp_path / "root" / "Resources" / "Models" / "tiny-unet"
    bundled.mkdir(parents=True)
    shutil.copy(caseData["card"], bundled / "card.json")
    assert engine.cardLabels("tiny-unet", tmp_path / "root")[0] == LABEL_NAMES
    assert engine.cardLabels(str(bundled))[0] == LABEL_NAMES
    assert engine.cardLabels("tiny-unet") == ([], [])  # without the engine root it is unknown
    # A card without label names has the engine's default, the BTCV labels.
    (bundled / "card.json").write_text(
        json.dumps({"name": "tiny-unet", "architecture": "unet"}), encoding="utf-8"
    )
    from AdvSegAttackLib.models.labels import BTCV_LABEL_NAMES

    assert engine.cardLabels(str(bundled))[0] == list(BTCV_LABEL_NAMES)
    assert engine.cardLabels("btcv-unetr")[0] == list(BTCV_LABEL_NAMES)


def test_the_model_list_is_the_bundled_models_folder(tmp_path, caseData, monkeypatch):
    """The module lists every folder of Resources/Models with a card (no hard-coded list)."""
    monkeypatch.delenv("ADVSEG_MODELS_DIR", raising=False)
    listed = dict(engine.bundledModels(REPO))
    assert {"abdomen-unet", "abdomen-segresnet"} <= set(listed)
    assert listed["abdomen-segresnet"] == "abdomen-segresnet (bundled: segresnet, 3 mm)"
    root = tmp_path / "models"
    for name, card in (("b-model", {"architecture": "unet", "spacing_mm": [1.5, 1.5, 3.0]}), ("a-model", {})):
        (root / name).mkdir(parents=True)
        (root / name / "card.json").write_text(json.dumps(card), encoding="utf-8")
    (root / "no-card").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "card.json").write_text("{not json", encoding="utf-8")
    monkeypatch.setenv("ADVSEG_MODELS_DIR", str(root))
    assert engine.bundledModels(REPO) == [
        ("a-model", "a-model (bundled)"),
        ("b-model", "b-model (bundled: unet, 1.5×1.5×3 mm)"),
    ]
    monkeypatch.setenv("ADVSEG_MODELS_DIR", str(tmp_path / "absent"))
    assert engine.bundledModels(REPO) == []


# ------------------------------------------------------------------------------------------------
# The whole path the module takes, with the real engine (Python's subprocess instead of QProcess)


def test_engine_run_from_the_scene_loads_back_on_the_input_grid(mrml, tmp_path):
    """Scene → input NRRD and reference labelmap → `-m AdvSegAttackLib.cli attack` with the module's
    arguments and environment → JSON-lines progress → case folder → nodes on the input's exact grid."""
    pytest.importorskip("torch", reason="the engine needs torch")
    pytest.importorskip("monai", reason="the engine needs MONAI")
    import subprocess

    from AdvSegAttackSceneLib.catalogue import AttackChoice, loadCatalogue

    from AdvSegAttackLib.models.cards import ModelCard
    from AdvSegAttackLib.models.networks import build_network, save_model
    from AdvSegAttackLib.volumes.phantom import write_phantom

    lib, scene, slicer = mrml["lib"], mrml["scene"], mrml["slicer"]
    c, s = math.cos(0.3), math.sin(0.3)
    image, label = write_phantom(
        0,
        tmp_path / "phantom",
        shape=(40, 36, 16),
        spacing=(4.0, 4.5, 6.0),
        direction=(c, -s, 0, s, c, 0, 0, 0, 1),
    )
    card = ModelCard(
        name="tiny-unet",
        architecture="unet",
        arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        spacing_mm=[4.0, 4.0, 4.0],
        roi_size=[32, 32, 16],
    )
    import torch

    torch.manual_seed(0)
    cardPath = save_model(card, build_network(card), tmp_path / "tiny-unet")
    labelNames, labelColors = engine.cardLabels(str(cardPath))

    inputVolume = lib.readVolumeFile(scene, image, "phantom")
    reference = lib.readSegmentationFile(scene, label, "truth", inputVolume, labelNames, labelColors)
    work = tmp_path / "work"
    lib.writeVolumeNode(inputVolume, work / "input.nrrd", compress=False)
    written = lib.writeReferenceLabelmap(scene, reference, inputVolume, labelNames, work / "reference.nii.gz")
    assert 6 in written  # the liver
    request = engine.AttackRequest(
        image=str(work / "input.nrrd"),
        out=str(work / "case"),
        model=str(cardPath),
        attack=loadCatalogue().attack("fgsm"),
        choice=AttackChoice(changed={"eps": 8.0}),  # the default is 4
        label=str(work / "reference.nii.gz"),
        organs=("liver",),
        device="cpu",
        # The engine's preview.py reads array views of temporary SimpleITK images (DICOMOrient), which
        # fails now and then; the preview is optional in a case folder, so leave it out here.
        preview=False,
    )
    assert "--no-preview" in request.arguments()
    root = engine.findEngineRoot(MODULE_DIR)
    environment = engine.childEnvironment(root)
    completed = subprocess.run(
        [sys.executable, *request.arguments()], capture_output=True, cwd=root, env=environment, timeout=300
    )
    buffer = progress.ProgressLineBuffer()
    events = buffer.feed(completed.stdout) + buffer.flush()
    kinds = [event.kind for event in events]
    assert completed.returncode == 0, (kinds, completed.stderr.decode()[-4000:])
    assert "progress" in kinds and kinds[-1] == "done" and "error" not in kinds
    fractions = [event.fraction for event in events if event.fraction is not None]
    assert fractions and fractions[-1] == 1.0
    assert Path(events[-1].out).resolve() == (work / "case").resolve()

    loaded = lib.loadCase(scene, events[-1].out, inputVolume, labelNames=labelNames, labelColors=labelColors)
    assert loaded.geometryMatchesInput
    assert np.array_equal(lib.ijkToRAS(loaded.adversarialVolume), lib.ijkToRAS(inputVolume))
    assert loaded.adversarialVolume.GetName() == "phantom adversarial (fgsm)"
    segmentation = loaded.cleanSegmentation.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == labelNames[segment.GetLabelValue()]
    organs = [
        _cell(loaded.metricsTable, r, "Organ").ToString()
        for r in range(loaded.metricsTable.GetNumberOfRows())
    ]
    assert "liver" in organs and organs[-1] == "mean"
    difference = lib.createDifferenceVolume(scene, loaded.adversarialVolume, inputVolume)
    largest = float(np.abs(slicer.util.arrayFromVolume(difference)).max())
    assert 4 / 255 * 425 + 1 < largest <= 8 / 255 * 425 + 1  # ε = 8/255 of the −175…250 HU window, rounded
