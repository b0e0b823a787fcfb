"""The README's results table: every attack at its default setting against the bundled model.

Runs `advseg attack` (the engine pipeline: the written file is what gets segmented) for each attack on the
real CT of ../shared (example_ct with its BTCV-13 labels) and on a phantom of an unseen seed, and prints a
Markdown table: mean organ Dice clean and attacked (background excluded), HD95, SSIM (3-D and axial mean),
PSNR, L-inf in HU, seconds. `--update-readme` writes the table into README.md between the markers of
`--section` (default attack-table; the nnU-Net model's rows go to attack-table-nnunet).

    .venv/bin/python benchmarks/attack_table.py [--attacks saa pgd ...] [--update-readme]
    .venv/bin/python benchmarks/attack_table.py --model FOLDER --attacks pgd saa vafa --volumes real \
        --section attack-table-nnunet --update-readme
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from readme_section import update_readme_section

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "real"
ATTACKS = (
    "gn",
    "fgsm",
    "bim",
    "pgd",
    "segpgd",
    "cospgd",
    "vafa",
    "vafa-2d",
    "saa",
    "saa-2d",
    "saa:specified",
)


def volumes(folder: Path) -> list[tuple[str, Path, Path]]:
    from AdvSegAttackLib.volumes.phantom import write_phantom

    cases = []
    ct = SHARED / "totalsegmentator" / "example_ct.nii.gz"
    label = SHARED / "btcv13" / "example_ct_btcv13_from_tsv1highres.nii.gz"
    if ct.is_file() and label.is_file():
        cases.append(("real CT (example_ct)", ct, label))
    else:
        print("../shared not found: real-CT rows skipped", file=sys.stderr)
    image, phantom_label = write_phantom(1000, folder / "phantom")
    cases.append(("phantom seed 1000", image, phantom_label))
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="abdomen-unet")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), help="NAME or NAME:PRESET")
    parser.add_argument("--volumes", nargs="+", choices=("real", "phantom"), default=["real", "phantom"])
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--section", default="attack-table", help="README markers to write between")
    args = parser.parse_args()

    import torch

    from AdvSegAttackLib.pipeline.case import run_attack
    from AdvSegAttackLib.pipeline.request import AttackRequest
    from AdvSegAttackLib.progress import TqdmReporter

    folder = Path(tempfile.mkdtemp(prefix="attack-table-"))
    rows = []
    window = None  # the model's HU window, on which PSNR and SSIM are computed
    for name, image, label in volumes(folder):
        if ("real" if name.startswith("real") else "phantom") not in args.volumes:
            continue
        for attack in args.attacks:
            name_only, _, preset = attack.partition(":")  # NAME or NAME:PRESET
            start = time.perf_counter()
            request = AttackRequest(
                image=image,
                model=args.model,
                out=folder / f"{name_only}-{preset or 'default'}-{image.stem}",
                attack=name_only,
                preset=preset or None,
                label=label,
                device=torch.device("cpu"),
                preview=False,
                command_line=f"benchmarks/attack_table.py ({attack})",
            )
            metrics = run_attack(request, TqdmReporter())
            seconds = time.perf_counter() - start
            p = metrics["perturbation"]
            window = p["window_hu"]
            rows.append(
                (
                    name,
                    attack,
                    metrics["mean_dice_clean"],
                    metrics["mean_dice_adv"],
                    metrics["mean_hd95_clean_mm"],
                    metrics["mean_hd95_adv_mm"],
                    p["ssim_3d"],
                    p["ssim_axial_mean"],
                    p["psnr_db"],
                    p["linf_hu"],
                    seconds,
                )
            )
            print(
                f"{name} {attack}: Dice {rows[-1][2]:.3f} -> {rows[-1][3]:.3f} in {seconds:.0f} s",
                file=sys.stderr,
            )

    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"Model `{Path(args.model).name}`, each attack at its default setting (SA²: the authors' final preset"
        f"{'; and SA² with the specified preset' if 'saa:specified' in args.attacks else ''}), CPU (2 cores). "
        "Dice is the mean over the organs "
        "in the reference (background excluded); SSIM 3-D (Gaussian 11³) and axial mean (7×7, as the papers report); "
        f"PSNR on the model's {window[0]:g}…{window[1]:g} HU window; the attacked numbers are of the written "
        "adversarial file.",
        "",
        "| volume | attack | Dice clean | Dice attacked | HD95 clean mm | HD95 attacked mm | SSIM 3-D | SSIM axial | PSNR dB | L∞ HU | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name, attack, dc, da, hc, ha, s3, s2, psnr, linf, seconds = row
        lines.append(
            f"| {name} | {attack} | {number(dc, 3)} | {number(da, 3)} | {number(hc, 1)} | {number(ha, 1)} | "
            f"{number(s3, 4)} | {number(s2, 4)} | {number(psnr, 1)} | {number(linf, 1)} | {seconds:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.update_readme:
        update_readme_section(args.section, table)
        print("README.md updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
