"""Per-organ Dice of the bundled models: on their training CT, on phantoms of unseen seeds, on the MSD spleen
crop.

Prints a Markdown table per model (default: every bundled model); `--update-card` stores it in the card's
provenance ("evaluation"), and `--update-readme` writes the tables into README.md between its markers.

    .venv/bin/python benchmarks/model_dice.py [--model abdomen-unet abdomen-segresnet] [--update-card] [--update-readme]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from readme_section import update_readme_section

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "real"
UNSEEN_PHANTOMS = (1000, 1001, 1002, 1003)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", help="model names or cards (default: every bundled model)")
    parser.add_argument("--update-card", action="store_true")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()

    from AdvSegAttackLib.models.cards import bundled_models

    tables = [model_table(model, args.update_card) for model in args.model or bundled_models()]
    if args.update_readme:
        update_readme_section("model-dice", "\n\n".join(tables))
        print("README.md updated", file=sys.stderr)
    return 0


def model_table(model: str, update_card: bool) -> str:
    """The Markdown table of one model (printed; stored in its card with `update_card`)."""
    import SimpleITK as sitk

    from AdvSegAttackLib.evaluation.metrics import segmentation_report
    from AdvSegAttackLib.models.networks import load_model
    from AdvSegAttackLib.models.segment import segment_image
    from AdvSegAttackLib.volumes.io import read_image, read_label, write_json_atomic
    from AdvSegAttackLib.volumes.phantom import make_phantom

    card, network = load_model(model)

    def score(image, label) -> dict:
        predicted, _, _ = segment_image(image, card, network)
        spacing = tuple(reversed(image.GetSpacing()))
        return segmentation_report(
            sitk.GetArrayFromImage(predicted), sitk.GetArrayFromImage(label), card.label_names, spacing
        )

    columns: dict[str, dict] = {}
    ct = SHARED / "totalsegmentator" / "example_ct.nii.gz"
    if ct.is_file():
        image = read_image(ct)
        label = read_label(SHARED / "btcv13" / "example_ct_btcv13_from_tsv1highres.nii.gz", image)
        columns["example_ct (training CT; TotalSegmentator v1 labels)"] = score(image, label)
        spleen = read_image(SHARED / "msd_spleen" / "sub-spleen2_ct.nii.gz")
        spleen_label = read_label(SHARED / "msd_spleen" / "sub-spleen2_ct_seg-manual.nii.gz", spleen)
        columns["MSD spleen crop (other patient, manual label)"] = score(spleen, spleen_label)
    else:
        print("../shared not found: real-CT columns skipped", file=sys.stderr)
    reports = []
    for seed in UNSEEN_PHANTOMS:
        contrast = "native" if seed % 2 else "portal-venous"
        reports.append(score(*make_phantom(seed, contrast=contrast)))
    phantom_column = f"phantoms of unseen seeds {', '.join(map(str, UNSEEN_PHANTOMS))} (mean)"
    columns[phantom_column] = {
        "organs": {
            name: {"dice": float(np.nanmean([r["organs"][name]["dice"] for r in reports]))}
            for name in reports[0]["organs"]
        },
        "mean_dice": float(np.mean([r["mean_dice"] for r in reports])),
    }

    names = list(columns)
    lines = [
        f"Model `{card.name}`: Dice per organ (background excluded; '-' where the reference lacks the organ).",
        "",
        "| organ | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for organ in card.label_names[1:]:
        cells = []
        for name in names:
            row = columns[name]["organs"].get(organ, {})
            value = row.get("dice") if row.get("voxels_ref", 1) else None  # organ not in the reference
            cells.append("-" if value is None or not np.isfinite(value) else f"{value:.3f}")
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{columns[n]['mean_dice']:.3f}**" for n in names) + " |")
    table = "\n".join(lines)
    print(table)

    if update_card and card.path is not None:
        data = json.loads(card.path.read_text(encoding="utf-8"))
        data["provenance"]["evaluation"] = {
            name: {
                "mean_dice": columns[name]["mean_dice"],
                "dice": {
                    organ: row["dice"]
                    for organ, row in columns[name]["organs"].items()
                    if row.get("dice") is not None and np.isfinite(row["dice"]) and row.get("voxels_ref", 1)
                },
            }
            for name in names
        }
        write_json_atomic(card.path, data)
        print(f"updated {card.path}", file=sys.stderr)
    return table


if __name__ == "__main__":
    sys.exit(main())
