"""nnU-Net v2 networks (torch): the plans' network built with `dynamic_network_architectures` (the package nnU-Net
itself uses) from an allow-list of classes and operations (nnU-Net would import whatever the plans name), the
folds' checkpoints read by the one weights-only loader with exactly the numpy scalar types nnU-Net's
checkpoints hold, and `NnUNetNetwork`: z-score, every fold, mirroring test-time augmentation, as one module on
the engine's [0, 1] model space.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .cards import ModelCard

# The classes a plans.json may name (any module path under dynamic_network_architectures.architectures: old plans
# name `residual_unet.ResidualEncoderUNet`, which nnU-Net itself finds by class name).
NETWORK_CLASSES = ("PlainConvUNet", "ResidualEncoderUNet")
_OPERATIONS = {
    "conv_op": (torch.nn.Conv3d,),
    "norm_op": (torch.nn.InstanceNorm3d, torch.nn.BatchNorm3d),
    "dropout_op": (torch.nn.Dropout3d,),
    "nonlin": (torch.nn.LeakyReLU, torch.nn.ReLU, torch.nn.GELU),
}


def _operation(key: str, name: object, path: Path) -> type[torch.nn.Module] | None:
    """The torch class a plans entry names (`torch.nn.X` or its full module path), from the allow-list."""
    if name is None:
        return None
    for allowed in _OPERATIONS.get(key, ()):
        if name in (f"torch.nn.{allowed.__name__}", f"{allowed.__module__}.{allowed.__name__}"):
            return allowed
    raise InputError(f"{path}: {key} {name!r} is not an operation the engine builds.")


def build_nnunet_network(card: ModelCard) -> torch.nn.Module:
    """The plans' network (deep supervision off, as nnUNetPredictor builds it) with fresh weights."""
    from dynamic_network_architectures.architectures import unet

    path = card.path
    class_path = str(card.arguments.get("network_class_name", ""))
    module, _, class_name = class_path.rpartition(".")
    if (
        not module.startswith("dynamic_network_architectures.architectures")
        or class_name not in NETWORK_CLASSES
    ):
        raise InputError(
            f"{path}: network {class_path!r} is not one the engine builds ({', '.join(NETWORK_CLASSES)})."
        )
    arguments = dict(card.arguments.get("arch_kwargs", {}))
    for key in card.arguments.get("_kw_requires_import", []):
        arguments[key] = _operation(key, arguments.get(key), path)
    arguments["deep_supervision"] = False
    try:
        return getattr(unet, class_name)(input_channels=1, num_classes=card.num_classes, **arguments)
    except (TypeError, ValueError, AssertionError) as error:
        raise InputError(f"{path}: bad {class_name} arguments in the plans ({error}).") from None


# What nnU-Net's checkpoints hold beyond tensors, numbers, strings, containers and torch.device (allowed by
# torch itself): numpy float scalars in the training log and `_best_ema` (pickled as numpy.core.multiarray.scalar
# under numpy 1, numpy._core.multiarray.scalar under numpy 2, with their dtype).
def checkpoint_globals() -> list:
    """The numpy types `read_checkpoint` allows (numpy 1 and 2 name the scalar's module differently)."""
    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
    dtypes = getattr(np, "dtypes", None)
    float_dtypes = [getattr(dtypes, n) for n in ("Float64DType", "Float32DType") if hasattr(dtypes, n)]
    return [np.dtype, *float_dtypes, scalar, (scalar, "numpy.core.multiarray.scalar")]


def read_checkpoint(path: Path, configuration: str) -> tuple[dict[str, torch.Tensor], list[int] | None]:
    """(network weights, mirroring axes allowed at inference) of an nnU-Net checkpoint, read weights-only."""
    from .networks import load_weights_only

    checkpoint = load_weights_only(path, allowed_globals=checkpoint_globals())
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{path} is not an nnU-Net checkpoint (no network_weights of tensors).")
    init = checkpoint.get("init_args")
    trained = init.get("configuration") if isinstance(init, dict) else None
    if trained is not None and trained != configuration:
        raise InputError(f"{path} was trained for configuration {trained}, not {configuration}.")
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return weights, None if axes is None else [int(a) for a in axes]


