"""Scene side of AdvSegAttack: case folder to MRML nodes, compare layout, difference map, node files.

Qt-free: everything here runs in Slicer and on the `slicer-core` wheel (real MRML without Qt), which is how
CI tests it. Every function takes the scene explicitly and never touches `slicer.app`, `slicer.modules`
or `slicer.mrmlScene`; `slicer` and `numpy` are imported inside functions only.

Geometry is sacred: the adversarial volume is read with the geometry it was written with (the source's),
and when it is the input's grid up to float rounding (NIfTI stores float32) it gets the input node's
IJK-to-RAS matrix bit for bit, and the input's parent transform.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CASE_FOLDER_ATTRIBUTE = "AdvSegAttack.CaseFolder"
ROLE_ATTRIBUTE = "AdvSegAttack.Role"
ATTACK_ATTRIBUTE = "AdvSegAttack.Attack"
SUMMARY_ATTRIBUTE = "AdvSegAttack.Summary"

COMPARE_LAYOUT_ID = 73610
COMPARE_WITH_DIFFERENCE_LAYOUT_ID = 73611
CLEAN_VIEW = "AdvSegAttackClean"
ATTACKED_VIEW = "AdvSegAttackAttacked"
DIFFERENCE_VIEW = "AdvSegAttackDifference"
_VIEW_STYLE = {
    CLEAN_VIEW: ("C", "#3C78D8"),
    ATTACKED_VIEW: ("A", "#D83C3C"),
    DIFFERENCE_VIEW: ("D", "#9E9E9E"),
}

DIVERGING_COLOR_NODE_NAME = "AdvSegAttack Diverging (blue-white-red)"
_DIVERGING_ATTRIBUTE = "AdvSegAttack.DivergingColorTable"
GEOMETRY_TOLERANCE = 1e-4  # mm (matrix entries); NIfTI float32 rounding is ~1e-6 relative

ORGAN_TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (name, kind, unit)
    ("Organ", "string", ""),
    ("Label", "string", ""),
    ("Dice clean", "double", ""),
    ("Dice attacked", "double", ""),
    ("Dice change", "double", ""),
    ("HD95 clean", "double", "mm"),
    ("HD95 attacked", "double", "mm"),
)
_PERTURBATION_ROWS: tuple[tuple[str, str, str], ...] = (
    # (metrics.json key, row label, unit)
    ("ssim_3d", "SSIM 3D", ""),
    ("ssim_axial_mean", "SSIM axial (mean)", ""),
    ("psnr_db", "PSNR", "dB"),
    ("linf_hu", "L∞", "HU"),
    ("l2_hu", "L2", "HU"),
    ("fraction_changed", "Fraction of voxels changed", ""),
)


# --------------------------------------------------------------------------------------------------
# Small helpers


def _number(value) -> float:
    """A finite float, or NaN for anything missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _matrixArray(node):
    import numpy as np
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def ijkToRAS(node):
    """IJK-to-RAS matrix of a volume node as a 4×4 numpy array."""
    return _matrixArray(node)


def removeNodes(scene, nodes) -> None:
    """Remove nodes with their display and storage nodes (nodes may be None or already removed)."""
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        helpers = []
        for getCount, getNth in (
            ("GetNumberOfDisplayNodes", "GetNthDisplayNode"),
            ("GetNumberOfStorageNodes", "GetNthStorageNode"),
        ):
            if hasattr(node, getCount):
                helpers += [getattr(node, getNth)(i) for i in range(getattr(node, getCount)())]
        scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and helper.GetScene() is not None:
                scene.RemoveNode(helper)


def _colorNodeIDs(scene) -> set[str]:
    return {
        scene.GetNthNodeByClass(i, "vtkMRMLColorNode").GetID()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorNode"))
    }


def _partPath(path: Path) -> Path:
    """A hidden temporary sibling that keeps the full file name, so writers still see the extension."""
    return path.with_name(f".part-{uuid.uuid4().hex[:12]}-{path.name}")


# --------------------------------------------------------------------------------------------------
# Reading and writing nodes through storage nodes


