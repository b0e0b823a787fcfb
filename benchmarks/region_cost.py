"""What an organ region costs: seconds of the attack and of segment-adv, whole volume against `--region organ`,
next to the fraction of sliding windows that overlap the region (target: cost <= that fraction + 10 %).

Runs `advseg attack` (the engine pipeline, with the reference label) on the real CT of ../shared (example_ct
with its BTCV-13 labels) and on a phantom of 4x the default voxels (202x178x152, seed 5), with PGD and SA²
(default preset) for `--steps` steps: once over the whole volume (no --organ), and once per organ with
`--organ NAME --region organ` (default 10 mm dilation). With a region, a step runs forward and backward
only the windows that overlap the region (the others see the clean image: their loss is computed once,
forward only), and segment-adv runs only the windows whose input the written file changed, reusing the
clean logits of the others. The fraction is the windows the region reaches (its model-grid voxels grown by
one, `pipeline.case.windows_reached`) over all windows. The machine is shared and its speed drifts, so
every run is paired with a reference pass (a plain sliding-window segmentation of the clean volume, timed
before and after the run; their mean): a cost is (organ stage seconds / its reference) over (whole stage
seconds / its reference); the seconds printed are the raw ones.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/region_cost.py [--steps 5] [--threads 1] [--volumes real phantom]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "real"
PHANTOM_4X = (
    202,
    178,
    152,
)  # 4x the voxels of the default phantom (128x112x96), as benchmarks/attack_speed.py
ORGANS = ("liver", "spleen")
ATTACKS = ("pgd", "saa")


def volumes(folder: Path, chosen: list[str]) -> list[tuple[str, Path, Path]]:
    from AdvSegAttackLib.volumes.phantom import write_phantom

    cases = []
    ct = SHARED / "totalsegmentator" / "example_ct.nii.gz"
    label = SHARED / "btcv13" / "example_ct_btcv13_from_tsv1highres.nii.gz"
    if "real" in chosen and ct.is_file() and label.is_file():
        cases.append(("example_ct", ct, label))
    elif "real" in chosen:
        print("../shared not found: real-CT rows skipped", file=sys.stderr)
    if "phantom" in chosen:
        image, phantom_label = write_phantom(5, folder / "phantom", shape=PHANTOM_4X)
        cases.append(("phantom 4x", image, phantom_label))
    return cases


def reference_pass(model, space) -> float:
    """Seconds of a plain sliding-window segmentation of the clean model-space volume (the machine's speed)."""
    start = time.perf_counter()
    model.logits(space)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="abdomen-unet")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--volumes", nargs="+", choices=("real", "phantom"), default=["real", "phantom"])
    args = parser.parse_args()

    import SimpleITK as sitk
    import torch

    from AdvSegAttackLib.evaluation.casefolder import read_case
    from AdvSegAttackLib.pipeline.case import LoadedModel, run_attack, windows_reached
    from AdvSegAttackLib.pipeline.request import AttackRequest
    from AdvSegAttackLib.progress import LogReporter
    from AdvSegAttackLib.volumes.io import read_image
    from AdvSegAttackLib.volumes.preprocess import to_model_space

    torch.set_num_threads(args.threads)
    model = LoadedModel.load(args.model)
    folder = Path(tempfile.mkdtemp(prefix="region-cost-"))
    quiet = LogReporter(open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 (lives as long as the run)
    print(
        f"model {args.model}, {args.threads} thread(s), {args.steps} attack steps; --region organ (10 mm "
        "dilation) against the whole volume (no --organ); cost = organ seconds / whole seconds\n"
    )
    print(
        "| volume | attack | region | windows it reaches | windows the attack runs | attack s | attack cost | "
        "segment-adv s | segment-adv windows run | segment-adv cost | target: fraction + 10 % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, image, label in volumes(folder, args.volumes):
        space = to_model_space(read_image(image), **model.card.preprocessing)
        for attack in ATTACKS:
            whole = None
            for organ in (None, *ORGANS):
                out = folder / f"{attack}-{organ or 'whole'}-{image.stem}"
                request = AttackRequest(
                    image=image,
                    model=args.model,
                    out=out,
                    attack=attack,
                    params={"steps": args.steps},
                    label=label,
                    organs=(organ,) if organ else (),
                    region="organ" if organ else "whole",
                    preview=False,
                    command_line=f"benchmarks/region_cost.py ({attack}, {organ or 'whole'})",
                )
                before = reference_pass(model, space)
                metrics = run_attack(request, quiet, model)
                reference = (before + reference_pass(model, space)) / 2
                seconds = metrics["seconds"]
                diagnostics = metrics["attack"]["diagnostics"]
                if whole is None:
                    whole, whole_reference, total = seconds, reference, diagnostics["n_windows"]
                    print(
                        f"| {name} | {attack} | whole | {total} | {diagnostics['n_active_windows']} | "
                        f"{seconds['attack']:.1f} | 1 | {seconds['segment_adv']:.1f} | {total} | 1 | - |",
                        flush=True,
                    )
                    continue
                region = sitk.GetArrayFromImage(sitk.ReadImage(str(read_case(out).region))).astype(bool)
                fraction = len(windows_reached(space, region, model.card)) / total
                cost = {
                    stage: (seconds[stage] / reference) / (whole[stage] / whole_reference)
                    for stage in ("attack", "segment_adv")
                }
                print(
                    f"| {name} | {attack} | {organ} | {100 * fraction:.0f} % | {diagnostics['n_active_windows']} | "
                    f"{seconds['attack']:.1f} | {cost['attack']:.2f} | {seconds['segment_adv']:.1f} | "
                    f"{diagnostics['segment_adv_windows']} | {cost['segment_adv']:.2f} | <= {fraction + 0.10:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
