"""The engine's attack catalogue as the module uses it: widget specifications, the user's choices, flags.

Plain Python (no Qt, no MRML, no torch). The engine's `AdvSegAttackLib.attacks.catalogue.catalogue()` (torch-free,
also printed by ``advseg attacks --json``) is the one description of every attack: its parameters with flag,
type, range, unit and default, its presets and what it needs. From it this module derives

- what the panel shows: one `AttackSpec` per attack with a `ParameterSpec` per parameter (widget kind,
  range with the engine's open or closed ends, decimals, step, tooltip) and the presets;
- what the scene stores: per attack the chosen preset and only the values the user changed
  (`AttackChoice`, one JSON string in the parameter node, so it is saved with the scene);
- what the engine gets: ``--preset NAME`` (attacks with presets) and the flags of the changed values.

Adding an attack or a parameter to the engine's catalogue needs no change here or in the module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal

CATALOGUE_MODULE = "AdvSegAttackLib.attacks.catalogue"

# Parameter types of the catalogue and the widget that edits each.
WIDGET_KINDS = {"float": "double", "int": "int", "bool": "check", "choice": "combo"}
UNBOUNDED_LIMIT = 1_000_000  # widget limit where the engine has none (a spin box needs one)
MINIMUM_DECIMALS, MAXIMUM_DECIMALS = 2, 6


def loadCatalogue() -> AttackCatalogue:
    """The engine's catalogue (imports only the torch-free catalogue module; the engine must be importable)."""
    import importlib

    return AttackCatalogue.fromDict(importlib.import_module(CATALOGUE_MODULE).catalogue())


def _decimalPlaces(value) -> int:
    """Digits after the decimal point that `value` needs (0.01 -> 2, 4.0 -> 0, 1e-05 -> 5)."""
    if not isinstance(value, float) or not math.isfinite(value):
        return 0
    return max(0, -Decimal(repr(value)).normalize().as_tuple().exponent)


