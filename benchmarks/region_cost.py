"""What an organ region costs: seconds of the attack and of segment-adv, whole volume against `--region organ`,
next to the fraction of sliding windows that overlap the region (target: cost <= that fraction + 10 %).

Runs `advseg attack` (the engine pipeline, with the reference label) on the real CT of ../shared (example_ct
with its BTCV-13 labels) and on a phantom of 4x the default voxels (202x178x152, seed 5), with PGD and SA²
(default preset) for `--steps` steps: once over the whole volume (no --organ), and once per organ with
`--organ NAME --region organ` (default 10 mm dilation). With a region, a step runs forward and backward
only the windows that overlap the region (the others see the clean image: their loss is computed once,
forward only), and segment-adv runs only the windows whose input the written file changed, reusing the
clean logits of the others. The fraction is the windows the region reaches (its model-grid voxels grown by
one, `pipeline.case.windows_reached`) over all windows; a cost is the organ run's stage seconds over the
whole run's. Seconds are CPU seconds of this single-threaded process (`time.process_time`, read at the
progress events that open and close each stage, so segment-adv includes reading the written file and its
resampling): on a shared machine the wall time mostly measures the other jobs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/region_cost.py [--steps 5] [--threads 1] [--volumes real phantom]
"""

from __future__ import annotations

import argparse
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


def stage_seconds(events: list[tuple[str, float]], stage: str) -> float:
    """CPU seconds of `stage` from (stage, process time) progress events: from the last event before its
    first one to the first event after its last one."""
    stages = [name for name, _ in events]
    first, last = stages.index(stage), len(stages) - 1 - stages[::-1].index(stage)
    return events[min(last + 1, len(events) - 1)][1] - events[max(first - 1, 0)][1]


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
    from AdvSegAttackLib.progress import Reporter
    from AdvSegAttackLib.volumes.io import read_image
    from AdvSegAttackLib.volumes.preprocess import to_model_space

    torch.set_num_threads(args.threads)
    model = LoadedModel.load(args.model)
    folder = Path(tempfile.mkdtemp(prefix="region-cost-"))

    class CPUClock(Reporter):
        """Records (stage, CPU seconds of this process) at every progress event."""

        def __init__(self) -> None:
            self.events: list[tuple[str, float]] = []

        def progress(self, stage: str, step: int, total: int, **values: float) -> None:
            self.events.append((stage, time.process_time()))

    print(
        f"model {args.model}, {args.threads} thread(s), {args.steps} attack steps; --region organ (10 mm "
        "dilation) against the whole volume (no --organ); CPU seconds; cost = organ seconds / whole seconds\n"
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
                clock = CPUClock()
                metrics = run_attack(request, clock, model)
                seconds = {stage: stage_seconds(clock.events, stage) for stage in ("attack", "segment-adv")}
                diagnostics = metrics["attack"]["diagnostics"]
                if whole is None:
                    whole, total = seconds, diagnostics["n_windows"]
                    print(
                        f"| {name} | {attack} | whole | {total} | {diagnostics['n_active_windows']} | "
                        f"{seconds['attack']:.1f} | 1 | {seconds['segment-adv']:.1f} | {total} | 1 | - |",
                        flush=True,
                    )
                    continue
                region = sitk.GetArrayFromImage(sitk.ReadImage(str(read_case(out).region))).astype(bool)
                fraction = len(windows_reached(space, region, model.card)) / total
                cost = {stage: seconds[stage] / whole[stage] for stage in ("attack", "segment-adv")}
                print(
                    f"| {name} | {attack} | {organ} | {100 * fraction:.0f} % | {diagnostics['n_active_windows']} | "
                    f"{seconds['attack']:.1f} | {cost['attack']:.2f} | {seconds['segment-adv']:.1f} | "
                    f"{diagnostics['segment_adv_windows']} | {cost['segment-adv']:.2f} | <= {fraction + 0.10:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
