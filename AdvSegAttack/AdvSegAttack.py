"""AdvSegAttack: adversarial attacks on CT segmentation models, clean vs attacked side by side.

Needs 3D Slicer 5.10 or newer (Python 3.12); on an older Slicer the module only shows one sentence saying so,
and this file runs on Python 3.9 up to that check (`make lint` checks it with vermin and a real Python 3.9).
The attack runs in a child process (``PythonSlicer -m AdvSegAttackLib.cli attack ... --progress jsonl``),
so the application stays responsive and Cancel kills it; the results are loaded on the main thread.
Export runs the engine's ``export`` the same way (one `EngineProcess` class for both). The "Reader study"
section is the blinded reader mode (`AdvSegAttackReaderLogic`; engine: `AdvSegAttackLib.studies.reader_session`;
scene: `AdvSegAttackSceneLib.reader`), with the attack panels hidden.
Nothing heavy happens at import: torch, MONAI and the engine are only needed by the child process, and
missing packages are installed (with the user's consent, torch and Slicer's own packages held as they are)
on the first Apply.
"""

import enum
import functools
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Annotated, Union

import qt
import slicer
import vtk
from AdvSegAttackSceneLib.supported import unsupportedReason
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer before 5.4: no translations (the module then only says which Slicer it needs)

    def _(text):
        return text

    def translate(context, text):
        return text


# None in a supported Slicer; otherwise the one sentence the module shows instead of its panel.
UNSUPPORTED_REASON = unsupportedReason((slicer.app.majorVersion, slicer.app.minorVersion), sys.version_info)

if UNSUPPORTED_REASON is None:  # the rest may need Python 3.10 and Slicer 5.10
    from AdvSegAttackSceneLib import catalogue as advCatalogue
    from AdvSegAttackSceneLib import dependencies as advDependencies
    from AdvSegAttackSceneLib import engine as advEngine
    from AdvSegAttackSceneLib import process as advProcess
    from AdvSegAttackSceneLib import progress as advProgress
    from AdvSegAttackSceneLib import reader as advReader
    from AdvSegAttackSceneLib import scene as advScene
    from slicer import (
        vtkMRMLLabelMapVolumeNode,
        vtkMRMLScalarVolumeNode,
        vtkMRMLSegmentationNode,
        vtkMRMLTableNode,
    )
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
HOMEPAGE = "https://github.com/AdvSegAttack/SlicerAdvSegAttack"

#
# AdvSegAttack
#


class AdvSegAttack(ScriptedLoadableModule):
    """Module description (title, category, help). Uses ScriptedLoadableModule base class."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Adversarial Segmentation Attack")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["AdvSegAttack developers (AdvSegAttack project)"]
        self.parent.helpText = _(
            "Attack a CT segmentation model with SA², VAFA or pixel-space attacks and compare the clean and the "
            "attacked volume and segmentation side by side, with Dice, HD95 and how visible the change is. "
            "Needs 3D Slicer 5.10 or newer (Python 3.12); the engine on its own (the advseg command) runs on "
            'Python 3.10 or newer. See the <a href="{homepage}">documentation</a>. For research only; not for '
            "clinical use."
        ).format(homepage=HOMEPAGE)
        if UNSUPPORTED_REASON is not None:
            self.parent.helpText = UNSUPPORTED_REASON + "<br><br>" + self.parent.helpText
        self.parent.acknowledgementText = _(
            "Built on the published SA² (Hanif et al., ISBI 2025, MIT) and VAFA (MICCAI 2023) methods, MONAI and "
            "PyTorch. Slicer integration follows the patterns of the TotalSegmentator, MONAIAuto3DSeg and "
            "SlicerNNUNet extensions."
        )


#
# Parameter node
#


DEFAULT_MODEL = "abdomen-unet"
"""The bundled model chosen first (the model list holds every folder of Resources/Models)."""
MODEL_FROM_FILE = "file"
"""The parameter node's `model` when the model is a file or folder (`modelPath`)."""


class RegionChoice(enum.Enum):
    """Where the attack may change the volume."""

    WHOLE = "whole"
    ORGAN = "organ"
    BBOX = "bbox"

    def label(self):
        return {
            "whole": _("Whole volume"),
            "organ": _("Organ mask"),
            "bbox": _("Organ bounding box"),
        }[self.value]


if UNSUPPORTED_REASON is None:  # the wrapper needs Slicer 5.4

    @parameterNodeWrapper
    class AdvSegAttackParameterNode:
        """Everything the module remembers in the scene.

        Fields bound to widgets carry the same name as the widget's ``SlicerParameterName`` in the .ui file;
        the ones in ``PARAMETERS_SET_IN_CODE`` are set by the widget or the logic.
        """

        inputVolume: vtkMRMLScalarVolumeNode
        # typing.Union (not "|"): the wrapper recognises node unions by typing.get_origin(...) == typing.Union.
        referenceSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]  # noqa: UP007
        model: str = DEFAULT_MODEL  # a bundled model's name, or MODEL_FROM_FILE
        modelPath: str = ""
        # The choices of an nnU-Net v2 results folder; the defaults are the engine's (no flag is sent for them):
        # the only configuration, every fold (folds as typed, e.g. "0 1"), checkpoint_final.pth, no mirroring.
        nnunetConfiguration: str = ""
        nnunetFolds: str = ""
        nnunetCheckpoint: str = advEngine.NNUNET_DEFAULT_CHECKPOINT
        nnunetTta: bool = False
        organ: str = ""
        # The engine's attack name (the first of its catalogue when empty or unknown), and per attack the
        # preset and the values the user changed, as JSON (AdvSegAttackSceneLib.catalogue).
        attack: str = ""
        attackSettings: str = ""
        region: RegionChoice = RegionChoice.WHOLE
        dilationMm: Annotated[float, WithinRange(0.0, 200.0)] = advEngine.DEFAULT_DILATION_MM
        targeted: bool = False
        seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
        # Results, set by the logic when a run has finished.
        adversarialVolume: vtkMRMLScalarVolumeNode
        cleanSegmentation: vtkMRMLSegmentationNode
        attackedSegmentation: vtkMRMLSegmentationNode
        metricsTable: vtkMRMLTableNode
        perturbationTable: vtkMRMLTableNode
        differenceVolume: vtkMRMLScalarVolumeNode
        showDifference: bool = False


# Parameter-node fields without a widget binding in the .ui (checked by Testing/test_slicer_static.py).
PARAMETERS_SET_IN_CODE = frozenset(
    {
        "attack",
        "attackSettings",
        "model",
        "modelPath",
        "nnunetConfiguration",
        "nnunetCheckpoint",
        "organ",
        "adversarialVolume",
        "cleanSegmentation",
        "attackedSegmentation",
        "metricsTable",
        "perturbationTable",
        "differenceVolume",
        "showDifference",
    }
)

DEVICE_SETTINGS_KEY = "AdvSegAttack/device"
READER_NAME_SETTINGS_KEY = "AdvSegAttack/readerName"
READER_SESSION_SETTINGS_KEY = "AdvSegAttack/readerSession"

# Panels hidden in reader mode: they could show attack results, metrics or the names of attacked volumes.
READER_HIDDEN_PANELS = (
    "inputsCollapsibleButton",
    "attackCollapsibleButton",
    "applyButton",
    "resultsCollapsibleButton",
    "logCollapsibleButton",
)
# Engine export formats -> check box in the .ui.
EXPORT_FORMAT_WIDGETS = {
    "nifti": "exportNiftiCheckBox",
    "nrrd": "exportNrrdCheckBox",
    "dicom": "exportDicomCheckBox",
}

#
# Attack panel
#


class AttackPanel:
    """The widgets of one attack, made at run time from its catalogue entry (`advCatalogue.AttackSpec`).

    A preset list (if the attack has presets) and its parameters go into the Attack section, its advanced
    parameters into the Advanced section: a spin box with the engine's range (open ends moved inside by one
    step), a check box or a list of choices each, with the catalogue's label and a tooltip of doc, unit,
    range, default and presets. A changed value's label is bold. Edits go to `onValue(attack, name, value)`
    and `onPreset(attack, preset)`; the widget stores them in the parameter node, and `show` puts them back.
    """

    def __init__(self, attack, layout, advancedLayout, onPreset, onValue) -> None:
        self.attack = attack
        self.main = qt.QWidget()
        self.advanced = qt.QWidget()
        mainForm = qt.QFormLayout(self.main)
        advancedForm = qt.QFormLayout(self.advanced)
        for form in (mainForm, advancedForm):
            form.setContentsMargins(0, 0, 0, 0)
        self.presetComboBox = None
        if attack.presets:
            combo = qt.QComboBox()
            if attack.defaultPreset is None:
                combo.addItem(_("None (the engine's defaults)"), "")
            for preset in attack.presets:
                combo.addItem(preset.label, preset.name)
            combo.toolTip = attack.presetToolTip()
            combo.connect("activated(int)", lambda index: onPreset(attack, combo.itemData(index) or None))
            mainForm.addRow(_("Preset:"), combo)
            self.presetComboBox = combo
        self.editors, self.labels = {}, {}
        for parameter in attack.editableParameters():
            editor = self._createEditor(parameter, onValue)
            label = qt.QLabel(parameter.label + ":")
            label.toolTip = parameter.toolTip()
            editor.toolTip = parameter.toolTip()
            (advancedForm if parameter.advanced else mainForm).addRow(label, editor)
            self.editors[parameter.name], self.labels[parameter.name] = editor, label
        layout.addWidget(self.main)
        advancedLayout.addWidget(self.advanced)

    def _createEditor(self, parameter, onValue):
        attack, kind = self.attack, parameter.widgetKind
        if kind == "check":
            editor = qt.QCheckBox()
            editor.connect("toggled(bool)", lambda checked: onValue(attack, parameter.name, bool(checked)))
        elif kind == "combo":
            editor = qt.QComboBox()
            for choice in parameter.choices:
                editor.addItem(str(choice))
            editor.connect(
                "activated(int)", lambda index: onValue(attack, parameter.name, parameter.choices[index])
            )
        else:
            editor = qt.QDoubleSpinBox() if kind == "double" else qt.QSpinBox()
            if kind == "double":
                editor.decimals = parameter.decimals  # before the range: the box rounds to its decimals
            editor.minimum, editor.maximum = parameter.widgetRange
            editor.singleStep = parameter.singleStep
            editor.keyboardTracking = False  # one change when the user is done typing, not one per key
            signal = "valueChanged(double)" if kind == "double" else "valueChanged(int)"
            editor.connect(signal, lambda value: onValue(attack, parameter.name, value))
        return editor

    def setVisible(self, visible: bool) -> None:
        self.main.visible = visible
        self.advanced.visible = visible and bool(self.attack.editableParameters(advanced=True))

    def show(self, choice) -> None:
        """Show a stored choice (`advCatalogue.AttackChoice`) without sending it back as edits."""
        values = self.attack.values(choice)
        widgets = list(self.editors.values())
        if self.presetComboBox is not None:
            widgets.append(self.presetComboBox)
        blocked = [(widget, widget.blockSignals(True)) for widget in widgets]
        if self.presetComboBox is not None:
            self.presetComboBox.currentIndex = max(self.presetComboBox.findData(choice.preset or ""), 0)
        for name, editor in self.editors.items():
            parameter, value = self.attack.parameter(name), values[name]
            if parameter.widgetKind == "check":
                editor.checked = value
            elif parameter.widgetKind == "combo":
                editor.currentIndex = list(parameter.choices).index(value)
            else:
                editor.value = value
            font = self.labels[name].font
            font.setBold(name in choice.changed)
            self.labels[name].font = font
        for widget, wasBlocked in blocked:
            widget.blockSignals(wasBlocked)


