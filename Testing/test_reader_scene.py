"""Reader mode, scene side (`AdvSegAttackSceneLib.reader`) on a real MRML scene (`slicer-core`, no Qt).

A session is built with the engine from case folders whose file names, metadata and provenance are full of
what must not reach the reader ("clean", "adversarial", the attack name, the source paths); after a case is
loaded, nothing in the serialized scene or on any node may contain any of it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AdvSegAttack"
for _path in (REPO, MODULE_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from conftest import application_scene  # noqa: E402
from test_reader_session import make_cases  # noqa: E402

from AdvSegAttackLib.studies.reader_session import ReaderSession  # noqa: E402
from AdvSegAttackLib.studies.session import build_session, load_key  # noqa: E402

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)


@pytest.fixture(scope="module")
def slicerModule():
    return pytest.importorskip("slicer", reason="slicer-core (real MRML without Qt) is not installed")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader_scene")
    cases = make_cases(root, patients=2)
    build_session(cases, readers=1, seed=11, out=root / "study", never_both=False)
    return root / "study", cases


@pytest.fixture
def mrml(slicerModule):
    """A fresh scene set up the way the Slicer application sets it up."""
    from AdvSegAttackSceneLib import reader

    with application_scene(slicerModule) as (scene, _layoutNode):
        yield slicerModule, scene, reader


def _forbidden(study) -> list[str]:
    """Strings that would give the answer away: kinds, attack, original names and the key's contents."""
    session, cases = study
    key = load_key(session)
    tokens = {"adv", "clean", "attack", "manipulated", "saa", "source", "patient", "key"}
    for folder in cases:
        tokens |= {folder.name, str(folder), str(folder.parent)}
    tokens.add(key["created"])
    for item in key["items"].values():
        tokens |= {item["patient"], item["source"], Path(item["source"]).name, *item["organs"]}
        if item["case_folder"]:
            tokens.add(item["case_folder"])
    return sorted(tokens)


def test_a_case_is_one_blinded_volume_named_by_its_neutral_id(mrml, study):
    slicer, scene, reader = mrml
    session, _ = study
    readerSession = ReaderSession.open(session, "reader1")
    caseId = readerSession.current()
    before = scene.GetNumberOfNodes()
    case = reader.loadReaderCase(scene, readerSession.image_path(caseId), caseId)
    reader.showReaderCase(scene, case)
    volume = case.volume
    # One volume and its display node; no storage node, no segmentation, no other hidden node.
    added = [scene.GetNthNode(i) for i in range(before, scene.GetNumberOfNodes())]
    assert sorted(node.GetClassName() for node in added) == [
        "vtkMRMLScalarVolumeDisplayNode",
        "vtkMRMLScalarVolumeNode",
    ]
    assert volume.GetName() == caseId and volume.GetStorageNode() is None
    assert volume.GetDescription() in (None, "") and not volume.GetAttributeNames()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 0
    # Voxels and geometry are the neutral file's.
    import SimpleITK as sitk

    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(readerSession.image_path(caseId))))
    assert np.array_equal(slicer.util.arrayFromVolume(volume), expected)
    np.testing.assert_allclose(volume.GetSpacing(), (0.8, 0.8, 2.5))
    # Fixed abdominal window, grey, not computed from the voxels.
    display = volume.GetDisplayNode()
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (reader.ABDOMEN_WINDOW_HU, reader.ABDOMEN_LEVEL_HU)
    assert display.GetColorNodeID() == reader.GREY_COLOR_NODE_ID
    # Shown alone in every slice view.
    composites = [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]
    assert composites and all(c.GetBackgroundVolumeID() == volume.GetID() for c in composites)
    assert all(c.GetForegroundVolumeID() is None and c.GetLabelVolumeID() is None for c in composites)


def test_nothing_in_the_scene_gives_the_answer_away(mrml, study):
    slicer, scene, reader = mrml
    session, _ = study
    readerSession = ReaderSession.open(session, "reader1")
    forbidden = _forbidden(study)

    def counts(text):
        return {token: len(re.findall(re.escape(token), text, re.I)) for token in forbidden}

    # The empty scene's built-in colour tables have descriptions (e.g. "...sourceforge..."): only what the
    # case adds counts, and the case-specific strings (paths, checksums, folder names) are not there at all.
    baseline = counts(reader.sceneText(scene))
    assert all(baseline[token] == 0 for token in forbidden if len(token) > 12)
    seen = set()
    for caseId in readerSession.order:  # every case of the session, real and manipulated
        case = reader.loadReaderCase(scene, readerSession.image_path(caseId), caseId)
        reader.showReaderCase(scene, case)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        shNode.CreateItem(shNode.GetSceneItemID(), case.volume)  # what Slicer's subject hierarchy does
        text = reader.sceneText(scene)
        assert caseId in text and "<Volume" in text  # the serialized scene really holds the case
        found = {token: n for token, n in counts(text).items() if n != baseline[token]}
        assert not found, f"{caseId}: {found}"
        display = case.volume.GetDisplayNode()
        seen.add((display.GetWindow(), display.GetLevel(), case.volume.GetImageData().GetScalarType()))
        reader.unloadReaderCase(scene, case)
    assert len(seen) == 1, "real and manipulated cases are shown alike"


