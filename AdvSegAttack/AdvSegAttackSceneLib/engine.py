"""How the Slicer module talks to the engine: attack catalogue, command line, where things are.

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

ENGINE_PACKAGE = "AdvSegAttackLib"
ENGINE_CLI_MODULE = "AdvSegAttackLib.cli"
PARENT_PID_VARIABLE = "ADVSEG_PARENT_PID"  # read by AdvSegAttackLib.watchdog

BUNDLED_MODELS: tuple[str, ...] = ("abdomen-unet",)
REGIONS: tuple[str, ...] = ("whole", "organ", "bbox")
BANDS: tuple[str, ...] = ("all", "low", "middle", "high")
Q_INITS: tuple[str, ...] = ("max", "one")
PRESETS: dict[str, dict[str, float | int | bool]] = {
    # SA² settings, as the engine's `--preset` names them. The first is the default: what this project was
    # specified with; the second is the authors' final README command line.
    "specified": {
        "rho": 0.2,
        "steps": 20,
        "blockSize": 32,
        "lambdaDice": 0.01,
        "useSsimLoss": True,
        "lambdaSsim": 1.0,
        "stepSize": 0.1,
    },
    "authors-final": {
        "rho": 0.4,
        "steps": 10,
        "blockSize": 16,
        "lambdaDice": 0.2,
        "useSsimLoss": True,
        "lambdaSsim": 0.75,
        "stepSize": 0.1,
    },
}
DEFAULT_PRESET = "specified"
DEFAULT_DILATION_MM = 10.0


@dataclass(frozen=True)
class ParameterSpec:
    """One attack parameter: the CLI flag, its unit and its default (the engine's)."""

    name: str
    flag: str
    label: str
    unit: str
    default: float | int | str | bool
    help: str

    def toolTip(self) -> str:
        """Tooltip text: what it is, its unit and its default."""
        default = ("on" if self.default else "off") if isinstance(self.default, bool) else self.default
        return f"{self.help} Unit: {self.unit}. Default: {default}."


PARAMETERS: dict[str, ParameterSpec] = {
    spec.name: spec
    for spec in (
        ParameterSpec(
            "rho",
            "--rho",
            "ρ (spectral bound)",
            "relative DCT-coefficient change (ξ ∈ [1−ρ, 1+ρ])",
            0.2,
            "SA² spectral noise bound: the learnable multiplier ξ of every DCT coefficient starts uniform in "
            "[1−ρ, 1+ρ] and is clipped back into that box after every step (DC never changes). "
            "Authors' final README setting: 0.4.",
        ),
        ParameterSpec(
            "steps",
            "--steps",
            "Steps",
            "iterations (one model forward and backward pass each)",
            20,
            "Number of attack iterations (SA² authors' final README setting: 10; VAFA 2D: 10).",
        ),
        ParameterSpec(
            "eps",
            "--eps",
            "ε (budget)",
            "k/255 of the [0, 1] model intensity range (4 ≈ 6.7 HU on the −175…250 HU window)",
            4.0,
            "L∞ budget of the pixel attacks (PGD, BIM, FGSM); the published PGD baseline uses ε = 4.",
        ),
        ParameterSpec(
            "std",
            "--std",
            "σ (noise)",
            "k/255 of the [0, 1] model intensity range (4 ≈ 6.7 HU on the −175…250 HU window)",
            4.0,
            "Standard deviation of the Gaussian-noise baseline.",
        ),
        ParameterSpec(
            "qMax",
            "--q-max",
            "q_max",
            "quantization step on the 0–255 DCT scale",
            20.0,
            "VAFA: upper bound of every block's learnable quantization table. Paper default 20.",
        ),
        ParameterSpec(
            "qInit",
            "--q-init",
            "Table start",
            "'max' (published code: start at q_max, clip [5, q_max]) or 'one' (paper text: start 1, clip [1, q_max])",
            "max",
            "VAFA: where the quantization tables start.",
        ),
        ParameterSpec(
            "blockSize",
            "--block-size",
            "Block size",
            "voxels (edge b of the b×b×b DCT block; b×b for the 2D attacks)",
            32,
            "Edge of the blocks the volume is cut into for the DCT (SA² authors' final README setting: 16).",
        ),
        ParameterSpec(
            "lambdaDice",
            "--lambda-dice",
            "λ Dice",
            "dimensionless weight",
            0.01,
            "Weight of the −DiceCE term. Updates use the sign of the gradient, so only the ratio "
            "λ_dice : λ_ssim matters (authors' final README setting: 0.2).",
        ),
        ParameterSpec(
            "useSsimLoss",
            "--use-ssim-loss",
            "SSIM term",
            "on/off",
            True,
            "Add the (1 − SSIM3D) term that keeps the attack invisible (VAFA: blockwise SSIM).",
        ),
        ParameterSpec(
            "lambdaSsim",
            "--lambda-ssim",
            "λ SSIM",
            "dimensionless weight",
            1.0,
            "Weight of the (1 − SSIM3D) term (authors' final README setting: 0.75).",
        ),
        ParameterSpec(
            "stepSize",
            "--step-size",
            "η (step on ξ)",
            "ξ units per step",
            0.1,
            "SA²: sign-gradient step on the spectral noise ξ (the published η).",
        ),
        ParameterSpec(
            "alpha",
            "--alpha",
            "α (step size)",
            "[0, 1] model intensity per step (used as is, not /255)",
            0.01,
            "Sign-gradient step of the iterative pixel attacks (PGD, BIM).",
        ),
        ParameterSpec(
            "band",
            "--band",
            "Frequency band",
            "DCT band: all, low (i+j+k ≤ N/2−1), high (i+j+k ≥ 5N/2−2) or middle (the rest)",
            "all",
            "Which DCT coefficients the spectral noise may change.",
        ),
        ParameterSpec(
            "noiseMu",
            "--noise-mu",
            "noise_mu (mean factor)",
            "multiplier of the organ's feature mean",
            0.3,
            "Texture: the modified AdaIN sets the organ's feature mean to noise_mu × its mean (published 0.3).",
        ),
        ParameterSpec(
            "noiseSigma",
            "--noise-sigma",
            "noise_sigma (std factor)",
            "multiplier of the organ's feature std",
            0.3,
            "Texture: the modified AdaIN sets the organ's feature std to noise_sigma × its std (published 0.3).",
        ),
        ParameterSpec(
            "blend",
            "--blend",
            "Blend",
            "fraction in [0, 1]",
            1.0,
            "Texture: how strongly the new texture is composited into the organ (1 = fully).",
        ),
        ParameterSpec(
            "featherMm",
            "--feather-mm",
            "Feather",
            "mm",
            4.0,
            "Texture: the organ mask fades in over this distance from its edge; outside it nothing changes.",
        ),
        ParameterSpec(
            "textureSearch",
            "--search",
            "Search",
            "on/off",
            False,
            "Texture: try noise_mu, noise_sigma and blend, keep the lowest organ Dice above the SSIM floor.",
        ),
        ParameterSpec(
            "ssimFloor",
            "--ssim-floor",
            "SSIM floor",
            "SSIM (data range 1)",
            0.9,
            "Texture search: minimum 3D SSIM inside the organ's bounding box.",
        ),
    )
}


@dataclass(frozen=True)
class AttackSpec:
    """One attack the engine offers: label, visible parameters, advanced parameters, own defaults."""

    name: str
    label: str
    common: tuple[str, ...]
    advanced: tuple[str, ...] = ()
    usesPreset: bool = False
    help: str = ""
    defaults: dict = field(default_factory=dict)

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.common + self.advanced

    def default(self, name: str):
        """This attack's default for a parameter (the engine's)."""
        return self.defaults.get(name, PARAMETERS[name].default)


_SAA_ADVANCED = ("blockSize", "lambdaDice", "useSsimLoss", "lambdaSsim", "stepSize", "band")

ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec(
            "saa",
            "SA² – 3D frequency attack (Hanif et al., ISBI 2025)",
            ("rho", "steps"),
            _SAA_ADVANCED,
            usesPreset=True,
            help="Learnable spectral noise on the 3D DCT of b×b×b blocks, traded off against 3D SSIM.",
        ),
        AttackSpec(
            "saa-2d",
            "SA² 2D – per axial slice",
            ("rho", "steps"),
            _SAA_ADVANCED,
            usesPreset=True,
            help="SA² with a 2D DCT per axial slice.",
        ),
        AttackSpec(
            "vafa",
            "VAFA – 3D quantization attack (MICCAI 2023)",
            ("qMax", "steps"),
            ("qInit", "blockSize", "useSsimLoss"),
            help="Learnable quantization tables on 3D DCT blocks with blockwise SSIM.",
        ),
        AttackSpec(
            "vafa-2d",
            "VAFA 2D – per axial slice",
            ("qMax", "steps"),
            ("qInit", "blockSize"),
            help="VAFA per axial slice, without SSIM.",
            defaults={"steps": 10},
        ),
        AttackSpec(
            "pgd",
            "PGD (L∞, random start)",
            ("eps", "steps"),
            ("alpha",),
            help="Projected gradient descent.",
        ),
        AttackSpec(
            "bim",
            "BIM (iterative FGSM)",
            ("eps", "steps"),
            ("alpha",),
            help="Basic iterative method.",
        ),
        AttackSpec("fgsm", "FGSM (one step)", ("eps",), help="Fast gradient sign method."),
        AttackSpec("gn", "Gaussian noise (baseline)", ("std",), help="Random Gaussian noise, not an attack."),
        AttackSpec(
            "texture",
            "Texture – organ feature statistics (Lee et al., 2024)",
            ("noiseMu", "noiseSigma", "blend"),
            ("featherMm", "textureSearch", "ssimFloor"),
            help="Changes the chosen organ's texture through its feature statistics; needs an organ.",
        ),
    )
}

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def isValidDevice(device: str) -> bool:
    """True for ``auto``, ``cpu``, ``cuda`` and ``cuda:N``."""
    return bool(_DEVICE_PATTERN.match(device.strip().lower()))


