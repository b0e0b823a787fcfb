"""`advseg info` (what a volume, label map, model card or nnU-Net results folder is) and `advseg phantom` (a synthetic CT); no torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..progress import Reporter
from ..volumes.outputs import claim_output_folder
from .common import add_common_options


def add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument(
        "--configuration", help="nnU-Net results folder: describe this configuration only (e.g. 3d_fullres)"
    )
    add_common_options(p, device=False)
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace, reporter: Reporter) -> dict:
    """What a volume, label map, model card or nnU-Net results folder (every configuration it holds) is."""
    from ..errors import InputError
    from ..models.nnunet import is_results_folder, results_folder_info
    from ..volumes.io import describe_image, full_suffix, json_safe, read_image, read_label

    path = Path(args.file)
    nnunet = path.is_dir() and not (path / "card.json").is_file() and is_results_folder(path)
    if args.configuration and not nnunet:
        raise InputError(f"--configuration is for nnU-Net results folders; {path} is not one.")
    if nnunet:
        info = results_folder_info(path, args.configuration)
    elif path.suffix.lower() == ".json" or (path / "card.json").is_file() or not path.exists():
        from ..models.cards import load_card

        info = {"kind": "model card", **json.loads(load_card(args.file).to_json())}
    elif full_suffix(path) == ".seg.nrrd":
        info = _label_info(read_label(path), describe_image)
    else:
        image = read_image(path)
        if image.GetPixelID() in _label_types() and _looks_like_labels(image):
            info = _label_info(read_label(path), describe_image)
        else:
            info = {"kind": "image", **describe_image(image)}
    print(json.dumps(json_safe(info), indent=2, allow_nan=False))
    return info


def _looks_like_labels(image) -> bool:
    import numpy as np
    import SimpleITK as sitk

    voxels = sitk.GetArrayViewFromImage(image)
    return voxels.min() >= 0 and len(np.unique(voxels[:: max(1, voxels.shape[0] // 16)])) <= 64


def _label_info(label, describe) -> dict:
    import numpy as np
    import SimpleITK as sitk

    from ..models.labels import BTCV_LABEL_NAMES

    values, counts = np.unique(sitk.GetArrayViewFromImage(label), return_counts=True)
    present = {
        int(v): {"name": BTCV_LABEL_NAMES[v] if v < len(BTCV_LABEL_NAMES) else f"label {v}", "voxels": int(c)}
        for v, c in zip(values, counts, strict=True)
        if v
    }
    return {"kind": "label map (BTCV names)", **describe(label), "labels": present}


def _label_types():
    import SimpleITK as sitk

    return {sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt8, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32}


def add_phantom(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--shape", type=int, nargs=3, default=(128, 112, 96), metavar=("X", "Y", "Z"), help="voxels"
    )
    p.add_argument(
        "--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0), metavar=("X", "Y", "Z"), help="mm"
    )
    p.add_argument("--contrast", default="portal-venous", help="portal-venous or native")
    add_common_options(p, device=False)
    p.set_defaults(func=cmd_phantom)


def cmd_phantom(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Write a synthetic abdominal CT phantom and its BTCV label map."""
    from ..volumes.phantom import write_phantom

    with claim_output_folder(args.out, writes=[f"phantom_seed{args.seed}_*"]):
        image, label = write_phantom(
            args.seed,
            Path(args.out),
            shape=tuple(args.shape),
            spacing=tuple(args.spacing),
            contrast=args.contrast,
        )
    print(f"wrote {image}\nwrote {label}")
    return {"image": str(image), "label": str(label)}


PARSERS = {"info": add_info, "phantom": add_phantom}
