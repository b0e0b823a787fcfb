"""CPU time of a TotalSegmentator-sized nnU-Net model: segmentation and one attack step, random weights.

TotalSegmentator's weights are not available offline, so this builds an nnU-Net v2 results folder of the shape
its 3 mm model is described with (PlainConvUNet, 6 stages of 32-320 features, two 3³ convolutions per stage,
patch 112 × 112 × 128, 3 mm, 118 classes: a third-party description, not its plans.json; the strides are those
nnU-Net's planner gives such a patch: four poolings of 112, five of 128) with seeded random
weights, and times on the real CT of ../shared (example_ct, 3 mm): `segment` end to end, and the attack stage of
PGD with one and with three steps (the difference is the time of one attack step: one forward and one backward
pass over every window). Prints one Markdown table row per measurement.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nnunet_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "real"
sys.path.insert(0, str(REPO / "Testing"))

STAGES = 6
STRIDES = [[1, 1, 1]] + [[2, 2, 2]] * (STAGES - 2) + [[1, 1, 2]]  # 112 = 7·2⁴, 128 = 4·2⁵


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from nnunet_folders import plain_conv_unet, write_results_folder

    from AdvSegAttackLib.pipeline.case import LoadedModel, run_attack, run_segment
    from AdvSegAttackLib.pipeline.request import AttackRequest
    from AdvSegAttackLib.progress import make_reporter

    torch.set_num_threads(args.threads)
    image = SHARED / "totalsegmentator" / "example_ct.nii.gz"
    root = Path(tempfile.mkdtemp(prefix="nnunet-speed-"))
    labels = ["background", *(f"structure_{k}" for k in range(1, 118))]
    architecture = plain_conv_unet([32, 64, 128, 256, 320, 320], STRIDES, 2)
    folder = write_results_folder(
        root, [3.0, 3.0, 3.0], [112, 112, 128], folds=(0,), architecture=architecture, labels=labels
    )
    model = LoadedModel.load(folder)
    quiet = make_reporter("log", io.StringIO())
    start = time.perf_counter()
    run_segment(model, image, None, root / "segment", quiet)
    segment_seconds = time.perf_counter() - start
    attack_seconds = {}
    for steps in (1, 3):
        request = AttackRequest(
            image=image,
            model=str(folder),
            out=root / f"pgd-{steps}",
            attack="pgd",
            params={"steps": steps},
            preview=False,
        )
        metrics = run_attack(request, quiet, model)
        attack_seconds[steps] = metrics["seconds"]["attack"]
        windows = metrics["attack"]["diagnostics"]["n_windows"]
    step = (attack_seconds[3] - attack_seconds[1]) / 2
    print(f"| segment (end to end) | {segment_seconds:.1f} s | {windows} window(s) of 112×112×128 |")
    print(f"| PGD, one attack step (forward + backward) | {step:.1f} s | {windows} window(s) |")
    print(f"| PGD, 1 step, attack stage | {attack_seconds[1]:.1f} s | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
