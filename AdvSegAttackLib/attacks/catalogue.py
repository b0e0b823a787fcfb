"""The attack catalogue: every attack's name, parameters (type, default, range, unit, help), presets and
what it needs, in plain Python (no torch, MONAI, SimpleITK or numpy).

It is the single source of an attack's interface. The engine validates parameters here
(`attack_config`: types, ranges, cross-parameter rules, presets); the command line builds its flags from it;
the Slicer module reads `catalogue()` (or `advseg attacks --json`) to build its attack list, widgets,
tooltips, ranges and presets, and sends only `--preset` and the values the user changed. The methods
themselves are in the modules named by `AttackEntry.implementation` (they import torch).

`catalogue()` is JSON-ready:

    {"attacks": [{"name", "label", "description", "source_grid", "needs_organ", "supports_region",
                  "supports_targeted",
                  "parameters": [{"name", "flag", "label", "type", "default", "minimum", "maximum",
                                  "minimum_inclusive", "maximum_inclusive", "choices", "unit", "doc",
                                  "advanced"}, ...],
                  "presets": [{"name", "label", "values"}, ...], "default_preset"}, ...]}

Parameter names are the config field names (`block_size`, flag `--block-size`); `type` is "float", "int",
"bool", "choice" (one of `choices`) or "text" (a free string: only the texture attack's `weights`, a folder
or "bundled"); `minimum`/`maximum` are null when unbounded (their `_inclusive` is then false); `default` is
the value an attack runs with when the parameter is not given (the default preset's, where it has one).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

PARAMETER_TYPES = ("float", "int", "bool", "choice", "text")
BANDS = ("all", "low", "middle", "high")
"""DCT bands of the spectral attacks (`--band`); "mid" is accepted for "middle"."""


@dataclass(frozen=True)
class Parameter:
    """One attack parameter: how it is given, its range and what it means.

    `minimum`/`maximum` (None: unbounded) are checked with `minimum_inclusive`/`maximum_inclusive`;
    `aliases` are other spellings of choices (e.g. "mid" for "middle").
    """

    name: str
    label: str
    type: str
    default: Any
    unit: str
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    minimum_inclusive: bool = True
    maximum_inclusive: bool = True
    choices: tuple[str, ...] | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    advanced: bool = False

    def __post_init__(self) -> None:
        if self.type not in PARAMETER_TYPES:
            raise ValueError(f"parameter {self.name}: unknown type {self.type!r}")
        if (self.type == "choice") != (self.choices is not None):
            raise ValueError(f"parameter {self.name}: choices go with type 'choice' only")

    @property
    def flag(self) -> str:
        """The command-line flag: `--` and the name with dashes (`block_size` -> `--block-size`)."""
        return "--" + self.name.replace("_", "-")

    def replace(self, **changes: Any) -> Parameter:
        """This parameter with some fields changed (e.g. another attack's default)."""
        return dataclasses.replace(self, **changes)

    def range_text(self) -> str:
        """`(0, 1)`, `>= 1`, `> 0`, `<= 255` or "" for an unbounded parameter."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            left, right = "[" if self.minimum_inclusive else "(", "]" if self.maximum_inclusive else ")"
            return f"{left}{_number_text(low)}, {_number_text(high)}{right}"
        if low is not None:
            return f"{'>=' if self.minimum_inclusive else '>'} {_number_text(low)}"
        if high is not None:
            return f"{'<=' if self.maximum_inclusive else '<'} {_number_text(high)}"
        return ""

    def check(self, value: Any) -> Any:
        """`value` as this parameter's type (floats as float, aliases resolved); InputError naming the flag."""
        if self.type == "bool":
            if not isinstance(value, bool):
                raise InputError(f"{self.flag} must be true or false, got {value!r}.")
            return value
        if self.type in ("choice", "text"):
            value = self.aliases.get(value, value) if isinstance(value, str) else value
            if self.type == "text" and not (isinstance(value, str) and value):
                raise InputError(f"{self.flag} must be {self.unit}, got {value!r}.")
            if self.type == "choice" and value not in self.choices:
                raise InputError(f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}.")
            return value
        integer = self.type == "int"
        ok = isinstance(value, int) if integer else isinstance(value, int | float) and math.isfinite(value)
        if not ok or isinstance(value, bool) or not self._in_range(value):
            bounds = self.range_text()
            where = f"in {bounds}" if bounds.startswith(("[", "(")) else bounds
            what = f"an integer {where}" if integer else where or "a number"
            raise InputError(f"{self.flag} must be {what.strip()} ({self.unit}), got {value!r}.")
        return value if integer else float(value)

    def parse(self, text: str) -> Any:
        """The value written as `text` (e.g. `--train-attack-param eps=4`), as this parameter's type;
        ValueError when it is not one (the range is checked by `check`)."""
        if self.type == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes", "on")
        if self.type == "int":
            return int(text)
        return float(text) if self.type == "float" else text

    def _in_range(self, value: float) -> bool:
        low, high = self.minimum, self.maximum
        above = low is None or (value >= low if self.minimum_inclusive else value > low)
        below = high is None or (value <= high if self.maximum_inclusive else value < high)
        return above and below

    def to_json(self, default: Any) -> dict[str, Any]:
        """The catalogue entry of this parameter, with `default` (the attack's effective default)."""
        return {
            "name": self.name,
            "flag": self.flag,
            "label": self.label,
            "type": self.type,
            "default": default,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "minimum_inclusive": self.minimum is not None and self.minimum_inclusive,
            "maximum_inclusive": self.maximum is not None and self.maximum_inclusive,
            "choices": list(self.choices) if self.choices is not None else None,
            "unit": self.unit,
            "doc": self.doc,
            "advanced": self.advanced,
        }


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Preset:
    """A named set of parameter values (`--preset NAME`); given flags override it."""

    name: str
    label: str
    values: Mapping[str, Any]


Rules = Callable[[dict[str, Any]], None]
"""rules(values): cross-parameter checks and derived defaults of an attack; may fill in values; InputError."""


@dataclass(frozen=True)
class AttackEntry:
    """One attack: its interface, and where its implementation is (`module:Class` under `attacks`).

    `source_grid`: works on the source grid in HU (not in model space), on exactly one organ
    (`needs_organ`), without `--region` or `--targeted`.
    """

    name: str
    label: str
    description: str
    implementation: str
    parameters: tuple[Parameter, ...]
    presets: tuple[Preset, ...] = ()
    default_preset: str | None = None
    source_grid: bool = False
    needs_organ: bool = False
    supports_region: bool = True
    supports_targeted: bool = True
    rules: Rules | None = None

    def __post_init__(self) -> None:
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"attack {self.name}: a parameter is listed twice")
        for preset in self.presets:
            if not set(preset.values) <= set(names):
                raise ValueError(f"attack {self.name}: preset {preset.name} sets unknown parameters")
        if self.default_preset is not None and self.default_preset not in self.preset_names():
            raise ValueError(f"attack {self.name}: default preset {self.default_preset} is not a preset")

    def parameter(self, name: str) -> Parameter:
        return next(p for p in self.parameters if p.name == name)

    def preset_names(self) -> list[str]:
        return [preset.name for preset in self.presets]

    def preset_values(self, name: str | None) -> Mapping[str, Any]:
        """The values of preset `name` (None: the default preset, or none); InputError for an unknown one."""
        name = self.default_preset if name is None else name
        if name is None:
            return {}
        for preset in self.presets:
            if preset.name == name:
                return preset.values
        choices = ", ".join(self.preset_names()) or "none for this attack"
        raise InputError(f"--preset {name!r} is not a preset of --attack {self.name} ({choices}).")

    def defaults(self) -> dict[str, Any]:
        """The value of every parameter when none is given: the default preset over the parameter defaults."""
        return {**{p.name: p.default for p in self.parameters}, **self.preset_values(None)}

    def to_json(self) -> dict[str, Any]:
        defaults = self.defaults()
        return {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "source_grid": self.source_grid,
            "needs_organ": self.needs_organ,
            "supports_region": self.supports_region,
            "supports_targeted": self.supports_targeted,
            "parameters": [p.to_json(defaults[p.name]) for p in self.parameters],
            "presets": [{"name": p.name, "label": p.label, "values": dict(p.values)} for p in self.presets],
            "default_preset": self.default_preset,
        }


