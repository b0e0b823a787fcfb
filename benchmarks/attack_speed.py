"""Seconds per attack step, peak memory, and the ratio of one step to the floor every published attack pays.

In model space, on the real CT of ../shared (example_ct) with the bundled model, or on any volume with a
MONAI BTCV architecture preset at random weights (`--preset btcv-unet`: the papers' network size, for which
timing does not depend on the weights). The floor: one forward of the model over the same sliding windows in
the same batches, the loss as MONAI computes it (`monai.losses.DiceCELoss` with the attacks' settings:
to_onehot_y, softmax, squared_pred, smooth_nr 0, smooth_dr 1e-6, per window against the target), and one
backward to the input. Target: every attack step <= 1.00 of it (the project's fused DiceCE with its
closed-form backward is what keeps an attack under it). Also, for information, the ratio to the plain-sum
floor (forward, `.sum()`, backward: no loss at all), which shows what the loss costs. Both floors are measured
right after every attack step, inside the progress callback, so each step is paired with floors measured
seconds later (this machine is shared and its speed drifts); a step's time excludes those floor passes, and
each ratio is the median over steps 2..n of step / floor, so one-off set-up (the DCT of the clean image,
window lists) is excluded. Times are CPU seconds of this process (`time.process_time`; run it with
`--threads 1` and OMP_NUM_THREADS=1): on a shared machine the wall time mostly measures the other jobs, while
one thread's CPU time measures the work. Then peak RSS of SAA (32³) on phantoms of 1x, 2x and 4x the voxels, each in a
fresh process.

    .venv/bin/python benchmarks/attack_speed.py [--steps 5] [--model abdomen-unet] [--threads 1]
    .venv/bin/python benchmarks/attack_speed.py --preset btcv-unet --image ../shared/data/real/totalsegmentator/example_ct_sm.nii.gz --skip-memory
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CT = REPO.parent / "shared" / "data" / "real" / "totalsegmentator" / "example_ct.nii.gz"
CASES = (
    ("saa", {"block_size": 8}),
    ("saa", {"block_size": 16}),
    ("saa", {"block_size": 32}),
    ("saa-2d", {"block_size": 32}),
    ("vafa", {"block_size": 32}),
    ("vafa-2d", {"block_size": 32}),
    ("pgd", {}),
    ("bim", {}),
)
TARGET = 1.00  # every attack step against the MONAI-DiceCE floor


def bare_pass(network, objective, tensor) -> float:
    """Seconds of one forward + input-backward over the objective's windows, batch by batch (plain sum)."""
    import torch

    padded = objective._pad(tensor)
    start = time.process_time()
    for batch in objective._batches(objective._windows):
        windows = objective._windows_input(padded, batch).requires_grad_(True)
        (grad,) = torch.autograd.grad(network(windows).sum(), windows)
    return time.process_time() - start


def monai_pass(network, objective, tensor, loss) -> float:
    """Seconds of one forward + MONAI `loss` (per window, against the objective's target) + input-backward
    over the objective's windows, batch by batch: the floor."""
    import torch

    padded = objective._pad(tensor)
    start = time.process_time()
    for batch in objective._batches(objective._windows):
        windows = objective._windows_input(padded, batch).requires_grad_(True)
        logits = network(windows)[objective._valid_crop]
        target = torch.stack([objective.target[(0, slice(None), *inner)] for _, inner in batch])
        (grad,) = torch.autograd.grad(loss(logits, target), windows)
    return time.process_time() - start


def setup(model: str, image_path: Path, threads: int, preset: str | None = None):
    """(card, network, model-space image, target): the model's own clean prediction is the target."""
    import torch

    from AdvSegAttackLib.models.cards import PRESETS
    from AdvSegAttackLib.models.networks import build_network, load_model
    from AdvSegAttackLib.models.segment import predict_labels
    from AdvSegAttackLib.volumes.io import read_image
    from AdvSegAttackLib.volumes.preprocess import to_model_space

    torch.set_num_threads(threads)
    if preset:
        torch.manual_seed(0)
        card = PRESETS[preset]()
        network = build_network(card).eval()
    else:
        card, network = load_model(model)
    space = to_model_space(read_image(image_path), **card.preprocessing)
    target = predict_labels(network, space.tensor, card)
    return card, network, space, target


