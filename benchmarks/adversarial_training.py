"""Does adversarial training make the bundled model more robust? Fine-tune, then attack both models.

Fine-tunes the bundled `abdomen-unet` with `advseg train --init abdomen-unet --adv-training` (vanilla, and
with `--freq-reg`), on the data the bundled model was trained on (example_ct of ../shared with its BTCV-13
labels and phantoms of seeds 0..5), then runs `advseg attack` (the written file is what gets segmented)
with each evaluation attack against the bundled and the fine-tuned models, on example_ct and on a phantom
of an unseen seed. Prints a Markdown table of mean organ Dice clean and attacked; `--update-readme` writes it
into README.md between the `adversarial-training` markers.

    .venv/bin/python benchmarks/adversarial_training.py [--steps 100] [--objectives vanilla freq-reg]
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
CT = SHARED / "totalsegmentator" / "example_ct.nii.gz"
LABEL = SHARED / "btcv13" / "example_ct_btcv13_from_tsv1highres.nii.gz"
BASE_MODEL = "abdomen-unet"
OBJECTIVES = {"vanilla": [], "freq-reg": ["--freq-reg"]}


def fine_tune(objective: str, args: argparse.Namespace, out: Path) -> tuple[Path, float]:
    from AdvSegAttackLib.cli import main as advseg

    command = [
        "train", "--init", BASE_MODEL, "--name", f"{BASE_MODEL}-adv-{objective}", "--out", str(out),
        "--image", str(CT), "--label", str(LABEL), "--phantoms", "6",
        "--steps", str(args.steps), "--learning-rate", str(args.learning_rate),
        "--volumes-per-step", "1", "--crops-per-volume", "2", "--validate-every", str(args.steps + 1),
        "--seed", "0", "--device", "cpu",
        "--adv-training", *OBJECTIVES[objective], "--train-attack", args.train_attack,
        *(item for param in args.train_attack_param for item in ("--train-attack-param", param)),
    ]  # fmt: skip
    start = time.perf_counter()
    status = advseg(command)
    if status != 0:
        raise SystemExit(f"advseg {' '.join(command)} failed with status {status}")
    return out / "card.json", time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--objectives", nargs="+", choices=sorted(OBJECTIVES), default=list(OBJECTIVES))
    parser.add_argument("--train-attack", default="pgd")
    parser.add_argument(
        "--train-attack-param", action="append", help="NAME=VALUE (repeat; default eps=4 and steps=3)"
    )
    parser.add_argument(
        "--attacks", nargs="+", default=["pgd", "saa:authors-final"], help="NAME or NAME:PRESET"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    args.train_attack_param = args.train_attack_param or ["eps=4", "steps=3"]
    if not (CT.is_file() and LABEL.is_file()):
        raise SystemExit(f"needs the real CT of ../shared ({CT}, {LABEL})")

    import torch

    from AdvSegAttackLib.pipeline.case import run_attack
    from AdvSegAttackLib.pipeline.request import AttackRequest
    from AdvSegAttackLib.progress import TqdmReporter
    from AdvSegAttackLib.volumes.phantom import write_phantom

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="adversarial-training-"))
    models = [(BASE_MODEL, BASE_MODEL, None)]
    for objective in args.objectives:
        card, seconds = fine_tune(objective, args, folder / f"model-{objective}")
        models.append((f"{BASE_MODEL} + adversarial fine-tuning ({objective})", str(card), seconds))
        print(f"{objective}: fine-tuned in {seconds:.0f} s", file=sys.stderr)
    phantom, phantom_label = write_phantom(1000, folder / "phantom")
    volumes = (("example_ct", CT, LABEL), ("phantom seed 1000", phantom, phantom_label))

    rows = []
    for model_name, model, train_seconds in models:
        for volume, image, label in volumes:
            dice = {}
            for attack in args.attacks:
                name, _, preset = attack.partition(":")
                request = AttackRequest(
                    image=image,
                    model=model,
                    out=folder / "cases" / f"{Path(model).parent.name or model}-{name}-{preset}-{volume[:7]}",
                    attack=name,
                    preset=preset or None,
                    label=label,
                    device=torch.device("cpu"),
                    preview=False,
                    command_line=f"benchmarks/adversarial_training.py ({attack})",
                )
                metrics = run_attack(request, TqdmReporter())
                dice["clean"] = metrics["mean_dice_clean"]
                dice[attack] = metrics["mean_dice_adv"]
            rows.append((model_name, volume, dice, train_seconds))

    attack_header = " | ".join(f"Dice {attack}" for attack in args.attacks)
    params = ", ".join(args.train_attack_param)
    lines = [
        f"Fine-tuning: {args.steps} steps from `{BASE_MODEL}`, learning rate {args.learning_rate}, training "
        f"attack {args.train_attack} ({params}) on every crop; the same training data as `{BASE_MODEL}`. "
        "Evaluation attacks at their default settings; mean organ Dice of the written adversarial file "
        "(background excluded), CPU.",
        "",
        f"| model | volume | Dice clean | {attack_header} | fine-tuning s |",
        "|---|---|---|" + "---|" * len(args.attacks) + "---|",
    ]
    for model_name, volume, dice, seconds in rows:
        cells = " | ".join(f"{dice[attack]:.3f}" for attack in args.attacks)
        lines.append(
            f"| {model_name} | {volume} | {dice['clean']:.3f} | {cells} | {'-' if seconds is None else f'{seconds:.0f}'} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.update_readme:
        update_readme_section("adversarial-training", table)
        print("README.md updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
