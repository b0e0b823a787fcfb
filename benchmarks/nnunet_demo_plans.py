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
from nnunet_folders import LABELS, dataset, plain_conv_unet, plans  # noqa: E402  (the one writer of plans)

SHARED = REPO.parent / "shared" / "data" / "real"
IMAGE = SHARED / "totalsegmentator" / "example_ct.nii.gz"
LABEL = SHARED / "btcv13" / "example_ct_btcv13_from_tsv1highres.nii.gz"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    demo_plans = plans(
        [3.0, 3.0, 3.0],
        [48, 48, 48],
        architecture=plain_conv_unet([16, 32, 64, 128], [[1, 1, 1]] + [[2, 2, 2]] * 3, 2),
        dataset_name="Dataset901_AdvSegAbdomen3mm",
        median_shape=[112, 101, 122],
        foreground=foreground_properties(IMAGE, LABEL),
    )
    for name, data in (("plans.json", demo_plans), ("dataset.json", dataset(LABELS))):
        (args.out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