def readVolumeFile(scene, path, name: str, labelmap: bool = False):
    """Read a volume file (NIfTI, NRRD, any ITK format) into a new node with the file's geometry.

    :param labelmap: create a vtkMRMLLabelMapVolumeNode instead of a vtkMRMLScalarVolumeNode.
    :raises RuntimeError: if the file cannot be read (nothing is left in the scene).
    """
    className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(className, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node) or node.GetImageData() is None:
        removeNodes(scene, [node])
        raise RuntimeError(f"Could not read the volume {path}.")
    node.SetName(name)
    node.CreateDefaultDisplayNodes()
    return node


def writeVolumeNode(node, path, compress: bool = True) -> Path:
    """Write a volume node (scalar or labelmap) to `path` atomically; the format follows the extension.

    The node's own storage node is not changed (like `slicer.util.exportNode`), so a later
    "Save data" still writes where it did before.
    """
    import slicer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = _partPath(path)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(part))
    storage.SetUseCompression(1 if compress else 0)
    try:
        if not storage.WriteData(node):
            raise RuntimeError(f"Could not write the volume {node.GetName()!r} to {path}.")
        os.replace(part, path)
    finally:
        if part.exists():
            part.unlink()
    return path


def writeSegmentationNode(node, path) -> Path:
    """Write a segmentation node to a `.seg.nrrd` (names, colours, terminology) atomically."""
    import slicer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = _partPath(path)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(part))
    try:
        if not storage.WriteData(node):
            raise RuntimeError(f"Could not write the segmentation {node.GetName()!r} to {path}.")
        os.replace(part, path)
    finally:
        if part.exists():
            part.unlink()
    return path