def formatNumber(value) -> str:
    """A number as the command line and tooltips show it: 4.0 -> "4", 0.01 -> "0.01"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _displayValue(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return formatNumber(value) if isinstance(value, (int, float)) else str(value)


@dataclass(frozen=True)
class ParameterSpec:
    """One attack parameter of the catalogue and the widget that edits it.

    `name` is the engine's config field (snake_case), `flag` its command-line option. `minimum`/`maximum`
    are the engine's bounds (None: unbounded) with `minimumInclusive`/`maximumInclusive`.
    """

    name: str
    flag: str
    label: str
    type: str
    default: object
    minimum: float | None = None
    maximum: float | None = None
    minimumInclusive: bool = True
    maximumInclusive: bool = True
    choices: tuple = ()
    unit: str = ""
    doc: str = ""
    advanced: bool = False
    presetValues: tuple = ()  # (preset label, value) of the presets that set this parameter

    @classmethod
    def fromDict(cls, data: dict, presetValues: tuple = ()) -> ParameterSpec:
        """From one ``parameters`` entry of the catalogue."""
        return cls(
            name=str(data["name"]),
            flag=str(data["flag"]),
            label=str(data.get("label") or data["name"]),
            type=str(data["type"]),
            default=data.get("default"),
            minimum=data.get("minimum"),
            maximum=data.get("maximum"),
            minimumInclusive=bool(data.get("minimum_inclusive", True)),
            maximumInclusive=bool(data.get("maximum_inclusive", True)),
            choices=tuple(data.get("choices") or ()),
            unit=str(data.get("unit") or ""),
            doc=str(data.get("doc") or ""),
            advanced=bool(data.get("advanced", False)),
            presetValues=presetValues,
        )

    @property
    def widgetKind(self) -> str | None:
        """ "double", "int", "check" or "combo"; None when the panel cannot edit it (a type it does not know,
        or no default to show), so it stays at the engine's default (command line only)."""
        if self.default is None or not self.accepts(self.default):
            return None
        return WIDGET_KINDS.get(self.type)

    @property
    def decimals(self) -> int:
        """Decimals of a float spin box: one more than the default, the presets and the bounds need."""
        needed = [_decimalPlaces(v) for v in (self.default, self.minimum, self.maximum, *self.presetNumbers)]
        return min(MAXIMUM_DECIMALS, max(MINIMUM_DECIMALS, max(needed) + 1))

    @property
    def presetNumbers(self) -> tuple:
        return tuple(value for _label, value in self.presetValues)

    @property
    def singleStep(self) -> float | int:
        """Arrow-key step: a tenth of the default's order of magnitude (0.2 -> 0.01, 20 -> 1); 1 for integers."""
        if self.type == "int":
            return 1
        smallest = 10.0**-self.decimals
        magnitude = abs(float(self.default)) if isinstance(self.default, (int, float)) else 0.0
        if magnitude == 0:
            return 10.0 ** -(self.decimals - 1)
        return max(smallest, 10.0 ** (math.floor(math.log10(magnitude)) - 1))

    @property
    def widgetRange(self) -> tuple[float, float] | tuple[int, int]:
        """(minimum, maximum) a spin box allows: the engine's range with an open end moved inside by the
        smallest step the widget can show (1 for integers), so every value the widget gives is accepted."""
        if self.type == "int":
            low = -UNBOUNDED_LIMIT if self.minimum is None else math.ceil(self.minimum)
            high = UNBOUNDED_LIMIT if self.maximum is None else math.floor(self.maximum)
            if self.minimum is not None and not self.minimumInclusive and low == self.minimum:
                low += 1
            if self.maximum is not None and not self.maximumInclusive and high == self.maximum:
                high -= 1
            return int(low), int(high)
        tick = 10.0**-self.decimals
        low = -float(UNBOUNDED_LIMIT) if self.minimum is None else float(self.minimum)
        high = float(UNBOUNDED_LIMIT) if self.maximum is None else float(self.maximum)
        if self.minimum is not None and not self.minimumInclusive:
            low = round(low + tick, self.decimals)
        if self.maximum is not None and not self.maximumInclusive:
            high = round(high - tick, self.decimals)
        return low, high

    def rangeText(self) -> str:
        """The engine's range in interval notation: "(0, 1)", "≥ 1", "> 0", "" when unbounded."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            opening = "[" if self.minimumInclusive else "("
            closing = "]" if self.maximumInclusive else ")"
            return f"{opening}{formatNumber(low)}, {formatNumber(high)}{closing}"
        if low is not None:
            return f"{'≥' if self.minimumInclusive else '>'} {formatNumber(low)}"
        if high is not None:
            return f"{'≤' if self.maximumInclusive else '<'} {formatNumber(high)}"
        return ""

    def toolTip(self) -> str:
        """What it is, its unit, its range, its default and the presets' values."""
        text = self.doc.strip().rstrip(".") or self.label
        parts = [text[:1].upper() + text[1:] + "."]
        if self.unit:
            parts.append(f"Unit: {self.unit}.")
        if self.type == "choice":
            parts.append(f"One of: {', '.join(str(c) for c in self.choices)}.")
        elif self.rangeText():
            parts.append(f"Range: {self.rangeText()}.")
        parts.append(f"Default: {_displayValue(self.default)}.")
        if self.presetValues:
            presets = "; ".join(f"{label} {_displayValue(value)}" for label, value in self.presetValues)
            parts.append(f"Presets: {presets}.")
        return " ".join(parts)

    def accepts(self, value) -> bool:
        """True if `value` has this parameter's type (a choice: is one of the choices). Ranges are the engine's
        to check; values outside them come only from an edited scene file, and the engine says so."""
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return self.type == "float" or (self.type == "int" and float(value).is_integer())

    def normalise(self, value):
        """`value` as this parameter's Python type (a stored 4 is the float 4.0 of a float parameter)."""
        if self.type == "float":
            return float(value)
        if self.type == "int":
            return int(value)
        return value

    def arguments(self, value) -> list[str]:
        """The command-line arguments giving `value`: ``--flag VALUE``; a bool is ``--flag`` / ``--no-flag``."""
        if self.type == "bool":
            return [self.flag if value else "--no-" + self.flag[2:]]
        return [self.flag, formatNumber(value) if self.type in ("float", "int") else str(value)]