#
# AdvSegAttackWidget
#


class AdvSegAttackWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Uses ScriptedLoadableModuleWidget base class."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.readerLogic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._labelNames = []
        self._bestFraction = 0.0
        self._attackPanels = {}

    def setup(self) -> None:
        """Build the panel from the .ui file and connect it (on an older Slicer: only say which is needed)."""
        ScriptedLoadableModuleWidget.setup(self)
        if UNSUPPORTED_REASON is not None:
            label = qt.QLabel(UNSUPPORTED_REASON)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AdvSegAttack.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AdvSegAttackLogic()
        self.logic.logCallback = self._appendLog
        self.logic.progressCallback = self._onProgress
        self.logic.finishedCallback = self._onFinished
        self.logic.exportFinishedCallback = self._onExportFinished
        self.readerLogic = AdvSegAttackReaderLogic()

        self._createAttackPanels()

        self.ui.deviceComboBox.addItems(["auto", "cpu", "cuda:0", "cuda:1"])
        self.ui.deviceComboBox.setCurrentText(slicer.util.settingsValue(DEVICE_SETTINGS_KEY, "auto"))
        self.ui.deviceComboBox.connect("currentTextChanged(QString)", self.onDeviceChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.attackComboBox.connect("activated(int)", self.onAttackActivated)
        self.ui.organComboBox.connect("activated(int)", self.onOrganActivated)
        for name, label in self.logic.bundledModels():
            self.ui.modelComboBox.addItem(label, name)
        self.ui.modelComboBox.addItem(_("From file…"), MODEL_FROM_FILE)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.nnunetConfigurationComboBox.connect("activated(int)", self.onNnunetConfigurationActivated)
        self.ui.nnunetCheckpointComboBox.connect("activated(int)", self.onNnunetCheckpointActivated)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.differenceButton.connect("toggled(bool)", self.onDifferenceToggled)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.exportDicomCheckBox.connect("toggled(bool)", self.onExportDicomToggled)
        self.ui.exportPhiComboBox.addItem(_("Remove (de-identified bundle)"), "remove")
        self.ui.exportPhiComboBox.addItem(_("Keep"), "keep")
        self.onExportDicomToggled(self.ui.exportDicomCheckBox.checked)

        self.ui.readerNameLineEdit.text = slicer.util.settingsValue(READER_NAME_SETTINGS_KEY, "")
        self.ui.readerSessionPathLineEdit.currentPath = slicer.util.settingsValue(
            READER_SESSION_SETTINGS_KEY, ""
        )
        self.ui.readerConfidenceComboBox.addItem(_("(choose)"), 0)
        for value, text in ((1, _("1 (guessing)")), (2, "2"), (3, "3"), (4, "4"), (5, _("5 (certain)"))):
            self.ui.readerConfidenceComboBox.addItem(text, value)
        self.ui.readerStartButton.connect("clicked(bool)", self.onReaderStartButton)
        self.ui.readerStopButton.connect("clicked(bool)", self.onReaderStopButton)
        self.ui.readerNextButton.connect("clicked(bool)", self.onReaderNextButton)
        self.ui.readerRealRadioButton.connect("toggled(bool)", self.onReaderVerdictToggled)
        self.ui.readerManipulatedRadioButton.connect("toggled(bool)", self.onReaderVerdictToggled)
        self.ui.readerConfidenceComboBox.connect("currentIndexChanged(int)", self.onReaderConfidenceChanged)
        self._setReaderMode(False)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self.logic:
            self.logic.logCallback = self.logic.progressCallback = self.logic.finishedCallback = None
            self.logic.exportFinishedCallback = None
            self.logic.cancel()
            self.logic.cancelExport()
        if self.readerLogic:
            self.readerLogic.stop()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        if self.logic:
            self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: stop a run and forget the parameter node.

        Closing the scene while reading ends the reader mode (the answers given so far are saved).
        """
        self.logic.cancel()
        self.logic.cancelExport()
        if self.readerLogic.isReading():
            self.readerLogic.stop()
            self._setReaderMode(False)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onReload(self) -> None:
        """Reload the Qt-free helpers too (developer mode "Reload"), in the order they import each other."""
        import importlib

        if self.logic:
            self.logic.cancel()
            self.logic.cancelExport()
        if self.readerLogic:
            self.readerLogic.stop()
        for name in (
            "AdvSegAttackSceneLib.supported",
            "AdvSegAttackSceneLib.progress",
            "AdvSegAttackSceneLib.catalogue",
            "AdvSegAttackSceneLib.engine",
            "AdvSegAttackSceneLib.dependencies",
            "AdvSegAttackSceneLib.process",
            "AdvSegAttackSceneLib.scene",
            "AdvSegAttackSceneLib.reader",
        ):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed; pick the first volume as input."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        """Bind the GUI to a parameter node (``SlicerParameterName`` properties in the .ui)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._refreshOrgans()
            self._updateGUI()

    # -- GUI state -------------------------------------------------------------------------------

    def _modelKey(self):
        """What the organ list and the nnU-Net group depend on."""
        node = self._parameterNode
        return (
            node.model,
            node.modelPath,
            node.nnunetConfiguration,
            node.nnunetCheckpoint,
            node.referenceSegmentation,
        )

    def _updateGUI(self, caller=None, event=None) -> None:
        """Show the parameters of the chosen attack, enable Apply, refresh organs and results."""
        node = self._parameterNode
        if node is None:
            return
        if getattr(self, "_lastModelKey", None) != self._modelKey():
            self._refreshOrgans()
        attack = self.logic.attackSpec(node) if self._attackPanels else None
        if attack is not None:
            self._showAttack(attack)
        modelIndex = self.ui.modelComboBox.findData(node.model)
        if modelIndex >= 0 and self.ui.modelComboBox.currentIndex != modelIndex:
            wasBlocked = self.ui.modelComboBox.blockSignals(True)
            self.ui.modelComboBox.currentIndex = modelIndex
            self.ui.modelComboBox.blockSignals(wasBlocked)
        fromFile = node.model == MODEL_FROM_FILE
        self.ui.modelPathLabel.visible = fromFile
        self.ui.modelPathLineEdit.visible = fromFile
        if self.ui.modelPathLineEdit.currentPath != node.modelPath:
            wasBlocked = self.ui.modelPathLineEdit.blockSignals(True)
            self.ui.modelPathLineEdit.currentPath = node.modelPath
            self.ui.modelPathLineEdit.blockSignals(wasBlocked)
        regional = node.region != RegionChoice.WHOLE and (attack is None or attack.supportsRegion)
        self.ui.dilationLabel.visible = regional
        self.ui.dilationSpinBox.visible = regional

        running = self.logic.isRunning()
        exporting = self.logic.isExporting()
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.attackCollapsibleButton.enabled = not running
        if exporting:
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = _("An export is running.")
        elif running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the attack; the scene is left as it was.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            problem = self.logic.whyCannotRun(node)
            self.ui.applyButton.enabled = problem is None
            self.ui.applyButton.toolTip = problem or _("Run the attack in a background process.")

        hasResults = bool(node.adversarialVolume and node.inputVolume)
        self.ui.compareButton.enabled = hasResults and not running
        self.ui.differenceButton.enabled = hasResults and not running
        self.ui.exportButton.enabled = (bool(node.adversarialVolume) and not running) or exporting
        self.ui.exportButton.text = _("Cancel export") if exporting else _("Export case…")
        self.ui.exportOptionsWidget.enabled = not exporting
        self.ui.metricsTableView.setMRMLTableNode(node.metricsTable)
        summary = node.metricsTable.GetAttribute(advScene.SUMMARY_ATTRIBUTE) if node.metricsTable else None
        self.ui.summaryLabel.text = summary or ""
        self.ui.perturbationTableView.setMRMLTableNode(node.perturbationTable)
        wasBlocked = self.ui.differenceButton.blockSignals(True)
        self.ui.differenceButton.checked = node.showDifference
        self.ui.differenceButton.blockSignals(wasBlocked)

    def _refreshOrgans(self) -> None:
        """Fill the nnU-Net group and the organ list from the model (the chosen configuration's labels for an
        nnU-Net folder); ✓ marks organs present in the reference."""
        node = self._parameterNode
        self._lastModelKey = self._modelKey()
        self._refreshNnunetGroup()
        try:
            self._labelNames, _colors = self.logic.cardLabels(
                self.logic.modelReference(node), self.logic.nnunetChoice(node)
            )
        except ValueError:
            self._labelNames = []
        present = advScene.organsInReference(node.referenceSegmentation, self._labelNames)
        combo = self.ui.organComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("All organs"), "")
        for value, name in enumerate(self._labelNames):
            if value:
                combo.addItem(f"{name}  ✓" if value in present else name, name)
        index = combo.findData(node.organ) if node.organ else 0
        combo.currentIndex = max(index, 0)
        combo.blockSignals(wasBlocked)
        if self._labelNames:
            combo.toolTip = _("Organ to attack (from the model card; ✓: present in the reference).")
        else:
            combo.toolTip = _(
                "The model's organ names are not known (no model card); all organs are attacked."
            )

    def _refreshNnunetGroup(self) -> None:
        """Show the nnU-Net group for an nnU-Net v2 results folder, filled with what it offers: the
        configurations (only where it holds several), the checkpoints present, the folds holding the chosen one."""
        node = self._parameterNode
        options = self.logic.nnunetOptions(node)
        self.ui.nnunetGroupBox.visible = options is not None
        if options is None:
            return
        several = bool(options.configurations)
        self.ui.nnunetConfigurationLabel.visible = several
        self.ui.nnunetConfigurationComboBox.visible = several
        items = [(_("(choose)"), "")] + [(name, name) for name in options.configurations]
        self._fillCombo(self.ui.nnunetConfigurationComboBox, items, node.nnunetConfiguration)
        checkpoints = [(f"{name} (checkpoint_{name}.pth)", name) for name in options.checkpoints]
        self._fillCombo(self.ui.nnunetCheckpointComboBox, checkpoints, node.nnunetCheckpoint)
        self.ui.nnunetFoldsLineEdit.placeholderText = _("all: {folds}").format(
            folds=" ".join(options.defaultFolds)
        )
        self.ui.nnunetFoldsLineEdit.toolTip = _(
            "Folds whose logits are averaged, separated by spaces (empty: all, as nnUNetPredictor). "
            "Folds with this checkpoint: {folds}."
        ).format(folds=" ".join(options.folds) or _("none"))

    @staticmethod
    def _fillCombo(combo, items, current) -> None:
        """Replace a combo box's (text, data) items without signals and select `current` (none if absent)."""
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for text, data in items:
            combo.addItem(text, data)
        combo.currentIndex = combo.findData(current)
        combo.blockSignals(wasBlocked)

    def onNnunetConfigurationActivated(self, index) -> None:
        """Store the chosen nnU-Net configuration (empty: not chosen)."""
        self._parameterNode.nnunetConfiguration = self.ui.nnunetConfigurationComboBox.itemData(index) or ""

    def onNnunetCheckpointActivated(self, index) -> None:
        """Store the chosen nnU-Net checkpoint (final or best)."""
        self._parameterNode.nnunetCheckpoint = (
            self.ui.nnunetCheckpointComboBox.itemData(index) or advEngine.NNUNET_DEFAULT_CHECKPOINT
        )

    def onModelActivated(self, index) -> None:
        """Store the chosen bundled model's name, or MODEL_FROM_FILE."""
        self._parameterNode.model = self.ui.modelComboBox.itemData(index) or DEFAULT_MODEL

    def onModelPathChanged(self, path) -> None:
        """Store the model file or folder (a plain string, so an empty path stays empty)."""
        self._parameterNode.modelPath = path.strip()

    def onOrganActivated(self, index) -> None:
        """Store the chosen organ (empty for all organs)."""
        self._parameterNode.organ = self.ui.organComboBox.itemData(index) or ""

    # -- Attack panels, built from the engine's catalogue -------------------------------------------

    def _createAttackPanels(self) -> None:
        """One `AttackPanel` per attack of the engine's catalogue, in its order; the attack list is filled from
        the same catalogue. Without the engine nothing is made, and Apply says why."""
        try:
            catalogue = self.logic.catalogue()
        except ValueError as error:
            logging.error("AdvSegAttack: %s", error)
            return
        for attack in catalogue.attacks:
            self.ui.attackComboBox.addItem(attack.label, attack.name)
            self._attackPanels[attack.name] = AttackPanel(
                attack,
                self.ui.attackParametersWidget.layout(),
                self.ui.advancedParametersWidget.layout(),
                self.onPresetActivated,
                self.onParameterEdited,
            )

    def _showAttack(self, attack) -> None:
        """Select `attack` in the list, show only its panel with the stored choice, and enable the region and
        targeting only where the attack supports them."""
        combo = self.ui.attackComboBox
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = max(combo.findData(attack.name), 0)
        combo.blockSignals(wasBlocked)
        combo.toolTip = attack.description
        for name, panel in self._attackPanels.items():
            panel.setVisible(name == attack.name)
        self._attackPanels[attack.name].show(
            advCatalogue.storedChoice(attack, self._parameterNode.attackSettings)
        )
        self.ui.regionComboBox.enabled = attack.supportsRegion
        self.ui.targetedCheckBox.enabled = attack.supportsTargeted

    def onAttackActivated(self, index) -> None:
        """Store the attack the user picked (its panel keeps its own preset and changes)."""
        self._parameterNode.attack = self.ui.attackComboBox.itemData(index) or ""

    def onPresetActivated(self, attack, preset) -> None:
        """Store the preset the user picked for `attack`; its values replace the changes of the parameters it
        sets (not when a scene is loaded: the scene keeps what was chosen)."""
        node = self._parameterNode
        node.attackSettings = advCatalogue.withPreset(node.attackSettings, attack, preset)

    def onParameterEdited(self, attack, name, value) -> None:
        """Store a value the user set (a value equal to the preset's or default is no change)."""
        node = self._parameterNode
        node.attackSettings = advCatalogue.withValue(node.attackSettings, attack, name, value)

    def onDeviceChanged(self, text) -> None:
        """The device belongs to the computer, so it is kept in the application settings."""
        if advEngine.isValidDevice(text):
            qt.QSettings().setValue(DEVICE_SETTINGS_KEY, text.strip().lower())

    def _device(self) -> str:
        text = self.ui.deviceComboBox.currentText.strip().lower()
        if not advEngine.isValidDevice(text):
            raise ValueError(_("Device {device!r} is not auto, cpu or cuda:N.").format(device=text))
        return text

    # -- Running -----------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        """Start the attack, or cancel the running one."""
        if self.logic.isRunning():
            self.logic.cancel()
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to start the attack.")):
                self._startAttack()
        except Exception:  # shown (with details) by tryWithErrorDisplay
            self.ui.progressBar.visible = False
            logging.exception("AdvSegAttack: the attack could not be started")
        finally:
            self._updateGUI()

    def _startAttack(self) -> None:
        try:
            if not self.logic.ensureDependencies():
                slicer.util.showStatusMessage(_("Attack not started: required packages are missing."), 5000)
                return
            self.ui.logTextEdit.clear()
            self._bestFraction = 0.0
            self.ui.progressBar.value = 0
            self.ui.progressBar.setFormat(_("Starting…"))
            self.ui.progressBar.visible = True
            self.logic.startFromParameterNode(self._parameterNode, device=self._device())
        except ValueError as error:
            # Bad input: one sentence, no traceback.
            self.ui.progressBar.visible = False
            slicer.util.errorDisplay(str(error), windowTitle=_("AdvSegAttack"))

    def _appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text.rstrip("\n"))

    def _onProgress(self, fraction, text: str) -> None:
        if fraction is not None:
            self._bestFraction = max(self._bestFraction, fraction)
            self.ui.progressBar.value = int(round(1000 * self._bestFraction))
        self.ui.progressBar.setFormat(f"{text} (%p%)")
        slicer.util.showStatusMessage(text, 2000)

    def _onFinished(self, result) -> None:
        """Show the results, or the engine's one-sentence error, or nothing after Cancel."""
        self.ui.progressBar.visible = False
        node = self._parameterNode
        if result.cancelled:
            slicer.util.showStatusMessage(_("Attack cancelled; the scene is unchanged."), 5000)
        elif not result.success:
            slicer.util.errorDisplay(result.message, windowTitle=_("AdvSegAttack"))
        elif node is not None:
            self.logic.storeResults(node, result.loaded)
            self.ui.resultsCollapsibleButton.collapsed = False
            slicer.util.showStatusMessage(_("Attack finished."), 5000)
            try:
                with slicer.util.tryWithErrorDisplay(_("Failed to show the compare view.")):
                    self.logic.showCompare(node)
            except Exception:  # shown by tryWithErrorDisplay
                logging.exception("AdvSegAttack: compare view")
        self._updateGUI()

    # -- Results -----------------------------------------------------------------------------------

    def onCompareButton(self) -> None:
        """Switch to the side-by-side compare layout."""
        with slicer.util.tryWithErrorDisplay(_("Failed to show the compare view."), waitCursor=True):
            self.logic.showCompare(self._parameterNode)

    def onDifferenceToggled(self, checked) -> None:
        """Add or remove the third view with the difference map."""
        self._parameterNode.showDifference = bool(checked)
        with slicer.util.tryWithErrorDisplay(_("Failed to show the difference."), waitCursor=True):
            self.logic.showCompare(self._parameterNode)

    def onExportDicomToggled(self, checked) -> None:
        """The DICOM source folder is only asked for with the DICOM format."""
        self.ui.exportDicomSourceLabel.enabled = bool(checked)
        self.ui.exportDicomSourcePathLineEdit.enabled = bool(checked)

    def onExportButton(self) -> None:
        """Write a case bundle with the engine's export (formats and PHI from the panel), or cancel it."""
        if self.logic.isExporting():
            self.logic.cancelExport()
            return
        self._bestFraction = 0.0
        formats = [name for name, widget in EXPORT_FORMAT_WIDGETS.items() if getattr(self.ui, widget).checked]
        combo = self.ui.exportPhiComboBox
        phi = combo.itemData(combo.currentIndex) or "remove"
        dicomSource = self.ui.exportDicomSourcePathLineEdit.currentPath.strip() if "dicom" in formats else ""
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(),
            _("Export case bundle to folder (an empty folder, or a sub-folder is made)"),
        )
        if not folder:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to export the case."), waitCursor=True):
                try:
                    self.ui.progressBar.value = 0
                    self.ui.progressBar.setFormat(_("Exporting…"))
                    self.ui.progressBar.visible = True
                    self.logic.exportCase(
                        self._parameterNode,
                        folder,
                        formats=formats,
                        dicomSource=dicomSource or None,
                        phi=phi,
                        waitForCompletion=False,
                    )
                except ValueError as error:  # bad input: one sentence, no traceback
                    self.ui.progressBar.visible = False
                    slicer.util.errorDisplay(str(error), windowTitle=_("AdvSegAttack"))
        except Exception:  # shown (with details) by tryWithErrorDisplay
            self.ui.progressBar.visible = False
            logging.exception("AdvSegAttack: export")
        finally:
            self._updateGUI()

    def _onExportFinished(self, result) -> None:
        self.ui.progressBar.visible = False
        if result.cancelled:
            slicer.util.showStatusMessage(_("Export cancelled; nothing was written."), 5000)
        elif not result.success:
            slicer.util.errorDisplay(result.message, windowTitle=_("AdvSegAttack"))
        else:
            slicer.util.showStatusMessage(
                _("Exported {count} files to {folder}.").format(
                    count=len(result.files), folder=result.bundle
                ),
                8000,
            )
        self._updateGUI()

    # -- Reader study ------------------------------------------------------------------------------

    def _setReaderMode(self, reading: bool) -> None:
        """Hide the attack panels while reading; only the reader section stays."""
        for name in READER_HIDDEN_PANELS:
            getattr(self.ui, name).visible = not reading
        self.ui.readerNameLineEdit.enabled = not reading
        self.ui.readerSessionPathLineEdit.enabled = not reading
        self.ui.readerStartButton.visible = not reading
        self.ui.readerStopButton.visible = reading
        self.ui.readerAnswerWidget.visible = reading
        if reading:
            self.ui.readerCollapsibleButton.collapsed = False
        else:
            self.ui.readerStatusLabel.text = ""
            self._updateGUI()

    def _readerAction(self, action):
        """Run a reader-mode action; a bad input or altered session is shown as its one sentence.

        :return: (True, result) or (False, None) after showing the error.
        """
        try:
            return True, action()
        except ValueError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("Reader study"))
        except Exception as error:
            logging.exception("AdvSegAttack: reader mode")
            slicer.util.errorDisplay(
                _("The reader mode failed: {error}").format(error=error), windowTitle=_("Reader study")
            )
        return False, None

    def onReaderStartButton(self) -> None:
        """Open the session for this reader and show the first unanswered case (after closing the scene)."""
        name = self.ui.readerNameLineEdit.text.strip()
        folder = self.ui.readerSessionPathLineEdit.currentPath.strip()
        if self.readerLogic.sceneHasData() and not slicer.util.confirmOkCancelDisplay(
            _(
                "The reader mode closes the current scene (unsaved changes are lost), so that nothing in it "
                "can give a case away. Continue?"
            ),
            windowTitle=_("Reader study"),
        ):
            return
        ok, caseId = self._readerAction(lambda: self.readerLogic.start(folder, name))
        if not ok:
            return
        settings = qt.QSettings()
        settings.setValue(READER_NAME_SETTINGS_KEY, name)
        settings.setValue(READER_SESSION_SETTINGS_KEY, folder)
        self.ui.readerOrganComboBox.clear()
        self.ui.readerOrganComboBox.addItem(_("(not given)"), "")
        for organ in self.readerLogic.organChoices():
            self.ui.readerOrganComboBox.addItem(organ, organ)
        self._setReaderMode(True)
        self._showReaderCase(caseId)

    def onReaderStopButton(self) -> None:
        """Leave the reader mode (answers are already saved; Start/Resume continues later)."""
        self.readerLogic.stop()
        self._setReaderMode(False)

    def _showReaderCase(self, caseId) -> None:
        answered, total = self.readerLogic.progress()
        self._resetReaderAnswer()
        problems = self.readerLogic.problems()
        status = " ".join(problems)
        if caseId is None:
            self.ui.readerCounterLabel.text = _("All {total} cases answered.").format(total=total)
            self.ui.readerAnswerFieldsWidget.enabled = False
            status = _("Thank you. Your answers are saved in the session folder; leave the reader mode.")
        else:
            self.ui.readerCounterLabel.text = _("Case {number} of {total}: {caseId}").format(
                number=answered + 1, total=total, caseId=caseId
            )
            self.ui.readerAnswerFieldsWidget.enabled = True
        self.ui.readerStatusLabel.text = status
        self._updateReaderNextButton()

    def _resetReaderAnswer(self) -> None:
        for button in (self.ui.readerRealRadioButton, self.ui.readerManipulatedRadioButton):
            # An auto-exclusive radio button cannot be unchecked directly.
            button.autoExclusive = False
            button.checked = False
            button.autoExclusive = True
        self.ui.readerConfidenceComboBox.currentIndex = 0
        self.ui.readerOrganComboBox.currentIndex = 0
        self.ui.readerOrganComboBox.enabled = False
        self.ui.readerCommentLineEdit.text = ""

    def onReaderVerdictToggled(self, checked) -> None:
        """An organ can only be named for "manipulated"."""
        manipulated = self.ui.readerManipulatedRadioButton.checked
        self.ui.readerOrganComboBox.enabled = manipulated
        if not manipulated:
            self.ui.readerOrganComboBox.currentIndex = 0
        self._updateReaderNextButton()

    def onReaderConfidenceChanged(self, index) -> None:
        self._updateReaderNextButton()

    def _updateReaderNextButton(self) -> None:
        """Next is enabled once a verdict and a confidence are given."""
        answered = self.ui.readerRealRadioButton.checked or self.ui.readerManipulatedRadioButton.checked
        confident = self.ui.readerConfidenceComboBox.currentIndex > 0
        self.ui.readerNextButton.enabled = bool(self.readerLogic.caseId() and answered and confident)

    def onReaderNextButton(self) -> None:
        """Save the answer (on disk before anything else happens), then show the next case."""
        combo = self.ui.readerConfidenceComboBox
        organCombo = self.ui.readerOrganComboBox
        verdict = "manipulated" if self.ui.readerManipulatedRadioButton.checked else "real"
        ok, caseId = self._readerAction(
            lambda: self.readerLogic.answer(
                verdict,
                int(combo.itemData(combo.currentIndex)),
                comment=self.ui.readerCommentLineEdit.text,
                organ=organCombo.itemData(organCombo.currentIndex) or None,
            )
        )
        if ok:
            self._showReaderCase(caseId)
        else:  # nothing saved (the case stays), or saved but the next case could not be shown
            self._updateReaderNextButton()