class AttackConfig:
    """The validated parameter values of one attack, read as attributes (`config.rho`)."""

    def __init__(self, entry: AttackEntry, values: Mapping[str, Any]) -> None:
        self._entry = entry
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"an attack configuration has no parameter {name!r}") from None

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"AttackConfig({self._entry.name}: {values})"

    def values(self) -> dict[str, Any]:
        """{parameter name: value}."""
        return dict(self._values)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{parameter name: {"value", "unit", "flag"}} for provenance."""
        return {
            p.name: {"value": self._values[p.name], "unit": p.unit, "flag": p.flag}
            for p in self._entry.parameters
        }


def attack_entry(name: str) -> AttackEntry:
    """The catalogue entry of attack `name`; InputError naming --attack when there is none."""
    if name not in ATTACKS:
        raise InputError(f"--attack {name!r} is not known; choose one of {', '.join(sorted(ATTACKS))}.")
    return ATTACKS[name]


def attack_config(name: str, preset: str | None = None, **given: Any) -> AttackConfig:
    """The validated parameters of attack `name`: its defaults, then preset `preset` (None: the attack's
    default preset), then `given` (config field names; None = not given). Every value is checked against
    its type and range and the attack's cross-parameter rules; InputError names the flag."""
    entry = attack_entry(name)
    values = entry.defaults()
    values.update(entry.preset_values(preset))
    names = {p.name for p in entry.parameters}
    for key, value in given.items():
        if value is None:
            continue
        if key not in names:
            raise InputError(f"--{key.replace('_', '-')} does not apply to --attack {name}.")
        values[key] = value
    for parameter in entry.parameters:
        if values[parameter.name] is not None or parameter.default is not None:
            values[parameter.name] = parameter.check(values[parameter.name])
    if entry.rules is not None:
        entry.rules(values)
    return AttackConfig(entry, values)


