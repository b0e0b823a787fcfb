"""What the NaN/Inf scan of NIfTI files costs: `io.read_image` against a bare `SimpleITK.ReadImage`.

SimpleITK's NIfTI reader replaces NaN and ±Inf by 0, so `read_image` scans a floating-point NIfTI file on disk
whenever the volume it read holds exact zeros. Timed (best of 5) on the real CT as stored (integer: no scan),
as float32 `.nii.gz` and `.nii` (the CT's 0 HU voxels trigger the scan) and as float32 without exact zeros.

    .venv/bin/python benchmarks/nifti_scan_cost.py [--image ../shared/data/real/totalsegmentator/example_ct.nii.gz]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from AdvSegAttackLib.volumes.io import read_image

DEFAULT_CT = Path(__file__).resolve().parents[2] / "shared/data/real/totalsegmentator/example_ct.nii.gz"


def best_seconds(run, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_CT)
    args = parser.parse_args()
    image = sitk.ReadImage(str(args.image))
    as_float = sitk.Cast(image, sitk.sitkFloat32)
    without_zeros = sitk.GetImageFromArray(sitk.GetArrayFromImage(as_float) + np.float32(0.5))
    without_zeros.CopyInformation(image)
    with tempfile.TemporaryDirectory() as folder:
        files = {"as stored": args.image}
        for name, volume, suffix in (
            ("float32", as_float, ".nii.gz"),
            ("float32", as_float, ".nii"),
            ("float32 without exact zeros", without_zeros, ".nii.gz"),
        ):
            path = Path(folder) / f"{name.replace(' ', '_')}{suffix}"
            sitk.WriteImage(volume, str(path), useCompression=True)
            files[f"{name} {suffix}"] = path
        print(f"{args.image.name}: {image.GetSize()} voxels, {image.GetPixelIDTypeAsString()}\n")
        print("| file | sitk.ReadImage s | read_image s | ratio |\n|---|---|---|---|")
        for name, path in files.items():
            bare = best_seconds(lambda p=path: sitk.ReadImage(str(p)))
            checked = best_seconds(lambda p=path: read_image(p))
            print(f"| {name} | {bare:.3f} | {checked:.3f} | {checked / bare:.2f} |")


if __name__ == "__main__":
    main()