def matchGeometry(node, reference, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """Put `node` under `reference`'s parent transform, and give it `reference`'s exact IJK-to-RAS matrix
    when both are the same voxel grid up to `tolerance` (float rounding of the file format).

    :return: True if the grids matched and the matrix was copied.
    """
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    image, referenceImage = node.GetImageData(), reference.GetImageData()
    if image is None or referenceImage is None or image.GetDimensions() != referenceImage.GetDimensions():
        return False
    import numpy as np
    import vtk

    if not np.allclose(_matrixArray(node), _matrixArray(reference), rtol=0.0, atol=tolerance):
        return False
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    return True


def copyWindowLevel(node, reference) -> None:
    """Show `node` with `reference`'s colour map and window/level, so clean and attacked look alike."""
    display, referenceDisplay = node.GetDisplayNode(), reference.GetDisplayNode()
    if display is None or referenceDisplay is None:
        return
    if referenceDisplay.GetColorNodeID():
        display.SetAndObserveColorNodeID(referenceDisplay.GetColorNodeID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(referenceDisplay.GetWindow(), referenceDisplay.GetLevel())


def createLabelColorTable(scene, labelNames, labelColors=None, name: str = "AdvSegAttack labels"):
    """A user colour table: entry i is named `labelNames[i]`, coloured `labelColors[i]` (RGB 0–255)."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetNumberOfColors(len(labelNames))
    for value, labelName in enumerate(labelNames):
        rgb = labelColors[value] if labelColors and value < len(labelColors) else (128, 128, 128)
        table.SetColor(
            value, str(labelName), rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0, 1.0 if value else 0.0
        )
    return table


def applyLabelNamesAndColors(segmentationNode, labelNames, labelColors=None) -> None:
    """Name and colour each segment after the model card, by the segment's label value."""
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = segment.GetLabelValue()
        if 0 < value < len(labelNames):
            segment.SetName(str(labelNames[value]))
            if labelColors and value < len(labelColors):
                rgb = labelColors[value]
                segment.SetColor(rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)


def readSegmentationFile(scene, path, name: str, referenceVolume=None, labelNames=None, labelColors=None):
    """Read a `.seg.nrrd`, or a labelmap file (NIfTI, NRRD) whose values index `labelNames`, into a
    new segmentation node.

    :param referenceVolume: becomes the segmentation's reference geometry and gives the parent transform.
    :param labelNames: model card label names (index = label value); when given, segment names and
      colours follow the card.
    :raises RuntimeError: if the file cannot be read (nothing is left in the scene).
    """
    import slicer

    path = Path(path)
    created = []
    try:
        if path.name.lower().endswith(".seg.nrrd"):
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            created.append(node)
            storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
            storage.SetFileName(str(path))
            node.SetAndObserveStorageNodeID(storage.GetID())
            if not storage.ReadData(node):
                raise RuntimeError(f"Could not read the segmentation {path}.")
        else:
            labelmap = readVolumeFile(scene, path, "__AdvSegAttack_import__", labelmap=True)
            created.append(labelmap)
            if labelNames:
                colorTable = createLabelColorTable(
                    scene, labelNames, labelColors, "__AdvSegAttack_import_colors__"
                )
                created.append(colorTable)
                labelmap.GetDisplayNode().SetAndObserveColorNodeID(colorTable.GetID())
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            created.append(node)
            logic = slicer.vtkSlicerSegmentationsModuleLogic
            if not logic.ImportLabelmapToSegmentationNode(labelmap, node):
                raise RuntimeError(f"Could not import the labelmap {path} as a segmentation.")
            removeNodes(scene, [n for n in created if n is not node])
            created = [node]
    except Exception:
        removeNodes(scene, created)
        raise
    node.SetName(name)
    node.CreateDefaultDisplayNodes()
    if referenceVolume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        node.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
    if labelNames:
        applyLabelNamesAndColors(node, labelNames, labelColors)
    return node


# --------------------------------------------------------------------------------------------------
# Metrics tables


def _newColumn(name: str, kind: str, values):
    import vtk

    array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
    array.SetName(name)
    for value in values:
        if kind == "string":
            array.InsertNextValue("" if value is None else str(value))
        else:
            array.InsertNextValue(_number(value))
    return array


def _fillTable(table, columns, rows) -> None:
    """Replace the table's content: `columns` as (name, kind, unit), `rows` as tuples in column order."""
    wasModifying = table.StartModify()
    table.RemoveAllColumns()
    for index, (name, kind, unit) in enumerate(columns):
        table.AddColumn(_newColumn(name, kind, [row[index] for row in rows]))
        if unit:
            table.SetColumnUnitLabel(name, unit)
    table.EndModify(wasModifying)


def _mean(values) -> float:
    finite = [v for v in (_number(x) for x in values) if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def organRows(metrics: dict) -> list[tuple]:
    """Rows of the organ table (one per organ, by label value, then a "mean" row) from metrics.json."""
    organs = metrics.get("organs") if isinstance(metrics, dict) else None
    organs = organs if isinstance(organs, dict) else {}
    entries = []
    for organName, values in organs.items():
        values = values if isinstance(values, dict) else {}
        label = values.get("label")
        entries.append((_number(label), str(organName), values))
    entries.sort(key=lambda item: (math.isnan(item[0]), item[0], item[1]))
    rows = []
    for label, organName, values in entries:
        clean, attacked = _number(values.get("dice_clean")), _number(values.get("dice_adv"))
        rows.append(
            (
                organName,
                "" if math.isnan(label) else str(int(label)),
                clean,
                attacked,
                attacked - clean,
                _number(values.get("hd95_clean_mm")),
                _number(values.get("hd95_adv_mm")),
            )
        )
    if rows:
        meanClean = _number(metrics.get("mean_dice_clean"))
        meanAttacked = _number(metrics.get("mean_dice_adv"))
        if math.isnan(meanClean):
            meanClean = _mean(row[2] for row in rows)
        if math.isnan(meanAttacked):
            meanAttacked = _mean(row[3] for row in rows)
        # metrics.json's own means (over the organs of the reference), else the mean of the rows
        hd95 = [_number(metrics.get(key)) for key in ("mean_hd95_clean_mm", "mean_hd95_adv_mm")]
        hd95 = [_mean(row[5 + k] for row in rows) if math.isnan(v) else v for k, v in enumerate(hd95)]
        rows.append(("mean", "", meanClean, meanAttacked, meanAttacked - meanClean, *hd95))
    return rows


def perturbationRows(metrics: dict) -> list[tuple]:
    """Rows (metric, value, unit) of the perturbation table: how visible the attack is, and run time."""
    perturbation = metrics.get("perturbation") if isinstance(metrics, dict) else None
    perturbation = perturbation if isinstance(perturbation, dict) else {}
    rows = [
        (label, _number(perturbation[key]), unit)
        for key, label, unit in _PERTURBATION_ROWS
        if key in perturbation
    ]
    known = {key for key, _, _ in _PERTURBATION_ROWS}
    rows += [(key, _number(value), "") for key, value in perturbation.items() if key not in known]
    seconds = metrics.get("seconds") if isinstance(metrics, dict) else None
    if isinstance(seconds, dict):
        rows += [(f"Time: {stage}", _number(value), "s") for stage, value in seconds.items()]
    return rows


def fillMetricsTables(organTable, perturbationTable, metrics: dict) -> None:
    """Fill the organ table (Dice, HD95 clean vs attacked) and the perturbation table from metrics.json."""
    _fillTable(organTable, ORGAN_TABLE_COLUMNS, organRows(metrics))
    _fillTable(
        perturbationTable,
        (("Metric", "string", ""), ("Value", "double", ""), ("Unit", "string", "")),
        perturbationRows(metrics),
    )


def formatSummary(metrics: dict) -> str:
    """One line for the panel: mean Dice clean → attacked and how visible the perturbation is."""
    if not isinstance(metrics, dict):
        return ""
    parts = []
    rows = organRows(metrics)
    if rows:
        mean = rows[-1]
        organs = metrics.get("mean_dice_clean_organs")  # how many organs of the reference the mean covers
        parts.append(f"mean Dice {mean[2]:.3f} → {mean[3]:.3f}" + (f" ({organs} organs)" if organs else ""))
    perturbation = metrics.get("perturbation") if isinstance(metrics.get("perturbation"), dict) else {}
    for key, label, unit, fmt in (
        ("ssim_3d", "SSIM", "", ".3f"),
        ("psnr_db", "PSNR", " dB", ".1f"),
        ("linf_hu", "L∞", " HU", ".1f"),
    ):
        value = _number(perturbation.get(key))
        if not math.isnan(value):
            parts.append(f"{label} {value:{fmt}}{unit}")
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------------
# Subject hierarchy


def placeBesideInput(scene, nodes, inputVolume) -> None:
    """Put `nodes` in the same subject-hierarchy folder (patient/study) as `inputVolume`."""
    import slicer

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    inputItem = shNode.GetItemByDataNode(inputVolume)
    parentItem = shNode.GetItemParent(inputItem) if inputItem else shNode.GetSceneItemID()
    for node in nodes:
        if node is None:
            continue
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parentItem)
        else:
            shNode.CreateItem(parentItem, node)


# --------------------------------------------------------------------------------------------------
# Case folder


REGION_NAMES = ("background", "attack region")
REGION_COLORS = ((0, 0, 0), (255, 220, 0))


@dataclass
class LoadedCase:
    """The nodes one case folder became."""

    caseFolder: Path
    adversarialVolume: object
    cleanSegmentation: object
    attackedSegmentation: object
    metricsTable: object
    perturbationTable: object
    metrics: dict = field(default_factory=dict)
    geometryMatchesInput: bool = False
    regionSegmentation: object = (
        None  # the attack region (region.nii.gz), hidden; None for a whole-volume attack
    )

    def nodes(self) -> list:
        nodes = [
            self.adversarialVolume,
            self.cleanSegmentation,
            self.attackedSegmentation,
            self.metricsTable,
            self.perturbationTable,
        ]
        return nodes + ([self.regionSegmentation] if self.regionSegmentation is not None else [])


def attackNameFromProvenance(provenance) -> str:
    """The attack name recorded in provenance.json, or "" (the file's shape is read defensively)."""
    if not isinstance(provenance, dict):
        return ""
    attack = provenance.get("attack")
    if isinstance(attack, dict):
        attack = attack.get("name")
    return attack if isinstance(attack, str) else ""


def loadCase(
    scene, caseFolder, inputVolume=None, attack: str = "", labelNames=None, labelColors=None
) -> LoadedCase:
    """Load a case folder written by `AdvSegAttackLib.cli attack` into the scene.

    :param caseFolder: the folder; read through `AdvSegAttackLib.evaluation.casefolder.read_case` only.
    :param inputVolume: the clean input volume node; names, window/level, parent transform and the
      subject-hierarchy study of the results follow it, and its exact geometry is given to the
      adversarial volume when both are the same grid.
    :param attack: attack name for node names (default: from provenance.json).
    :param labelNames: model card label names; when given, segments are named and coloured after them.
    :return: the created nodes. If anything fails, nothing is left in the scene.
    """
    from AdvSegAttackLib.evaluation.casefolder import read_case

    case = read_case(caseFolder)
    if not attack:
        try:
            attack = attackNameFromProvenance(case.load_provenance())
        except (OSError, ValueError):
            attack = ""
    suffix = f" ({attack})" if attack else ""
    baseName = inputVolume.GetName() if inputVolume is not None else case.root.name
    created = []
    try:
        try:
            metrics = case.load_metrics()
        except ValueError as error:
            raise RuntimeError(f"{case.metrics} is not valid JSON ({error}).") from error
        adversarial = readVolumeFile(scene, case.adversarial, f"{baseName} adversarial{suffix}")
        created.append(adversarial)
        matched = False
        if inputVolume is not None:
            matched = matchGeometry(adversarial, inputVolume)
            copyWindowLevel(adversarial, inputVolume)

        def segmentation(segPath, niftiPath, name):
            try:
                return readSegmentationFile(scene, segPath, name, adversarial, labelNames, labelColors)
            except RuntimeError:
                return readSegmentationFile(scene, niftiPath, name, adversarial, labelNames, labelColors)

        clean = segmentation(case.pred_clean_seg, case.pred_clean_nifti, f"{baseName} clean prediction")
        created.append(clean)
        attacked = segmentation(
            case.pred_adv_seg, case.pred_adv_nifti, f"{baseName} attacked prediction{suffix}"
        )
        created.append(attacked)
        region = None
        if case.region in case.optional():
            region = readSegmentationFile(
                scene,
                case.region,
                f"{baseName} attack region{suffix}",
                adversarial,
                REGION_NAMES,
                REGION_COLORS,
            )
            region.GetDisplayNode().SetVisibility(False)
            created.append(region)
        organTable = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{baseName} attack metrics{suffix}")
        created.append(organTable)
        perturbationTable = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{baseName} perturbation{suffix}")
        created.append(perturbationTable)
        fillMetricsTables(organTable, perturbationTable, metrics)
        organTable.SetAttribute(SUMMARY_ATTRIBUTE, formatSummary(metrics))
        for node, role in (
            (adversarial, "adversarial"),
            (clean, "clean prediction"),
            (attacked, "attacked prediction"),
            (organTable, "metrics"),
            (perturbationTable, "perturbation"),
            *([(region, "attack region")] if region is not None else []),
        ):
            node.SetAttribute(CASE_FOLDER_ATTRIBUTE, str(case.root))
            node.SetAttribute(ROLE_ATTRIBUTE, role)
            node.SetAttribute(ATTACK_ATTRIBUTE, attack)
        if inputVolume is not None:
            placeBesideInput(scene, created, inputVolume)
    except Exception:
        removeNodes(scene, created)
        raise
    return LoadedCase(
        case.root, adversarial, clean, attacked, organTable, perturbationTable, metrics, matched, region
    )


# --------------------------------------------------------------------------------------------------
# Reference segmentation for the engine


def organsInReference(reference, labelNames) -> set[int]:
    """Label values (of the model card) of the organs present in a reference segmentation or labelmap."""
    if reference is None or not labelNames:
        return set()
    if reference.IsA("vtkMRMLSegmentationNode"):
        from AdvSegAttackLib.models.labels import find_organ

        segmentation = reference.GetSegmentation()
        found = set()
        for index in range(segmentation.GetNumberOfSegments()):
            value = find_organ(segmentation.GetNthSegment(index).GetName(), labelNames)
            if value is not None:
                found.add(value)
        return found
    if reference.GetImageData() is None:
        return set()
    import numpy as np
    import slicer

    values = np.unique(slicer.util.arrayFromVolume(reference))
    return {int(v) for v in values if 0 < v < len(labelNames)}


def writeReferenceLabelmap(scene, reference, inputVolume, labelNames, path) -> list[int]:
    """Write the reference for the engine's ``--label``: a labelmap on the input grid whose values are the
    model card's label values.

    A segmentation is exported segment by segment, each segment whose name is an organ of the card
    (case-insensitive) getting that organ's value; other segments are left out. A labelmap volume is
    written as it is (its values must already be the card's).

    :return: the label values written.
    :raises ValueError: if no segment is named like an organ of the model.
    """
    if reference.IsA("vtkMRMLLabelMapVolumeNode"):
        writeVolumeNode(reference, path)
        return sorted(organsInReference(reference, labelNames))
    import slicer
    import vtk

    from AdvSegAttackLib.models.labels import find_organ

    segmentation = reference.GetSegmentation()
    segmentIds = vtk.vtkStringArray()
    names, values = [], []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentName = segmentation.GetNthSegment(index).GetName()
        value = find_organ(segmentName, labelNames)
        if value is not None and value not in values:
            segmentIds.InsertNextValue(segmentation.GetNthSegmentID(index))
            names.append(segmentName)
            values.append(value)
    if not values:
        known = ", ".join(str(n) for n in labelNames[1:])
        raise ValueError(
            f"None of the segments of {reference.GetName()!r} is named like an organ of the model ({known})."
        )
    colorTable = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "__AdvSegAttack_reference_colors__")
    colorTable.SetTypeToUser()
    colorTable.SetNumberOfColors(len(labelNames))
    for value in range(len(labelNames)):
        colorTable.SetColor(value, f"__unused_{value}__", 0.0, 0.0, 0.0, 0.0)
    for segmentName, value in zip(names, values, strict=True):
        colorTable.SetColor(value, segmentName, 1.0, 1.0, 1.0, 1.0)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__AdvSegAttack_reference__")
    colorNodesBefore = _colorNodeIDs(scene)
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            reference,
            segmentIds,
            labelmap,
            inputVolume,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
            colorTable,
        )
        if not ok:
            raise RuntimeError(f"Could not export the segmentation {reference.GetName()!r} as a labelmap.")
        writeVolumeNode(labelmap, path)
    finally:
        # The export also makes a colour table for the labelmap's display; remove it with the rest.
        created = [scene.GetNodeByID(i) for i in _colorNodeIDs(scene) - colorNodesBefore]
        removeNodes(scene, [labelmap, colorTable, *created])
    return sorted(values)


