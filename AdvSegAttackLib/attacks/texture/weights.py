"""Loading the texture auto-encoders from the three weight sources (never unpickling anything).

1. `bundled` (default): the project's own CT auto-encoders in `Resources/TextureModels/ct-16x`
   (`autoencoders.safetensors` + `card.json`, written by `advseg train-texture-ae`); any folder written by
   that command loads the same way.
2. A folder in the layout of the MIT-licensed Collaborative-Distillation 16x weights: `SE1.pth … SE5.pth`,
   `SD1.pth … SD5.pth`, each a dict `{'epoch', 'model': state_dict}`. The `*_aux` 1x1 convolutions of the
   encoders (distillation-only) are dropped; everything else must match exactly.
3. A folder of full-size Texture-Reformer weights: `E1.pth … E5.pth`, `D1.pth … D5.pth`, plain state dicts
   of the normalised VGG-19 encoders and their mirror decoders.

Every `.pth` is read with `torch.load(..., weights_only=True)` (`networks.load_weights_only`); a missing, unexpected or wrongly shaped
tensor is an `InputError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ... import resources_dir
from ...errors import InputError
from ...models.networks import load_weights_only
from .networks import LEVELS, TextureAutoencoders

BUNDLED_NAME = "ct-16x"
OWN_WEIGHTS_FILE = "autoencoders.safetensors"
OWN_CARD_FILE = "card.json"


def texture_models_dir() -> Path:
    """Folder of the bundled texture models: $ADVSEG_TEXTURE_MODELS_DIR, else `Resources/TextureModels`."""
    override = os.environ.get("ADVSEG_TEXTURE_MODELS_DIR")
    if override:
        return Path(override)
    return resources_dir() / "TextureModels"


def distilled_files(level: int) -> tuple[str, str]:
    """File names (encoder, decoder) of `level` in the distilled 16x layout."""
    return f"SE{level}.pth", f"SD{level}.pth"


def texture_reformer_files(level: int) -> tuple[str, str]:
    """File names (encoder, decoder) of `level` in the full-size Texture-Reformer layout."""
    return f"E{level}.pth", f"D{level}.pth"


def weights_layout(folder: Path) -> str:
    """ "ct-16x", "distilled-16x" or "texture-reformer" from the files in `folder` (InputError if none fits)."""
    if (folder / OWN_WEIGHTS_FILE).is_file():
        return "ct-16x"
    if any((folder / name).exists() for k in LEVELS for name in distilled_files(k)):
        return "distilled-16x"
    if any((folder / name).exists() for k in LEVELS for name in texture_reformer_files(k)):
        return "texture-reformer"
    raise InputError(
        f"{folder} holds no texture auto-encoder weights (expected {OWN_WEIGHTS_FILE}, "
        "SE1.pth…SE5.pth + SD1.pth…SD5.pth, or E1.pth…E5.pth + D1.pth…D5.pth)."
    )


def load_texture_autoencoders(weights: str | Path = "bundled", device="cpu") -> TextureAutoencoders:
    """`bundled` (Resources/TextureModels/ct-16x), or a folder: distilled 16x layout (SE1..5.pth, SD1..5.pth;
    dict {'epoch','model'}; `*_aux` layers dropped, everything else loaded strictly) or full-size Texture-Reformer
    layout (E1.pth..E5.pth, D1.pth..D5.pth), or a folder written by `advseg train-texture-ae`.
    weights_only=True. Missing/extra/wrong-shape keys -> InputError naming the file.

    Returns the networks in eval mode, float32, without gradients, on `device`.
    """
    text = str(weights)
    if text in ("bundled", f"bundled:{BUNDLED_NAME}", BUNDLED_NAME) and not Path(text).exists():
        folder = texture_models_dir() / BUNDLED_NAME
        if not (folder / OWN_WEIGHTS_FILE).is_file():
            raise InputError(f"the bundled texture auto-encoders are missing: {folder / OWN_WEIGHTS_FILE}.")
        networks = _load_own(folder, source=f"bundled:{BUNDLED_NAME}")
    else:
        folder = Path(weights).expanduser()
        if not folder.is_dir():
            raise InputError(
                f"--weights {text}: not a folder of texture auto-encoder weights (or 'bundled')."
            )
        layout = weights_layout(folder)
        if layout == "ct-16x":
            networks = _load_own(folder, source=f"ct-16x:{folder}")
        elif layout == "distilled-16x":
            networks = _load_pth_folder(folder, "16x", distilled_files, source=f"distilled-16x:{folder}")
        else:
            networks = _load_pth_folder(
                folder, "full", texture_reformer_files, source=f"texture-reformer:{folder}"
            )
    return networks.freeze().to(device)


def _load_own(folder: Path, source: str) -> TextureAutoencoders:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / OWN_WEIGHTS_FILE
    size = "16x"
    card_path = folder / OWN_CARD_FILE
    if card_path.is_file():
        try:
            size = json.loads(card_path.read_text(encoding="utf-8")).get("size", "16x")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
            raise InputError(f"{card_path} is not a JSON texture model card ({error}).") from None
    if size not in ("16x", "full"):
        raise InputError(f"{card_path}: size must be '16x' or 'full', got {size!r}.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path} is not a readable safetensors file ({error}).") from None
    networks = TextureAutoencoders(size=size, source=source)
    _load_strict(networks, state, path)
    return networks


def _load_pth_folder(folder: Path, size: str, names, source: str) -> TextureAutoencoders:
    """Ten `.pth` files; the distilled encoders' `*_aux` convolutions (distillation only) are dropped."""
    networks = TextureAutoencoders(size=size, source=source)
    for level in LEVELS:
        encoder_name, decoder_name = names(level)
        for name, module in (
            (encoder_name, networks.encoder(level)),
            (decoder_name, networks.decoder(level)),
        ):
            path = folder / name
            state = _read_pth_state_dict(path)
            if size == "16x":
                state = {key: value for key, value in state.items() if "_aux." not in key}
            _load_strict(module, state, path)
    return networks


def _read_pth_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path} is missing (all ten encoder/decoder files of levels 1-5 are needed).")
    data = load_weights_only(path)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise InputError(f"{path} holds no state dict (a dict of tensors, or {{'model': state_dict}}).")
    return data


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise InputError(f"{path} lacks {len(missing)} tensor(s) the network needs, e.g. {missing[0]!r}.")
    if unexpected:
        raise InputError(f"{path} has {len(unexpected)} tensor(s) the network lacks, e.g. {unexpected[0]!r}.")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise InputError(
                f"{path}: {key!r} has shape {tuple(state[key].shape)}, the network needs {tuple(tensor.shape)}."
            )
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
