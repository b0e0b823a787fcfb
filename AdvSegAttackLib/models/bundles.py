"""MONAI bundle folders read as model cards (`configs/inference.json` as plain JSON data, never by MONAI's
ConfigParser; no torch): the network class and its literal arguments, the preprocessing the engine can
reproduce (orientation, spacing, HU window), the sliding-window ROI, and the label names of
`configs/metadata.json`. The weights (`models/model.pt`) are loaded by `networks.load_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from .cards import ModelCard
from .labels import BTCV_LABEL_COLORS

# MONAI class names (as in bundle configs) to our architecture names.
_MONAI_CLASSES = {"UNet": "unet", "UNETR": "unetr", "SwinUNETR": "swin-unetr", "SegResNet": "segresnet"}

BUNDLE_CONFIG = "configs/inference.json"
BUNDLE_METADATA = "configs/metadata.json"
BUNDLE_WEIGHTS = "models/model.pt"
# Preprocessing transforms that neither move voxels nor change intensities (loading, channel, type, device).
_NEUTRAL_TRANSFORMS = {
    "LoadImage",
    "EnsureChannelFirst",
    "AddChannel",
    "EnsureType",
    "ToTensor",
    "CastToType",
    "ToDevice",
    "Identity",
}
_BUNDLE_KEYS = {"_target_", "_desc_", "_disabled_"}  # other `_x_` keys make MONAI run or import something


class BundleConfig:
    """A bundle's inference.json as plain JSON data: literal values and `@` references to them, nothing else.

    MONAI's ConfigParser evaluates `$` expressions, expands `%` macros and instantiates `_target_`s; this
    reads the few entries the engine needs, resolves `@name` / `@group#key` references to plain literal
    entries itself, and refuses anything else with one sentence naming the file and the key.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise InputError(f"{path} is not a readable JSON bundle config ({error}).") from None
        if not isinstance(self.data, dict):
            raise InputError(f"{path} is not a bundle config (a JSON object is needed).")

    def refuse(self, key: str, what: str) -> InputError:
        return InputError(f"{self.path}: {key} {what}.")

    def entry(self, key: str, _seen: tuple[str, ...] = ()) -> object:
        """The raw value at `key` ("a#b#0"; MONAI's "a::b" too), following whole-value `@` references."""
        if key in _seen or len(_seen) > 16:
            raise self.refuse(_seen[0], "is a circular reference")
        node: object = self.data
        for part in key.replace("::", "#").split("#"):
            node = self._follow(node, (*_seen, key))
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise self.refuse(_seen[0] if _seen else key, f"refers to {key}, which does not exist")
        return self._follow(node, (*_seen, key))

    def _follow(self, node: object, seen: tuple[str, ...]) -> object:
        return self.entry(node[1:], seen) if isinstance(node, str) and node.startswith("@") else node

    def literal(self, key: str) -> object:
        """The value at `key` if it is literal data: numbers, strings, booleans, null, lists and plain objects."""
        return self._literal(self.entry(key), key)

    def _literal(self, value: object, key: str) -> object:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            if value.startswith("$"):
                raise self.refuse(key, "is a $-expression, Python code that a model file may not run")
            if value.startswith("%"):
                raise self.refuse(
                    key, "is a %-macro, which would read another file; only literal data is read"
                )
            if value.startswith("@"):
                return self._literal(self._follow(value, (key,)), key)
            return value
        if isinstance(value, list):
            return [self._literal(item, f"{key}#{index}") for index, item in enumerate(value)]
        if isinstance(value, dict):
            special = sorted(k for k in value if str(k).startswith("_"))
            if special:
                raise self.refuse(
                    key,
                    f"is an object with {special[0]}, which MONAI would run; arguments must be literal data",
                )
            return {name: self._literal(item, f"{key}#{name}") for name, item in value.items()}
        raise self.refuse(key, "is not literal data")

    def component(self, key: str) -> tuple[str, dict] | None:
        """(class name, entry) of the object at `key`; None when it is `_disabled_`. Module paths are dropped
        only for `monai.` classes; any `_x_` key other than _target_, _desc_ and _disabled_ is refused."""
        node = self.entry(key)
        if not isinstance(node, dict):
            raise self.refuse(key, "is not an object with a _target_")
        for name in node:
            if str(name).startswith("_") and name not in _BUNDLE_KEYS:
                raise self.refuse(
                    f"{key}#{name}", "is a MONAI directive that runs code, not allowed in a model file"
                )
        if node.get("_disabled_") is not None and self.literal(f"{key}#_disabled_") is True:
            return None
        target = node.get("_target_")
        if not isinstance(target, str) or target.startswith(("$", "%", "@")):
            raise self.refuse(f"{key}#_target_", "is not a class name")
        if "." in target and not target.startswith("monai."):
            raise self.refuse(f"{key}#_target_", f"is {target!r}, not a MONAI class")
        return target.rsplit(".", 1)[-1], node