# --------------------------------------------------------------------------------------------------
# Difference volume


def divergingColorNode(scene):
    """The blue-white-red colour table for the difference map (created once per scene).

    256 entries; entries 127 and 128 are white, so with level 0 no change is white, a positive change
    (attacked brighter than clean) red and a negative one blue.
    """
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLColorTableNode")
        if node.GetAttribute(_DIVERGING_ATTRIBUTE) == "1":
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", DIVERGING_COLOR_NODE_NAME)
    node.SetAttribute(_DIVERGING_ATTRIBUTE, "1")
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    blue, white, red = (0.230, 0.299, 0.754), (1.0, 1.0, 1.0), (0.706, 0.016, 0.150)
    for index in range(256):
        if index < 128:
            t, start, end = index / 127.0, blue, white
        else:
            t, start, end = (index - 128) / 127.0, white, red
        rgb = [s + (e - s) * t for s, e in zip(start, end, strict=True)]
        node.SetColor(index, "", rgb[0], rgb[1], rgb[2], 1.0)
    return node


def createDifferenceVolume(scene, attacked, clean, name: str | None = None):
    """A float32 volume attacked − clean (HU) on the attacked volume's grid, shown with the diverging map.

    :raises ValueError: if the two volumes do not have the same voxel grid size.
    """
    import numpy as np
    import slicer

    attackedArray = slicer.util.arrayFromVolume(attacked)
    cleanArray = slicer.util.arrayFromVolume(clean)
    if attackedArray.shape != cleanArray.shape:
        raise ValueError(
            f"{attacked.GetName()!r} {attackedArray.shape[::-1]} and {clean.GetName()!r} {cleanArray.shape[::-1]} "
            "are not on the same voxel grid, so they cannot be subtracted."
        )
    difference = attackedArray.astype(np.float32) - cleanArray.astype(np.float32)
    name = name or f"{clean.GetName()} difference (attacked − clean)"
    node = slicer.vtkSlicerVolumesLogic.CloneVolumeWithoutImageData(scene, attacked, name)
    slicer.util.updateVolumeFromArray(node, difference)
    node.SetAndObserveTransformNodeID(attacked.GetTransformNodeID())
    node.SetAttribute(ROLE_ATTRIBUTE, "difference")
    for attribute in (CASE_FOLDER_ATTRIBUTE, ATTACK_ATTRIBUTE):
        if attacked.GetAttribute(attribute) is not None:
            node.SetAttribute(attribute, attacked.GetAttribute(attribute))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(divergingColorNode(scene).GetID())
    display.SetAutoWindowLevel(False)
    largest = float(np.abs(difference).max()) if difference.size else 0.0
    display.SetWindowLevel(2.0 * max(largest, 1.0), 0.0)
    return node


