"""The plain-language findings and the plots of robustness reports, on small hand-made tables (torch-free)."""

from __future__ import annotations

import pytest

from AdvSegAttackLib.evaluation.robustness_report import (
    sweep_figure,
    sweep_summary,
    transfer_figure,
    transfer_summary,
)

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)


def sweep_table(adv_by_value: dict[float, dict[str, float]], ssim: dict[float, float]) -> list[dict]:
    """sweep.csv rows: two organs, clean Dice 0.9 (liver) and 0.7 (spleen), one case."""
    rows = []
    clean = {"liver": 0.9, "spleen": 0.7}
    for value, adv in adv_by_value.items():

        def row(scope, metric, mean, value=value):
            return {"parameter": "eps", "value": f"{value:g}", "scope": scope, "metric": metric, "unit": "",
                    "n": "1", "mean": f"{mean}", "sd": ""}  # fmt: skip

        for organ in clean:
            rows += [row(organ, "dice_clean", clean[organ]), row(organ, "dice_adv", adv[organ])]
        rows.append(row("mean over organs", "mean_dice_clean", sum(clean.values()) / 2))
        rows.append(row("mean over organs", "mean_dice_adv", sum(adv.values()) / 2))
        rows.append(row("perturbation", "ssim_3d", ssim[value]))
    return rows


def test_sweep_findings_name_the_budgets_the_drop_and_the_organs():
    rows = sweep_table(
        {1: {"liver": 0.85, "spleen": 0.6}, 8: {"liver": 0.8, "spleen": 0.2}}, {1: 0.999, 8: 0.98}
    )
    lines = sweep_summary(rows, "eps", "k/255")
    assert lines[0] == "Without attack the model reaches a mean organ Dice of 0.800."
    assert "smallest eps (1 k/255) the attack lowers it to 0.725 (−0.075, SSIM 0.9990)" in lines[1]
    assert "largest (8 k/255) to 0.500 (−0.300, SSIM 0.9800)" in lines[1]
    assert lines[2] == "Dice falls steadily as the budget grows."
    assert (
        "most affected organ is spleen (0.700 → 0.200), the least affected liver (0.900 → 0.800)" in lines[3]
    )
    bumpy = sweep_table(
        {1: {"liver": 0.5, "spleen": 0.5}, 8: {"liver": 0.8, "spleen": 0.6}}, {1: 0.99, 8: 0.98}
    )
    assert "does not fall steadily" in sweep_summary(bumpy, "eps", "")[2]
    flat = sweep_table(
        {1: {"liver": 0.9, "spleen": 0.7}, 8: {"liver": 0.9, "spleen": 0.695}}, {1: 1, 8: 0.99}
    )
    assert (
        sweep_summary(flat, "eps", "")[2] == "Dice hardly changes over this range of eps (by less than 0.01)."
    )
    assert sweep_summary([], "eps", "") == ["No case was scored, so there is nothing to summarise."]
    assert len(sweep_figure(rows, "eps", "k/255", "title").axes) == 2


def test_transfer_findings_compare_white_and_black_box():
    def row(source, target, drop):
        return {"source_model": source, "target_model": target, "box": "white" if source == target else "black",
                "cases": "1", "dice_clean": "0.8", "dice_adv": f"{0.8 - drop}", "dice_drop": f"{drop}"}  # fmt: skip

    rows = [row("a", "a", 0.4), row("a", "b", 0.1), row("b", "a", 0.05), row("b", "b", 0.4)]
    lines = transfer_summary(rows)
    assert "(white-box, diagonal) lowers its mean organ Dice by 0.400" in lines[0]
    assert "by 0.075 on average; the strongest transfer is a → b (−0.100)" in lines[1]
    assert (
        lines[2]
        == "Black-box attacks keep 19 % of the white-box effect: they transfer poorly; knowing the model matters."
    )
    strong = [row("a", "a", 0.4), row("a", "b", 0.3)]
    assert transfer_summary(strong)[2].endswith("they transfer well.")
    assert len(transfer_figure(rows, "title").axes) == 4  # two heat maps and their colour bars
