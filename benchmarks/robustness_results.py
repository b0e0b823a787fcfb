"""The README's robustness results: budget sweeps and the transfer matrix of the bundled models.

With the command line itself (`advseg sweep`, `advseg transfer`, each writing its report.html), on the real CT
of ../shared (example_ct_sm, the small TotalSegmentator example, with its BTCV-13 labels; the models were
trained on the same patient's full example_ct) and on a phantom of an unseen seed:

- PGD, SegPGD and CosPGD at ε = 1, 2, 4, 8 (/255 of the model's [0, 1] window) and SA² (authors' final
  preset) at ρ = 0.1 … 0.5, against every bundled model, `--steps` steps each;
- the transfer matrix of PGD ε 4 between the bundled models (white-box diagonal, black-box off it).

It prints Markdown tables and a few sentences of what they show; `--update-readme` writes them into README.md
between the `robustness-results` markers. The run folders (with their report.html) stay in `--out`.

    .venv/bin/python benchmarks/robustness_results.py [--steps 3] [--out DIR] [--update-readme]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from readme_section import update_readme_section

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "real"
PHANTOM_SEED = 1000
PHANTOM = {"shape": (72, 64, 36), "spacing": (3.0, 3.0, 5.0)}  # the phantom's 216 x 192 x 180 mm field
SWEEPS = (
    ("pgd", None, "eps", "1,2,4,8"),
    ("segpgd", None, "eps", "1,2,4,8"),
    ("cospgd", None, "eps", "1,2,4,8"),
    ("saa", "authors-final", "rho", "0.1,0.2,0.3,0.4,0.5"),
)


def volumes(folder: Path) -> list[tuple[str, Path, Path]]:
    from AdvSegAttackLib.volumes.phantom import write_phantom

    cases = []
    ct = SHARED / "totalsegmentator" / "example_ct_sm.nii.gz"
    label = SHARED / "btcv13" / "example_ct_sm_btcv13_from_tsv2.nii.gz"
    if ct.is_file() and label.is_file():
        cases.append(("real CT", ct, label))
    else:
        print("../shared not found: the real-CT rows are skipped", file=sys.stderr)
    image, phantom_label = write_phantom(PHANTOM_SEED, folder / "data", **PHANTOM)
    cases.append((f"phantom {PHANTOM_SEED}", image, phantom_label))
    return cases


def advseg(*arguments: str) -> None:
    from AdvSegAttackLib.cli import main

    status = main([*arguments, "--device", "cpu", "--progress", "log", "--no-preview"])
    if status:
        raise SystemExit(f"advseg {arguments[0]} failed with status {status}")


def read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def sweep_cells(folder: Path) -> tuple[float, dict[str, tuple[float, float]]]:
    """(clean mean organ Dice, {value: (attacked mean organ Dice, SSIM 3-D)}) of a single-volume sweep."""
    rows = read(folder / "sweep.csv")
    get = {(r["value"], r["scope"], r["metric"]): float(r["mean"] or "nan") for r in rows}
    values = list(dict.fromkeys(r["value"] for r in rows))
    clean = get[(values[0], "mean over organs", "mean_dice_clean")]
    return clean, {
        v: (get[(v, "mean over organs", "mean_dice_adv")], get[(v, "perturbation", "ssim_3d")])
        for v in values
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="attack steps of every run (default 3)")
    parser.add_argument("--out", type=Path, help="folder of the runs (default: a new temporary folder)")
    parser.add_argument("--models", nargs="+", help="default: every bundled model")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()

    from AdvSegAttackLib.models.cards import bundled_models, load_card

    out = args.out or Path(tempfile.mkdtemp(prefix="robustness-results-"))
    sources = args.models or bundled_models()
    names = {source: load_card(source).name for source in sources}
    models = list(names.values())
    start = time.perf_counter()
    cases = volumes(out)
    results: dict[tuple[str, str, str], tuple[float, dict]] = {}
    for source, model in names.items():
        for volume, image, label in cases:
            for attack, preset, parameter, values in SWEEPS:
                folder = out / "sweeps" / model / volume.replace(" ", "-") / attack
                preset_args = ["--preset", preset] if preset else []
                advseg(
                    "sweep", "--image", str(image), "--label", str(label), "--model", source,
                    "--attack", attack, *preset_args, "--steps", str(args.steps),
                    "--param", f"{parameter}={values}", "--out", str(folder),
                )  # fmt: skip
                results[(model, volume, attack)] = sweep_cells(folder)
    files = [Path(f).resolve() for _, image, label in cases for f in (image, label)]
    data_dir = Path(
        os.path.commonpath(files)
    )  # the datalist's paths are relative to a folder holding them all
    items = [
        {"image": str(files[i].relative_to(data_dir)), "label": str(files[i + 1].relative_to(data_dir))}
        for i in range(0, len(files), 2)
    ]
    datalist = out / "datalist.json"
    datalist.write_text(json.dumps({"validation": items}), encoding="utf-8")
    transfer = out / "transfer"
    advseg(
        "transfer", "--datalist", str(datalist), "--data-dir", str(data_dir),
        "--source-models", *sources, "--target-models", *sources,
        "--attack", "pgd", "--eps", "4", "--steps", str(args.steps), "--out", str(transfer),
    )  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    text = render(
        results, read(transfer / "transfer.csv"), models, [c[0] for c in cases], args.steps, minutes
    )
    print(text)
    print(f"runs and their report.html: {out}", file=sys.stderr)
    if args.update_readme:
        update_readme_section("robustness-results", text)
        print("README.md updated", file=sys.stderr)
    return 0


def render(
    results: dict, transfer: list[dict], models: list[str], volumes: list[str], steps: int, minutes: float
) -> str:
    lines = [
        f"{steps} attack steps per run, α 0.01, seed 0, one CPU thread per process on this 2-core machine; the "
        f"whole script took {minutes:.0f} min. Mean organ Dice (background excluded) of the written adversarial "
        "file against the reference labels, and 3-D SSIM (in parentheses).",
        "",
    ]
    for attack, _, parameter, values in SWEEPS:
        header = values.split(",")
        lines += [
            f"**{attack}** ({parameter} = {', '.join(header)}{'/255' if parameter == 'eps' else ''}):",
            "",
            "| model | volume | clean | " + " | ".join(f"{parameter} {v}" for v in header) + " |",
            "|---|---|---:|" + "---:|" * len(header),
        ]
        for model in models:
            for volume in volumes:
                clean, cells = results[(model, volume, attack)]
                row = " | ".join(f"{cells[v][0]:.3f} ({cells[v][1]:.3f})" for v in header)
                lines.append(f"| {model} | {volume} | {clean:.3f} | {row} |")
        lines.append("")
    lines += [
        f"**Transfer**, PGD ε 4/255, {steps} steps, mean over the {len(volumes)} volumes: attacked Dice (drop) of "
        "the target model, the adversarial volumes crafted on the source model.",
        "",
        "| source \\ target | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    cell = {(r["source_model"], r["target_model"]): r for r in transfer}
    for source in models:
        row = [
            f"{float(cell[(source, t)]['dice_adv']):.3f} (−{float(cell[(source, t)]['dice_drop']):.3f})"
            for t in models
        ]
        lines.append(f"| {source} | " + " | ".join(row) + " |")
    lines += ["", *findings(results, cell, models, volumes)]
    return "\n".join(lines)


def findings(results: dict, transfer: dict, models: list[str], volumes: list[str]) -> list[str]:
    """What the tables show, in sentences computed from them."""
    out = []
    for model in models:
        for volume in volumes:
            clean, pgd = results[(model, volume, "pgd")]
            scores = {a: results[(model, volume, a)][1]["4"][0] for a in ("pgd", "segpgd", "cospgd")}
            best = min(scores, key=scores.get)
            out.append(
                f"- {model}, {volume}: at ε 4/255 PGD takes the mean organ Dice from {clean:.3f} to "
                f"{scores['pgd']:.3f}, SegPGD to {scores['segpgd']:.3f}, CosPGD to {scores['cospgd']:.3f} "
                f"(strongest: {best}); ε 8 gives {pgd['8'][0]:.3f} with PGD at SSIM {pgd['8'][1]:.3f}; SA² at "
                f"ρ 0.5 gives {results[(model, volume, 'saa')][1]['0.5'][0]:.3f} at SSIM "
                f"{results[(model, volume, 'saa')][1]['0.5'][1]:.3f}."
            )
    white = [float(transfer[(m, m)]["dice_drop"]) for m in models]
    black = [float(transfer[(s, t)]["dice_drop"]) for s in models for t in models if s != t]
    if white and black and all(math.isfinite(v) for v in white + black):
        ratio = (sum(black) / len(black)) / max(sum(white) / len(white), 1e-9)
        out.append(
            f"- Transfer: white-box PGD lowers Dice by {sum(white) / len(white):.3f} on average, the same volumes "
            f"given to the other model by {sum(black) / len(black):.3f} ({100 * ratio:.0f} % of the white-box "
            "effect)."
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