def parameter_flags() -> dict[str, Parameter]:
    """{parameter name: its definition} over every attack (one flag per name; the first attack's help)."""
    flags: dict[str, Parameter] = {}
    for entry in ATTACKS.values():
        for parameter in entry.parameters:
            flags.setdefault(parameter.name, parameter)
    return flags


def model_space_attacks() -> list[str]:
    """The attacks that work in model space (on any crop or volume), i.e. all but the source-grid ones."""
    return [name for name, entry in ATTACKS.items() if not entry.source_grid]


def catalogue() -> dict[str, Any]:
    """Every attack with its parameters and presets, JSON-ready (see the module docstring)."""
    return {"attacks": [entry.to_json() for entry in ATTACKS.values()]}


# ------------------------------------------------------------------------------------------------------
# Shared parameter definitions

STEPS = Parameter(
    "steps",
    "Steps",
    "int",
    20,
    "iterations (one model forward+backward each)",
    "Number of attack iterations.",
    minimum=1,
)
BLOCK_SIZE = Parameter(
    "block_size",
    "Block size",
    "int",
    32,
    "voxels (block edge)",
    "Edge b of the b×b×b blocks the volume is cut into for the DCT (b×b per axial slice for the 2D attacks).",
    minimum=2,
    advanced=True,
)
USE_SSIM_LOSS = Parameter(
    "use_ssim_loss",
    "SSIM term",
    "bool",
    True,
    "on/off",
    "Add the (1 − SSIM3D) term that keeps the attack invisible.",
    advanced=True,
)
PUBLISHED_RETURN = Parameter(
    "published_return",
    "Published return",
    "bool",
    False,
    "on/off",
    "Return the image of the last forward pass (made before the last update), as the published code does; "
    "off: the image of the final update.",
    advanced=True,
)
EPS_UNIT = "k/255 of the [0, 1] model intensity"
EPS = Parameter(
    "eps",
    "ε (budget)",
    "float",
    4.0,
    EPS_UNIT,
    "L∞ budget of the pixel attacks (4/255 ≈ 6.7 HU on a −175…250 HU window); the published PGD baseline "
    "uses ε = 4.",
    minimum=0.0,
    maximum=255.0,
    minimum_inclusive=False,
)


def _blend(name: str, label: str, doc: str, advanced: bool = True) -> Parameter:
    """A texture blend weight in [0, 1] (default 1)."""
    return Parameter(name, label, "float", 1.0, "blend weight in [0, 1]", doc, 0.0, 1.0, advanced=advanced)


def _factor(name: str, label: str, default: float, unit: str, doc: str, advanced: bool = True) -> Parameter:
    """A texture parameter >= 0."""
    return Parameter(name, label, "float", default, unit, doc, minimum=0.0, advanced=advanced)


# ------------------------------------------------------------------------------------------------------
# SA² (saa.py)