class NnUNetNetwork(torch.nn.Module):
    """An nnU-Net model on the engine's model space: x in [0, 1] over `window` HU -> z = (HU − mean) / std ->
    the mean of every fold's logits (nnUNetPredictor averages the folds' logits), each with mirroring test-time
    augmentation over `mirror_axes` when given (the mean of the logits of every flip combination)."""

    def __init__(
        self,
        folds: list[torch.nn.Module],
        window: tuple[float, float],
        mean: float,
        std: float,
        mirror_axes: list[int] | None,
    ) -> None:
        super().__init__()
        self.folds = torch.nn.ModuleList(folds)
        self.window, self.mean, self.std, self.mirror_axes = window, mean, std, mirror_axes
        low, high = window
        self.scale, self.shift = (high - low) / std, (low - mean) / std
        self.flips = [()]
        if mirror_axes:
            spatial = [a + 2 for a in mirror_axes]
            self.flips += [c for n in range(1, len(spatial) + 1) for c in itertools.combinations(spatial, n)]

    def fold_models(self) -> list[NnUNetNetwork]:
        """One model per fold, sharing this one's networks (the sliding window blends folds one by one)."""
        if len(self.folds) == 1:
            return [self]
        settings = (self.window, self.mean, self.std, self.mirror_axes)
        return [NnUNetNetwork([network], *settings) for network in self.folds]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x * self.scale + self.shift
        total = None
        for network in self.folds:
            for axes in self.flips:
                out = network(z.flip(axes)).flip(axes) if axes else network(z)
                total = out if total is None else total + out
        return total / (len(self.folds) * len(self.flips))


def fresh_nnunet(card: ModelCard) -> NnUNetNetwork:
    """One fold of the plans' network with fresh weights behind the z-score (what `advseg train` trains)."""
    return NnUNetNetwork(
        [build_nnunet_network(card)],
        tuple(card.intensity_window_hu),
        card.nnunet["mean_hu"],
        card.nnunet["std_hu"],
        None,
    )


TRAINING_RECORD = "advseg_training.json"  # beside plans.json: the card's provenance (command, data, scores)


def save_nnunet_results(card: ModelCard, network: NnUNetNetwork, folder: str | Path) -> Path:
    """Write `network` (one fold) as an nnU-Net v2 results folder `folder`: plans.json and dataset.json of the
    card's source folder, fold_0/checkpoint_final.pth with the fields nnUNetPredictor reads (network_weights,
    init_args with plans, configuration, fold and dataset_json, trainer_name, inference_allowed_mirroring_axes
    None: the engine's training does not mirror) and `advseg_training.json` (the card's provenance);
    returns the path of plans.json."""
    import json

    from ..volumes.io import atomic_path, write_text_atomic

    folder = Path(folder)
    plans = json.loads((card.path.parent / "plans.json").read_text(encoding="utf-8"))
    dataset = json.loads((card.path.parent / "dataset.json").read_text(encoding="utf-8"))
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().clone() for k, v in network.folds[0].state_dict().items()}
    checkpoint = {
        "network_weights": weights,
        "init_args": {
            "plans": plans,
            "configuration": card.nnunet["configuration"],
            "fold": 0,
            "dataset_json": dataset,
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": None,
    }
    with atomic_path(folder / "fold_0" / "checkpoint_final.pth") as tmp:
        torch.save(checkpoint, tmp)
    for name, data in (("plans.json", plans), ("dataset.json", dataset), (TRAINING_RECORD, card.provenance)):
        write_text_atomic(folder / name, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return folder / "plans.json"


def load_nnunet(card: ModelCard) -> torch.nn.Module:
    """`NnUNetNetwork` of an nnU-Net card (`nnunet.nnunet_card`); records the mirroring axes in the card."""
    from .networks import _load_state

    settings = card.nnunet
    folds, axes = [], None
    for relative in settings["checkpoints"]:
        path = card.path.parent / relative
        weights, axes = read_checkpoint(path, settings["configuration"])
        network = build_nnunet_network(card)
        _load_state(network, weights, path)
        folds.append(network)
    settings["mirror_axes"] = axes
    if settings["tta"] and not axes:
        raise InputError(
            f"--tta: {card.path.parent} allows no mirroring at inference (its trainer disabled it)."
        )
    return NnUNetNetwork(
        folds,
        tuple(card.intensity_window_hu),
        settings["mean_hu"],
        settings["std_hu"],
        axes if settings["tta"] else None,
    )
