"""Models as cards: a JSON card (architecture, labels, preprocessing, provenance) beside safetensors weights.

Also loads, for users who have them: checkpoints of the official MONAI BTCV research code (a dict with
`state_dict`, keys possibly prefixed `module.`) given a card or a preset, MONAI bundle folders
(`configs/inference.json` + `models/model.pt`) whose network is a `monai.networks.nets` class, and TorchScript
files. A model file never runs code: bundle configs are read as JSON data (`_BundleConfig`), checkpoints with
`torch.load(weights_only=True)` only (`load_weights_only`: nothing is ever unpickled), and TorchScript, which
is a program, only with `trust_torchscript` (`--trust-torchscript`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import resources_dir
from ..errors import InputError
from ..volumes.io import atomic_path, json_safe, write_text_atomic
from .labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"


def _unet(out_channels: int, roi_size, **args) -> torch.nn.Module:
    from monai.networks.nets import UNet

    defaults = {"channels": (32, 64, 128, 256, 512), "strides": (2, 2, 2, 2), "num_res_units": 2}
    return UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, **{**defaults, **args})


def _unetr(out_channels: int, roi_size, **args) -> torch.nn.Module:
    from monai.networks.nets import UNETR

    defaults = {
        "feature_size": 16,
        "hidden_size": 768,
        "mlp_dim": 3072,
        "num_heads": 12,
        "proj_type": "perceptron",
        "norm_name": "instance",
        "res_block": True,
        "dropout_rate": 0.0,
    }
    args = {**defaults, **args}
    if "pos_embed" in args:  # the research code's name for proj_type (MONAI < 1.3)
        args["proj_type"] = args.pop("pos_embed")
    return UNETR(in_channels=1, out_channels=out_channels, img_size=tuple(roi_size), **args)


def _swin_unetr(out_channels: int, roi_size, **args) -> torch.nn.Module:
    from monai.networks.nets import SwinUNETR

    args = {"feature_size": 48, **args}
    args.pop("img_size", None)  # removed from SwinUNETR in MONAI 1.5; the ROI is in the card
    return SwinUNETR(in_channels=1, out_channels=out_channels, **args)


def _segresnet(out_channels: int, roi_size, **args) -> torch.nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, in_channels=1, out_channels=out_channels, **{"init_filters": 16, **args})


ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    "unet": _unet,
    "unetr": _unetr,
    "swin-unetr": _swin_unetr,
    "segresnet": _segresnet,
}

# MONAI class names (as in bundle configs) to our architecture names.
_MONAI_CLASSES = {"UNet": "unet", "UNETR": "unetr", "SwinUNETR": "swin-unetr", "SegResNet": "segresnet"}


@dataclass
class ModelCard:
    """What a model is and how its input is made. Spacing and ROI are in the card's orientation axis order."""

    name: str
    architecture: str
    arguments: dict = field(default_factory=dict)
    label_names: list[str] = field(default_factory=lambda: list(BTCV_LABEL_NAMES))
    label_colors: list[list[int]] = field(default_factory=lambda: [list(c) for c in BTCV_LABEL_COLORS])
    spacing_mm: list[float] = field(default_factory=lambda: [1.5, 1.5, 2.0])
    orientation: str = "RAS"
    intensity_window_hu: list[float] = field(default_factory=lambda: [-175.0, 250.0])
    roi_size: list[int] = field(default_factory=lambda: [96, 96, 96])
    overlap: float = 0.5
    weights: str | None = WEIGHTS_FILE
    provenance: dict = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"model card {self.path}" if self.path else f"model card {self.name!r}"
        if self.architecture not in ARCHITECTURES:
            known = ", ".join(ARCHITECTURES)
            raise InputError(f"{where} names an unknown architecture {self.architecture!r}; known: {known}.")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise InputError(f"{where} needs three positive spacings in mm, got {self.spacing_mm}.")
        if len(self.roi_size) != 3 or min(self.roi_size) < 8:
            raise InputError(f"{where} needs a 3-D ROI of at least 8 voxels per axis, got {self.roi_size}.")
        low, high = self.intensity_window_hu
        if not low < high:
            raise InputError(f"{where} has an empty intensity window {self.intensity_window_hu} HU.")
        if not 0 <= self.overlap < 1:
            raise InputError(f"{where} has overlap {self.overlap}; it must be in [0, 1).")
        if len(self.label_colors) < len(self.label_names):
            self.label_colors = self.label_colors + [[128, 128, 128]] * (
                len(self.label_names) - len(self.label_colors)
            )

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def build_network(self) -> torch.nn.Module:
        """A freshly initialised network of the card's architecture and arguments."""
        try:
            return ARCHITECTURES[self.architecture](self.num_classes, self.roi_size, **self.arguments)
        except TypeError as error:
            raise InputError(
                f"model card {self.path or self.name}: bad {self.architecture} arguments ({error})."
            ) from None

    def to_json(self) -> str:
        """Strict JSON (a NaN in the provenance, e.g. a validation Dice without organs, becomes null)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "path"}
        return json.dumps(json_safe(data), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict, path: Path | None = None) -> ModelCard:
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        unknown = sorted(set(data) - names - {"format"})
        if unknown:
            raise InputError(
                f"model card {path or ''} has unknown fields: {', '.join(unknown)}.".replace("  ", " ")
            )
        missing = [n for n in ("name", "architecture") if n not in data]
        if missing:
            raise InputError(f"model card {path or ''} lacks {', '.join(missing)}.".replace("  ", " "))
        return cls(**{k: v for k, v in data.items() if k in names}, path=path)


def _btcv(architecture: str, **arguments) -> ModelCard:
    return ModelCard(
        name=f"btcv-{architecture}",
        architecture=architecture,
        arguments=arguments,
        weights=None,
        provenance={"source": "MONAI research-contributions BTCV configuration (weights not bundled)"},
    )


PRESETS: dict[str, Callable[[], ModelCard]] = {
    "btcv-unetr": lambda: _btcv("unetr"),
    "btcv-unet": lambda: _btcv("unet"),
    "btcv-swin-unetr": lambda: _btcv("swin-unetr", feature_size=48),
}


def models_dir() -> Path:
    """Folder of the bundled models: $ADVSEG_MODELS_DIR, else `Resources/Models` beside the package."""
    override = os.environ.get("ADVSEG_MODELS_DIR")
    return Path(override) if override else resources_dir() / "Models"


def bundled_models() -> list[str]:
    root = models_dir()
    return sorted(p.parent.name for p in root.glob(f"*/{CARD_FILE}")) if root.is_dir() else []


def load_card(source: str | Path) -> ModelCard:
    """A card from a JSON file, a folder holding `card.json`, a bundled model name or a preset name."""
    path = Path(source)
    if path.is_dir() and (path / CARD_FILE).is_file():
        path = path / CARD_FILE
    elif not path.exists() and str(source) in bundled_models():
        path = models_dir() / str(source) / CARD_FILE
    elif not path.exists() and str(source) in PRESETS:
        return PRESETS[str(source)]()
    if not path.is_file():
        known = ", ".join(bundled_models() + list(PRESETS))
        raise InputError(f"{source} is neither a model card file nor a known model name ({known}).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not a JSON model card ({error}).") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON model card (a JSON object is needed).")
    return ModelCard.from_dict(data, path=path)


# torch.load(weights_only=True) could run code from a crafted file before 2.6 (CVE-2025-32434) and corrupt
# memory before 2.10 (CVE-2026-24747); older torch builds read only safetensors.
SAFE_WEIGHTS_ONLY_TORCH = (2, 10)


def load_weights_only(path: Path, torch_version: str = torch.__version__) -> object:
    """A pickle-based PyTorch file (checkpoint, .pth, train state) read by torch's weights-only unpickler.

    The one place the engine calls `torch.load`: tensors, numbers, strings and containers only, never a
    Python object; refused on torch builds whose weights-only loader has known code-execution flaws.
    """
    from torch.torch_version import TorchVersion

    if TorchVersion(torch_version) < SAFE_WEIGHTS_ONLY_TORCH:
        raise InputError(
            f"{path} is a pickle-based PyTorch file, which torch {torch_version} cannot read safely (its "
            "weights-only loader has known code-execution flaws, fixed in 2.10); upgrade torch or convert "
            "the file to safetensors."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" in str(error):  # torch names the class or function it would have had to import
            raise InputError(
                f"{path} needs unpickling of Python objects to load, which could run code; "
                "refused (save a plain state_dict or safetensors instead)."
            ) from None
        raise InputError(
            f"{path} is not a readable weights-only PyTorch file (damaged or not PyTorch)."
        ) from None
    except (
        Exception
    ) as error:  # torch's unpickler raises many kinds on damaged files (IndexError, EOFError...)
        detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise InputError(f"{path} is not a readable weights-only PyTorch file ({detail}).") from None


def _state_dict_from_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "network"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path} holds no state_dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_state(network: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    # MONAI >= 1.4 transformer blocks gained `norm_cross_attn`; older UNETR checkpoints lack it. It is unused
    # without cross-attention, so its fresh defaults are exact.
    tolerated = [k for k in missing if ".norm_cross_attn." in k]
    state = {**state, **{k: own[k] for k in tolerated}}
    missing = [k for k in missing if k not in tolerated]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            key = mismatched[0]
            parts.append(
                f"{len(mismatched)} of wrong shape (e.g. {key} {tuple(state[key].shape)} vs {tuple(own[key].shape)})"
            )
        raise InputError(f"{path}: the checkpoint's keys do not fit the model card: {', '.join(parts)}.")
    network.load_state_dict(state, strict=True)


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


class _BundleConfig:
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


def _bundle_card(folder: Path) -> tuple[ModelCard, Path]:
    """Card and weights path of a MONAI bundle, read as data (see `_BundleConfig`).

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
    config = _BundleConfig(config_path)
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


