"""nnU-Net v2 trained model folders (TotalSegmentator's among them) read as model cards: `plans.json` and
`dataset.json` as plain JSON data (no torch, no nnU-Net), the folds' checkpoints found on disk.

A results folder is either one trained model (`<Trainer>__<Plans>__<configuration>/` with `plans.json`,
`dataset.json` and `fold_<k>/checkpoint_final.pth` or `checkpoint_best.pth`) or a dataset folder holding
several of them (`Dataset297_TotalSegmentator_total_3mm_1559subj/`), one of which `--configuration` picks.
What the engine reproduces (`volumes.nnunet_space`): one CT channel with `CTNormalization`, the
`DefaultPreprocessor`, `resample_data_or_seg_to_shape`, a 3-D configuration without a previous stage, label
values (not regions). Anything else is refused with one sentence. The networks are built and the checkpoints
read by `nnunet_networks` (torch).
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .cards import ModelCard
from .labels import BTCV_LABEL_COLORS, BTCV_LABEL_NAMES, find_organ

PLANS_FILE = "plans.json"
DATASET_FILE = "dataset.json"
CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
# Old plans (nnU-Net < 2.4, e.g. TotalSegmentator's) name the network; newer ones give its class and arguments.
_OLD_NETWORKS = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path} is not a readable JSON file ({error}).") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not an nnU-Net {path.name} (a JSON object is needed).")
    return data


def _is_model_folder(path: Path) -> bool:
    return (path / PLANS_FILE).is_file() and (path / DATASET_FILE).is_file()


def _model_folders(path: Path) -> list[Path]:
    """`path` itself when it is a trained model folder, else the trained model folders in it, by name."""
    if _is_model_folder(path):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and _is_model_folder(p)) if path.is_dir() else []


def is_results_folder(path: str | Path) -> bool:
    """True for an nnU-Net v2 trained model folder, or a folder holding several (one per configuration)."""
    return bool(_model_folders(Path(path)))


def _configuration_of(folder: Path) -> str | None:
    """The configuration named by a trained model folder `<Trainer>__<Plans>__<configuration>`."""
    parts = folder.name.split("__")
    return parts[2] if len(parts) == 3 else None


def _fold_key(fold: str) -> tuple[bool, int, str]:
    """Numbered folds first, by number, then the others (`all`) by name."""
    return (not fold.isdigit(), int(fold) if fold.isdigit() else 0, fold)


def default_folds(present: list[str]) -> list[str]:
    """nnUNetPredictor's folds when none are given: the numbered ones (`all` only when there is no other)."""
    return [f for f in present if f != "all"] or list(present)


@dataclass(frozen=True)
class TrainedModel:
    """One trained model folder as found on disk (no checkpoint is opened): what `--configuration`,
    `--folds` and `--checkpoint` can choose from."""

    folder: Path
    configuration: str | None  # named by the folder (`<Trainer>__<Plans>__<configuration>`), else None
    folds: dict[str, list[str]]  # "final" / "best" -> the folds `fold_<k>` holding that checkpoint

    @property
    def checkpoints(self) -> list[str]:
        """The checkpoints ("final", "best") at least one fold holds."""
        return [name for name, folds in self.folds.items() if folds]


def _folds_with(folder: Path, file: str) -> list[str]:
    """The folds `fold_<k>` of a trained model folder that hold `file`, numbered ones first."""
    return sorted(
        (p.name.removeprefix("fold_") for p in folder.glob("fold_*") if (p / file).is_file()), key=_fold_key
    )


def trained_models(path: str | Path) -> list[TrainedModel]:
    """The trained models of an nnU-Net results folder (`path` itself, or the ones it holds), with the folds
    of each checkpoint; empty when `path` is none. Reads directory entries only: no JSON, no torch."""
    return [
        TrainedModel(
            folder,
            _configuration_of(folder),
            {name: _folds_with(folder, file) for name, file in CHECKPOINTS.items()},
        )
        for folder in _model_folders(Path(path))
    ]


def _default_configuration(folder: Path, plans: dict) -> str | None:
    """The configuration of a trained model folder without --configuration: the one its name gives, else the
    plans' only configuration, else their only 3-D one (None when that leaves a choice)."""
    named = _configuration_of(folder)
    if named is not None:
        return named
    configurations = plans.get("configurations")
    configurations = list(configurations) if isinstance(configurations, dict) else []
    candidates = (
        configurations if len(configurations) == 1 else [c for c in configurations if c.startswith("3d")]
    )
    return candidates[0] if len(candidates) == 1 else None