#
# AdvSegAttackLogic
#


def engineRoot():
    """Folder holding the engine package ``AdvSegAttackLib`` (installed or source checkout)."""
    return advEngine.findEngineRoot(MODULE_DIR)


def ensureEngineImportable() -> None:
    """Make ``import AdvSegAttackLib`` work in this process (needed for a source checkout).

    The folder is appended to ``sys.path``, so that it never shadows a package Slicer already finds (an
    installed extension's folder is on the path already).
    """
    root = engineRoot()
    if root is None:
        raise ValueError(
            _("The AdvSegAttackLib engine was not found next to the module; reinstall the extension.")
        )
    if str(root) not in sys.path:
        sys.path.append(str(root))


class AttackResult:
    """How a run ended: ``success`` with ``loaded`` nodes, ``cancelled``, or failed with ``message``."""

    def __init__(self, success=False, cancelled=False, message="", loaded=None):
        self.success = success
        self.cancelled = cancelled
        self.message = message
        self.loaded = loaded


class ExportResult:
    """How an export ended: ``success`` with the ``bundle`` folder and its ``files``, ``cancelled``, or
    failed with ``message``."""

    def __init__(self, success=False, cancelled=False, message="", bundle="", files=None):
        self.success = success
        self.cancelled = cancelled
        self.message = message
        self.bundle = bundle
        self.files = list(files or [])