def _number_list(config: _BundleConfig, key: str, kind: type) -> list:
    value = config.literal(key)
    values = [value] * 3 if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not (
        isinstance(values, list)
        and len(values) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise config.refuse(key, "is not three positive numbers")
    return [kind(v) for v in values]


def _apply_bundle_preprocessing(card: ModelCard, config: _BundleConfig) -> None:
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


class TorchScriptModel(torch.nn.Module):
    """A TorchScript network behind the ordinary module interface."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scripted(x)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


TRUST_TORCHSCRIPT_HELP = (
    "accept a TorchScript --model: TorchScript is a program that runs with your rights as soon as it is "
    "loaded, so give this only for a file from an author you trust (default: refused)"
)


def add_trust_torchscript_argument(parser) -> None:
    """`--trust-torchscript` on an argparse parser of a command that takes a model."""
    parser.add_argument("--trust-torchscript", action="store_true", help=TRUST_TORCHSCRIPT_HELP)


def load_model(
    source: str | Path,
    card: str | Path | ModelCard | None = None,
    device: str | torch.device = "cpu",
    trust_torchscript: bool = False,
) -> tuple[ModelCard, torch.nn.Module]:
    """(card, network in eval mode on `device`) from a card, bundled name, checkpoint, bundle or TorchScript.

    `card` (a card file, bundled name, preset name or ModelCard) describes checkpoints and TorchScript files,
    which carry no preprocessing of their own. A TorchScript file is code: it is refused unless
    `trust_torchscript` (the `--trust-torchscript` flag) says its author is trusted.
    """
    path = Path(source)
    given = card if isinstance(card, ModelCard) or card is None else load_card(card)
    if path.is_dir() and (path / "configs").is_dir() and not (path / CARD_FILE).is_file():
        model_card, weights = _bundle_card(path)
        network = model_card.build_network()
        _load_state(network, _state_dict_from_checkpoint(load_weights_only(weights), weights), weights)
    elif path.suffix.lower() in (".pt", ".pth", ".ckpt", ".ts") and path.is_file():
        if given is None:
            raise InputError(
                f"{path} is a checkpoint without preprocessing; give --card CARD or a preset ({', '.join(PRESETS)})."
            )
        model_card = given
        if _is_torchscript(path):
            if not trust_torchscript:
                raise InputError(
                    f"{path} is a TorchScript file, a program that runs with your rights when loaded; it is "
                    "refused unless you trust its author and give --trust-torchscript."
                )
            try:
                network = TorchScriptModel(torch.jit.load(str(path), map_location="cpu"))
            except RuntimeError as error:
                raise InputError(
                    f"{path} is not a loadable TorchScript file ({str(error).splitlines()[0]})."
                ) from None
        else:
            network = model_card.build_network()
            _load_state(network, _state_dict_from_checkpoint(load_weights_only(path), path), path)
        model_card.weights = path.name
    else:
        model_card = load_card(source)
        if model_card.weights is None or model_card.path is None:
            raise InputError(
                f"{source} is a preset without weights; give a checkpoint with --model and this preset as --card."
            )
        weights = model_card.path.parent / model_card.weights
        if not weights.is_file():
            raise InputError(f"{weights} (the weights of model card {model_card.path}) does not exist.")
        network = model_card.build_network()
        _load_state(network, _read_safetensors(weights), weights)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return model_card, network.to(device)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path} is not a readable safetensors file ({error}).") from None


def weights_path(card: ModelCard) -> Path | None:
    """Absolute path of the card's weights file, if it has one on disk."""
    if card.path is None or card.weights is None:
        return None
    path = card.path.parent / card.weights
    return path if path.is_file() else None


def save_model(card: ModelCard, network: torch.nn.Module, folder: str | Path) -> Path:
    """Write `card.json` and `model.safetensors` into `folder` atomically; returns the card path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    card.weights = WEIGHTS_FILE
    write_text_atomic(folder / CARD_FILE, card.to_json() + "\n")
    card.path = folder / CARD_FILE
    return card.path