# --------------------------------------------------------------------------------------------------
# Compare layout


def compareLayoutXML(withDifference: bool = False) -> str:
    """Layout description: clean | attacked (| difference) axial slice views side by side."""
    views = [CLEAN_VIEW, ATTACKED_VIEW] + ([DIFFERENCE_VIEW] if withDifference else [])
    items = []
    for view in views:
        label, color = _VIEW_STYLE[view]
        items.append(
            " <item>\n"
            f'  <view class="vtkMRMLSliceNode" singletontag="{view}">\n'
            '   <property name="orientation" action="default">Axial</property>\n'
            f'   <property name="viewlabel" action="default">{label}</property>\n'
            f'   <property name="viewcolor" action="default">{color}</property>\n'
            "  </view>\n"
            " </item>\n"
        )
    return '<layout type="horizontal" split="true">\n' + "".join(items) + "</layout>\n"


def registerCompareLayouts(layoutNode) -> None:
    """Add (or refresh) the two compare layouts on the layout node (IDs ≥ 100 are free for modules)."""
    for layoutId, withDifference in ((COMPARE_LAYOUT_ID, False), (COMPARE_WITH_DIFFERENCE_LAYOUT_ID, True)):
        xml = compareLayoutXML(withDifference)
        if layoutNode.IsLayoutDescription(layoutId):
            layoutNode.SetLayoutDescription(layoutId, xml)
        else:
            layoutNode.AddLayoutDescription(layoutId, xml)