class EngineProcess:
    """The engine in a child process (`qt.QProcess`): output goes to an `EngineRun` (Qt-free, in
    `AdvSegAttackSceneLib.process`), Cancel kills the whole process tree, and ``completed(outcome)`` is
    called once at the end; its return value becomes ``result``.

    Used for the attack and for the export alike.
    """

    def __init__(self, run, completed):
        self.run = run
        self.completed = completed
        self.result = None
        self.process = None

    def isRunning(self) -> bool:
        return not self.run.finished

    def start(self) -> None:
        """Start the process (returns at once)."""
        launch = self.run.launch
        process = qt.QProcess()
        process.setProcessChannelMode(qt.QProcess.SeparateChannels)
        environment = qt.QProcessEnvironment()
        for name, value in launch.environment.items():
            environment.insert(name, value)
        process.setProcessEnvironment(environment)
        process.setWorkingDirectory(launch.workingDirectory)
        process.readyReadStandardOutput.connect(self._readStdout)
        process.readyReadStandardError.connect(self._readStderr)
        process.finished.connect(self._onFinished)
        process.errorOccurred.connect(self._onError)
        self.process = process
        process.start(launch.program, launch.arguments)

    def waitForFinished(self):
        """Block until the process has ended; return ``result``."""
        if self.process is not None and not self.run.finished:
            self.process.waitForFinished(-1)
        self._onFinished()
        return self.result

    def cancel(self) -> None:
        """Kill the process and its children (``PythonSlicer`` is a launcher: the engine is its child)."""
        if self.run.finished:
            return
        self.run.cancelled = True
        process = self.process
        if process is not None and process.state() != qt.QProcess.NotRunning:
            try:
                advProcess.killProcessTree(int(process.processId()))
            except ImportError:  # no psutil: the engine's watchdog ends it once the launcher is gone
                logging.warning("AdvSegAttack: psutil is missing; only the launcher is killed.")
                process.kill()
            process.waitForFinished(5000)
        self._onFinished()

    def _readStdout(self) -> None:
        self.run.feedStdout(bytes(self.process.readAllStandardOutput().data()))

    def _readStderr(self) -> None:
        self.run.feedStderr(bytes(self.process.readAllStandardError().data()))

    def _onError(self, error) -> None:
        if error == qt.QProcess.FailedToStart and not self.run.finished:
            self.run.failedToStart(
                _("Could not start {program}; is this a complete Slicer installation?").format(
                    program=self.run.launch.program
                )
            )
            self._complete()

    def _onFinished(self, *args) -> None:
        if self.run.finished:
            return
        if self.process is not None:
            self._readStdout()
            self._readStderr()
        crashed = self.process is None or self.process.exitStatus() == qt.QProcess.CrashExit
        self.run.finish(self.process.exitCode() if self.process is not None else -1, crashed)
        self._complete()

    def _complete(self) -> None:
        if self.result is None:
            self.result = self.completed(self.run.outcome)