SAA_PARAMETERS = (
    Parameter(
        "rho",
        "ρ (spectral bound)",
        "float",
        0.2,
        "relative DCT-coefficient change (ξ ∈ [1−ρ, 1+ρ])",
        "Spectral noise bound: the learnable multiplier ξ of every DCT coefficient starts uniform in "
        "[1−ρ, 1+ρ] and is clipped back into that box after every step (DC never changes).",
        0.0,
        1.0,
        minimum_inclusive=False,
        maximum_inclusive=False,
    ),
    STEPS.replace(doc="Number of ξ updates."),
    BLOCK_SIZE,
    Parameter(
        "lambda_dice",
        "λ Dice",
        "float",
        0.01,
        "dimensionless weight",
        "Weight of the −DiceCE term; updates use the sign of the gradient, so only the ratio "
        "λ_dice : λ_ssim matters.",
        minimum=0.0,
        minimum_inclusive=False,
        advanced=True,
    ),
    USE_SSIM_LOSS,
    Parameter(
        "lambda_ssim",
        "λ SSIM",
        "float",
        1.0,
        "dimensionless weight",
        "Weight of the (1 − SSIM3D) term.",
        minimum=0.0,
        advanced=True,
    ),
    Parameter(
        "step_size",
        "η (step on ξ)",
        "float",
        0.1,
        "ξ units per step (η)",
        "Sign-gradient step on the spectral noise ξ (the published η).",
        minimum=0.0,
        minimum_inclusive=False,
        advanced=True,
    ),
    Parameter(
        "band",
        "Frequency band",
        "choice",
        "all",
        "DCT band: all, low, middle, high",
        "Which DCT coefficients the spectral noise may change: low i+j+k ≤ N/2−1, high i+j+k ≥ 5N/2−2, "
        "middle the rest (indices of the N-point block).",
        choices=BANDS,
        aliases={"mid": "middle"},
        advanced=True,
    ),
    PUBLISHED_RETURN,
)
SAA_PRESETS = (
    # What this project was specified with (published argparse defaults / earlier README). At λ 0.01 : 1 the
    # SSIM term decides the sign of most of ξ's update, so a well-trained model barely moves
    # (benchmarks/saa_sign_share.py); kept for reproducing that setting.
    Preset(
        "specified",
        "Specified (ρ 0.2, 20 steps, 32³)",
        {
            "rho": 0.2,
            "steps": 20,
            "block_size": 32,
            "lambda_dice": 0.01,
            "use_ssim_loss": True,
            "lambda_ssim": 1.0,
            "step_size": 0.1,
        },
    ),
    # The authors' final README command line: the default, the setting that shows the published effect.
    Preset(
        "authors-final",
        "Authors' final (ρ 0.4, 10 steps, 16³)",
        {
            "rho": 0.4,
            "steps": 10,
            "block_size": 16,
            "lambda_dice": 0.2,
            "use_ssim_loss": True,
            "lambda_ssim": 0.75,
            "step_size": 0.1,
        },
    ),
)

# ------------------------------------------------------------------------------------------------------
# VAFA (vafa.py)

Q_UNIT = "quantisation step, 0–255 DCT scale"
VAFA_PARAMETERS = (
    Parameter(
        "q_max",
        "q_max",
        "float",
        20.0,
        Q_UNIT,
        "Upper bound of every block's learnable quantisation table (paper default 20).",
        minimum=1.0,
    ),
    STEPS.replace(doc="Number of q updates."),
    Parameter(
        "q_min",
        "q_min",
        "float",
        None,
        Q_UNIT,
        "Lower bound of the quantisation tables; not given: 5 with --q-init max (code), 1 with one (paper).",
        minimum=0.0,
        minimum_inclusive=False,
        advanced=True,
    ),
    Parameter(
        "q_init",
        "Table start",
        "choice",
        "max",
        "'max' (code: start q_max) or 'one' (paper: start 1)",
        "Where the quantisation tables start: 'max' as the published code (start q_max, clip [5, q_max]), "
        "'one' as the paper (start 1, clip [1, q_max]).",
        choices=("max", "one"),
        advanced=True,
    ),
    BLOCK_SIZE,
    USE_SSIM_LOSS.replace(doc="Add the (1 − blockwise SSIM3D) term that keeps the attack invisible."),
    PUBLISHED_RETURN,
)


def _vafa_rules(values: dict[str, Any]) -> None:
    """q_min defaults by q_init (5 code, 1 paper), lies in (0, q_max] and, starting at one, <= 1; the
    blockwise SSIM needs blocks of at least 3 voxels (its window)."""
    if values["q_min"] is None:
        values["q_min"] = 5.0 if values["q_init"] == "max" else 1.0
    if values["q_min"] > values["q_max"]:
        raise InputError(f"--q-min ({values['q_min']}) must not exceed --q-max ({values['q_max']}).")
    if values["q_init"] == "one" and values["q_min"] > 1:
        raise InputError(f"--q-min must be <= 1 with --q-init one, got {values['q_min']}.")
    if values.get("use_ssim_loss") and values["block_size"] < 3:
        raise InputError(
            f"--block-size must be >= 3 with --use-ssim-loss (3-voxel SSIM window), got {values['block_size']}."
        )


