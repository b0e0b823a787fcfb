"""Models as cards: a JSON card (architecture and its arguments, labels, preprocessing, provenance) beside
safetensors weights, read and written as data (no torch, no MONAI).

The networks are built and loaded from cards in `networks` (torch); MONAI bundle folders are read as cards in
`bundles`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import resources_dir
from ..errors import InputError
from ..volumes.io import json_safe
from ..volumes.outputs import Input
from .labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURES = ("unet", "unetr", "swin-unetr", "segresnet", "nnunet")
"""Architectures a card may name: MONAI's UNet, UNETR, SwinUNETR and SegResNet (built by `networks`), and an
nnU-Net v2 network from a results folder's plans (`nnunet`, built by `nnunet_networks`)."""


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
    # nnU-Net v2 results folders only (`nnunet.nnunet_card`): configuration, folds, checkpoints, transpose,
    # z-score mean and std (HU), resampling orders, step size, mirroring test-time augmentation.
    nnunet: dict | None = None
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

    @property
    def preprocessing(self) -> dict:
        """How the model's input is made, as `volumes.preprocess.to_model_space` takes it: orientation code,
        spacing (mm, in that orientation's axis order) and HU window."""
        return {
            "orientation": self.orientation,
            "spacing_mm": tuple(float(s) for s in self.spacing_mm),
            "window_hu": (float(self.intensity_window_hu[0]), float(self.intensity_window_hu[1])),
        }

    @property
    def window_rule(self) -> str:
        """Where the sliding windows go: "monai" (MONAI's scan interval) or "nnunet" (nnU-Net's even steps)."""
        return "nnunet" if self.nnunet else "monai"

    @property
    def pad_value(self) -> float:
        """Model-space value the sliding windows pad with: 0, or for nnU-Net z = 0 (the mean HU) in [0, 1] units."""
        if not self.nnunet:
            return 0.0
        low, high = self.intensity_window_hu
        return (float(self.nnunet["mean_hu"]) - low) / (high - low)

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
    """A card from a JSON file, a folder holding `card.json`, a bundled model name, a preset name or an nnU-Net
    v2 results folder (its default configuration, folds and checkpoint)."""
    from .nnunet import is_results_folder, nnunet_card

    path = Path(source)
    if path.is_dir() and not (path / CARD_FILE).is_file() and is_results_folder(path):
        return nnunet_card(path)
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


def weights_path(card: ModelCard) -> Path | None:
    """Absolute path of the card's weights file, if it has one on disk."""
    if card.path is None or card.weights is None:
        return None
    path = card.path.parent / card.weights
    return path if path.is_file() else None


def model_inputs(source: str | Path | None, what: str = "--model") -> list[Input]:
    """(path, what) of the files a model source is read from: a card and its weights, a checkpoint, or a bundle
    folder (for `volumes.outputs.claim_output_folder`: an output never replaces them)."""
    if source is None:
        return []
    from .nnunet import is_results_folder

    path = Path(source)
    if path.is_dir() and ((path / "configs").is_dir() or is_results_folder(path)):  # read as a whole
        return [(path, what)]
    if path.is_file() and path.suffix.lower() != ".json":  # a checkpoint or TorchScript file
        return [(path, what)]
    try:
        card = load_card(source)
    except InputError:  # not a card: the command reports it with its own sentence
        return [(path, what)] if path.exists() else []
    files = ((card.path, f"the model card of {what}"), (weights_path(card), f"the weights of {what}"))
    return [(file, name) for file, name in files if file is not None]