class AdvSegAttackLogic(ScriptedLoadableModuleLogic):
    """Runs attacks and exports through the engine's CLI in a child process and loads the results.

    Usable without the widget (batch mode, tests): set ``logCallback``, ``progressCallback``,
    ``finishedCallback`` and ``exportFinishedCallback`` if needed, or call :meth:`process` which waits
    for the result.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None
        self.progressCallback = None
        self.finishedCallback = None
        self.exportFinishedCallback = None
        self._attackProcess = None
        self._exportProcess = None
        self._catalogue = None

    def getParameterNode(self):
        if UNSUPPORTED_REASON is not None:
            raise ValueError(UNSUPPORTED_REASON)
        return AdvSegAttackParameterNode(super().getParameterNode())

    # -- Engine, attacks, model and dependencies ---------------------------------------------------

    def catalogue(self):
        """The engine's attack catalogue (`advCatalogue.AttackCatalogue`; read once, without torch).

        :raises ValueError: if the engine is not found next to the module.
        """
        if self._catalogue is None:
            ensureEngineImportable()
            self._catalogue = advCatalogue.loadCatalogue()
        return self._catalogue

    def attackSpec(self, parameterNode):
        """The catalogue entry of the parameter node's attack (the first attack if none is stored yet)."""
        return self.catalogue().storedAttack(parameterNode.attack)

    @staticmethod
    def bundledModels():
        """(name, label) of every bundled model (the folders of Resources/Models with a model card)."""
        return advEngine.bundledModels(engineRoot())

    def cardLabels(self, model, nnunet=None):
        """Organ names and colours of a model (empty lists if unknown); `nnunet`: an `advEngine.NnunetChoice`
        (an nnU-Net folder's labels are its chosen configuration's)."""
        try:
            ensureEngineImportable()
        except ValueError:
            return [], []
        return advEngine.cardLabels(model, engineRoot(), nnunet)

    @staticmethod
    def nnunetOptions(parameterNode):
        """What the nnU-Net group offers for the chosen model (`advEngine.NnunetOptions`), or None when the
        model is no nnU-Net v2 results folder (or the engine is not found)."""
        if parameterNode.model != MODEL_FROM_FILE or not parameterNode.modelPath.strip():
            return None
        try:
            ensureEngineImportable()
        except ValueError:
            return None
        return advEngine.nnunetOptions(
            parameterNode.modelPath.strip(), parameterNode.nnunetConfiguration, parameterNode.nnunetCheckpoint
        )

    def nnunetChoice(self, parameterNode):
        """The nnU-Net choices to send (`advEngine.NnunetChoice`; the engine's defaults for any other model)."""
        return advEngine.nnunetChoice(
            self.nnunetOptions(parameterNode),
            parameterNode.nnunetConfiguration,
            parameterNode.nnunetFolds,
            parameterNode.nnunetCheckpoint,
            parameterNode.nnunetTta,
        )

    @staticmethod
    def modelReference(parameterNode) -> str:
        """What to pass as ``--model``: a bundled model's name or the chosen file or folder.

        :raises ValueError: if "From file…" is chosen without an existing path.
        """
        if parameterNode.model != MODEL_FROM_FILE:
            return parameterNode.model or DEFAULT_MODEL
        path = parameterNode.modelPath.strip()
        if not path or not os.path.exists(path):
            raise ValueError(
                _("Choose a model card, checkpoint, MONAI bundle or nnU-Net results folder that exists.")
            )
        return path

    def whyCannotRun(self, parameterNode):
        """None if Apply can start, else the reason (for the tooltip)."""
        if UNSUPPORTED_REASON is not None:
            return UNSUPPORTED_REASON
        if not parameterNode.inputVolume:
            return _("Select an input CT volume.")
        try:
            self.modelReference(parameterNode)
            attack = self.attackSpec(parameterNode)
        except ValueError as error:
            return str(error)
        problem = advEngine.nnunetProblem(
            self.nnunetOptions(parameterNode), parameterNode.nnunetFolds, parameterNode.nnunetCheckpoint
        )
        if problem:
            return problem
        return attack.whyNotReady(parameterNode.organ, parameterNode.region.value)

    @staticmethod
    def requirementsPath() -> str:
        """The engine's packages beyond torch and what Slicer ships."""
        return os.path.join(MODULE_DIR, "Resources", "requirements.txt")

    @staticmethod
    def slicerConstraintsPath() -> str:
        """The packages Slicer 5.10 ships, with its versions (the names are held at this Slicer's versions)."""
        return os.path.join(MODULE_DIR, "Resources", advDependencies.SLICER_CONSTRAINTS_FILE)

    def ensureDependencies(self) -> bool:
        """Install what the engine needs, after one consent dialog; never called at start-up.

        torch comes from the PyTorch extension's PyTorch Utils (the right CUDA build for the driver). The
        packages of Resources/requirements.txt are installed by pip with the installed torch and every
        package Slicer ships pinned at their installed versions (read from metadata; torch is not imported
        before the install). The dialog lists everything: with torch already installed, the exact versions
        pip will install (from a dry run); without it, torch and the requirements, whose versions pip then
        chooses to fit that torch.

        :return: False if the user declined.
        :raises ValueError: one sentence when the packages cannot be installed alongside this torch.
        """
        torchVersion = advDependencies.installedVersion("torch")
        if torchVersion is not None and advDependencies.missingRequirements(
            ["torch" + advDependencies.TORCH_REQUIREMENT]
        ):
            raise ValueError(
                _(
                    "The installed PyTorch {version} is older than {requirement}; uninstall it in the PyTorch Utils "
                    "module, restart and press Apply again."
                ).format(version=torchVersion, requirement=advDependencies.TORCH_REQUIREMENT)
            )
        missing = advDependencies.missingRequirements(
            advDependencies.readRequirements(self.requirementsPath())
        )
        if torchVersion is not None and not missing:
            return True
        torchUtils = None
        if torchVersion is None:
            try:
                import PyTorchUtils
            except ModuleNotFoundError as error:
                raise ValueError(
                    _(
                        "This module needs the PyTorch extension; install it from the Extensions Manager and restart."
                    )
                ) from error
            torchUtils = PyTorchUtils.PyTorchUtilsLogic()
        slicerPackages = advDependencies.readPins(self.slicerConstraintsPath())
        pins = advDependencies.installedPins(slicerPackages)
        workDir = tempfile.mkdtemp(prefix="AdvSegAttack-pip-", dir=slicer.app.temporaryPath)
        try:
            constraints = advDependencies.writeConstraints(os.path.join(workDir, "constraints.txt"), pins)
            if torchUtils is None:
                installing = [
                    f"{name} {version}" for name, version in self._installPlan(missing, constraints, workDir)
                ]
            else:
                installing = [advDependencies.TORCH_FROM_PYTORCH_UTILS, *missing]
            if not slicer.util.confirmOkCancelDisplay(
                advDependencies.consentText(installing, pins), windowTitle=_("Install Python packages")
            ):
                return False
            if torchUtils is not None:
                torch = torchUtils.installTorch(
                    askConfirmation=False, torchVersionRequirement=advDependencies.TORCH_REQUIREMENT
                )
                if torch is None:
                    return False
                pins = advDependencies.installedPins(slicerPackages)  # now with the torch just installed
                constraints = advDependencies.writeConstraints(constraints, pins)
            if missing:
                self._log(
                    "pip install " + " ".join(advDependencies.pipInstallArguments(missing, constraints))
                )
                slicer.util.pip_install(advDependencies.pipInstallArguments(missing, constraints))
        finally:
            shutil.rmtree(workDir, ignore_errors=True)
        stillMissing = advDependencies.missingRequirements(missing)
        if stillMissing:
            raise RuntimeError(
                _("Installing {packages} failed; restart Slicer and try again.").format(
                    packages=", ".join(stillMissing)
                )
            )
        return True

    @staticmethod
    def _installPlan(missing, constraints, workDir) -> list:
        """What pip would install (a dry run with the constraints), as (name, version) pairs.

        :raises ValueError: with pip's own sentence when no versions fit the installed torch and Slicer.
        """
        try:
            with slicer.util.WaitCursor():
                return advDependencies.resolveInstall(
                    missing, constraints, [advEngine.pythonSlicerExecutable()], workDir
                )
        except RuntimeError as error:
            raise ValueError(
                _(
                    "pip found no versions of {packages} that work with the installed torch and Slicer's own "
                    "packages (or could not reach the package index): {error}"
                ).format(packages=", ".join(missing), error=error)
            ) from None

    def _log(self, text: str) -> None:
        logging.info(text)
        if self.logCallback:
            self.logCallback(text)

    def _engineRun(self, task, arguments, workingDirectory, onEvent):
        """An `EngineRun` for ``PythonSlicer <arguments>`` in `workingDirectory`, stopped by the engine's
        watchdog if this Slicer process goes away."""
        launch = advProcess.engineLaunch(arguments, engineRoot(), workingDirectory, parentPid=os.getpid())
        self._log(launch.commandLine())
        return advProcess.EngineRun(task, launch, onEvent=onEvent, onLog=self._log)

    # -- Running -------------------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self._attackProcess is not None and self._attackProcess.isRunning()

    def startFromParameterNode(self, parameterNode, device="auto", waitForCompletion=False):
        """Start an attack with the settings of a parameter node (see :meth:`startAttack`)."""
        problem = self.whyCannotRun(parameterNode)
        if problem:
            raise ValueError(problem)
        attack = self.attackSpec(parameterNode)
        choice = advCatalogue.storedChoice(attack, parameterNode.attackSettings)
        return self.startAttack(
            parameterNode.inputVolume,
            self.modelReference(parameterNode),
            attack.name,
            parameters=choice.changed,
            preset=choice.preset,
            reference=parameterNode.referenceSegmentation,
            organ=parameterNode.organ,
            region=parameterNode.region.value,
            dilationMm=parameterNode.dilationMm,
            targeted=parameterNode.targeted,
            seed=parameterNode.seed,
            device=device,
            nnunet=self.nnunetChoice(parameterNode),
            waitForCompletion=waitForCompletion,
        )

    def startAttack(
        self,
        inputVolume,
        model,
        attack,
        parameters=None,
        reference=None,
        organ="",
        region="whole",
        dilationMm=None,
        targeted=False,
        seed=0,
        device="auto",
        preset=None,
        nnunet=None,
        waitForCompletion=False,
    ):
        """Run ``PythonSlicer -m AdvSegAttackLib.cli attack`` on a volume in a child process.

        :param inputVolume: clean CT volume node (written to a temporary NRRD; never modified).
        :param model: bundled model name or path of a card, checkpoint or MONAI bundle.
        :param attack: engine attack name (one of ``catalogue().names``; ``advseg attacks`` lists them).
        :param parameters: values that differ from the preset (or defaults), by the catalogue's parameter
          names (the engine's config fields, e.g. ``block_size``); only these are passed as flags.
        :param preset: the attack's preset; None: the catalogue's default preset (if the attack has presets).
        :param reference: optional ground-truth segmentation or labelmap node.
        :param organ: organ name of the model card, or "" for all organs.
        :param region: whole, organ or bbox.
        :param dilationMm: margin around the organ for organ/bbox (mm); None keeps the engine's default.
        :param device: auto, cpu or cuda:N.
        :param nnunet: an nnU-Net folder's configuration, folds, checkpoint and mirroring
          (`advEngine.NnunetChoice`); None: the engine's defaults.
        :param waitForCompletion: block until the process ends (batch use, tests) and return the
          `AttackResult`; otherwise return None at once and report through ``finishedCallback``.
        """
        if UNSUPPORTED_REASON is not None:
            raise ValueError(UNSUPPORTED_REASON)
        if self.isRunning():
            raise ValueError(_("An attack is already running; cancel it first."))
        if inputVolume is None or inputVolume.GetImageData() is None:
            raise ValueError(_("Select an input CT volume with image data."))
        attackSpec = self.catalogue().attack(attack)
        choice = advCatalogue.AttackChoice(
            attackSpec.defaultPreset if preset is None else preset, dict(parameters or {})
        )
        nnunet = nnunet or advEngine.NnunetChoice()
        labelNames, labelColors = advEngine.cardLabels(model, engineRoot(), nnunet)
        workDir = tempfile.mkdtemp(prefix="AdvSegAttack-", dir=slicer.app.temporaryPath)
        try:
            imagePath = os.path.join(workDir, "input.nrrd")
            advScene.writeVolumeNode(inputVolume, imagePath, compress=False)
            labelPath = None
            if reference is not None:
                if reference.IsA("vtkMRMLSegmentationNode") and not labelNames:
                    raise ValueError(
                        _("The model's organ names are unknown, so the reference segments cannot be matched.")
                    )
                labelPath = os.path.join(workDir, "reference.nii.gz")
                advScene.writeReferenceLabelmap(
                    slicer.mrmlScene, reference, inputVolume, labelNames, labelPath
                )
            request = advEngine.AttackRequest(
                image=imagePath,
                out=os.path.join(workDir, "case"),
                model=str(model),
                attack=attackSpec,
                choice=choice,
                label=labelPath,
                organs=(organ,) if organ else (),
                region=region,
                dilationMm=dilationMm if region != "whole" else None,
                targeted=targeted,
                seed=seed,
                device=device,
                nnunet=nnunet,
            )
            run = self._engineRun("attack", request.arguments(), workDir, self._onAttackEvent)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        completed = functools.partial(
            self._attackCompleted, workDir, inputVolume, attack, labelNames, labelColors, request.out
        )
        self._attackProcess = EngineProcess(run, completed)
        self._attackProcess.start()
        return self._attackProcess.waitForFinished() if waitForCompletion else None

    def _onAttackEvent(self, event) -> None:
        if event.kind == advProgress.PROGRESS:
            if self.progressCallback:
                self.progressCallback(event.fraction, event.describe())
        elif event.kind == advProgress.DONE:
            if self.progressCallback:
                self.progressCallback(1.0, _("Loading results"))
        elif event.kind == advProgress.ERROR:
            self._log(f"Error: {event.message}")

    def _attackCompleted(self, workDir, inputVolume, attack, labelNames, labelColors, outDir, outcome):
        """Turn the end of the attack process into an `AttackResult` (loading the results on success)."""
        if outcome.cancelled:
            result = AttackResult(cancelled=True, message=_("Cancelled."))
        elif not outcome.succeeded:
            result = AttackResult(message=outcome.message)
        else:
            try:
                loaded = advScene.loadCase(
                    slicer.mrmlScene,
                    outcome.out or outDir,
                    inputVolume,
                    attack=attack,
                    labelNames=labelNames or None,
                    labelColors=labelColors or None,
                )
                result = AttackResult(success=True, loaded=loaded)
            except Exception as error:  # the engine's InputError and our RuntimeError carry one sentence
                logging.exception("AdvSegAttack: loading the results failed")
                result = AttackResult(message=str(error))
        for name in ("input.nrrd", "reference.nii.gz"):
            path = os.path.join(workDir, name)
            if os.path.exists(path):
                os.remove(path)
        if not result.success:  # a killed engine may leave its staging folder here: remove everything
            shutil.rmtree(workDir, ignore_errors=True)
        if self.finishedCallback:
            self.finishedCallback(result)
        return result

    def cancel(self) -> None:
        """Kill the running attack (the whole process tree); nothing is loaded into the scene."""
        if self._attackProcess is not None:
            self._attackProcess.cancel()

    def process(self, inputVolume, model, attack, **kwargs):
        """Run an attack and wait for it (batch mode); return the `LoadedCase`.

        :raises RuntimeError: with the engine's sentence if the attack failed.
        """
        result = self.startAttack(inputVolume, model, attack, waitForCompletion=True, **kwargs)
        if not result.success:
            raise RuntimeError(result.message)
        return result.loaded

    # -- Results -------------------------------------------------------------------------------------

    @staticmethod
    def storeResults(parameterNode, loaded) -> None:
        """Remember the nodes of a finished run in the parameter node."""
        wasModifying = parameterNode.StartModify()
        parameterNode.adversarialVolume = loaded.adversarialVolume
        parameterNode.cleanSegmentation = loaded.cleanSegmentation
        parameterNode.attackedSegmentation = loaded.attackedSegmentation
        parameterNode.metricsTable = loaded.metricsTable
        parameterNode.perturbationTable = loaded.perturbationTable
        parameterNode.differenceVolume = None
        parameterNode.EndModify(wasModifying)

    def showCompare(self, parameterNode) -> None:
        """Side-by-side linked views of clean and attacked (plus the difference if asked for)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or not parameterNode.adversarialVolume or not parameterNode.inputVolume:
            return
        difference = None
        if parameterNode.showDifference:
            if not parameterNode.differenceVolume:
                difference = advScene.createDifferenceVolume(
                    slicer.mrmlScene,
                    parameterNode.adversarialVolume,
                    parameterNode.inputVolume,
                    f"{parameterNode.inputVolume.GetName()} difference (attacked − clean)",
                )
                advScene.placeBesideInput(slicer.mrmlScene, [difference], parameterNode.inputVolume)
                parameterNode.differenceVolume = difference
            difference = parameterNode.differenceVolume
        layoutNode = layoutManager.layoutLogic().GetLayoutNode()
        advScene.registerCompareLayouts(layoutNode)
        layoutManager.setLayout(
            advScene.COMPARE_WITH_DIFFERENCE_LAYOUT_ID if difference else advScene.COMPARE_LAYOUT_ID
        )
        views = advScene.showCompareLayout(
            slicer.mrmlScene,
            layoutNode,
            parameterNode.inputVolume,
            parameterNode.adversarialVolume,
            parameterNode.cleanSegmentation,
            parameterNode.attackedSegmentation,
            difference,
        )
        for viewName in views:
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget:
                sliceWidget.sliceLogic().FitSliceToAll()

    # -- Export --------------------------------------------------------------------------------------

    @staticmethod
    def bundleFolder(folder, caseName) -> str:
        """The bundle folder for an export to `folder`: `folder` itself if it is new or empty, else a new
        sub-folder ``<caseName>-bundle`` (``-2``, ``-3``, … if taken)."""
        if not os.path.exists(folder) or (os.path.isdir(folder) and not os.listdir(folder)):
            return folder
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", caseName).strip("._") or "case"
        candidate, number = os.path.join(folder, f"{safe}-bundle"), 2
        while os.path.exists(candidate):
            candidate, number = os.path.join(folder, f"{safe}-bundle-{number}"), number + 1
        return candidate

    @staticmethod
    def exportArguments(caseFolder, bundle, formats=("nifti",), dicomSource=None, phi="remove") -> list:
        """Arguments after ``PythonSlicer`` for the engine's export (a list, never a shell string)."""
        arguments = ["-m", advEngine.ENGINE_CLI_MODULE, "export", str(caseFolder), "--out", str(bundle)]
        arguments += ["--format", *formats, "--phi", phi]
        if dicomSource:
            arguments += ["--dicom-source", str(dicomSource)]
        return arguments + ["--progress", "jsonl"]

    @staticmethod
    def dicomSourceFolder(volumeNode):
        """The folder of the DICOM files a volume was loaded from (Slicer's DICOM database), or None."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split() if volumeNode else []
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None or not database.isOpen:
            return None
        folders = {os.path.dirname(database.fileForInstance(uid) or "") for uid in uids}
        return folders.pop() if len(folders) == 1 and "" not in folders else None

    def isExporting(self) -> bool:
        return self._exportProcess is not None and self._exportProcess.isRunning()

    def exportCase(
        self,
        parameterNode,
        folder,
        formats=("nifti",),
        dicomSource=None,
        phi="remove",
        waitForCompletion=True,
    ):
        """Export the current result as a case bundle with the engine's ``export`` (in a child process).

        :param folder: an empty or new folder becomes the bundle; otherwise a new sub-folder is made in it
          (`bundleFolder`).
        :param formats: any of "nifti", "nrrd", "dicom" (the attacked CT as a DICOM series made from the
          source series).
        :param dicomSource: the DICOM series the input was loaded from; by default the folder of the input
          volume's files in Slicer's DICOM database, if any.
        :param phi: "remove" (de-identified bundle) or "keep".
        :param waitForCompletion: block until done and return the `ExportResult`; otherwise return None and
          report through ``exportFinishedCallback``.

        If the case folder of the result is gone (the scene was saved and reopened), the volume and the
        predictions are written from the scene instead (NIfTI/.seg.nrrd, no metrics or provenance).
        """
        if self.isExporting():
            raise ValueError(_("An export is already running; cancel it first."))
        adversarial = parameterNode.adversarialVolume
        if not adversarial:
            raise ValueError(_("There is no result to export; run an attack first."))
        caseFolder = adversarial.GetAttribute(advScene.CASE_FOLDER_ATTRIBUTE) or ""
        bundle = self.bundleFolder(folder, adversarial.GetName())
        if not (caseFolder and os.path.isdir(caseFolder)):
            result = ExportResult(
                success=True, bundle=bundle, files=self._writeFromScene(parameterNode, bundle)
            )
            self._log(
                f"The case folder {caseFolder!r} no longer exists; wrote the volume and predictions from the "
                "scene (metrics.json and provenance.json are not available)."
            )
            if self.exportFinishedCallback:
                self.exportFinishedCallback(result)
            return result if waitForCompletion else None
        if "dicom" in formats and not dicomSource:
            dicomSource = self.dicomSourceFolder(parameterNode.inputVolume)
        ensureEngineImportable()
        arguments = self.exportArguments(caseFolder, bundle, formats, dicomSource, phi)
        run = self._engineRun("export", arguments, caseFolder, self._onExportEvent)
        self._exportProcess = EngineProcess(run, functools.partial(self._exportCompleted, bundle))
        self._exportProcess.start()
        return self._exportProcess.waitForFinished() if waitForCompletion else None

    def _writeFromScene(self, parameterNode, folder) -> list:
        written = [
            advScene.writeVolumeNode(
                parameterNode.adversarialVolume, os.path.join(folder, "adversarial.nii.gz")
            )
        ]
        for node, name in (
            (parameterNode.cleanSegmentation, "pred_clean.seg.nrrd"),
            (parameterNode.attackedSegmentation, "pred_adv.seg.nrrd"),
        ):
            if node:
                written.append(advScene.writeSegmentationNode(node, os.path.join(folder, name)))
        return written

    def _onExportEvent(self, event) -> None:
        if event.kind == advProgress.PROGRESS:
            if self.progressCallback:
                self.progressCallback(event.stageFraction, _("Exporting"))
        elif event.kind == advProgress.ERROR:
            self._log(f"Error: {event.message}")

    def _exportCompleted(self, bundle, outcome):
        """Turn the end of the export process into an `ExportResult`."""
        if outcome.cancelled:
            # A killed export leaves its hidden staging folder beside the bundle; nothing else.
            parent, name = os.path.split(os.path.normpath(bundle))
            for staging in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.export-*")):
                shutil.rmtree(staging, ignore_errors=True)
            result = ExportResult(cancelled=True, message=_("Cancelled."))
        elif not outcome.succeeded:
            result = ExportResult(message=outcome.message)
        elif not os.path.isdir(bundle):
            result = ExportResult(
                message=_("The export finished but {bundle} was not written.").format(bundle=bundle)
            )
        else:
            files = sorted(
                os.path.relpath(os.path.join(root, name), bundle)
                for root, _dirs, names in os.walk(bundle)
                for name in names
            )
            result = ExportResult(success=True, bundle=bundle, files=files)
        if self.exportFinishedCallback:
            self.exportFinishedCallback(result)
        return result

    def cancelExport(self) -> None:
        """Kill the running export; its staging folder is removed and no bundle is left."""
        if self._exportProcess is not None:
            self._exportProcess.cancel()


class AdvSegAttackReaderLogic:
    """The blinded reader mode: one case of a reader session at a time, under its neutral ID only.

    The session (order, answers, resume) is the engine's `AdvSegAttackLib.studies.reader_session.ReaderSession`;
    the scene side is `AdvSegAttackSceneLib.reader`. This class ties them to the application: it clears
    the scene, switches the layout and the slice-view annotations, and times each case.
    """

    def __init__(self) -> None:
        self._session = None
        self._case = None
        self._shownAt = 0.0
        self._annotationsBefore = None

    @staticmethod
    def sceneHasData() -> bool:
        """True if the scene holds any data node (volume, segmentation, table, markup, …)."""
        return advReader.sceneHasUserData(slicer.mrmlScene)

    def isReading(self) -> bool:
        return self._session is not None

    def caseId(self):
        """Neutral ID of the case on screen, or None."""
        return self._case.caseId if self._case is not None else None

    def progress(self):
        """(answered, total) cases of the open session."""
        return self._session.progress if self._session is not None else (0, 0)

    def problems(self) -> list:
        """Damaged lines found in the reader's ratings file when the session was opened (ignored)."""
        return list(self._session.problems) if self._session is not None else []

    @staticmethod
    def organChoices() -> list:
        ensureEngineImportable()
        from AdvSegAttackLib.studies.reader_session import ORGAN_CHOICES

        return list(ORGAN_CHOICES)

    def start(self, sessionDir, reader, clearScene=True):
        """Open a blinded session for `reader` and show the first unanswered case (resume).

        The session is checked first (an altered session, unknown reader or wrong folder raises and leaves
        the scene alone); then the scene is cleared, so nothing from before can give a case away, the
        layout becomes the four-up view and the slice-view corner annotations are switched off.

        :return: the neutral ID of the case shown, or None if the reader has answered every case.
        :raises ValueError: one sentence for a bad folder, reader or altered session.
        """
        if UNSUPPORTED_REASON is not None:
            raise ValueError(UNSUPPORTED_REASON)
        ensureEngineImportable()
        from AdvSegAttackLib.errors import InputError
        from AdvSegAttackLib.studies.reader_session import ReaderSession

        self.stop()
        if not str(sessionDir).strip():
            raise ValueError(_("Choose the session folder the coordinator gave you."))
        if not str(reader).strip():
            raise ValueError(_("Enter your reader name (for example reader1)."))
        try:
            session = ReaderSession.open(sessionDir, reader)
        except InputError as error:
            raise ValueError(str(error)) from None
        if clearScene:
            slicer.mrmlScene.Clear(0)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self._annotationsBefore = self._setSliceAnnotations(False)
        self._session = session
        try:
            return self.showNextCase()
        except Exception:
            self.stop()
            raise

    def showNextCase(self):
        """Remove the case on screen and show the first unanswered one; None when all are answered."""
        from AdvSegAttackLib.errors import InputError

        advReader.unloadReaderCase(slicer.mrmlScene, self._case)
        self._case = None
        caseId = self._session.current()
        if caseId is None:
            return None
        try:
            path = self._session.image_path(caseId)
        except InputError as error:
            raise ValueError(str(error)) from None
        self._case = advReader.loadReaderCase(slicer.mrmlScene, path, caseId)
        advReader.showReaderCase(slicer.mrmlScene, self._case)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            for viewName in layoutManager.sliceViewNames():
                layoutManager.sliceWidget(viewName).sliceLogic().FitSliceToAll()
        self._shownAt = time.monotonic()
        return caseId

    def answer(self, verdict, confidence, comment="", organ=None):
        """Save the answer to the case on screen (flushed to disk), then show the next case.

        Time on case is measured from when the case was shown to this call, in seconds.

        :param verdict: "real" or "manipulated".
        :param confidence: 1 (guessing) to 5 (certain).
        :param organ: for "manipulated" only, optional.
        :return: the neutral ID of the next case, or None when every case is answered.
        :raises ValueError: one sentence for an invalid answer (nothing is saved then).
        """
        from AdvSegAttackLib.errors import InputError

        if self._session is None or self._case is None:
            raise ValueError(_("No case is shown; start or resume the reader session first."))
        seconds = round(time.monotonic() - self._shownAt, 3)
        try:
            self._session.answer(
                self._case.caseId,
                verdict,
                confidence,
                comment=comment,
                organ=organ,
                seconds_on_case=seconds,
            )
        except InputError as error:
            raise ValueError(str(error)) from None
        return self.showNextCase()

    def stop(self) -> None:
        """Leave the reader mode: remove the case on screen and restore the slice annotations."""
        if self._case is not None and not slicer.mrmlScene.IsClosing():  # a closing scene removes it
            advReader.unloadReaderCase(slicer.mrmlScene, self._case)
        self._case = None
        self._session = None
        if self._annotationsBefore is not None:
            self._setSliceAnnotations(self._annotationsBefore)
            self._annotationsBefore = None

    @staticmethod
    def _setSliceAnnotations(enabled):
        """Switch the slice views' corner annotations (node names, patient data; drawn by the DataProbe
        module's ``sliceAnnotations``) on or off; returns the previous state, or None without DataProbe
        (for example with ``--no-main-window``)."""
        dataProbe = getattr(slicer.modules, "DataProbeInstance", None)
        annotations = getattr(getattr(dataProbe, "infoWidget", None), "sliceAnnotations", None)
        if annotations is None:
            return None
        before = bool(annotations.sliceViewAnnotationsEnabled)
        annotations.sliceViewAnnotationsEnabled = bool(enabled)
        annotations.updateSliceViewFromGUI()
        return before


