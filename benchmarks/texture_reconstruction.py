"""Reconstruction PSNR of the texture auto-encoders on CT slices not used in training.

For every weight source given (default: the bundled CT weights and the distilled 16x folder of ../shared),
each level's round trip D_k(E_k(x)) is measured on axial slices windowed to -135..215 HU, resized to
256² and grey-replicated to RGB (the attack's network input); the output is the mean of the three channels
clipped to [0,1]; PSNR in dB with data range 1, averaged over slices. Held-out sets: the upper abdomen of
example_ct (slices 82..111, = example_ct_sm; the bundled weights were trained on slices 0..81 only) and
the MSD spleen CT (another patient and scanner, contrast-enhanced; never used in training).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/texture_reconstruction.py [--weights bundled DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DISTILLED = SHARED / "weights" / "collaborative_distillation_16x"
HELD_OUT = (
    ("example_ct slices 82-111 (same patient, slab not trained on)", SHARED / "data/real/totalsegmentator/example_ct.nii.gz", 82, None),
    ("MSD spleen_2 (other patient, contrast)", SHARED / "data/real/msd_spleen/sub-spleen2_ct.nii.gz", 0, None),
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["bundled", str(DISTILLED)])
    parser.add_argument("--size", type=int, default=256, help="working size, pixels")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import SimpleITK as sitk
    import torch

    from AdvSegAttackLib.attacks.texture.networks import LEVELS
    from AdvSegAttackLib.attacks.texture.weights import load_texture_autoencoders
    from AdvSegAttackLib.training.texture_autoencoders import axial_slices, reconstruction_psnr, slices_tensor

    torch.set_num_threads(args.threads)
    held_out = [
        (
            name,
            slices_tensor(axial_slices(sitk.ReadImage(str(path)), (-135.0, 215.0), start, stop), args.size),
        )
        for name, path, start, stop in HELD_OUT
    ]
    print(f"| weights | held-out slices | n | {' | '.join(f'L{k} dB' for k in LEVELS)} |")
    print(f"|---|---|---|{'---|' * len(LEVELS)}")
    for weights in args.weights:
        networks = load_texture_autoencoders(weights)
        label = networks.source.split(":")[0]
        for name, slices in held_out:
            values = [reconstruction_psnr(networks, slices, k) for k in LEVELS]
            print(f"| {label} | {name} | {len(slices)} | {' | '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
