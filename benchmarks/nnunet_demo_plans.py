"""Write an nnU-Net v2 plans folder (plans.json, dataset.json) of a small model for the 3 mm example CT of
../shared, for `advseg train --nnunet-plans`.

One 3-D configuration as nnU-Net's planner lays it out for a 3 mm CT (spacing 3 mm, no transpose, CT
normalisation with the foreground intensity statistics of the training CT: the 0.5/99.5 percentiles, mean and
std of the voxels inside its labels, as nnU-Net's fingerprint computes them; spline resampling of order 3, logits
of order 1), with a PlainConvUNet made small for a CPU (4 stages, 16-128 features, patch 48³); the labels are the
BTCV-13 organs under TotalSegmentator's names, at the BTCV label values.

    .venv/bin/python benchmarks/nnunet_demo_plans.py --out /tmp/abdomen-nnunet-plans
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "Testing"))
from nnunet_folders import plain_conv_unet  # noqa: E402  (the plans' PlainConvUNet entry, one writer)

SHARED = REPO.parent / "shared" / "data" / "real"
IMAGE = SHARED / "totalsegmentator" / "example_ct.nii.gz"
LABEL = SHARED / "btcv13" / "example_ct_btcv13_from_tsv1highres.nii.gz"

NAMES = [  # BTCV-13 values, TotalSegmentator names
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


def foreground_properties(image: Path, label: Path) -> dict:
    """nnU-Net's per-channel foreground intensity statistics of one labelled CT (all labelled voxels)."""
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype(np.float64)
    inside = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0
    voxels = values[inside]
    return {
        "max": float(voxels.max()),
        "mean": float(voxels.mean()),
        "median": float(np.median(voxels)),
        "min": float(voxels.min()),
        "percentile_00_5": float(np.percentile(voxels, 0.5)),
        "percentile_99_5": float(np.percentile(voxels, 99.5)),
        "std": float(voxels.std()),
    }


def plans(properties: dict) -> dict:
    return {
        "dataset_name": "Dataset901_AdvSegAbdomen3mm",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 3.0, 3.0],
        "original_median_shape_after_transp": [112, 101, 122],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [48, 48, 48],
                "median_image_size_in_voxels": [112, 101, 122],
                "spacing": [3.0, 3.0, 3.0],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": plain_conv_unet([16, 32, 64, 128], [[1, 1, 1]] + [[2, 2, 2]] * 3, 2),
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": properties},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {name: value for value, name in enumerate(NAMES)},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    for name, data in (("plans.json", plans(foreground_properties(IMAGE, LABEL))), ("dataset.json", dataset)):
        (args.out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