def bundle_card(folder: Path) -> tuple[ModelCard, Path]:
    """Card and weights path of a MONAI bundle, read as data (see `BundleConfig`).

    The network must be one of `_MONAI_CLASSES` with literal arguments; `preprocessing` must hold
    Orientation(d), Spacing(d) and ScaleIntensityRange(d) (b 0..1, clip) and only neutral transforms besides;
    `inferer` must be a SlidingWindowInferer. Label names come from `configs/metadata.json`.
    """
    config_path = folder / BUNDLE_CONFIG
    if not config_path.is_file():
        raise InputError(
            f"{folder / 'configs'} has no inference.json; only JSON bundle configs are read "
            "(convert inference.yaml to JSON)."
        )
    config = BundleConfig(config_path)
    target, network = config.component("network_def") or ("", {})
    if target not in _MONAI_CLASSES:
        raise config.refuse(
            "network_def#_target_",
            f"is {target or 'disabled'}, not one of the supported monai.networks.nets classes "
            f"({', '.join(_MONAI_CLASSES)})",
        )
    arguments = {
        name: config.literal(f"network_def#{name}") for name in network if not str(name).startswith("_")
    }
    for name, expected in (("spatial_dims", 3), ("in_channels", 1)):
        if arguments.pop(name, expected) != expected:
            raise config.refuse(f"network_def#{name}", f"is not {expected} (one 3-D CT channel)")
    out_channels = arguments.pop("out_channels", 2)
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 2:
        raise config.refuse("network_def#out_channels", "is not an integer of at least 2")
    arguments.pop("img_size", None)  # the ROI comes from the inferer
    card = ModelCard(
        name=folder.name,
        architecture=_MONAI_CLASSES[target],
        arguments=arguments,
        weights=None,
        provenance={"source": f"MONAI bundle {folder}"},
    )
    _apply_bundle_preprocessing(card, config)
    card.label_names = _bundle_label_names(folder / BUNDLE_METADATA, out_channels)
    card.label_colors = [list(BTCV_LABEL_COLORS[i % len(BTCV_LABEL_COLORS)]) for i in range(out_channels)]
    card.__post_init__()
    return card, folder / BUNDLE_WEIGHTS


def _number_list(config: BundleConfig, key: str, kind: type) -> list:
    value = config.literal(key)
    values = [value] * 3 if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not (
        isinstance(values, list)
        and len(values) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise config.refuse(key, "is not three positive numbers")
    return [kind(v) for v in values]


def _apply_bundle_preprocessing(card: ModelCard, config: BundleConfig) -> None:
    """Orientation, spacing, HU window and ROI of a bundle from `preprocessing` and `inferer`."""
    compose = config.component("preprocessing")
    if compose is None or compose[0] != "Compose":
        raise config.refuse("preprocessing", "is not a Compose of transforms")
    transforms = config.entry("preprocessing#transforms")
    if not isinstance(transforms, list):
        raise config.refuse("preprocessing#transforms", "is not a list")
    found = set()
    for index in range(len(transforms)):
        key = f"preprocessing#transforms#{index}"
        component = config.component(key)
        if component is None:
            continue
        name = component[0].removesuffix("d")
        if name == "Orientation":
            axcodes = config.literal(f"{key}#axcodes")
            if not isinstance(axcodes, str) or len(axcodes) != 3:
                raise config.refuse(f"{key}#axcodes", "is not a three-letter orientation code")
            card.orientation = axcodes.upper()
        elif name == "Spacing":
            card.spacing_mm = _number_list(config, f"{key}#pixdim", float)
        elif name == "ScaleIntensityRange":
            window = [config.literal(f"{key}#{k}") for k in ("a_min", "a_max")]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in window):
                raise config.refuse(f"{key}#a_min", "and a_max are not numbers")
            scale = {
                k: config.literal(f"{key}#{k}") if k in component[1] else None for k in ("b_min", "b_max")
            }
            if scale["b_min"] not in (None, 0) or scale["b_max"] not in (None, 1):
                raise config.refuse(f"{key}#b_min", "and b_max are not 0 and 1, the engine's model range")
            if (config.literal(f"{key}#clip") if "clip" in component[1] else False) is not True:
                raise config.refuse(f"{key}#clip", "is not true; the engine clips to the HU window")
            card.intensity_window_hu = [float(v) for v in window]
        elif name not in _NEUTRAL_TRANSFORMS:
            raise InputError(
                f"{config.path}: {key} is {component[0]}, a transform the engine cannot reproduce (it reads "
                "Orientation, Spacing and ScaleIntensityRange and ignores loading and type transforms)."
            )
        found.add(name)
    missing = [f"{n}d" for n in ("Orientation", "Spacing", "ScaleIntensityRange") if n not in found]
    if missing:
        raise InputError(
            f"{config.path}: preprocessing has no {' or '.join(missing)}; the engine needs the bundle's "
            "orientation, spacing and HU window."
        )
    inferer = config.component("inferer")
    if inferer is None or inferer[0] != "SlidingWindowInferer":
        raise config.refuse(
            "inferer", "is not a SlidingWindowInferer (the engine segments in sliding windows)"
        )
    card.roi_size = _number_list(config, "inferer#roi_size", int)
    overlap = config.literal("inferer#overlap") if "overlap" in inferer[1] else 0.25  # MONAI's default
    if isinstance(overlap, bool) or not isinstance(overlap, int | float):
        raise config.refuse("inferer#overlap", "is not a number")
    card.overlap = float(overlap)


def _bundle_label_names(path: Path, count: int) -> list[str]:
    """Channel names from a bundle's metadata.json (plain JSON); "label i" where it names none."""
    channel_def: object = None
    if path.is_file():
        try:
            channel_def = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise InputError(f"{path} is not readable JSON ({error}).") from None
    for key in ("network_data_format", "outputs", "pred", "channel_def"):
        channel_def = channel_def.get(key) if isinstance(channel_def, dict) else None
    named = channel_def if isinstance(channel_def, dict) else {}
    return ["background", *[str(named.get(str(i), f"label {i}")) for i in range(1, count)]]