def sliceCompositeNode(scene, layoutName: str):
    """The slice composite node of a view (the one its slice logic made: in Slicer, the layout manager
    makes a slice logic for every view it shows).

    :raises RuntimeError: if the view has no slice node, or no slice logic has given it a composite node.
    """
    import slicer

    sliceNode = scene.GetSingletonNode(layoutName, "vtkMRMLSliceNode")
    composite = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(sliceNode) if sliceNode is not None else None
    if composite is None:
        raise RuntimeError(
            f"The view {layoutName} has no slice composite node; is a slice logic observing it?"
        )
    return composite


def showSegmentationOnlyIn(segmentationNode, sliceNodes) -> None:
    """Show a segmentation in the given views only (an empty list would mean every view)."""
    display = segmentationNode.GetDisplayNode()
    if display is None:
        segmentationNode.CreateDefaultDisplayNodes()
        display = segmentationNode.GetDisplayNode()
    display.RemoveAllViewNodeIDs()
    for sliceNode in sliceNodes:
        display.AddViewNodeID(sliceNode.GetID())
    display.SetVisibility(True)


def showCompareLayout(
    scene, layoutNode, clean, attacked, cleanSegmentation=None, attackedSegmentation=None, difference=None
) -> dict:
    """Switch to the compare layout and fill it: left clean volume + clean prediction, right attacked
    volume + attacked prediction, optionally a third view with the difference map. Views are linked.

    In Slicer, pass ``slicer.app.layoutManager().layoutLogic().GetLayoutNode()``; its layout logic creates
    the slice nodes of the new views.

    :return: the slice nodes by view name.
    """
    registerCompareLayouts(layoutNode)
    layoutNode.SetViewArrangement(
        COMPARE_WITH_DIFFERENCE_LAYOUT_ID if difference is not None else COMPARE_LAYOUT_ID
    )
    content = {CLEAN_VIEW: (clean, cleanSegmentation), ATTACKED_VIEW: (attacked, attackedSegmentation)}
    if difference is not None:
        content[DIFFERENCE_VIEW] = (difference, None)
    sliceNodes = {}
    for viewName, (volume, _) in content.items():
        sliceNode = scene.GetSingletonNode(viewName, "vtkMRMLSliceNode")
        if sliceNode is None:
            raise RuntimeError(
                f"The compare view {viewName} was not created; is a layout logic observing the scene?"
            )
        sliceNodes[viewName] = sliceNode
        composite = sliceCompositeNode(scene, viewName)
        composite.SetBackgroundVolumeID(volume.GetID() if volume is not None else None)
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
        if volume is not None:
            sliceNode.RotateToVolumePlane(volume)
    for viewName, (_, segmentationNode) in content.items():
        if segmentationNode is not None:
            showSegmentationOnlyIn(segmentationNode, [sliceNodes[viewName]])
    return sliceNodes
