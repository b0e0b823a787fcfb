"""`advseg attacks` (the catalogue), `advseg attack` (one case folder) and `advseg demo`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..progress import Reporter
from ..volumes.outputs import claim_output_folder
from .common import (
    add_attack_options,
    add_common_options,
    add_model_options,
    attack_request,
    mean_text,
    nnunet_options,
    number_text,
    print_table,
    resolve_device,
    volume_and_model_inputs,
)


def add_attacks(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print the catalogue as JSON (what the Slicer module reads)"
    )
    add_common_options(p, device=False)
    p.set_defaults(func=cmd_attacks)


def cmd_attacks(args: argparse.Namespace, reporter: Reporter) -> dict:
    """The attack catalogue: a table per attack for people, or the catalogue as JSON (`--json`)."""
    from ..attacks.catalogue import ATTACKS, catalogue

    listing = catalogue()
    if args.json:
        print(json.dumps(listing, indent=2, ensure_ascii=False, allow_nan=False))
        return listing
    for entry in ATTACKS.values():
        needs = "exactly one --organ, no --region or --targeted" if entry.needs_organ else "--organ optional"
        presets = [f"{name}{' (default)' * (name == entry.default_preset)}" for name in entry.preset_names()]
        print(f"\n{entry.name}: {entry.label}\n{entry.description}")
        print(needs + (f"; --preset {', '.join(presets)}" if presets else ""))
        defaults = entry.defaults()
        rows = [[p.flag, _value_text(defaults[p.name]), _values_text(p), p.unit] for p in entry.parameters]
        print_table(rows, ["flag", "default", "values", "unit"])
    return listing


def _values_text(parameter) -> str:
    """What a catalogue parameter accepts: its choices, on | off, its range, or "any"."""
    if parameter.type == "bool":
        return "on | off"
    return " | ".join(parameter.choices or ()) or parameter.range_text() or "any"


def _value_text(value) -> str:
    """A catalogue value as on the command line: on/off for booleans, "-" for none."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "-" if value is None else str(value)


def add_attack(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="CT volume (NIfTI, NRRD, MHA or a DICOM folder)")
    p.add_argument("--label", help="reference label map (the attack target; else the clean prediction)")
    p.add_argument("--out", required=True, help="case folder to write")
    add_attack_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_attack)


def cmd_attack(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Attack one CT volume and write a case folder."""
    from ..evaluation.casefolder import CASE_FILES
    from ..pipeline.case import run_attack

    label = Path(args.label) if args.label else None
    request = attack_request(args, Path(args.image), label, Path(args.out), resolve_device(args.device))
    with claim_output_folder(args.out, volume_and_model_inputs(args), CASE_FILES):
        metrics = run_attack(request, reporter)
    reporter.close()
    if args.progress != "jsonl":
        print_attack_summary(metrics)
        print(f"case folder: {args.out}")
    return metrics


def print_attack_summary(metrics: dict, out=None) -> None:
    """Per-organ table clean -> attacked ("-" where the reference lacks the organ) and the perturbation."""
    out = out or sys.stdout
    rows = [
        [
            name,
            number_text(o.get("dice_clean")),
            number_text(o.get("dice_adv")),
            number_text(o.get("hd95_clean_mm"), 1),
            number_text(o.get("hd95_adv_mm"), 1),
        ]
        for name, o in metrics["organs"].items()
    ]
    print(f"\nDice against {metrics['reference']} (background excluded; '-': not in it):", file=out)
    print_table(rows, ["organ", "Dice clean", "Dice attacked", "HD95 clean mm", "HD95 attacked mm"], out)
    p = metrics["perturbation"]
    print(
        f"mean Dice {mean_text(metrics, 'mean_dice_clean')} -> {mean_text(metrics, 'mean_dice_adv')}; "
        f"mean HD95 mm {mean_text(metrics, 'mean_hd95_clean_mm', 1)} -> {mean_text(metrics, 'mean_hd95_adv_mm', 1)}",
        file=out,
    )
    print(
        f"SSIM 3-D {number_text(p['ssim_3d'], 4)}, axial {number_text(p['ssim_axial_mean'], 4)}; "
        f"PSNR {number_text(p['psnr_db'], 1)} dB; L-inf {number_text(p['linf_hu'], 1)} HU; "
        f"voxels changed {number_text(100 * p['fraction_changed'], 1)} %",
        file=out,
    )


def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image")
    p.add_argument("--label")
    add_model_options(p, card=False)
    p.add_argument("--seed", type=int, default=1000, help="phantom seed (never used in training)")
    p.add_argument("--attack", default="saa", help="attack to run (default saa)")
    p.add_argument("--out", default="out/demo")
    add_common_options(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, reporter: Reporter) -> dict:
    """SAA (default preset) on a phantom (or --image) with the bundled model: table, case folder, preview PNG."""
    from ..pipeline.case import run_attack
    from ..pipeline.request import AttackRequest
    from ..volumes.phantom import write_phantom

    out = Path(args.out)
    device = resolve_device(args.device)
    with claim_output_folder(out, volume_and_model_inputs(args), writes=["input", "case"]):
        if args.image:
            image, label = Path(args.image), Path(args.label) if args.label else None
        else:
            image, label = write_phantom(args.seed, out / "input")
            print(f"phantom of seed {args.seed} (never used in training): {image}", file=sys.stderr)
        request = AttackRequest(
            image=image,
            model=args.model,
            out=out / "case",
            attack=args.attack,
            label=label,
            device=device,
            command_line=args.command_line,
            trust_torchscript=args.trust_torchscript,
            nnunet=nnunet_options(args),
        )
        metrics = run_attack(request, reporter)
    reporter.close()
    print(f"\n{_demo_setting(args.attack)} against {args.model} on {image.name}")
    print_attack_summary(metrics)
    print(f"case folder: {out / 'case'} (preview: {out / 'case' / 'preview.png'})")
    return metrics


def _demo_setting(attack: str) -> str:
    """What the demo ran: the attack and its default preset ("saa, preset Authors' final (ρ 0.4, …)")."""
    from ..attacks.catalogue import attack_entry

    entry = attack_entry(attack)
    preset = next((p for p in entry.presets if p.name == entry.default_preset), None)
    return f"{attack}, preset {preset.label}" if preset is not None else f"{attack} (default parameters)"


PARSERS = {"attacks": add_attacks, "attack": add_attack, "demo": add_demo}