#
# AdvSegAttackTest
#


class AdvSegAttackTest(ScriptedLoadableModuleTest):
    """Self-test: runs in Slicer (Reload and Test, or ctest ``py_AdvSegAttack``).

    The first two tests need no torch or network and run on the extension factory; the end-to-end attack
    on a phantom runs only where torch and the engine's dependencies are installed.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        if UNSUPPORTED_REASON is not None:
            self.delayDisplay(UNSUPPORTED_REASON)
            return
        self.setUp()
        self.test_ParameterNodeAndCommandLine()
        self.setUp()
        self.test_NnunetChoices()
        self.setUp()
        self.test_LoadCaseFolder()
        self.setUp()
        self.test_ReaderMode()
        self.setUp()
        self.test_AttackPhantom()
        self.setUp()
        self.test_CancelAttack()

    def test_ParameterNodeAndCommandLine(self):
        """The parameter node starts at the catalogue's first attack with nothing changed; a changed value
        survives saving and reloading the scene, and the command line is ``--preset`` plus that flag only."""
        self.delayDisplay("Parameter node and command line")
        logic = AdvSegAttackLogic()
        node = logic.getParameterNode()
        attack = logic.attackSpec(node)
        self.assertEqual(attack.name, logic.catalogue().names[0])
        untouched = advCatalogue.storedChoice(attack, node.attackSettings)
        self.assertEqual((untouched.preset, untouched.changed), (attack.defaultPreset, {}))
        parameter = next(p for p in attack.editableParameters() if p.widgetKind in ("double", "int"))
        value = parameter.widgetRange[1]
        node.attack = attack.name
        node.attackSettings = advCatalogue.withValue(node.attackSettings, attack, parameter.name, value)
        stored = node.attackSettings
        sceneDir = tempfile.mkdtemp(prefix="AdvSegAttackScene-", dir=slicer.app.temporaryPath)
        try:
            self.assertTrue(slicer.util.saveScene(os.path.join(sceneDir, "scene.mrml")))
            node.attackSettings = ""
            slicer.util.loadScene(os.path.join(sceneDir, "scene.mrml"))
        finally:
            shutil.rmtree(sceneDir, ignore_errors=True)
        node = logic.getParameterNode()
        self.assertEqual(node.attackSettings, stored)
        choice = advCatalogue.storedChoice(logic.attackSpec(node), node.attackSettings)
        self.assertEqual(choice.changed, {parameter.name: parameter.normalise(value)})
        request = advEngine.AttackRequest(
            image="in.nrrd", out="out", model=logic.modelReference(node), attack=attack, choice=choice
        )
        arguments = request.arguments()
        parameterFlags = {p.flag for p in attack.parameters} | {
            "--no-" + p.flag[2:] for p in attack.parameters
        }
        self.assertEqual([a for a in arguments if a in parameterFlags], [parameter.flag])
        self.assertEqual("--preset" in arguments, attack.defaultPreset is not None)

        self.assertIsNotNone(logic.whyCannotRun(node))  # no input volume
        node.inputVolume = slicer.util.addVolumeFromArray(self._ctArray(), name="CT")
        self.assertEqual(logic.whyCannotRun(node) is None, not attack.needsOrgan)
        node.region = RegionChoice.ORGAN
        self.assertEqual(logic.whyCannotRun(node) is None, not (attack.needsOrgan or attack.supportsRegion))
        self.assertIsNotNone(engineRoot())
        self.delayDisplay("Test passed")

    def test_NnunetChoices(self):
        """An nnU-Net dataset folder with two configurations: Apply waits for a configuration, the folds and the
        checkpoint are checked against the folder, the choices survive saving and reloading the scene, and only
        the ones that differ from the engine's defaults become flags."""
        self.delayDisplay("nnU-Net choices")
        logic = AdvSegAttackLogic()
        node = logic.getParameterNode()
        node.inputVolume = slicer.util.addVolumeFromArray(self._ctArray(), name="CT")
        self.assertIsNone(logic.nnunetOptions(node))  # a bundled model
        self.assertEqual(logic.nnunetChoice(node).arguments(), [])
        rootDir = tempfile.mkdtemp(prefix="AdvSegAttack-nnunet-", dir=slicer.app.temporaryPath)
        try:
            dataset = os.path.join(rootDir, "Dataset999_Test")
            for configuration, checkpoints in (
                ("3d_fullres", {"0": "final", "1": "final"}),
                ("3d_lowres", {"0": "best"}),
            ):
                folder = os.path.join(dataset, f"nnUNetTrainer__nnUNetPlans__{configuration}")
                for fold, checkpoint in checkpoints.items():
                    os.makedirs(os.path.join(folder, f"fold_{fold}"))
                    open(os.path.join(folder, f"fold_{fold}", f"checkpoint_{checkpoint}.pth"), "wb").close()
                for name in ("plans.json", "dataset.json"):
                    with open(os.path.join(folder, name), "w", encoding="utf-8") as file:
                        file.write("{}")
            node.model, node.modelPath = MODEL_FROM_FILE, dataset
            options = logic.nnunetOptions(node)
            self.assertEqual(options.configurations, ("3d_fullres", "3d_lowres"))
            self.assertIn("configuration", logic.whyCannotRun(node))
            node.nnunetConfiguration = "3d_lowres"
            self.assertIn("checkpoint_final.pth", logic.whyCannotRun(node))  # 3d_lowres has only the best one
            node.nnunetConfiguration, node.nnunetFolds, node.nnunetTta = "3d_fullres", "1", True
            expected = ["--configuration", "3d_fullres", "--folds", "1", "--tta"]
            self.assertEqual(logic.nnunetChoice(node).arguments(), expected)
            sceneDir = os.path.join(rootDir, "scene")
            os.makedirs(sceneDir)
            slicer.mrmlScene.RemoveNode(node.inputVolume)  # a .mrml file holds no voxels
            self.assertTrue(slicer.util.saveScene(os.path.join(sceneDir, "scene.mrml")))
            node.nnunetConfiguration, node.nnunetFolds, node.nnunetTta = "", "", False
            slicer.util.loadScene(os.path.join(sceneDir, "scene.mrml"))
            node = logic.getParameterNode()
            self.assertEqual(logic.nnunetChoice(node).arguments(), expected)
            node.inputVolume = slicer.util.addVolumeFromArray(
                self._ctArray(), name="CT"
            )  # a .mrml has no voxels
            node.nnunetFolds = "7"
            self.assertIn("fold_7", logic.whyCannotRun(node))
            node.model = DEFAULT_MODEL  # the stored choices are not sent for another model
            self.assertEqual(logic.nnunetChoice(node).arguments(), [])
        finally:
            shutil.rmtree(rootDir, ignore_errors=True)
        self.delayDisplay("Test passed")

    @staticmethod
    def _ctArray():
        import numpy as np

        rng = np.random.default_rng(0)
        array = rng.normal(40, 20, (12, 40, 36)).astype(np.int16)
        array[3:9, 10:30, 8:28] += 100
        return array

    def test_LoadCaseFolder(self):
        """A case folder made here is loaded with the source geometry, names, colours and metrics."""
        import json

        import numpy as np

        self.delayDisplay("Loading a case folder")
        ijkToRAS = np.array(
            [[-0.7, 0.1, 0.0, 100.5], [-0.1, -0.8, 0.0, -50.25], [0.0, 0.0, 2.5, 300.0], [0, 0, 0, 1]]
        )
        clean = self._ctArray()
        source = slicer.util.addVolumeFromArray(clean, ijkToRAS, name="CT")
        labels = np.zeros(clean.shape, np.uint8)
        labels[3:9, 10:30, 8:28] = 6
        labels[1:3, 2:8, 2:8] = 1
        caseDir = tempfile.mkdtemp(prefix="AdvSegAttackTest-", dir=slicer.app.temporaryPath)
        try:
            adversarial = slicer.util.addVolumeFromArray(clean + 2, ijkToRAS, name="adv")
            advScene.writeVolumeNode(adversarial, os.path.join(caseDir, "adversarial.nii.gz"))
            labelNames = ["background", "spleen", "a", "b", "c", "d", "liver"]
            labelColors = [
                (0, 0, 0),
                (157, 108, 162),
                (1, 1, 1),
                (2, 2, 2),
                (3, 3, 3),
                (4, 4, 4),
                (221, 130, 101),
            ]
            labelmap = slicer.util.addVolumeFromArray(
                labels, ijkToRAS, name="labels", nodeClassName="vtkMRMLLabelMapVolumeNode"
            )
            for name in ("pred_clean", "pred_adv"):
                path = os.path.join(caseDir, f"{name}.nii.gz")
                advScene.writeVolumeNode(labelmap, path)
                segmentation = advScene.readSegmentationFile(
                    slicer.mrmlScene, path, name, source, labelNames, labelColors
                )
                advScene.writeSegmentationNode(segmentation, os.path.join(caseDir, f"{name}.seg.nrrd"))
            metrics = {
                "organs": {"liver": {"label": 6, "dice_clean": 0.9, "dice_adv": 0.4}},
                "mean_dice_clean": 0.9,
                "mean_dice_adv": 0.4,
                "perturbation": {"ssim_3d": 0.95, "linf_hu": 2.0},
            }
            with open(os.path.join(caseDir, "metrics.json"), "w", encoding="utf-8") as file:
                json.dump(metrics, file)
            with open(os.path.join(caseDir, "provenance.json"), "w", encoding="utf-8") as file:
                json.dump({"attack": {"name": "saa"}}, file)
            slicer.mrmlScene.Clear()
            source = slicer.util.addVolumeFromArray(clean, ijkToRAS, name="CT")
            logic = AdvSegAttackLogic()
            ensureEngineImportable()
            loaded = advScene.loadCase(
                slicer.mrmlScene, caseDir, source, labelNames=labelNames, labelColors=labelColors
            )
            self.assertTrue(
                np.array_equal(advScene.ijkToRAS(loaded.adversarialVolume), advScene.ijkToRAS(source))
            )
            self.assertEqual(loaded.adversarialVolume.GetName(), "CT adversarial (saa)")
            segmentation = loaded.attackedSegmentation.GetSegmentation()
            names = {
                segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
            }
            self.assertEqual(names, {"spleen", "liver"})
            self.assertEqual(loaded.metricsTable.GetNumberOfRows(), 2)
            node = logic.getParameterNode()
            node.inputVolume = source
            logic.storeResults(node, loaded)
            node.showDifference = True
            logic.showCompare(node)
            if slicer.app.layoutManager():  # not with --no-main-window
                self.assertIsNotNone(node.differenceVolume)
                self.assertEqual(
                    slicer.app.layoutManager().layout, advScene.COMPARE_WITH_DIFFERENCE_LAYOUT_ID
                )
            if self._engineCommandLineWorks(logic):
                exportDir = caseDir + "-export"  # never inside the case folder: the engine refuses that
                result = logic.exportCase(node, exportDir, formats=("nifti", "nrrd"))
                self.assertTrue(result.success, result.message)
                self.assertEqual(result.bundle, exportDir)
                for name in ("adversarial.nii.gz", "adversarial.nrrd", "pred_adv.seg.nrrd", "manifest.json"):
                    self.assertIn(name, result.files)
                again = logic.exportCase(node, exportDir)  # never into a folder with files
                self.assertTrue(again.success, again.message)
                self.assertNotEqual(again.bundle, exportDir)
            else:
                self.delayDisplay("Skipping the export: the engine's command line needs torch")
        finally:
            shutil.rmtree(caseDir, ignore_errors=True)
            shutil.rmtree(caseDir + "-export", ignore_errors=True)
        self.delayDisplay("Test passed")

    @staticmethod
    def _engineCommandLineWorks(logic):
        """The engine's command line (attack, export) needs torch and the packages of requirements.txt."""
        import importlib.util

        ensureEngineImportable()
        missing = advDependencies.missingRequirements(
            advDependencies.readRequirements(logic.requirementsPath())
        )
        return importlib.util.find_spec("torch") is not None and not missing

    def test_ReaderMode(self):
        """Blinded reader mode on a session built with the engine: two answers, leave, reopen, resume.

        Needs no torch: the session engine and the scene code use SimpleITK and numpy only.
        """
        import json

        import numpy as np
        import SimpleITK as sitk

        self.delayDisplay("Reader mode")
        logic = AdvSegAttackReaderLogic()
        ensureEngineImportable()
        from AdvSegAttackLib.studies.session import build_session, load_key, ratings_path
        from AdvSegAttackLib.volumes.io import sha256_file

        root = tempfile.mkdtemp(prefix="AdvSegAttackReader-", dir=slicer.app.temporaryPath)
        try:
            cases = []
            for index in range(2):
                voxels = np.random.default_rng(index).integers(-100, 200, (6, 16, 16)).astype(np.int16)
                image = sitk.GetImageFromArray(voxels)
                source = os.path.join(root, f"clean_source_{index}.nii.gz")
                sitk.WriteImage(image, source)
                folder = os.path.join(root, f"adv_case_{index}")
                os.mkdir(folder)
                attacked = sitk.GetImageFromArray(voxels + np.int16(3))
                attacked.CopyInformation(image)
                sitk.WriteImage(attacked, os.path.join(folder, "adversarial.nii.gz"))
                for name in (
                    "pred_clean.nii.gz",
                    "pred_clean.seg.nrrd",
                    "pred_adv.nii.gz",
                    "pred_adv.seg.nrrd",
                ):
                    open(os.path.join(folder, name), "wb").close()
                with open(os.path.join(folder, "metrics.json"), "w", encoding="utf-8") as file:
                    json.dump({}, file)
                with open(os.path.join(folder, "provenance.json"), "w", encoding="utf-8") as file:
                    provenance = {
                        "input": {"path": source, "sha256": sha256_file(source)},
                        "attack": {"name": "saa"},
                    }
                    json.dump(provenance, file)
                cases.append(folder)
            sessionDir = os.path.join(root, "study")
            build_session(cases, readers=1, seed=3, out=sessionDir)

            with self.assertRaises(ValueError):
                logic.start(sessionDir, "nobody")
            first = logic.start(sessionDir, "reader1")
            self.assertEqual(logic.progress(), (0, 4))
            self.assertEqual(
                [v.GetName() for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")], [first]
            )
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)
            display = slicer.mrmlScene.GetFirstNodeByName(first).GetDisplayNode()
            self.assertEqual(
                (display.GetWindow(), display.GetLevel()),
                (advReader.ABDOMEN_WINDOW_HU, advReader.ABDOMEN_LEVEL_HU),
            )
            with self.assertRaises(ValueError):
                logic.answer("real", 3, organ="liver")  # an organ only for "manipulated"
            second = logic.answer("manipulated", 4, comment="edges", organ="liver")
            third = logic.answer("real", 2)
            self.assertEqual(logic.progress(), (2, 4))
            self.assertEqual(
                [v.GetName() for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")], [third]
            )
            key = load_key(sessionDir)
            forbidden = [root, "adv_case", "clean_source", "manipulated"]
            forbidden += [item["patient"] for item in key["items"].values()]

            def isThisModulesParameterNode(node):
                return (
                    node.IsA("vtkMRMLScriptedModuleNode")
                    and node.GetAttribute("ModuleName") == "AdvSegAttack"
                )

            text = advReader.sceneText(slicer.mrmlScene, skip=isThisModulesParameterNode)
            self.assertIn(third, text)
            for token in forbidden:
                self.assertNotIn(token.lower(), text.lower())
            logic.stop()
            self.assertIsNone(slicer.mrmlScene.GetFirstNodeByName(third))

            reopened = AdvSegAttackReaderLogic()  # as after restarting Slicer
            self.assertEqual(reopened.start(sessionDir, "reader1"), third)
            self.assertEqual(reopened.progress(), (2, 4))
            reopened.stop()
            with open(ratings_path(sessionDir, "reader1"), encoding="utf-8") as file:
                saved = [json.loads(line) for line in file]
            self.assertEqual([r["case_id"] for r in saved], [first, second])
            self.assertEqual(
                (saved[0]["answer"], saved[0]["organ"], saved[1]["confidence"]), ("manipulated", "liver", 2)
            )
            self.assertTrue(all(r["seconds"] >= 0 for r in saved))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        self.delayDisplay("Test passed")

    def test_AttackPhantom(self):
        """End to end: phantom, bundled abdomen-unet, SA² with two steps (needs torch; skipped otherwise)."""
        import importlib.util

        logic = AdvSegAttackLogic()
        ensureEngineImportable()
        missing = advDependencies.missingRequirements(
            advDependencies.readRequirements(logic.requirementsPath())
        )
        if importlib.util.find_spec("torch") is None or missing:
            self.delayDisplay(
                "Skipping the end-to-end attack: torch or engine dependencies are not installed"
            )
            return
        from AdvSegAttackLib.volumes.phantom import write_phantom

        self.delayDisplay("Attacking a phantom with abdomen-unet")
        phantomDir = tempfile.mkdtemp(prefix="AdvSegAttackPhantom-", dir=slicer.app.temporaryPath)
        try:
            written = write_phantom(0, phantomDir)
            imagePath = self._phantomImage(written, phantomDir)
            volume = slicer.util.loadVolume(imagePath)
            loaded = logic.process(
                volume,
                "abdomen-unet",
                "saa",
                parameters={"steps": 2, "rho": 0.2, "block_size": 16},
                device="cpu",
            )
            import numpy as np

            self.assertTrue(
                np.array_equal(advScene.ijkToRAS(loaded.adversarialVolume), advScene.ijkToRAS(volume))
            )
            self.assertEqual(
                loaded.adversarialVolume.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions()
            )
            self.assertGreater(loaded.cleanSegmentation.GetSegmentation().GetNumberOfSegments(), 0)
            self.assertGreater(loaded.metricsTable.GetNumberOfRows(), 0)
            self.assertEqual(loaded.adversarialVolume.GetName(), f"{volume.GetName()} adversarial (saa)")
        finally:
            shutil.rmtree(phantomDir, ignore_errors=True)
        self.delayDisplay("Test passed")

    def test_CancelAttack(self):
        """Cancel mid-attack ends the launcher and the engine, and nothing reaches the scene (needs torch)."""
        logic = AdvSegAttackLogic()
        if not self._engineCommandLineWorks(logic):
            self.delayDisplay("Skipping Cancel: torch or engine dependencies are not installed")
            return
        import psutil

        from AdvSegAttackLib.volumes.phantom import write_phantom

        self.delayDisplay("Cancelling an attack")
        phantomDir = tempfile.mkdtemp(prefix="AdvSegAttackCancel-", dir=slicer.app.temporaryPath)
        try:
            volume = slicer.util.loadVolume(str(write_phantom(0, phantomDir)[0]))
            nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
            results, stages = [], []
            logic.finishedCallback = results.append
            logic.progressCallback = lambda fraction, text: stages.append(text)
            logic.startAttack(volume, "abdomen-unet", "pgd", parameters={"steps": 1000}, device="cpu")
            deadline = time.monotonic() + 300
            while not any(text.startswith("Attacking") for text in stages) and time.monotonic() < deadline:
                slicer.app.processEvents()
                time.sleep(0.05)
            launcher = psutil.Process(int(logic._attackProcess.process.processId()))
            engine = launcher.children(recursive=True)
            self.assertTrue(engine, "PythonSlicer runs the engine as its child")
            logic.cancel()
            self.assertEqual(len(results), 1)
            self.assertTrue(results[0].cancelled)
            _gone, alive = psutil.wait_procs(engine, timeout=10)
            self.assertEqual(alive, [])
            self.assertFalse(logic.isRunning())
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        finally:
            shutil.rmtree(phantomDir, ignore_errors=True)
        self.delayDisplay("Test passed")

    @staticmethod
    def _phantomImage(written, folder):
        """The image file of `write_phantom`'s result (path, tuple, dict or a folder of files)."""
        if isinstance(written, dict):
            written = written.get("image") or next(iter(written.values()))
        if isinstance(written, (list, tuple)):
            written = written[0]
        if written and os.path.isfile(str(written)):
            return str(written)
        candidates = sorted(
            os.path.join(folder, name)
            for name in os.listdir(folder)
            if name.endswith((".nii.gz", ".nrrd", ".nii")) and "label" not in name.lower()
        )
        if not candidates:
            raise RuntimeError(f"write_phantom wrote no image into {folder}")
        return candidates[0]