# ------------------------------------------------------------------------------------------------------
# Pixel baselines (gradient.py, noise.py)

ALPHA = Parameter(
    "alpha",
    "α (step size)",
    "float",
    0.01,
    "[0, 1] model intensity per step",
    "Sign-gradient step of the iterative pixel attacks (used as is, not /255).",
    0.0,
    1.0,
    minimum_inclusive=False,
    advanced=True,
)

# ------------------------------------------------------------------------------------------------------
# Texture (texture/)

TEXTURE_PARAMETERS = (
    _factor(
        "noise_mu",
        "noise_mu (mean factor)",
        0.3,
        "multiplier of the organ's feature mean",
        "The modified AdaIN sets the organ's feature mean to noise_mu × its mean (published 0.3).",
        advanced=False,
    ),
    _factor(
        "noise_sigma",
        "noise_sigma (std factor)",
        0.3,
        "multiplier of the organ's feature std",
        "The modified AdaIN sets the organ's feature std to noise_sigma × its std (published 0.3).",
        advanced=False,
    ),
    Parameter(
        "blend",
        "Blend",
        "float",
        1.0,
        "fraction in [0, 1]",
        "How strongly the new texture is composited into the organ (1 = fully).",
        0.0,
        1.0,
    ),
    _factor(
        "feather_mm",
        "Feather",
        4.0,
        "mm",
        "The organ mask fades in over this distance from its edge; outside it nothing changes.",
    ),
    Parameter(
        "search",
        "Search",
        "bool",
        False,
        "on/off",
        "Try noise_mu, noise_sigma and blend; keep the lowest organ Dice above the SSIM floor.",
        advanced=True,
    ),
    Parameter(
        "ssim_floor",
        "SSIM floor",
        "float",
        0.9,
        "SSIM (data range 1)",
        "Search: minimum 3D SSIM inside the organ's bounding box.",
        0.0,
        1.0,
        minimum_inclusive=False,
        advanced=True,
    ),
    _blend("coarse_alpha", "Coarse blend", "Blend of the level-5 texture reformation."),
    _blend("fine_alpha", "Fine blend", "Blend of the level-4 texture reformation."),
    _factor(
        "concat_weight",
        "Semantic weight",
        50.0,
        "dimensionless weight",
        "Weight of the semantic (label map) features in the reformation.",
    ),
    Parameter(
        "coarse_psize",
        "Coarse patch",
        "int",
        0,
        "feature pixels (0 = global view)",
        "Patch size of the level-5 reformation.",
        minimum=0,
        advanced=True,
    ),
    Parameter(
        "fine_psize",
        "Fine patch",
        "int",
        3,
        "feature pixels (0 = global view)",
        "Patch size of the level-4 reformation.",
        minimum=0,
        advanced=True,
    ),
    _blend("enhance_alpha", "AdaIN blend", "Blend of the modified AdaIN at levels 3-1."),
    Parameter(
        "reformation",
        "Reformation",
        "bool",
        True,
        "on/off",
        "Run levels 5 and 4 (semantic-guided texture reformation).",
        advanced=True,
    ),
    Parameter(
        "weights",
        "Auto-encoders",
        "text",
        "bundled",
        "'bundled' or a folder of weights",
        "Texture auto-encoders: the bundled CT ones, a distilled 16x folder or a Texture-Reformer E1..D5 folder.",
        advanced=True,
    ),
    Parameter(
        "window_low",
        "Window low",
        "float",
        -135.0,
        "HU",
        "Low end of the network input window.",
        advanced=True,
    ),
    Parameter(
        "window_high",
        "Window high",
        "float",
        215.0,
        "HU",
        "High end of the network input window.",
        advanced=True,
    ),
    Parameter(
        "working_size",
        "Working size",
        "int",
        256,
        "pixels (multiple of 16)",
        "Slices are resized to this square size for the networks.",
        minimum=32,
        advanced=True,
    ),
    Parameter(
        "output_mapping",
        "Output mapping",
        "choice",
        "window",
        "'window' or 'fit'",
        "Back to HU: the inverse window, or with a gain and offset fitted outside the organ.",
        choices=("window", "fit"),
        advanced=True,
    ),
)