def step_ratios(card, network, space, target, steps: int) -> list[tuple]:
    """Per case: (label, median s/step, median MONAI floor s, median step/MONAI floor, median plain-sum
    floor s, median step/plain-sum floor)."""
    from monai.losses import DiceCELoss

    from AdvSegAttackLib.attacks.base import make_attack
    from AdvSegAttackLib.attacks.objective import SMOOTH_DR, SegmentationObjective

    loss = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=SMOOTH_DR)
    objective = SegmentationObjective(network, target, card.roi_size, card.overlap, 4)
    bare_pass(network, objective, space.tensor)  # warm-up
    monai_pass(network, objective, space.tensor, loss)
    rows = []
    for name, params in CASES:
        step_times: list[float] = []
        floors: list[float] = []
        plain: list[float] = []
        clock = [time.process_time()]

        def after_step(step, total, _, step_times=step_times, floors=floors, plain=plain, clock=clock):
            step_times.append(time.process_time() - clock[0])
            if step % 2:  # alternate the order of the two floors
                floors.append(monai_pass(network, objective, space.tensor, loss))
                plain.append(bare_pass(network, objective, space.tensor))
            else:
                plain.append(bare_pass(network, objective, space.tensor))
                floors.append(monai_pass(network, objective, space.tensor, loss))
            clock[0] = time.process_time()

        attack = make_attack(name, **{**params, "steps": steps})
        attack.run(
            network,
            space.tensor,
            target,
            roi_size=card.roi_size,
            overlap=card.overlap,
            sw_batch_size=4,
            progress=after_step,
        )
        counted = step_times[1:], floors[1:], plain[1:]
        ratio = statistics.median(step / floor for step, floor in zip(counted[0], counted[1], strict=True))
        plain_ratio = statistics.median(
            step / floor for step, floor in zip(counted[0], counted[2], strict=True)
        )
        per_step, floor, plain_floor = (statistics.median(values) for values in counted)
        label = name + (
            f" {params['block_size']}³" if "block_size" in params and name in ("saa", "vafa") else ""
        )
        label += f" {params['block_size']}²" if name in ("saa-2d", "vafa-2d") else ""
        rows.append((label, per_step, floor, ratio, plain_floor, plain_ratio))
        print(
            f"{label}: {per_step:.2f} s/step, floor {floor:.2f} s, ratio {ratio:.3f}; plain-sum floor "
            f"{plain_floor:.2f} s, ratio {plain_ratio:.3f}",
            file=sys.stderr,
        )
    return rows, objective.n_windows


def peak_memory(model: str, image_path: str, steps: int, threads: int, queue) -> None:
    from AdvSegAttackLib.attacks.base import make_attack

    card, network, space, target = setup(model, Path(image_path), threads)
    make_attack("saa", steps=steps).run(
        network, space.tensor, target, roi_size=card.roi_size, overlap=card.overlap, sw_batch_size=4
    )
    queue.put((tuple(space.tensor.shape[-3:]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="abdomen-unet", help="model card or bundled name")
    parser.add_argument("--preset", help="time a MONAI BTCV architecture preset at random weights instead")
    parser.add_argument("--image", type=Path, default=CT, help="CT volume (default example_ct)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3 (step 1 holds the set-up and is not counted)")
    if not args.image.is_file():
        print(f"{args.image} not found: this benchmark needs ../shared", file=sys.stderr)
        return 1

    card, network, space, target = setup(args.model, args.image, args.threads, args.preset)
    rows, windows = step_ratios(card, network, space, target, args.steps)
    shape = "x".join(map(str, space.tensor.shape[-3:]))
    model = f"{args.preset} (random weights)" if args.preset else args.model
    roi = "x".join(map(str, card.roi_size))
    print(
        f"\nmodel {model} on {args.image.name} ({shape} model voxels, {windows} windows of {roi}), "
        f"{args.threads} thread(s), median over steps 2..{args.steps}\n"
    )
    print(
        "| attack | s/step | floor s (fwd + MONAI DiceCE + bwd) | step / floor (target <= 1.00) | "
        "plain-sum floor s | step / plain-sum floor |"
    )
    print("|---|---|---|---|---|---|")
    for label, per_step, floor, ratio, plain_floor, plain_ratio in rows:
        print(
            f"| {label} | {per_step:.2f} | {floor:.2f} | {ratio:.3f}{'' if ratio <= TARGET else ' (missed)'} | "
            f"{plain_floor:.2f} | {plain_ratio:.3f} |"
        )

    if not args.skip_memory:
        from AdvSegAttackLib.volumes.phantom import write_phantom

        folder = Path(tempfile.mkdtemp(prefix="attack-memory-"))
        context = mp.get_context("spawn")
        print("\n| SAA 32³, 2 steps | model voxels | peak RSS MiB |")
        print("|---|---|---|")
        for factor, shape in ((1, (128, 112, 96)), (2, (160, 142, 120)), (4, (202, 178, 152))):
            image, _ = write_phantom(5, folder / f"x{factor}", shape=shape)
            queue = context.Queue()
            child = context.Process(target=peak_memory, args=(args.model, str(image), 2, args.threads, queue))
            child.start()
            voxels, peak = queue.get()
            child.join()
            print(f"| phantom {factor}x | {'x'.join(map(str, voxels))} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
