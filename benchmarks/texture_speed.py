"""Seconds and peak memory of the texture attack's networks and of the attack on one organ, on this CPU.

For each weight source (the bundled CT weights; the distilled 16x folder of ../shared; full-size
Texture-Reformer weights from `--texture-reformer DIR`, or else the full-size architecture at random
weights, which costs the same time and memory), each measurement runs in a fresh process so that its peak
RSS (whole process: Python, torch, data and weights) is its own:

- `slice`: one 512² slice through all five round trips E_k -> D_k (k = 5..1), the network cost of the
  cascade without the level-4/5 patch matching; median of `--repeats` runs after one warm-up.
- `organ`: `texture_attack_volume` (AdvSegAttackLib.attacks.texture.cascade, the catalogue's defaults) on one organ of the
  real CT of ../shared (example_ct, labels btcv13 from TotalSegmentator v1), at working sizes 256² and 512²
  (full-size networks: 256² only by default);
  seconds for the organ and per organ slice.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/texture_speed.py [--threads 1] [--organ 6] [--skip-full]
        [--sizes 256 512] [--full-sizes 256]   (full-size at 512²: >= 20 s of network passes per slice)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DISTILLED = SHARED / "weights" / "collaborative_distillation_16x"
CT = SHARED / "data/real/totalsegmentator/example_ct.nii.gz"
LABELS = SHARED / "data/real/btcv13/example_ct_btcv13_from_tsv1highres.nii.gz"


def _networks(weights: str):
    import torch

    from AdvSegAttackLib.attacks.texture.networks import TextureAutoencoders
    from AdvSegAttackLib.attacks.texture.weights import load_texture_autoencoders

    if weights == "full-random":
        torch.manual_seed(0)
        return TextureAutoencoders(size="full", source="full-size architecture, random weights").freeze()
    return load_texture_autoencoders(weights)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slice_child(weights: str, threads: int, repeats: int, queue) -> None:
    """Median seconds of the five round trips on a 512² slice, and peak RSS (MiB)."""
    import torch

    torch.set_num_threads(threads)
    networks = _networks(weights)
    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for level in (5, 4, 3, 2, 1):
                networks.decode(networks.encode(image, level), level)
            times.append(time.perf_counter() - start)
    queue.put((networks.source, statistics.median(times[1:]), _peak_mib()))


def organ_child(weights: str, threads: int, organ: int, working_size: int, queue) -> None:
    """Seconds of texture_attack_volume on one organ of the real CT, its slice count and peak RSS (MiB)."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from AdvSegAttackLib.attacks.catalogue import attack_config
    from AdvSegAttackLib.attacks.texture.cascade import texture_attack_volume

    torch.set_num_threads(threads)
    networks = _networks(weights)
    image, labels = sitk.ReadImage(str(CT)), sitk.ReadImage(str(LABELS))
    hu = sitk.GetArrayFromImage(image)
    label = np.rint(sitk.GetArrayFromImage(labels)).astype(np.uint8)
    spacing = image.GetSpacing()[::-1]
    slices = int((label == organ).any(axis=(1, 2)).sum())
    config = attack_config("texture", working_size=working_size)
    start = time.perf_counter()
    texture_attack_volume(hu, spacing, label, organ, config, networks)
    queue.put((time.perf_counter() - start, slices, _peak_mib()))


def _run(target, *args):
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(*args, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--organ", type=int, default=6, help="BTCV label of the organ (6 = liver)")
    parser.add_argument("--texture-reformer", help="folder of full-size E1..E5.pth, D1..D5.pth")
    parser.add_argument("--skip-full", action="store_true", help="skip the full-size networks")
    parser.add_argument("--skip-organ", action="store_true", help="networks only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="organ: working sizes")
    parser.add_argument(
        "--full-sizes",
        type=int,
        nargs="*",
        default=[256],
        help="organ: working sizes of the full-size networks",
    )
    args = parser.parse_args()

    sources = ["bundled"]
    if DISTILLED.is_dir():
        sources.append(str(DISTILLED))
    if not args.skip_full:
        sources.append(args.texture_reformer or "full-random")
    print(f"threads: {args.threads}\n")
    print("| weights | 512² slice, 5 round trips (s) | peak RSS (MiB) |")
    print("|---|---|---|")
    for weights in sources:
        source, seconds, peak = _run(slice_child, weights, args.threads, args.repeats)
        print(f"| {source.split(':')[0]} | {seconds:.2f} | {peak:.0f} |", flush=True)

    if args.skip_organ:
        return
    print(
        f"\n| weights | organ {args.organ}, working size | organ slices | s per organ | s per slice | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|")
    for weights in sources:
        for working_size in (
            args.full_sizes if weights in ("full-random", args.texture_reformer) else args.sizes
        ):
            seconds, slices, peak = _run(organ_child, weights, args.threads, args.organ, working_size)
            label = "full-size (random)" if weights == "full-random" else weights.split("/")[-1]
            print(
                f"| {label} | {working_size}² | {slices} | {seconds:.1f} | {seconds / max(slices, 1):.2f} | {peak:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
