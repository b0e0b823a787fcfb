"""Seconds per volume and peak memory of `advseg segment`, and its ratio to a bare MONAI sliding window.

For each volume (the real CT of ../shared and phantoms of growing size) a fresh child process measures:
the end-to-end segmentation (read the file, model space, sliding window, labels back to the source grid,
write `.nii.gz` and `.seg.nrrd`) and a bare `monai.inferers.sliding_window_inference` call on the same
preprocessed tensor with the same ROI, overlap, batch and blending. Each is run `--repeats` times,
interleaved, and the fastest run counts. Target: end-to-end / bare <= 1.3.

    .venv/bin/python benchmarks/segment_speed.py [--model abdomen-unet] [--repeats 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "real"


def measure(image_path: str, model: str, repeats: int, threads: int, queue) -> None:
    import torch
    from monai.inferers import sliding_window_inference

    from AdvSegAttackLib.models.networks import load_model
    from AdvSegAttackLib.models.segment import segment_image
    from AdvSegAttackLib.volumes.io import read_image, write_image, write_segmentation
    from AdvSegAttackLib.volumes.preprocess import to_model_space

    torch.set_num_threads(threads)
    card, network = load_model(model)
    tensor = to_model_space(read_image(image_path), **card.preprocessing).tensor
    end_to_end, bare = [], []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            start = time.perf_counter()
            image = read_image(image_path)
            labels, _, _ = segment_image(image, card, network, "cpu", 4)
            write_image(labels, Path(out) / "pred.nii.gz")
            write_segmentation(labels, Path(out) / "pred.seg.nrrd", card.label_names, card.label_colors)
            end_to_end.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                sliding_window_inference(
                    tensor, tuple(card.roi_size), 4, network, card.overlap, mode="gaussian"
                )
            bare.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((tuple(tensor.shape[-3:]), min(end_to_end), min(bare), peak_mib))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="abdomen-unet")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    args = parser.parse_args()

    from AdvSegAttackLib.volumes.phantom import write_phantom

    cases = []
    for name in ("totalsegmentator/example_ct.nii.gz", "msd_spleen/sub-spleen2_ct.nii.gz"):
        if (SHARED / name).is_file():
            cases.append((f"real {Path(name).name}", str(SHARED / name)))
        else:
            print(f"skipping {name}: ../shared not found", file=sys.stderr)
    folder = Path(tempfile.mkdtemp(prefix="segment-speed-"))
    for factor, shape in ((1, (128, 112, 96)), (2, (160, 142, 120)), (4, (202, 178, 152))):
        image, _ = write_phantom(7, folder / f"x{factor}", shape=shape, spacing=(3.0, 3.0, 3.0))
        cases.append((f"phantom {factor}x voxels", str(image)))

    context = mp.get_context("spawn")
    rows = []
    for name, path in cases:
        queue = context.Queue()
        child = context.Process(target=measure, args=(path, args.model, args.repeats, args.threads, queue))
        child.start()
        shape, e2e, bare, peak = queue.get()
        child.join()
        rows.append((name, "x".join(map(str, shape)), e2e, bare, e2e / bare, peak))
        print(f"{name}: {e2e:.2f} s end-to-end, {bare:.2f} s bare, ratio {e2e / bare:.2f}", file=sys.stderr)

    print(
        f"\nmodel {args.model}, {args.threads} torch thread(s), fastest of {args.repeats} interleaved runs\n"
    )
    print(
        "| volume | model-space voxels | segment s | bare sliding window s | ratio (target <= 1.3) | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|")
    for name, shape, e2e, bare, ratio, peak in rows:
        print(f"| {name} | {shape} | {e2e:.2f} | {bare:.2f} | {ratio:.2f} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