def model_folder(path: str | Path, configuration: str | None = None) -> Path:
    """The trained model folder of `path` for `configuration` (see the module docstring)."""
    path = Path(path)
    if _is_model_folder(path):
        named = _configuration_of(path)
        if configuration and named and named != configuration:
            raise InputError(
                f"--configuration {configuration}: {path} is the trained model of configuration {named}."
            )
        return path
    candidates = _model_folders(path)
    if configuration:
        chosen = [p for p in candidates if _configuration_of(p) == configuration]
        if len(chosen) != 1:
            known = ", ".join(str(_configuration_of(p) or p.name) for p in candidates)
            raise InputError(
                f"--configuration {configuration}: {path} holds {len(chosen)} trained models of it (it has: {known})."
            )
        return chosen[0]
    if len(candidates) > 1:
        known = ", ".join(str(_configuration_of(p) or p.name) for p in candidates)
        raise InputError(
            f"{path} holds several nnU-Net configurations ({known}); choose one with --configuration."
        )
    return candidates[0]


def _configuration(plans: dict, name: str, path: Path) -> dict:
    """A plans configuration with `inherits_from` resolved (a child's keys override its parent's)."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        known = ", ".join(configurations) if isinstance(configurations, dict) else "none"
        raise InputError(f"{path} has no configuration {name!r} (it has: {known}).")
    chain: list[str] = []
    while name is not None:
        if name in chain or name not in configurations:
            raise InputError(
                f"{path}: configuration {chain[-1]!r} inherits from {name!r}, which cannot be resolved."
            )
        chain.append(name)
        name = configurations[name].get("inherits_from")
    resolved: dict = {}
    for link in reversed(chain):
        resolved.update(configurations[link])
    return resolved


def _architecture(configuration: dict, path: Path) -> dict:
    """{network_class_name, arch_kwargs, _kw_requires_import}; old plans are translated as nnU-Net does."""
    if "architecture" in configuration:
        architecture = configuration["architecture"]
        if not isinstance(architecture, dict) or not {"network_class_name", "arch_kwargs"} <= set(
            architecture
        ):
            raise InputError(
                f"{path}: the configuration's architecture lacks network_class_name or arch_kwargs."
            )
        return {
            "network_class_name": architecture["network_class_name"],
            "arch_kwargs": architecture["arch_kwargs"],
            "_kw_requires_import": list(architecture.get("_kw_requires_import", [])),
        }
    name = configuration.get("UNet_class_name")
    if name not in _OLD_NETWORKS:
        raise InputError(f"{path}: unknown network {name!r} (known: {', '.join(_OLD_NETWORKS)}).")
    try:
        stages = len(configuration["n_conv_per_stage_encoder"])
        base, largest = configuration["UNet_base_num_features"], configuration["unet_max_num_features"]
        per_stage = "n_conv_per_stage" if name == "PlainConvUNet" else "n_blocks_per_stage"
        arch_kwargs = {
            "n_stages": stages,
            "features_per_stage": [min(base * 2**i, largest) for i in range(stages)],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": configuration["conv_kernel_sizes"],
            "strides": configuration["pool_op_kernel_sizes"],
            per_stage: configuration["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": configuration["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }
    except (KeyError, TypeError) as error:
        raise InputError(f"{path}: the old-format plans lack {error}.") from None
    return {
        "network_class_name": _OLD_NETWORKS[name],
        "arch_kwargs": arch_kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _label_names(dataset: dict, path: Path) -> list[str]:
    """Label names by value from dataset.json's `labels` ({name: value}); an `ignore` label is not a class."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path} has no labels.")
    if any(not isinstance(v, int) or isinstance(v, bool) for v in labels.values()):
        raise InputError(f"{path} defines regions (label lists), which the engine does not reproduce.")
    by_value = {v: str(k) for k, v in labels.items() if str(k) != "ignore"}
    if sorted(by_value) != list(range(len(by_value))):
        raise InputError(f"{path}: the label values are not 0, 1, ..., {len(by_value) - 1}.")
    return [by_value[v] for v in range(len(by_value))]