def _texture_rules(values: dict[str, Any]) -> None:
    """The working size is a multiple of 16 (four 2x poolings); the input window is not empty."""
    if values["working_size"] % 16:
        raise InputError(
            f"--working-size must be a multiple of 16 of at least 32 pixels, got {values['working_size']!r}."
        )
    low, high = values["window_low"], values["window_high"]
    if not low < high:
        raise InputError(f"--window-low {low!r} must be below --window-high {high!r} (HU).")


# ------------------------------------------------------------------------------------------------------
# The catalogue

ATTACKS: dict[str, AttackEntry] = {
    entry.name: entry
    for entry in (
        AttackEntry(
            "saa",
            "SA² – 3D frequency attack (Hanif et al., ISBI 2025)",
            "Learnable spectral noise on the 3D DCT of b×b×b blocks, traded off against 3D SSIM.",
            "saa:SAA3D",
            SAA_PARAMETERS,
            SAA_PRESETS,
            default_preset="authors-final",
        ),
        AttackEntry(
            "saa-2d",
            "SA² 2D – per axial slice",
            "SA² with a 2D DCT of b×b blocks of every axial slice; the SSIM term stays 3D.",
            "saa:SAA2D",
            SAA_PARAMETERS,
            SAA_PRESETS,
            default_preset="authors-final",
        ),
        AttackEntry(
            "vafa",
            "VAFA – 3D quantization attack (MICCAI 2023)",
            "Learnable quantisation tables on 3D DCT blocks with a blockwise SSIM term.",
            "vafa:VAFA3D",
            VAFA_PARAMETERS,
            rules=_vafa_rules,
        ),
        AttackEntry(
            "vafa-2d",
            "VAFA 2D – per axial slice",
            "VAFA on 2D DCT blocks of every axial slice, without the SSIM term (as published).",
            "vafa:VAFA2D",
            tuple(
                p.replace(default=10) if p.name == "steps" else p
                for p in VAFA_PARAMETERS
                if p.name != "use_ssim_loss"
            ),
            rules=_vafa_rules,
        ),
        AttackEntry(
            "pgd",
            "PGD (L∞, random start)",
            "Projected gradient descent: sign-gradient steps from a random start in the ε-ball.",
            "gradient:PGD",
            (EPS, STEPS, ALPHA),
        ),
        AttackEntry(
            "segpgd",
            "SegPGD (Gu et al., ECCV 2022)",
            "PGD whose per-voxel cross-entropy shifts from the correctly to the wrongly segmented voxels over "
            "the steps (λ_t = (t−1)/2T).",
            "segpgd:SegPGD",
            (EPS, STEPS, ALPHA),
        ),
        AttackEntry(
            "cospgd",
            "CosPGD (Agnihotri et al., ICML 2024)",
            "PGD whose per-voxel cross-entropy is weighted by the cosine similarity of the prediction to the "
            "target, so the budget goes where the model is still right.",
            "cospgd:CosPGD",
            (EPS, STEPS, ALPHA),
        ),
        AttackEntry(
            "bim",
            "BIM (iterative FGSM)",
            "Basic iterative method: sign-gradient steps of α from the clean volume, kept in the ε-ball.",
            "gradient:BIM",
            (EPS, STEPS, ALPHA),
        ),
        AttackEntry(
            "fgsm",
            "FGSM (one step)",
            "Fast gradient sign method: one sign-gradient step of size ε.",
            "gradient:FGSM",
            (EPS.replace(doc="L∞ budget and step size."),),
        ),
        AttackEntry(
            "gn",
            "Gaussian noise (baseline)",
            "Random Gaussian noise, a baseline rather than an attack (no gradient).",
            "noise:GaussianNoise",
            (
                EPS.replace(
                    name="std",
                    label="σ (noise)",
                    doc="Standard deviation of the Gaussian noise added to every voxel.",
                ),
            ),
        ),
        AttackEntry(
            "texture",
            "Texture – organ feature statistics (Lee et al., 2024)",
            "Changes one organ's texture through its feature statistics, slice by slice, on the source grid.",
            "texture.attack:TextureAttack",
            TEXTURE_PARAMETERS,
            source_grid=True,
            needs_organ=True,
            supports_region=False,
            supports_targeted=False,
            rules=_texture_rules,
        ),
    )
}
"""Every attack by name, in the order the Slicer module lists them."""