def _formatValue(value) -> str:
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


@dataclass
class AttackRequest:
    """Everything one `attack` run needs, in engine terms.

    Parameters not used by the chosen attack are ignored when building the command line.
    """

    image: str
    out: str
    model: str
    attack: str
    parameters: dict = field(default_factory=dict)
    label: str | None = None
    organs: tuple[str, ...] = ()
    region: str = "whole"
    dilationMm: float | None = None
    targeted: bool = False
    seed: int | None = None
    device: str = "auto"
    preset: str | None = None
    preview: bool = True

    def validate(self) -> None:
        """Raise ValueError with one sentence if something cannot be passed to the engine."""
        if self.attack not in ATTACKS:
            raise ValueError(f"Unknown attack {self.attack!r}; known attacks: {', '.join(ATTACKS)}.")
        if self.region not in REGIONS:
            raise ValueError(f"Unknown region {self.region!r}; use one of {', '.join(REGIONS)}.")
        if self.attack == "texture" and (len(self.organs) != 1 or self.region != "whole" or self.targeted):
            raise ValueError("The texture attack needs one organ, the whole-volume region and no targeting.")
        if self.region in ("organ", "bbox") and not self.organs:
            raise ValueError(f"Region {self.region!r} needs an organ; pick one in the Organ list.")
        if not isValidDevice(self.device):
            raise ValueError(f"Device {self.device!r} is not auto, cpu or cuda:N.")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}.")
        if not self.model:
            raise ValueError("No model selected; pick a bundled model or a model file.")
        for name, allowed in (("band", BANDS), ("qInit", Q_INITS)):
            value = self.parameters.get(name)
            if name in ATTACKS[self.attack].parameters and value is not None and value not in allowed:
                label = PARAMETERS[name].label
                raise ValueError(f"{label} {value!r} is not one of {', '.join(allowed)}.")

    def arguments(self) -> list[str]:
        """Arguments after the program (``PythonSlicer``): ``-m AdvSegAttackLib.cli attack ...``.

        Always a list, never a shell string, so paths with spaces or quotes are passed as they are.
        """
        self.validate()
        spec = ATTACKS[self.attack]
        args = ["-m", ENGINE_CLI_MODULE, "attack", "--image", str(self.image)]
        if self.label:
            args += ["--label", str(self.label)]
        args += ["--model", str(self.model), "--attack", self.attack]
        if spec.usesPreset and self.preset:
            args += ["--preset", self.preset]
        for name in spec.parameters:
            value = self.parameters.get(name)
            if value is None:
                continue
            flag = PARAMETERS[name].flag
            if isinstance(value, bool):  # argparse.BooleanOptionalAction: --flag / --no-flag
                args.append(flag if value else "--no-" + flag[2:])
            else:
                args += [flag, _formatValue(value)]
        if self.organs:
            args += ["--organ", *(str(organ) for organ in self.organs)]
        args += ["--region", self.region]
        if self.dilationMm is not None and self.region != "whole":
            args += ["--dilation-mm", _formatValue(float(self.dilationMm))]
        if self.targeted:
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