def label_colors(names: list[str]) -> list[list[int]]:
    """The BTCV colour of each name that is a BTCV organ (by the organ-name normaliser), else a spread of hues."""
    colors = []
    for value, name in enumerate(names):
        btcv = find_organ(name, BTCV_LABEL_NAMES) if value else 0
        if btcv is not None:
            colors.append(list(BTCV_LABEL_COLORS[btcv]))
        else:
            red, green, blue = colorsys.hsv_to_rgb((value * 0.618034) % 1.0, 0.55, 0.9)
            colors.append([round(red * 255), round(green * 255), round(blue * 255)])
    return colors


def _checks(plans: dict, dataset: dict, configuration: dict, folder: Path) -> None:
    """One sentence for the first thing the engine cannot reproduce."""
    channels = dataset.get("channel_names", dataset.get("modality", {}))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise InputError(
            f"{folder / DATASET_FILE}: the model has {len(channels)} input channels; one CT is needed."
        )
    schemes = configuration.get("normalization_schemes")
    if schemes != ["CTNormalization"]:
        raise InputError(
            f"{folder / PLANS_FILE}: normalization {schemes} is not reproduced (CTNormalization only)."
        )
    if any(configuration.get("use_mask_for_norm", [False])):
        raise InputError(f"{folder / PLANS_FILE}: use_mask_for_norm is not reproduced.")
    if configuration.get("preprocessor_name", "DefaultPreprocessor") != "DefaultPreprocessor":
        raise InputError(
            f"{folder / PLANS_FILE}: preprocessor {configuration['preprocessor_name']} is not reproduced."
        )
    if configuration.get("previous_stage"):
        raise InputError(
            f"{folder / PLANS_FILE}: a cascade stage (previous stage {configuration['previous_stage']})."
        )
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if configuration.get(key) != "resample_data_or_seg_to_shape":
            raise InputError(f"{folder / PLANS_FILE}: {key} {configuration.get(key)} is not reproduced.")
    if len(configuration.get("patch_size", [])) != 3 or len(configuration.get("spacing", [])) != 3:
        raise InputError(f"{folder / PLANS_FILE}: a 2-D configuration; only 3-D ones are supported.")
    if sorted(plans.get("transpose_forward", [])) != [0, 1, 2]:
        raise InputError(f"{folder / PLANS_FILE}: transpose_forward is not a permutation of 0, 1, 2.")


def _resampling(kwargs: object) -> dict:
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    return {
        "order": int(kwargs.get("order", 3)),
        "order_z": int(kwargs.get("order_z", 0)),
        "force_separate_z": kwargs.get("force_separate_z"),
    }


def nnunet_card(
    path: str | Path,
    configuration: str | None = None,
    folds: list[str] | None = None,
    checkpoint: str = "final",
    tta: bool = False,
    training: bool = False,
) -> ModelCard:
    """The card of an nnU-Net v2 results folder: `folds` (default: every `fold_<k>` with the checkpoint, as
    nnUNetPredictor finds them), `checkpoint` "final" or "best", mirroring test-time augmentation `tta`.
    `training`: the plans and labels of a network to train (`advseg train --nnunet-plans`), no folds needed."""
    folder = model_folder(path, configuration)
    plans, dataset = _read_json(folder / PLANS_FILE), _read_json(folder / DATASET_FILE)
    named = _configuration_of(folder)
    name = configuration or _default_configuration(folder, plans)
    if name is None:
        raise InputError(f"{folder}: its name names no configuration; choose one with --configuration.")
    config = _configuration(plans, name, folder / PLANS_FILE)
    _checks(plans, dataset, config, folder)
    try:
        intensity = plans["foreground_intensity_properties_per_channel"]["0"]
        window = [float(intensity["percentile_00_5"]), float(intensity["percentile_99_5"])]
        mean, std = float(intensity["mean"]), max(float(intensity["std"]), 1e-8)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(
            f"{folder / PLANS_FILE} lacks the foreground intensity properties ({error})."
        ) from None
    if checkpoint not in CHECKPOINTS:
        raise InputError(f"--checkpoint {checkpoint}: choose one of {', '.join(CHECKPOINTS)}.")
    file = CHECKPOINTS[checkpoint]
    present = _folds_with(folder, file)
    if folds:
        missing = [f for f in folds if f not in present]
        if missing:
            raise InputError(f"--folds {missing[0]}: {folder / f'fold_{missing[0]}' / file} does not exist.")
        chosen = list(folds)
    else:
        chosen = default_folds(present)
    if not chosen and not training:
        raise InputError(f"{folder} has no fold_<k>/{file}.")
    names = _label_names(dataset, folder / DATASET_FILE)
    trainer, plans_name = (folder.name.split("__") + ["", ""])[:2] if named else ("", "")
    return ModelCard(
        name=f"nnunet:{folder.parent.name}/{folder.name}" if named else f"nnunet:{folder.name}",
        architecture="nnunet",
        arguments=_architecture(config, folder / PLANS_FILE),
        label_names=names,
        label_colors=label_colors(names),
        spacing_mm=[float(s) for s in config["spacing"]],
        orientation="nnU-Net array axes",
        intensity_window_hu=window,
        roi_size=[int(p) for p in config["patch_size"]],
        overlap=0.5,
        weights=f"fold_{chosen[0]}/{file}" if chosen else None,
        provenance={"source": "nnU-Net v2 results folder", "dataset": plans.get("dataset_name")},
        nnunet={
            "configuration": name,
            "trainer": trainer,
            "plans": plans_name or plans.get("plans_name"),
            "folds": chosen,
            "checkpoints": [f"fold_{f}/{file}" for f in chosen],
            "transpose_forward": [int(i) for i in plans["transpose_forward"]],
            "mean_hu": mean,
            "std_hu": std,
            "resampling_data": _resampling(config.get("resampling_fn_data_kwargs")),
            "resampling_probabilities": _resampling(config.get("resampling_fn_probabilities_kwargs")),
            "step_size": 0.5,
            "tta": bool(tta),
        },
        path=folder / PLANS_FILE,
    )


