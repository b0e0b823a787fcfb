"""Networks from model cards (torch, MONAI): building a card's architecture, loading its weights from
safetensors, checkpoints of the MONAI BTCV research code (`{"state_dict": ...}`, keys possibly prefixed
`module.`) given a card or a preset, MONAI bundle folders, and TorchScript files; saving a card with its weights.

A model file never runs code: bundle configs are read as JSON data (`bundles`), checkpoints with
`torch.load(weights_only=True)` only (`load_weights_only`: nothing is ever unpickled), and TorchScript, which
is a program, only with `trust_torchscript` (`--trust-torchscript`).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import InputError
from ..volumes.io import atomic_path, write_text_atomic
from .bundles import bundle_card
from .cards import CARD_FILE, PRESETS, WEIGHTS_FILE, ModelCard, load_card
from .nnunet import is_results_folder, nnunet_card
from .nnunet_networks import load_nnunet


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


BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {
    "unet": _unet,
    "unetr": _unetr,
    "swin-unetr": _swin_unetr,
    "segresnet": _segresnet,
}


def build_network(card: ModelCard) -> torch.nn.Module:
    """A freshly initialised network of the card's architecture and arguments."""
    if card.architecture == "nnunet":
        from .nnunet_networks import fresh_nnunet

        return fresh_nnunet(card)
    try:
        return BUILDERS[card.architecture](card.num_classes, card.roi_size, **card.arguments)
    except TypeError as error:
        raise InputError(
            f"model card {card.path or card.name}: bad {card.architecture} arguments ({error})."
        ) from None


# torch.load(weights_only=True) could run code from a crafted file before 2.6 (CVE-2025-32434) and corrupt
# memory before 2.10 (CVE-2026-24747); older torch builds read only safetensors.
SAFE_WEIGHTS_ONLY_TORCH = (2, 10)


def load_weights_only(
    path: Path, torch_version: str = torch.__version__, allowed_globals: Sequence = ()
) -> object:
    """A pickle-based PyTorch file (checkpoint, .pth, train state) read by torch's weights-only unpickler.

    The one place the engine calls `torch.load`: tensors, numbers, strings and containers only, never a
    Python object, except the plain data types a caller names in `allowed_globals` (torch's `safe_globals`,
    for this call only: nnU-Net checkpoints hold numpy scalars); refused on torch builds whose weights-only
    loader has known code-execution flaws.
    """
    from torch.torch_version import TorchVersion

    if TorchVersion(torch_version) < SAFE_WEIGHTS_ONLY_TORCH:
        raise InputError(
            f"{path} is a pickle-based PyTorch file, which torch {torch_version} cannot read safely (its "
            "weights-only loader has known code-execution flaws, fixed in 2.10); upgrade torch or convert "
            "the file to safetensors."
        )
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
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
    source: str | Path,
    card: str | Path | ModelCard | None = None,
    device: str | torch.device = "cpu",
    trust_torchscript: bool = False,
    nnunet: dict | None = None,
) -> tuple[ModelCard, torch.nn.Module]:
    """(card, network in eval mode on `device`) from a card, bundled name, checkpoint, bundle, TorchScript file
    or nnU-Net v2 results folder (`nnunet`: `nnunet.nnunet_card`'s configuration, folds, checkpoint, tta).

    `card` (a card file, bundled name, preset name or ModelCard) describes checkpoints and TorchScript files,
    which carry no preprocessing of their own. A TorchScript file is code: it is refused unless
    `trust_torchscript` (the `--trust-torchscript` flag) says its author is trusted.
    """
    path = Path(source)
    given = card if isinstance(card, ModelCard) or card is None else load_card(card)
    if path.is_dir() and not (path / CARD_FILE).is_file() and is_results_folder(path):
        model_card = nnunet_card(path, **(nnunet or {}))
        network = load_nnunet(model_card)
    elif nnunet and any(v not in (None, False) for v in nnunet.values()):
        option = next(k for k, v in nnunet.items() if v not in (None, False))
        raise InputError(f"--{option.replace('_', '-')} is for nnU-Net results folders; {source} is not one.")
    elif path.is_dir() and (path / "configs").is_dir() and not (path / CARD_FILE).is_file():
        model_card, weights = bundle_card(path)
        network = build_network(model_card)
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
            network = build_network(model_card)
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
        network = build_network(model_card)
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


def save_model(card: ModelCard, network: torch.nn.Module, folder: str | Path) -> Path:
    """Write `card.json` and `model.safetensors` into `folder` atomically; returns the card path. An nnU-Net
    card is written as an nnU-Net v2 results folder instead (`nnunet_networks.save_nnunet_results`)."""
    from safetensors.torch import save_file

    if card.nnunet:
        from .nnunet_networks import save_nnunet_results

        return save_nnunet_results(card, network, folder)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    card.weights = WEIGHTS_FILE
    write_text_atomic(folder / CARD_FILE, card.to_json() + "\n")
    card.path = folder / CARD_FILE
    return card.path