def normalizeOrganName(name: str) -> str:
    """Organ names compare case-insensitively, with '_' and '-' as spaces."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").lower().split())


def matchOrgan(name: str, labelNames: list[str] | tuple[str, ...]) -> int | None:
    """Label value of the organ called `name` in the model's label names (0, background, never matches)."""
    wanted = normalizeOrganName(name)
    for value, labelName in enumerate(labelNames):
        if value and normalizeOrganName(labelName) == wanted:
            return value
    return None


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


def modelsDir(engineRoot: str | os.PathLike | None) -> Path | None:
    """Where the bundled models are: ``$ADVSEG_MODELS_DIR``, else ``Resources/Models`` beside the engine
    package (the rule of ``AdvSegAttackLib.models.cards.models_dir``)."""
    override = os.environ.get("ADVSEG_MODELS_DIR")
    if override:
        return Path(override)
    return Path(engineRoot) / "Resources" / "Models" if engineRoot else None


def cardLabels(model: str, engineRoot: str | os.PathLike | None = None) -> tuple[list[str], list[tuple]]:
    """Label names (index = label value, 0 = background) and RGB 0–255 colours of a model.

    :param model: a bundled model name, a card JSON, a folder holding ``card.json`` (model or MONAI
      bundle), or a checkpoint.
    :param engineRoot: folder holding ``AdvSegAttackLib`` (finds the bundled models).

    The card JSON is read directly, so the Slicer application never imports torch for this. A card
    without label names has the BTCV labels (the engine's default). Returns empty lists when nothing is
    known (for example a bare checkpoint); nothing is guessed.
    """
    path = Path(model)
    candidates = []
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
