"""How the Slicer module talks to the engine: the attack command line, where the engine and its models are.

Plain Python (no Qt, no MRML, no torch), shared by the module and the tests. The engine itself
(`AdvSegAttackLib`) is only imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .catalogue import AttackChoice, AttackSpec, formatNumber

ENGINE_PACKAGE = "AdvSegAttackLib"
ENGINE_CLI_MODULE = "AdvSegAttackLib.cli"
PARENT_PID_VARIABLE = "ADVSEG_PARENT_PID"  # read by AdvSegAttackLib.watchdog

DEFAULT_DILATION_MM = 10.0  # the engine's --dilation-mm default

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def isValidDevice(device: str) -> bool:
    """True for ``auto``, ``cpu``, ``cuda`` and ``cuda:N``."""
    return bool(_DEVICE_PATTERN.match(device.strip().lower()))


NNUNET_DEFAULT_CHECKPOINT = "final"  # the engine's --checkpoint default


@dataclass(frozen=True)
class NnunetChoice:
    """The choices of an nnU-Net v2 results folder (``--configuration``, ``--folds``, ``--checkpoint``,
    ``--tta``). The defaults are the engine's: the only configuration, every fold, the final checkpoint, no
    test-time mirroring; only the choices that differ from them become flags."""

    configuration: str = ""
    folds: tuple[str, ...] = ()
    checkpoint: str = NNUNET_DEFAULT_CHECKPOINT
    tta: bool = False

    def arguments(self) -> list[str]:
        args = ["--configuration", self.configuration] if self.configuration else []
        if self.folds:
            args += ["--folds", *self.folds]
        if self.checkpoint != NNUNET_DEFAULT_CHECKPOINT:
            args += ["--checkpoint", self.checkpoint]
        return args + ["--tta"] * self.tta


@dataclass
class AttackRequest:
    """Everything one `attack` run needs, in engine terms.

    `attack` is the catalogue's description of the attack and `choice` the user's preset and changed values;
    only those are passed (the engine applies its defaults and the preset). Organs, region and targeting are
    passed where the attack supports them. The engine validates every value (one sentence, exit status 2).
    """

    image: str
    out: str
    model: str
    attack: AttackSpec
    choice: AttackChoice = field(default_factory=AttackChoice)
    label: str | None = None
    organs: tuple[str, ...] = ()
    region: str = "whole"
    dilationMm: float | None = None
    targeted: bool = False
    seed: int | None = None
    device: str = "auto"
    preview: bool = True
    nnunet: NnunetChoice = field(default_factory=NnunetChoice)

    def arguments(self) -> list[str]:
        """Arguments after the program (``PythonSlicer``): ``-m AdvSegAttackLib.cli attack ...``.

        Always a list, never a shell string, so paths with spaces or quotes are passed as they are.
        """
        args = ["-m", ENGINE_CLI_MODULE, "attack", "--image", str(self.image)]
        if self.label:
            args += ["--label", str(self.label)]
        args += [
            "--model",
            str(self.model),
            *self.nnunet.arguments(),
            "--attack",
            self.attack.name,
            *self.attack.arguments(self.choice),
        ]
        if self.organs:
            args += ["--organ", *(str(organ) for organ in self.organs)]
        if self.attack.supportsRegion:
            args += ["--region", self.region]
            if self.dilationMm is not None and self.region != "whole":
                args += ["--dilation-mm", formatNumber(float(self.dilationMm))]
        if self.targeted and self.attack.supportsTargeted:
            args.append("--targeted")
        if self.seed is not None:
            args += ["--seed", str(int(self.seed))]
        if not self.preview:
            args.append("--no-preview")
        args += ["--device", self.device.strip().lower(), "--out", str(self.out), "--progress", "jsonl"]
        return args


def pythonSlicerExecutable(
    which=shutil.which, executable: str | None = None, osName: str | None = None
) -> str:
    """Path of ``PythonSlicer``, the Python of the running Slicer without its GUI.

    Inside Slicer it is on PATH; otherwise it sits next to ``sys.executable`` (the same rule as
    ``slicer.util.executePythonModule``).
    """
    found = which("PythonSlicer")
    if found:
        return found
    executable = executable or sys.executable
    name = "PythonSlicer.exe" if (osName or os.name) == "nt" else "PythonSlicer"
    return str(Path(executable).parent / name)


def findEngineRoot(moduleDir: str | os.PathLike) -> Path | None:
    """Folder that contains the engine package ``AdvSegAttackLib``.

    Installed extension: the package sits beside the module file (``qt-scripted-modules``). Source checkout
    added with "Add module path": it sits one level up, at the repository root.
    """
    moduleDir = Path(moduleDir).resolve()
    for candidate in (moduleDir, moduleDir.parent):
        if (candidate / ENGINE_PACKAGE / "__init__.py").is_file():
            return candidate
    return None


def childEnvironment(
    engineRoot: str | os.PathLike | None,
    base: dict[str, str] | None = None,
    parentPid: int | None = None,
) -> dict[str, str]:
    """Environment for the child process: ``PYTHONPATH`` starts with the engine root (if any), output is
    unbuffered, and ``ADVSEG_PARENT_PID`` names the process whose end must stop the engine (if given)."""
    env = dict(os.environ if base is None else base)
    if engineRoot:
        parts = [str(engineRoot)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.setdefault("PYTHONUNBUFFERED", "1")
    if parentPid is not None:
        env[PARENT_PID_VARIABLE] = str(int(parentPid))
    else:
        env.pop(PARENT_PID_VARIABLE, None)
    return env


CARD_FILE = "card.json"


def _cardFields(card) -> tuple[list[str], list[tuple[int, int, int]]]:
    if isinstance(card, dict):
        names, colors = card.get("label_names"), card.get("label_colors")
    else:
        names, colors = getattr(card, "label_names", None), getattr(card, "label_colors", None)
    names = [str(n) for n in names] if names else []
    colors = [tuple(int(c) for c in rgb[:3]) for rgb in colors] if colors else []
    return names, colors


def _btcvLabels() -> tuple[list[str], list[tuple[int, int, int]]]:
    from AdvSegAttackLib.models.labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES

    return list(BTCV_LABEL_NAMES), [tuple(c) for c in BTCV_LABEL_COLORS]


def _nnunetLabels(path: Path, choice: NnunetChoice) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Label names and colours of an nnU-Net v2 results folder for `choice`'s configuration and checkpoint
    (empty when it is none, when the choice does not fit it, or when the engine is absent)."""
    try:
        from AdvSegAttackLib.errors import InputError
        from AdvSegAttackLib.models.nnunet import is_results_folder, nnunet_card
    except ImportError:
        return [], []
    if not is_results_folder(path):
        return [], []
    try:
        card = nnunet_card(path, choice.configuration or None, checkpoint=choice.checkpoint)
    except InputError:
        return [], []
    return list(card.label_names), [tuple(c) for c in card.label_colors]


