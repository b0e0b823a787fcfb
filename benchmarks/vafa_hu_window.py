"""How much of VAFA's effect depends on the HU-window restriction (only voxels strictly inside the model's HU
window may change, see README "HU window").

On a 96³ crop (the centre of the model-space volume) of the real CT of ../shared (example_ct) with the bundled
model, VAFA 3-D at its defaults for `--steps` steps (5), against the reference label, run twice: over the
whole crop (every voxel may change, as the published code) and restricted to the voxels inside the HU window
(what `advseg attack` does). Mean organ Dice (background excluded, organs of the reference in the crop) of
the model's prediction of each tensor, in model space (no writing back to the source grid).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vafa_hu_window.py [--steps 5] [--crop 96] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "real"
CT = SHARED / "totalsegmentator" / "example_ct.nii.gz"
LABEL = SHARED / "btcv13" / "example_ct_btcv13_from_tsv1highres.nii.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--crop", type=int, default=96, help="edge of the cubic crop (model voxels)")
    parser.add_argument("--model", default="abdomen-unet")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not CT.is_file():
        print(f"{CT} not found: this benchmark needs ../shared", file=sys.stderr)
        return 1

    import numpy as np
    import torch

    from AdvSegAttackLib.attacks.base import make_attack
    from AdvSegAttackLib.evaluation.metrics import dice_per_label
    from AdvSegAttackLib.models.networks import load_model
    from AdvSegAttackLib.models.segment import predict_labels
    from AdvSegAttackLib.volumes.io import read_image, read_label
    from AdvSegAttackLib.volumes.preprocess import to_model_space

    torch.set_num_threads(args.threads)
    card, network = load_model(args.model)
    source = read_image(CT)
    space = to_model_space(source, **card.preprocessing)
    reference = space.label_to_model(read_label(LABEL, source, card.label_names))
    shape = space.tensor.shape[2:]
    crop = (slice(None), slice(None)) + tuple(
        slice(max((n - args.crop) // 2, 0), max((n - args.crop) // 2, 0) + min(args.crop, n)) for n in shape
    )
    image, target = space.tensor[crop].contiguous(), reference[crop].contiguous()
    organs = [int(v) for v in torch.unique(target).tolist() if v > 0]

    def mean_dice(tensor) -> float:
        predicted = predict_labels(network, tensor, card).numpy()
        return float(np.nanmean(list(dice_per_label(predicted, target.numpy(), organs).values())))

    print(
        f"example_ct, model {card.name}, crop {'x'.join(map(str, image.shape[2:]))} of "
        f"{'x'.join(map(str, shape))} model voxels, {len(organs)} organs, VAFA {args.steps} steps\n"
    )
    print("| VAFA region | voxels that may change | mean organ Dice | L∞ (model units) | seconds |")
    print("|---|---|---|---|---|")
    print(f"| none (clean) | 0 | {mean_dice(image):.3f} | 0 | - |")
    inside = (image > 0) & (image < 1)
    for label, region in (("whole crop (published)", None), ("inside the HU window (advseg)", inside)):
        start = time.perf_counter()
        result = make_attack("vafa", steps=args.steps).run(
            network,
            image,
            target,
            roi_size=card.roi_size,
            overlap=card.overlap,
            sw_batch_size=4,
            region=region,
        )
        seconds = time.perf_counter() - start
        voxels = image.numel() if region is None else int(region.sum())
        linf = float((result.adversarial - image).abs().max())
        print(
            f"| {label} | {100 * voxels / image.numel():.1f} % | {mean_dice(result.adversarial):.3f} | "
            f"{linf:.3f} | {seconds:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
