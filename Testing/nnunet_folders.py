"""Small nnU-Net v2 results folders for the tests: plans.json and dataset.json as nnU-Net 2.8's planner writes
them, fold_<k>/checkpoint_final.pth in nnU-Net's checkpoint format (the fields of nnUNetTrainer.save_checkpoint,
the training log of nnU-Net's own LocalLogger with its numpy float64 values, an SGD optimizer state), with
seeded random weights of dynamic_network_architectures' PlainConvUNet. Only the checkpoints need torch:
`write_plans_folder` (plans.json, dataset.json) runs without it (the torch-free tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The BTCV-13 organs at their BTCV label values (as the phantoms' label maps), under TotalSegmentator's names.
LABELS = [
    "background",
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
]


def plain_conv_unet(features: list[int], strides: list[list[int]], convs_per_stage: int) -> dict:
    """The plans' `architecture` entry of a PlainConvUNet (3³ convolutions, instance norm, leaky ReLU) as
    nnU-Net's planner writes it: one stage per entry of `features` and `strides`."""
    stages = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * stages,
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [convs_per_stage] * stages,
            "n_conv_per_stage_decoder": [convs_per_stage] * (stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


ARCHITECTURE = plain_conv_unet([8, 16, 32], [[1, 1, 1], [2, 2, 2], [2, 2, 2]], 1)


# CT foreground intensity statistics like example_ct's (HU): what nnU-Net's fingerprint writes per channel.
FOREGROUND = {
    "max": 1500.0,
    "mean": 60.5,
    "median": 55.0,
    "min": -1024.0,
    "percentile_00_5": -950.0,
    "percentile_99_5": 1180.0,
    "std": 210.0,
}


def plans(
    spacing: list[float],
    patch: list[int],
    transpose: list[int] = (0, 1, 2),
    configuration: str = "3d_fullres",
    architecture: dict = ARCHITECTURE,
    *,
    dataset_name: str = "Dataset999_AdvSegTest",
    median_shape: list[int] = (100, 100, 100),
    foreground: dict = FOREGROUND,
) -> dict:
    """A plans.json with one 3-D configuration as nnU-Net 2.8's planner writes it: `spacing` (mm) and
    `patch` (voxels) after `transpose`, CT normalisation with the `foreground` intensity statistics (HU),
    spline resampling of order 3 (data) and 1 (segmentations, logits), the `architecture` entry
    (`plain_conv_unet`), `median_shape` the dataset's median image size (voxels)."""
    backward = [int(i) for i in np.argsort(transpose)]
    resampling = {"order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(median_shape),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose),
        "transpose_backward": backward,
        "configurations": {
            configuration: {
                "data_identifier": f"nnUNetPlans_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": list(median_shape),
                "spacing": list(spacing),
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, **resampling},
                "resampling_fn_seg_kwargs": {"is_seg": True, **resampling, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, **resampling, "order": 1},
                "architecture": architecture,
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(foreground)},
    }


def dataset(labels: list[str] = LABELS) -> dict:
    """A dataset.json of one CT channel and `labels` at the values 0, 1, ... (no regions)."""
    return {
        "channel_names": {"0": "CT"},
        "labels": {name: value for value, name in enumerate(labels)},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }


def checkpoint(
    weights: dict, plans_dict: dict, configuration: str, fold: int, mirror_axes, labels=LABELS
) -> dict:
    """A checkpoint with the fields and value types of nnUNetTrainer.save_checkpoint."""
    import torch
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    logger = LocalLogger()
    for key, value in [
        ("mean_fg_dice", np.float64(0.71)),
        ("ema_fg_dice", np.float64(0.69)),
        ("dice_per_class_or_region", [np.float64(0.7)] * (len(labels) - 1)),
        ("train_losses", np.float64(-0.5)),
        ("val_losses", np.float64(-0.4)),
        ("lrs", 0.01),
        ("epoch_start_timestamps", 1.7e9),
        ("epoch_end_timestamps", 1.7e9 + 60),
    ]:
        logger.log(key, value, 0)
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=0.01, momentum=0.99, nesterov=True)
    return {
        "network_weights": weights,
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": logger.get_checkpoint(),
        "_best_ema": np.float64(0.69),
        "current_epoch": 1,
        "init_args": {
            "plans": plans_dict,
            "configuration": configuration,
            "fold": fold,
            "dataset_json": dataset(labels),
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": mirror_axes,
    }


def write_plans_folder(
    root: Path,
    spacing: list[float],
    patch: list[int],
    transpose: list[int] = (0, 1, 2),
    configuration: str = "3d_fullres",
    architecture: dict = ARCHITECTURE,
    labels: list[str] = LABELS,
) -> Path:
    """`root/Dataset999_AdvSegTest/nnUNetTrainer__nnUNetPlans__<configuration>/` (returned) with its plans.json
    and dataset.json, no fold yet."""
    folder = root / "Dataset999_AdvSegTest" / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    plans_dict = plans(list(spacing), list(patch), list(transpose), configuration, architecture)
    (folder / "plans.json").write_text(json.dumps(plans_dict, indent=2), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset(labels), indent=2), encoding="utf-8")
    return folder


def write_results_folder(
    root: Path,
    spacing: list[float],
    patch: list[int],
    transpose: list[int] = (0, 1, 2),
    configuration: str = "3d_fullres",
    folds: tuple[int, ...] = (0, 1),
    seed: int = 0,
    mirror_axes=(0, 1, 2),
    architecture: dict = ARCHITECTURE,
    labels: list[str] = LABELS,
) -> Path:
    """`write_plans_folder`'s folder (returned) with fold_<k>/checkpoint_final.pth for every fold: random
    weights seeded per fold, the final layer scaled ×20 so that the classes' logits are well apart."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    folder = write_plans_folder(root, spacing, patch, transpose, configuration, architecture, labels)
    plans_dict = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    kwargs = dict(architecture["arch_kwargs"])
    kwargs.update(
        conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU, dropout_op=None
    )
    for fold in folds:
        torch.manual_seed(seed + fold)
        network = PlainConvUNet(input_channels=1, num_classes=len(labels), deep_supervision=False, **kwargs)
        weights = {k: v.clone() for k, v in network.state_dict().items()}
        for key in weights:
            if key.startswith(f"decoder.seg_layers.{kwargs['n_stages'] - 2}."):
                weights[key] = weights[key] * 20
        (folder / f"fold_{fold}").mkdir()
        torch.save(
            checkpoint(weights, plans_dict, configuration, fold, mirror_axes, labels),
            folder / f"fold_{fold}" / "checkpoint_final.pth",
        )
    return folder