@dataclass(frozen=True)
class NnunetOptions:
    """What the panel's nnU-Net group offers for a results folder and the stored configuration and checkpoint.

    `configurations`: the ones to choose from (empty when the folder holds one trained model); `checkpoints`
    and `folds`: of the chosen trained model (empty until a configuration is chosen), the folds those that hold
    the chosen checkpoint; `defaultFolds`: the engine's default among them (nnUNetPredictor's)."""

    configurations: tuple[str, ...]
    checkpoints: tuple[str, ...]
    folds: tuple[str, ...]
    defaultFolds: tuple[str, ...]
    folder: Path | None  # the chosen trained model folder


def _chosenModel(models: list, configuration: str):
    if len(models) == 1:
        return models[0]
    return next((m for m in models if configuration and m.configuration == configuration), None)


def nnunetOptions(model: str | os.PathLike, configuration: str, checkpoint: str) -> NnunetOptions | None:
    """What the panel's nnU-Net group offers (see `NnunetOptions`) for the stored configuration and checkpoint;
    None for any model but an nnU-Net v2 results folder, or when the engine is absent. Reads directory entries
    only (`AdvSegAttackLib.models.nnunet.trained_models`): no JSON, no torch."""
    try:
        from AdvSegAttackLib.models.nnunet import default_folds, trained_models
    except ImportError:
        return None
    path = Path(model)
    models = trained_models(path) if path.is_dir() else []
    if not models:
        return None
    configurations = tuple(m.configuration for m in models if m.configuration) if len(models) > 1 else ()
    if len(models) == 1:
        chosen = models[0]
    else:
        chosen = next((m for m in models if configuration and m.configuration == configuration), None)
    if chosen is None:
        return NnunetOptions(configurations, (), (), (), None)
    folds = tuple(chosen.folds.get(checkpoint, ()))
    return NnunetOptions(
        configurations, tuple(chosen.checkpoints), folds, tuple(default_folds(list(folds))), chosen.folder
    )


def parseFolds(text: str) -> tuple[str, ...]:
    """Fold names typed by the user (``0 1``, ``0,1`` or ``fold_0``), each once, in the order given."""
    names = (part.removeprefix("fold_") for part in re.split(r"[\s,;]+", text.strip()) if part)
    return tuple(dict.fromkeys(names))