def results_folder_info(path: str | Path, configuration: str | None = None) -> dict:
    """What `advseg info` says of an nnU-Net folder (torch-free): every trained model it holds, one per
    configuration (`configuration`: that one only), with its folds and their checkpoints, patch size (voxels),
    spacing (mm) and label names, and whether the engine runs it (else the sentence why not); and
    `default_configuration`, the one the other commands use without --configuration (None: they need one)."""
    path = Path(path)
    if configuration:
        folders = [model_folder(path, configuration)]
    else:
        folders = _model_folders(path)
    entries, default = [], None
    for folder in folders:
        try:
            plans, dataset = _read_json(folder / PLANS_FILE), _read_json(folder / DATASET_FILE)
        except InputError as error:
            entries.append(
                {
                    "configuration": _configuration_of(folder),
                    "folder": folder.name,
                    "supported": False,
                    "refused": str(error),
                }
            )
            continue
        if len(folders) == 1:
            default = configuration or _default_configuration(folder, plans)
        if configuration or _configuration_of(folder):
            names = [configuration or _configuration_of(folder)]
        else:  # a folder not named <Trainer>__<Plans>__<configuration>: any of its plans' configurations
            names = list(plans.get("configurations") or {})
        entries += [_trained_model_info(folder, name, plans, dataset) for name in names]
    return {
        "kind": "nnU-Net v2 results folder",
        "path": str(path.resolve()),
        "default_configuration": default,
        "configurations": entries,
    }


def _trained_model_info(folder: Path, name: str, plans: dict, dataset: dict) -> dict:
    """One configuration of `results_folder_info`."""
    named = _configuration_of(folder) is not None
    with_file = {file: _folds_with(folder, file) for file in CHECKPOINTS.values()}
    checkpoints = sorted(
        (f"fold_{fold}/{file}" for file, folds in with_file.items() for fold in folds),
        key=lambda c: (_fold_key(c.split("/")[0].removeprefix("fold_")), c),
    )
    info = {
        "configuration": name,
        "folder": folder.name,
        "trainer": folder.name.split("__")[0] if named else None,
        "plans": folder.name.split("__")[1] if named else plans.get("plans_name"),
        "folds": list(dict.fromkeys(c.split("/")[0].removeprefix("fold_") for c in checkpoints)),
        "checkpoints": checkpoints,
    }
    try:
        config = _configuration(plans, name, folder / PLANS_FILE)
        info["patch_size"], info["spacing_mm"] = config.get("patch_size"), config.get("spacing")
        info["label_names"] = _label_names(dataset, folder / DATASET_FILE)
        _checks(plans, dataset, config, folder)
        if not checkpoints:
            raise InputError(f"{folder} has no fold_<k>/{' or '.join(CHECKPOINTS.values())}.")
    except InputError as error:
        return {**info, "supported": False, "refused": str(error)}
    return {**info, "supported": True}
