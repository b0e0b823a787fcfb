"""Which term of SA²'s loss decides the sign of the ξ update: the share of DCT coefficients decided by DiceCE.

SA² updates ξ ← clip(ξ − η·sign(g)), g = −λ_dice·∂DiceCE/∂ξ + λ_ssim·∂(1 − SSIM3D)/∂ξ. A coefficient's sign is
decided by the DiceCE term where |λ_dice·∂DiceCE/∂ξ| > |λ_ssim·∂(1 − SSIM)/∂ξ| (there the update follows
the attack's objective; elsewhere it follows the similarity term). Both gradients are computed once, at the
attack's own seeded start ξ (seed 0), on the demo's input (the phantom of seed 1000 and its label, the
bundled model, the attackable voxels of the HU window as region), for each preset's ρ and block size;
the share is then read off for both published weightings, 0.01 : 1 (`specified`) and 0.2 : 0.75
(`authors-final`). Only the ratio λ_dice : λ_ssim matters for the sign.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/saa_sign_share.py [--seed 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def gradients(network, card, space, target, region, rho: float, block: int):
    """(∂DiceCE/∂ξ, ∂(1 − SSIM)/∂ξ) over ξ's perturbable coefficients, at SA²'s seeded start (seed 0)."""
    import torch

    from AdvSegAttackLib.attacks.box import ssim_box
    from AdvSegAttackLib.attacks.fast_ssim import ReferenceSSIM
    from AdvSegAttackLib.attacks.objective import SegmentationObjective
    from AdvSegAttackLib.attacks.saa import SpectralNoise

    image = space.tensor
    noise = SpectralNoise(image, region, block, 3, "all")
    generator = torch.Generator(device="cpu").manual_seed(0)  # as ModelSpaceAttack.run with --seed 0
    xi = (1 - rho + 2 * rho * torch.rand(noise.shape, generator=generator)).requires_grad_(True)
    objective = SegmentationObjective(network, target, card.roi_size, card.overlap, 4, region=region)
    x_adv = noise.adversarial(xi)
    _, grad = objective.value_and_grad(x_adv)
    (dice_grad,) = torch.autograd.grad(x_adv, xi, grad, retain_graph=True)
    box = ssim_box(image.shape[2:], region)
    similarity = torch.relu(ReferenceSSIM(image[box.slices], 1.0, 3, 1.5)(x_adv[box.slices])).mean()
    (ssim_grad,) = torch.autograd.grad(1.0 - similarity, xi)
    used = noise.mask.expand(noise.shape) > 0
    return dice_grad[used], ssim_grad[used]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1000, help="phantom seed (the demo's)")
    parser.add_argument("--model", default="abdomen-unet")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from AdvSegAttackLib.attacks.catalogue import ATTACKS
    from AdvSegAttackLib.models.networks import load_model
    from AdvSegAttackLib.volumes.io import read_image, read_label
    from AdvSegAttackLib.volumes.phantom import write_phantom
    from AdvSegAttackLib.volumes.preprocess import to_model_space

    torch.set_num_threads(args.threads)
    card, network = load_model(args.model)
    with tempfile.TemporaryDirectory() as folder:
        image_path, label_path = write_phantom(args.seed, Path(folder))
        source = read_image(image_path)
        label = read_label(label_path, source, card.label_names)
    space = to_model_space(source, **card.preprocessing)
    target = space.label_to_model(label)
    region = space.attackable_mask()
    presets = {p.name: p.values for p in ATTACKS["saa"].presets}
    weightings = [(name, values["lambda_dice"], values["lambda_ssim"]) for name, values in presets.items()]
    shape = "x".join(map(str, space.tensor.shape[-3:]))
    print(f"phantom seed {args.seed}, model {card.name} ({shape} model voxels), ξ at SA²'s start (seed 0)\n")
    header = " | ".join(f"DiceCE decides, λ {dice:g} : {ssim:g} ({name})" for name, dice, ssim in weightings)
    print(f"| ρ, blocks (preset) | perturbable coefficients | {header} | seconds |")
    print("|---|---|" + "---|" * len(weightings) + "---|")
    for name, values in presets.items():
        start = time.perf_counter()
        dice_grad, ssim_grad = gradients(
            network, card, space, target, region, values["rho"], values["block_size"]
        )
        shares = [
            float((lambda_dice * dice_grad.abs() > lambda_ssim * ssim_grad.abs()).double().mean())
            for _, lambda_dice, lambda_ssim in weightings
        ]
        cells = " | ".join(f"{100 * share:.1f} %" for share in shares)
        print(
            f"| ρ {values['rho']}, {values['block_size']}³ ({name}) | {dice_grad.numel()} | {cells} | "
            f"{time.perf_counter() - start:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