def nnunetProblem(options: NnunetOptions | None, foldsText: str, checkpoint: str) -> str | None:
    """None when the stored choices fit the folder (or it is no nnU-Net folder), else one sentence saying what
    to choose."""
    if options is None:
        return None
    if options.folder is None:
        return f"Choose the nnU-Net configuration ({', '.join(options.configurations)})."
    from AdvSegAttackLib.models.nnunet import CHECKPOINTS

    file = CHECKPOINTS.get(checkpoint, checkpoint)
    if checkpoint not in options.checkpoints:
        present = " or ".join(CHECKPOINTS[c] for c in options.checkpoints) or "no checkpoint"
        return f"No fold of {options.folder} holds {file} (it has {present}); choose another checkpoint."
    missing = [fold for fold in parseFolds(foldsText) if fold not in options.folds]
    if missing:
        return (
            f"{options.folder / f'fold_{missing[0]}' / file} does not exist "
            f"(folds with {file}: {', '.join(options.folds)})."
        )
    return None


def nnunetChoice(
    options: NnunetOptions | None, configuration: str, foldsText: str, checkpoint: str, tta: bool
) -> NnunetChoice:
    """The engine's choices for the stored ones: the defaults for any model but an nnU-Net folder, the
    configuration only where the folder holds several, the folds only when they are not the default ones."""
    if options is None:
        return NnunetChoice()
    folds = parseFolds(foldsText)
    return NnunetChoice(
        configuration=configuration if options.configurations else "",
        folds=() if set(folds) == set(options.defaultFolds) else folds,
        checkpoint=checkpoint,
        tta=bool(tta),
    )


def modelsDir(engineRoot: str | os.PathLike | None) -> Path | None:
    """Where the bundled models are: ``$ADVSEG_MODELS_DIR``, else ``Resources/Models`` beside the engine
    package (the rule of ``AdvSegAttackLib.models.cards.models_dir``)."""
    override = os.environ.get("ADVSEG_MODELS_DIR")
    if override:
        return Path(override)
    return Path(engineRoot) / "Resources" / "Models" if engineRoot else None


def bundledModels(engineRoot: str | os.PathLike | None) -> list[tuple[str, str]]:
    """(name, label) of every bundled model: each folder of ``modelsDir`` with a readable ``card.json``,
    by name. The label says what the card says: architecture and model-grid spacing in mm. The card JSON is
    read directly (no torch); a folder whose card cannot be read is left out."""
    root = modelsDir(engineRoot)
    models = []
    for folder in sorted(root.iterdir()) if root is not None and root.is_dir() else []:
        try:
            card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(card, dict):
            continue
        spacing = [f"{float(s):g}" for s in card.get("spacing_mm") or []]
        grid = f"{'×'.join(spacing) if len(set(spacing)) > 1 else spacing[0]} mm" if spacing else None
        details = ", ".join(str(d) for d in (card.get("architecture"), grid) if d)
        models.append((folder.name, f"{folder.name} (bundled{': ' + details if details else ''})"))
    return models


def cardLabels(
    model: str, engineRoot: str | os.PathLike | None = None, nnunet: NnunetChoice | None = None
) -> tuple[list[str], list[tuple]]:
    """Label names (index = label value, 0 = background) and RGB 0–255 colours of a model.

    :param model: a bundled model name, a card JSON, a folder holding ``card.json`` (model or MONAI
      bundle), an nnU-Net v2 results folder (read by the engine's torch-free ``load_card``: its
      ``dataset.json`` labels), or a checkpoint.
    :param engineRoot: folder holding ``AdvSegAttackLib`` (finds the bundled models).
    :param nnunet: for an nnU-Net folder, the configuration (where it holds several) and checkpoint.

    The card JSON is read directly, so the Slicer application never imports torch for this. A card
    without label names has the BTCV labels (the engine's default). Returns empty lists when nothing is
    known (for example a bare checkpoint); nothing is guessed.
    """
    path = Path(model)
    candidates = []
    if path.is_dir() and not (path / CARD_FILE).is_file() and not (path / "configs").is_dir():
        names, colors = _nnunetLabels(path, nnunet or NnunetChoice())
        if names:
            return names, colors
    if path.is_dir():
        candidates.append(path / CARD_FILE)
    elif path.suffix.lower() == ".json":
        candidates.append(path)
    elif not path.exists():
        root = modelsDir(engineRoot)
        if root is not None:
            candidates.append(root / str(model) / CARD_FILE)
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return [], []
        if not isinstance(data, dict):
            return [], []
        names, colors = _cardFields(data)
        if names:
            return names, colors
        try:
            return _btcvLabels()
        except ImportError:
            return [], []
    if not path.exists() and str(model).startswith("btcv-"):  # the engine's BTCV architecture presets
        try:
            return _btcvLabels()
        except ImportError:
            return [], []
    return [], []