def test_the_previous_case_is_removed_before_the_next(mrml, study):
    slicer, scene, reader = mrml
    session, _ = study
    readerSession = ReaderSession.open(session, "reader1")
    first, second = readerSession.order[:2]
    baseline = scene.GetNumberOfNodes()
    case = reader.loadReaderCase(scene, readerSession.image_path(first), first)
    ruler = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "ruler")  # the reader measured something
    ruler.CreateDefaultDisplayNodes()
    reader.unloadReaderCase(scene, case)
    assert scene.GetNumberOfNodes() == baseline
    assert scene.GetFirstNodeByName(first) is None and scene.GetFirstNodeByName("ruler") is None
    nextCase = reader.loadReaderCase(scene, readerSession.image_path(second), second)
    volumes = [
        scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
    ]
    assert volumes == [second] and nextCase.volume.GetName() == second
    reader.unloadReaderCase(scene, None)  # nothing shown yet: nothing to do


def test_bad_ids_and_unreadable_files_leave_the_scene_unchanged(mrml, tmp_path):
    _, scene, reader = mrml
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="not a neutral case ID"):
        reader.loadReaderCase(scene, tmp_path / "x.nii.gz", "../adv")
    broken = tmp_path / "ABCD1234.nii.gz"
    broken.write_bytes(b"not a volume")
    with pytest.raises(RuntimeError, match="Could not read"):
        reader.loadReaderCase(scene, broken, "ABCD1234")
    assert scene.GetNumberOfNodes() == before


def test_user_data_is_told_from_views_and_colour_tables(mrml, study):
    _, scene, reader = mrml
    assert not reader.sceneHasUserData(scene)  # only views and built-in colour tables
    session, _ = study
    readerSession = ReaderSession.open(session, "reader1")
    case = reader.loadReaderCase(
        scene, readerSession.image_path(readerSession.current()), readerSession.current()
    )
    assert reader.sceneHasUserData(scene)
    reader.unloadReaderCase(scene, case)
    assert not reader.sceneHasUserData(scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") > 0  # colour tables were not touched


def test_real_ct_keeps_its_voxels_and_geometry_in_reader_mode(mrml, real_ct_small, tmp_path):
    """The real CT of ../shared through builder and reader mode: same HU and grid as the source."""
    import json

    import SimpleITK as sitk

    from AdvSegAttackLib.volumes.io import sha256_file

    slicer, scene, reader = mrml
    source = sitk.ReadImage(str(real_ct_small))
    voxels = sitk.GetArrayFromImage(source)
    case = tmp_path / "case"
    case.mkdir()
    attacked = sitk.GetImageFromArray((voxels + 3).astype(voxels.dtype))
    attacked.CopyInformation(source)
    sitk.WriteImage(attacked, str(case / "adversarial.nii.gz"), useCompression=True)
    for name in ("pred_clean.nii.gz", "pred_clean.seg.nrrd", "pred_adv.nii.gz", "pred_adv.seg.nrrd"):
        (case / name).write_bytes(b"")
    (case / "metrics.json").write_text("{}", encoding="utf-8")
    provenance = {
        "input": {"path": str(real_ct_small), "sha256": sha256_file(real_ct_small)},
        "attack": {"name": "pgd"},
    }
    (case / "provenance.json").write_text(json.dumps(provenance), encoding="utf-8")
    build_session([case], readers=1, seed=0, out=tmp_path / "study", never_both=True)
    key = load_key(tmp_path / "study")
    (caseId,) = ReaderSession.open(tmp_path / "study", "reader1").order
    loaded = reader.loadReaderCase(scene, tmp_path / "study" / "cases" / f"{caseId}.nii", caseId)
    shift = 3 if key["items"][caseId]["truth"] == "manipulated" else 0
    assert np.array_equal(slicer.util.arrayFromVolume(loaded.volume), voxels + shift)
    lpsToRas = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(source.GetDirection()).reshape(3, 3)
    expected = np.eye(4)
    expected[:3, :3] = lpsToRas @ direction @ np.diag(source.GetSpacing())
    expected[:3, 3] = lpsToRas @ np.array(source.GetOrigin())
    import vtk

    matrix = vtk.vtkMatrix4x4()
    loaded.volume.GetIJKToRASMatrix(matrix)
    actual = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(actual, expected, atol=1e-4)
