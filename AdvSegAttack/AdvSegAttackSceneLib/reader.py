"""Scene side of the reader mode: one blinded case at a time, under its neutral ID only.

A case is one volume node named with the case's neutral ID and nothing else: no segmentation, no node
attributes, no description, and no storage node (so no file path in the scene either; the volume is
read through a temporary storage node that is removed right away). It is shown with a fixed abdominal
CT window/level (Slicer's CT-Abdomen preset), never one computed from the voxels, since an automatic
window could differ between the real and the manipulated version of a patient.

Qt-free: runs in Slicer and on the `slicer-core` wheel; the scene is passed explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .scene import removeNodes

ABDOMEN_WINDOW_HU = 350.0  # Slicer's "CT-Abdomen" volume display preset
ABDOMEN_LEVEL_HU = 40.0
GREY_COLOR_NODE_ID = "vtkMRMLColorTableNodeGrey"
_CASE_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")


@dataclass
class ReaderCase:
    """The nodes of the case on screen, and the scene's nodes before it was loaded."""

    caseId: str
    volume: object
    nodeIDsBefore: frozenset


def _nodeIDs(scene) -> frozenset:
    return frozenset(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def loadReaderCase(scene, imagePath, caseId: str) -> ReaderCase:
    """Read a session's neutral volume into a new volume node named `caseId`, blinded and windowed.

    :param imagePath: the neutral file (``SESSION/cases/<ID>.nii``, from `ReaderSession.image_path`).
    :raises ValueError: for an ID that is not plain letters and digits.
    :raises RuntimeError: if the file cannot be read (nothing is left in the scene).
    """
    import slicer

    if not _CASE_ID.match(str(caseId)):
        raise ValueError(f"{caseId!r} is not a neutral case ID (letters and digits only).")
    before = _nodeIDs(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", caseId)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(imagePath))
    try:
        if not storage.ReadData(volume) or volume.GetImageData() is None:
            raise RuntimeError(f"Could not read the case volume {imagePath}.")
    except Exception:
        removeNodes(scene, [volume])
        raise
    blind(volume, caseId)
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    if scene.GetNodeByID(GREY_COLOR_NODE_ID) is not None:
        display.SetAndObserveColorNodeID(GREY_COLOR_NODE_ID)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(ABDOMEN_WINDOW_HU, ABDOMEN_LEVEL_HU)
    display.SetAutoThreshold(False)
    display.SetApplyThreshold(False)
    return ReaderCase(caseId, volume, before)


def blind(node, caseId: str) -> None:
    """Strip a node of everything but its voxels and geometry: name = `caseId`, no attributes, no
    description, no storage node."""
    node.SetName(caseId)
    node.SetDescription("")
    for name in list(node.GetAttributeNames() or ()):
        node.RemoveAttribute(name)
    node.SetAndObserveStorageNodeID(None)


def showReaderCase(scene, case: ReaderCase) -> list:
    """Show the case as the background of every slice view, with no foreground or label layer.

    :return: the slice composite nodes that were set (fit the views afterwards in Slicer).
    """
    composites = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(case.volume.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composites.append(composite)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").RotateToVolumePlane(case.volume)
    return composites


def unloadReaderCase(scene, case: ReaderCase | None) -> None:
    """Remove the case's volume and every data node added since it was loaded (a ruler the reader
    placed, for example), with their display and storage nodes; views and colour tables stay."""
    if case is None:
        return
    added = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if node.GetID() not in case.nodeIDsBefore and isUserData(node):
            added.append(node)
    removeNodes(scene, [case.volume, *added])


def isUserData(node) -> bool:
    """A data node a person loaded or made (not a view, a built-in colour table or a temporary helper)."""
    return node.IsA("vtkMRMLStorableNode") and not node.GetSingletonTag() and bool(node.GetSaveWithScene())


def sceneHasUserData(scene) -> bool:
    """True if the scene holds any data node (volume, segmentation, table, markup, …)."""
    return any(
        isUserData(scene.GetNthNodeByClass(i, "vtkMRMLStorableNode"))
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode"))
    )


def sceneText(scene, skip=None) -> str:
    """Every string of the scene a person could get at: the saved scene XML, and each node's name,
    description, attributes and storage file names, and the subject hierarchy's item names and attributes.

    :param skip: optional predicate; nodes for which it is true are left out of the per-node part.
    """
    import slicer

    parts = []
    scene.SetSaveToXMLString(1)
    try:
        scene.Commit()
        parts.append(scene.GetSceneXMLString())
    finally:
        scene.SetSaveToXMLString(0)
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if skip is not None and skip(node):
            continue
        parts += [node.GetName() or "", node.GetDescription() or ""]
        for name in node.GetAttributeNames() or ():
            parts += [name, node.GetAttribute(name) or ""]
        if node.IsA("vtkMRMLStorageNode"):
            parts.append(node.GetFileName() or "")
            parts += [node.GetNthFileName(i) or "" for i in range(node.GetNumberOfFileNames())]
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is not None:
        import vtk

        items = vtk.vtkIdList()
        shNode.GetItemChildren(shNode.GetSceneItemID(), items, True)
        for index in range(items.GetNumberOfIds()):
            item = items.GetId(index)
            parts.append(shNode.GetItemName(item) or "")
            for name in shNode.GetItemAttributeNames(item) or ():
                parts += [name, shNode.GetItemAttribute(item, name) or ""]
    return "\n".join(parts)