@dataclass(frozen=True)
class PresetSpec:
    """A named set of parameter values of one attack (``--preset NAME``)."""

    name: str
    label: str
    values: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AttackChoice:
    """What the user chose for one attack: a preset (attacks with presets) and the values they changed."""

    preset: str | None = None
    changed: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the catalogue: what the panel shows for it and what it needs."""

    name: str
    label: str
    description: str = ""
    sourceGrid: bool = False
    needsOrgan: bool = False
    supportsRegion: bool = True
    supportsTargeted: bool = True
    parameters: tuple[ParameterSpec, ...] = ()
    presets: tuple[PresetSpec, ...] = ()
    defaultPreset: str | None = None

    @classmethod
    def fromDict(cls, data: dict) -> AttackSpec:
        """From one ``attacks`` entry of the catalogue."""
        name = str(data["name"])
        presets = tuple(
            PresetSpec(str(p["name"]), str(p.get("label") or p["name"]), dict(p.get("values") or {}))
            for p in data.get("presets") or ()
        )
        parameters = tuple(
            ParameterSpec.fromDict(
                p,
                tuple(
                    (preset.label, preset.values[p["name"]])
                    for preset in presets
                    if p["name"] in preset.values
                ),
            )
            for p in data.get("parameters") or ()
        )
        known = {p.name for p in parameters}
        for preset in presets:
            unknown = sorted(set(preset.values) - known)
            if unknown:
                raise ValueError(
                    f"Preset {preset.name!r} of attack {name!r} sets {', '.join(unknown)}, which the attack lacks."
                )
        defaultPreset = data.get("default_preset")
        if defaultPreset is not None and defaultPreset not in {p.name for p in presets}:
            raise ValueError(
                f"The default preset {defaultPreset!r} of attack {name!r} is not one of its presets."
            )
        return cls(
            name=name,
            label=str(data.get("label") or name),
            description=str(data.get("description") or ""),
            sourceGrid=bool(data.get("source_grid", False)),
            needsOrgan=bool(data.get("needs_organ", False)),
            supportsRegion=bool(data.get("supports_region", True)),
            supportsTargeted=bool(data.get("supports_targeted", True)),
            parameters=parameters,
            presets=presets,
            defaultPreset=defaultPreset,
        )

    def parameter(self, name: str) -> ParameterSpec:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        raise KeyError(f"Attack {self.name!r} has no parameter {name!r}.")

    def editableParameters(self, advanced: bool | None = None) -> tuple[ParameterSpec, ...]:
        """The parameters the panel shows (all, or only the advanced / the other ones), in catalogue order."""
        return tuple(
            p
            for p in self.parameters
            if p.widgetKind is not None and (advanced is None or p.advanced == advanced)
        )

    def preset(self, name: str) -> PresetSpec:
        for preset in self.presets:
            if preset.name == name:
                return preset
        raise KeyError(f"Attack {self.name!r} has no preset {name!r}.")

    def presetToolTip(self) -> str:
        """The presets and the values each sets."""
        lines = []
        for preset in self.presets:
            values = ", ".join(
                f"{self.parameter(name).label} {_displayValue(value)}"
                for name, value in preset.values.items()
            )
            default = " (default)" if preset.name == self.defaultPreset else ""
            lines.append(f"{preset.label}{default}: {values}.")
        return "\n".join(lines) + "\nChoosing a preset sets its values; your other changes stay."

    def baseValues(self, preset: str | None) -> dict:
        """Every editable parameter's value before the user's changes: the default, or the preset's value."""
        values = {p.name: p.normalise(p.default) for p in self.editableParameters()}
        if preset is not None:
            for name, value in self.preset(preset).values.items():
                if name in values:
                    values[name] = self.parameter(name).normalise(value)
        return values

    def values(self, choice: AttackChoice) -> dict:
        """What each widget shows: the preset's (or default) values with the user's changes."""
        return {**self.baseValues(choice.preset), **choice.changed}

    def arguments(self, choice: AttackChoice) -> list[str]:
        """Command-line arguments of the attack's parameters: ``--preset NAME`` then the changed values' flags
        (the engine applies its defaults, then the preset, then the flags).

        :raises ValueError: for a parameter the attack does not have (a typo in a batch script).
        """
        unknown = sorted(set(choice.changed) - {p.name for p in self.parameters})
        if unknown:
            raise ValueError(f"The {self.name} attack has no parameter {', '.join(unknown)}.")
        args = ["--preset", choice.preset] if choice.preset is not None else []
        for parameter in self.parameters:
            if parameter.name in choice.changed:
                args += parameter.arguments(choice.changed[parameter.name])
        return args

    def whyNotReady(self, organ: str, region: str) -> str | None:
        """What the panel must still get before Apply (None: ready). The engine checks everything else."""
        if self.needsOrgan and not organ:
            return f"The {self.label} attack needs an organ; pick one in the Organ list."
        if self.supportsRegion and region != "whole" and not organ:
            return "The organ and bounding-box regions need an organ; pick one in the Organ list."
        return None


