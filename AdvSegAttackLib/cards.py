"""Models as cards: a JSON card (architecture, labels, preprocessing, provenance) beside safetensors weights.

Also loads, for users who have them: checkpoints of the official MONAI BTCV research code (a dict with
`state_dict`, keys possibly prefixed `module.`) given a card or a preset, MONAI bundle folders
(`configs/inference.json` + `models/model.pt`) whose network is a `monai.networks.nets` class, and TorchScript
files. Checkpoints are read with `torch.load(weights_only=True)` only: nothing is ever unpickled.
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

from .errors import InputError
from .io import atomic_path, json_safe, write_text_atomic
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
    return Path(override) if override else Path(__file__).resolve().parent.parent / "Resources" / "Models"


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


def _unpickle_free_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path} needs unpickling of Python objects to load, which could run code; "
            "refused (save a plain state_dict or safetensors instead)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise InputError(
            f"{path} is not a readable PyTorch checkpoint ({str(error).splitlines()[0][:160]})."
        ) from None


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


def _bundle_card(folder: Path) -> tuple[ModelCard, Path]:
    """Card and weights path of a MONAI bundle whose `network_def` is a `monai.networks.nets` class."""
    from monai.bundle import ConfigParser

    config_path = folder / "configs" / "inference.json"
    parser = ConfigParser()
    try:
        parser.read_config(str(config_path))
        if (folder / "configs" / "metadata.json").is_file():
            parser.read_meta(str(folder / "configs" / "metadata.json"))
        network = parser.get_parsed_content("network_def", instantiate=False)
    except Exception as error:  # ConfigParser raises many kinds on malformed configs
        raise InputError(f"{config_path} is not a readable MONAI bundle config ({error}).") from None
    config = network.get_config() if hasattr(network, "get_config") else dict(network)
    target = str(config.get("_target_", "")).rsplit(".", 1)[-1]
    if target not in _MONAI_CLASSES:
        raise InputError(
            f"{config_path}: network {target or '?'} is not a supported monai.networks.nets class."
        )
    arguments = {}
    for key in config:
        if not key.startswith("_"):
            value = parser.get_parsed_content(f"network_def::{key}")
            arguments[key] = list(value) if isinstance(value, tuple) else value
    out_channels = int(arguments.pop("out_channels", 2))
    for key in ("spatial_dims", "in_channels", "img_size"):
        arguments.pop(key, None)
    card = ModelCard(
        name=folder.name,
        architecture=_MONAI_CLASSES[target],
        arguments=arguments,
        weights=None,
        provenance={"source": f"MONAI bundle {folder}"},
    )
    _apply_bundle_preprocessing(card, parser)
    channel_def = parser.get("_meta_::network_data_format::outputs::pred::channel_def", {}) or {}
    names = [str(channel_def.get(str(i), channel_def.get(i, f"label {i}"))) for i in range(out_channels)]
    names[0] = "background"
    card.label_names = names
    card.label_colors = [list(BTCV_LABEL_COLORS[i % len(BTCV_LABEL_COLORS)]) for i in range(out_channels)]
    card.__post_init__()
    return card, folder / "models" / "model.pt"


def _apply_bundle_preprocessing(card: ModelCard, parser) -> None:
    """Read spacing, orientation, intensity window and ROI from a bundle's transforms and inferer."""

    def walk(node):
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for node in walk(parser.get()):
        target = str(node.get("_target_", "")).rsplit(".", 1)[-1]
        if target in ("Spacingd", "Spacing") and isinstance(node.get("pixdim"), list):
            card.spacing_mm = [float(v) for v in node["pixdim"]]
        elif target in ("Orientationd", "Orientation") and isinstance(node.get("axcodes"), str):
            card.orientation = node["axcodes"]
        elif target in ("ScaleIntensityRanged", "ScaleIntensityRange") and "a_min" in node:
            card.intensity_window_hu = [float(node["a_min"]), float(node["a_max"])]
        elif target in ("SlidingWindowInferer",) and isinstance(node.get("roi_size"), list):
            card.roi_size = [int(v) for v in node["roi_size"]]
            card.overlap = float(node.get("overlap", card.overlap))


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


def load_model(
    source: str | Path, card: str | Path | ModelCard | None = None, device: str | torch.device = "cpu"
) -> tuple[ModelCard, torch.nn.Module]:
    """(card, network in eval mode on `device`) from a card, bundled name, checkpoint, bundle or TorchScript.

    `card` (a card file, bundled name, preset name or ModelCard) describes checkpoints and TorchScript files,
    which carry no preprocessing of their own.
    """
    path = Path(source)
    given = card if isinstance(card, ModelCard) or card is None else load_card(card)
    if path.is_dir() and (path / "configs" / "inference.json").is_file():
        model_card, weights = _bundle_card(path)
        network = model_card.build_network()
        _load_state(network, _state_dict_from_checkpoint(_unpickle_free_load(weights), weights), weights)
    elif path.suffix.lower() in (".pt", ".pth", ".ckpt", ".ts") and path.is_file():
        if given is None:
            raise InputError(
                f"{path} is a checkpoint without preprocessing; give --card CARD or a preset ({', '.join(PRESETS)})."
            )
        model_card = given
        if _is_torchscript(path):
            try:
                network = TorchScriptModel(torch.jit.load(str(path), map_location="cpu"))
            except RuntimeError as error:
                raise InputError(
                    f"{path} is not a loadable TorchScript file ({str(error).splitlines()[0]})."
                ) from None
        else:
            network = model_card.build_network()
            _load_state(network, _state_dict_from_checkpoint(_unpickle_free_load(path), path), path)
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