@dataclass(frozen=True)
class AttackCatalogue:
    """Every attack of the engine, in the engine's order."""

    attacks: tuple[AttackSpec, ...]

    @classmethod
    def fromDict(cls, data: dict) -> AttackCatalogue:
        """From the engine's ``catalogue()`` (or the JSON of ``advseg attacks --json``).

        :raises ValueError: one sentence if it is not a catalogue (no attacks, an entry without a name, flag
          or type, a preset of parameters the attack lacks).
        """
        try:
            attacks = tuple(AttackSpec.fromDict(entry) for entry in data["attacks"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"The engine's attack catalogue is malformed (missing {error}).") from None
        if not attacks:
            raise ValueError("The engine's attack catalogue lists no attacks.")
        return cls(attacks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(attack.name for attack in self.attacks)

    def attack(self, name: str) -> AttackSpec:
        """The attack called `name`.

        :raises ValueError: one sentence naming the engine's attacks if it has none of that name.
        """
        for attack in self.attacks:
            if attack.name == name:
                return attack
        raise ValueError(f"Unknown attack {name!r}; the engine has {', '.join(self.names)}.")

    def storedAttack(self, name: str) -> AttackSpec:
        """The attack a parameter node names: the first attack for "" (nothing chosen yet) or for a name the
        engine no longer has (a scene saved with another version)."""
        return next((attack for attack in self.attacks if attack.name == name), self.attacks[0])


# --------------------------------------------------------------------------------------------------
# The user's choices, as one JSON string in the parameter node:
# {"<attack>": {"preset": "<name>", "values": {"<parameter>": value, ...}}, ...}


def readSettings(text: str) -> dict:
    """The stored choices of every attack; {} for an empty or unreadable string."""
    try:
        settings = json.loads(text) if text else {}
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def writeSettings(settings: dict) -> str:
    """The string stored in the parameter node (keys sorted, so the same choices give the same string)."""
    return json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def storedChoice(attack: AttackSpec, text: str) -> AttackChoice:
    """The user's choice for `attack` from the stored string. What no longer fits the catalogue (a preset or
    parameter the engine dropped, a value of the wrong type, a value equal to the preset's) is left out, so
    only real changes reach the command line."""
    entry = readSettings(text).get(attack.name)
    entry = entry if isinstance(entry, dict) else {}
    preset = entry.get("preset")
    if preset not in {p.name for p in attack.presets}:
        preset = attack.defaultPreset
    base = attack.baseValues(preset)
    stored = entry.get("values")
    changed = {}
    for name, value in (stored if isinstance(stored, dict) else {}).items():
        if name not in base:
            continue
        parameter = attack.parameter(name)
        if parameter.accepts(value) and parameter.normalise(value) != base[name]:
            changed[name] = parameter.normalise(value)
    return AttackChoice(preset, changed)


def _withChoice(text: str, attack: AttackSpec, choice: AttackChoice) -> str:
    settings = readSettings(text)
    entry = {"values": dict(choice.changed)}
    if choice.preset is not None:
        entry["preset"] = choice.preset
    settings[attack.name] = entry
    return writeSettings(settings)


def withValue(text: str, attack: AttackSpec, name: str, value) -> str:
    """The stored string after the user set parameter `name` of `attack` to `value` (a value equal to the
    preset's or default is no change and is not kept)."""
    parameter = attack.parameter(name)
    if not parameter.accepts(value):
        raise ValueError(f"{parameter.label}: {value!r} is not a valid value.")
    choice = storedChoice(attack, text)
    changed = dict(choice.changed)
    changed[name] = parameter.normalise(value)
    if changed[name] == attack.baseValues(choice.preset)[name]:
        del changed[name]
    return _withChoice(text, attack, AttackChoice(choice.preset, changed))


def withPreset(text: str, attack: AttackSpec, preset: str | None) -> str:
    """The stored string after the user picked `preset` (None: no preset, the engine's defaults, offered only
    when the catalogue names no default preset): its values replace the user's changes of the parameters it
    sets; other changes stay."""
    values = attack.preset(preset).values if preset is not None else {}
    changed = {
        name: value for name, value in storedChoice(attack, text).changed.items() if name not in values
    }
    return _withChoice(text, attack, AttackChoice(preset, changed))
