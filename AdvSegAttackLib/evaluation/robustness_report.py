"""Plots and the self-contained `report.html` of robustness runs: budget sweeps, transfer matrices and
dataset runs (`advseg sweep`, `advseg transfer`, `advseg attack-dataset`/`evaluate`, `advseg report DIR`).

Torch-free: it reads what the runs wrote (their settings JSON and CSV tables) and draws with matplotlib's Agg
canvas. The report has no scripts and no remote files: plots are embedded PNGs, the per-case table is embedded
both as an HTML table and as a `data:` link to `cases.csv`.

Tables it reads (written by `datasets.sweep` and `datasets.transfer`, see there):

- `sweep.csv`: `parameter, value, scope, metric, unit, n, mean, sd` — the dataset-run aggregate of each value
  (scope: an organ, "mean over organs" or "perturbation").
- `transfer.csv`: `source_model, target_model, box, cases, dice_clean, dice_adv, dice_drop` (and their sd),
  box "white" on the diagonal (source = target), "black" off it.
- `cases.csv`: one row per case × organ (× value or source/target), see `datasets.runs.case_rows`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..volumes.io import atomic_path, write_text_atomic

ALL_ORGANS = "mean over organs"
"""The scope of the per-case organ means in aggregate tables (`datasets.runs` writes it)."""
REPORT = "report.html"
SWEEP_SETTINGS, SWEEP_CSV, SWEEP_PNG = "sweep.json", "sweep.csv", "sweep.png"
TRANSFER_SETTINGS, TRANSFER_CSV, TRANSFER_PNG = "transfer.json", "transfer.csv", "transfer.png"
RUN_SETTINGS, AGGREGATE_CSV, CASES_CSV = "run.json", "aggregate.csv", "cases.csv"


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file written by a run (UTF-8)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _float(text: str | None) -> float:
    """A CSV cell as a number (an empty cell: NaN)."""
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


# --- sweeps -------------------------------------------------------------------------------------------------


def sweep_series(rows: Sequence[dict]) -> dict[tuple[str, str], list[tuple[float, float, float, int]]]:
    """{(scope, metric): [(value, mean, sd, n), ...] by value} of `sweep.csv` rows."""
    series: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {}
    for row in rows:
        point = (_float(row["value"]), _float(row["mean"]), _float(row["sd"]), int(row["n"] or 0))
        series.setdefault((row["scope"], row["metric"]), []).append(point)
    return {key: sorted(points) for key, points in series.items()}


def sweep_figure(rows: Sequence[dict], parameter: str, unit: str, title: str):
    """Two panels: attacked Dice vs the parameter per organ (thin) and the mean over organs (bold), ± sd
    bands when several cases; and the trade-off, mean attacked Dice vs SSIM 3-D, one point per value."""
    import matplotlib
    from matplotlib.figure import Figure

    series = sweep_series(rows)
    organs = [s for s, m in series if m == "dice_adv" and s not in (ALL_ORGANS, "perturbation")]
    figure = Figure(figsize=(12, 4.8))
    budget, tradeoff = figure.subplots(1, 2)
    colours = matplotlib.colormaps["tab20"]
    for index, organ in enumerate(organs):
        points = [p for p in series[(organ, "dice_adv")] if math.isfinite(p[1])]
        if not points:
            continue
        colour = colours(index % 20)
        values, means, sds = ([p[i] for p in points] for i in range(3))
        budget.plot(values, means, "-", lw=1, alpha=0.7, color=colour, label=organ)
        if any(p[3] > 1 and math.isfinite(p[2]) for p in points):
            budget.fill_between(
                values,
                [m - s for m, s in zip(means, sds, strict=True)],
                [m + s for m, s in zip(means, sds, strict=True)],
                color=colour,
                alpha=0.08,
            )
    mean = [p for p in series.get((ALL_ORGANS, "mean_dice_adv"), []) if math.isfinite(p[1])]
    if mean:
        values, means, sds = ([p[i] for p in mean] for i in range(3))
        budget.plot(values, means, "-o", lw=3, color="black", label="mean over organs")
        if any(p[3] > 1 and math.isfinite(p[2]) for p in mean):
            lower = [m - s if math.isfinite(s) else m for m, s in zip(means, sds, strict=True)]
            upper = [m + s if math.isfinite(s) else m for m, s in zip(means, sds, strict=True)]
            budget.fill_between(values, lower, upper, color="black", alpha=0.15, label="± sd over cases")
    clean = [p[1] for p in series.get((ALL_ORGANS, "mean_dice_clean"), []) if math.isfinite(p[1])]
    if clean:
        budget.axhline(sum(clean) / len(clean), ls="--", color="grey", label="clean (mean over organs)")
    budget.set_xlabel(f"{parameter} ({unit})" if unit else parameter)
    budget.set_ylabel("Dice, attacked")
    budget.set_ylim(0, 1)
    budget.set_title("Dice vs budget")
    budget.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    ssim = {p[0]: p[1] for p in series.get(("perturbation", "ssim_3d"), [])}
    pairs = [(ssim.get(p[0], math.nan), p[1], p[0]) for p in mean]
    pairs = [p for p in pairs if math.isfinite(p[0])]
    if pairs:
        tradeoff.plot([p[0] for p in pairs], [p[1] for p in pairs], "-o", lw=2, color="black")
        for x, y, value in pairs:
            tradeoff.annotate(
                f"{parameter}={value:g}", (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points"
            )
    tradeoff.set_xlabel("SSIM 3-D (adversarial vs clean)")
    tradeoff.set_ylabel("mean organ Dice, attacked")
    tradeoff.set_ylim(0, 1)
    tradeoff.set_title("Dice vs SSIM (the trade-off)")
    figure.suptitle(title)
    return figure


def write_sweep_plot(folder: Path, rows: Sequence[dict], parameter: str, unit: str, title: str) -> Path:
    """sweep.png of a sweep folder."""
    path = folder / SWEEP_PNG
    with atomic_path(path) as tmp:
        tmp.write_bytes(_png(sweep_figure(rows, parameter, unit, title)))
    return path


def sweep_summary(rows: Sequence[dict], parameter: str, unit: str) -> list[str]:
    """Plain-language findings of a sweep: clean vs attacked Dice at the smallest and largest value, SSIM,
    the organs that suffer most and least at the largest value."""
    series = sweep_series(rows)
    mean = [p for p in series.get((ALL_ORGANS, "mean_dice_adv"), []) if math.isfinite(p[1])]
    clean = [p for p in series.get((ALL_ORGANS, "mean_dice_clean"), []) if math.isfinite(p[1])]
    if not mean or not clean:
        return ["No case was scored, so there is nothing to summarise."]
    ssim = {p[0]: p[1] for p in series.get(("perturbation", "ssim_3d"), [])}
    clean_dice = sum(p[1] for p in clean) / len(clean)
    low, high = mean[0], mean[-1]
    unit_text = f" {unit}" if unit else ""
    lines = [
        f"Without attack the model reaches a mean organ Dice of {clean_dice:.3f}.",
        f"At the smallest {parameter} ({low[0]:g}{unit_text}) the attack lowers it to {low[1]:.3f} "
        f"(−{clean_dice - low[1]:.3f}, SSIM {ssim.get(low[0], math.nan):.4f}); at the largest "
        f"({high[0]:g}{unit_text}) to {high[1]:.3f} (−{clean_dice - high[1]:.3f}, SSIM "
        f"{ssim.get(high[0], math.nan):.4f}).",
    ]
    monotone = all(b[1] <= a[1] + 1e-9 for a, b in zip(mean, mean[1:], strict=False))
    if max(p[1] for p in mean) - min(p[1] for p in mean) < 0.01:
        lines.append(f"Dice hardly changes over this range of {parameter} (by less than 0.01).")
    elif monotone:
        lines.append("Dice falls steadily as the budget grows.")
    else:
        lines.append(
            "Dice does not fall steadily with the budget (a larger value is not always a stronger attack here)."
        )
    drops = []
    for (scope, metric), points in series.items():
        if metric != "dice_adv" or scope in (ALL_ORGANS, "perturbation"):
            continue
        adv = dict((p[0], p[1]) for p in points)
        before = dict((p[0], p[1]) for p in series.get((scope, "dice_clean"), []))
        if math.isfinite(adv.get(high[0], math.nan)) and math.isfinite(before.get(high[0], math.nan)):
            drops.append((before[high[0]] - adv[high[0]], scope, before[high[0]], adv[high[0]]))
    if len(drops) >= 2:
        drops.sort()
        worst, best = drops[-1], drops[0]
        lines.append(
            f"At {parameter} = {high[0]:g} the most affected organ is {worst[1]} ({worst[2]:.3f} → {worst[3]:.3f}), "
            f"the least affected {best[1]} ({best[2]:.3f} → {best[3]:.3f})."
        )
    return lines


# --- transfer -----------------------------------------------------------------------------------------------


def transfer_matrix(rows: Sequence[dict], key: str) -> tuple[list[str], list[str], list[list[float]]]:
    """(source models, target models, matrix[source][target] of column `key`) of `transfer.csv` rows."""
    sources = list(dict.fromkeys(r["source_model"] for r in rows))
    targets = list(dict.fromkeys(r["target_model"] for r in rows))
    cell = {(r["source_model"], r["target_model"]): _float(r[key]) for r in rows}
    return sources, targets, [[cell.get((s, t), math.nan) for t in targets] for s in sources]


def transfer_figure(rows: Sequence[dict], title: str):
    """Two heat maps, source model (rows) × target model (columns): attacked Dice and Dice drop."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.6), layout="constrained")
    axes = figure.subplots(1, 2)
    panels = (
        ("dice_adv", "mean organ Dice, attacked", "viridis"),
        ("dice_drop", "Dice drop (clean − attacked)", "magma_r"),
    )
    for ax, (key, label, cmap) in zip(axes, panels, strict=True):
        sources, targets, matrix = transfer_matrix(rows, key)
        finite = [v for row in matrix for v in row if math.isfinite(v)] or [0.0]
        low, high = (0.0, 1.0) if key == "dice_adv" else (min(0.0, *finite), max(0.05, *finite))
        image = ax.imshow(matrix, cmap=cmap, vmin=low, vmax=high)
        ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
        ax.set_yticks(range(len(sources)), sources)
        ax.set_xlabel("target model (scored)")
        ax.set_ylabel("source model (attacked)")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                box = "white-box" if sources[i] == targets[j] else "black-box"
                text = "–" if not math.isfinite(value) else f"{value:.3f}"
                red, green, blue, _ = image.cmap(image.norm(value if math.isfinite(value) else low))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                ax.text(
                    j,
                    i,
                    f"{text}\n{box}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
        ax.set_title(label)
        figure.colorbar(image, ax=ax, fraction=0.046)
    figure.suptitle(title)
    return figure


def write_transfer_plot(folder: Path, rows: Sequence[dict], title: str) -> Path:
    """transfer.png of a transfer folder."""
    path = folder / TRANSFER_PNG
    with atomic_path(path) as tmp:
        tmp.write_bytes(_png(transfer_figure(rows, title)))
    return path


def transfer_summary(rows: Sequence[dict]) -> list[str]:
    """Plain-language findings of a transfer matrix: white-box vs black-box Dice drop, the best transfer."""
    white = [r for r in rows if r["box"] == "white" and math.isfinite(_float(r["dice_drop"]))]
    black = [r for r in rows if r["box"] == "black" and math.isfinite(_float(r["dice_drop"]))]
    if not white and not black:
        return ["No case was scored, so there is nothing to summarise."]
    lines = []
    if white:
        drop = sum(_float(r["dice_drop"]) for r in white) / len(white)
        lines.append(
            f"Attacking a model with its own gradients (white-box, diagonal) lowers its mean organ Dice by {drop:.3f} on average."
        )
    if black:
        drop = sum(_float(r["dice_drop"]) for r in black) / len(black)
        best = max(black, key=lambda r: _float(r["dice_drop"]))
        lines.append(
            f"The same adversarial volumes given to the other models (black-box, off-diagonal) lower their Dice by "
            f"{drop:.3f} on average; the strongest transfer is {best['source_model']} → {best['target_model']} "
            f"(−{_float(best['dice_drop']):.3f})."
        )
        if white:
            ratio = drop / max(sum(_float(r["dice_drop"]) for r in white) / len(white), 1e-9)
            lines.append(
                f"Black-box attacks keep {100 * ratio:.0f} % of the white-box effect: "
                + (
                    "they transfer well."
                    if ratio >= 0.5
                    else "they transfer poorly; knowing the model matters."
                )
            )
    return lines


# --- the report ---------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _short(cell: str) -> str:
    """A CSV cell for the HTML table: numbers with a fractional part to 4 decimals, other cells as they are."""
    try:
        number = float(cell)
    except ValueError:
        return cell
    return cell if "." not in cell or not math.isfinite(number) else f"{number:.4f}"


def _cell(value: str, digits: int = 3) -> str:
    number = _float(value)
    return "–" if not math.isfinite(number) else f"{number:.{digits}f}"


def _mean_sd(row: dict | None, digits: int = 3) -> str:
    if row is None or not math.isfinite(_float(row["mean"])):
        return "–"
    sd = _float(row["sd"])
    return f"{_float(row['mean']):.{digits}f}" + (f" ± {sd:.{digits}f}" if math.isfinite(sd) else "")


def _sweep_section(folder: Path, settings: dict) -> tuple[list[str], list[str], list[tuple[str, bytes]]]:
    rows = read_csv(folder / SWEEP_CSV)
    parameter, unit = settings["parameter"], settings.get("unit", "")
    by_key = {(r["value"], r["scope"], r["metric"]): r for r in rows}
    values = list(dict.fromkeys(r["value"] for r in rows))
    table_rows = []
    for value in values:
        get = lambda scope, metric, v=value: by_key.get((v, scope, metric))  # noqa: E731
        n = get(ALL_ORGANS, "mean_dice_adv")
        table_rows.append(
            [
                f"{_float(value):g}",
                n["n"] if n else 0,
                _mean_sd(get(ALL_ORGANS, "mean_dice_clean")),
                _mean_sd(get(ALL_ORGANS, "mean_dice_adv")),
                _mean_sd(get(ALL_ORGANS, "mean_hd95_adv_mm"), 1),
                _mean_sd(get("perturbation", "ssim_3d"), 4),
                _mean_sd(get("perturbation", "psnr_db"), 1),
                _mean_sd(get("perturbation", "linf_hu"), 1),
            ]
        )
    header = [
        f"{parameter} ({unit})",
        "cases",
        "Dice clean",
        "Dice attacked",
        "HD95 attacked (mm)",
        "SSIM 3-D",
        "PSNR (dB)",
        "L∞ (HU)",
    ]
    title = settings.get("title", "sweep")
    tables = [f"<h2>Mean over organs per {html.escape(parameter)}</h2>" + _table(header, table_rows)]
    figure = _png(sweep_figure(rows, parameter, unit, title))
    return sweep_summary(rows, parameter, unit), tables, [("Dice vs budget, and Dice vs SSIM", figure)]


def _transfer_section(folder: Path, settings: dict) -> tuple[list[str], list[str], list[tuple[str, bytes]]]:
    rows = read_csv(folder / TRANSFER_CSV)
    header = ["source model", "target model", "box", "cases", "Dice clean", "Dice attacked", "Dice drop"]
    table_rows = [
        [
            r["source_model"],
            r["target_model"],
            f"{r['box']}-box",
            r["cases"],
            _cell(r["dice_clean"]),
            _cell(r["dice_adv"]),
            _cell(r["dice_drop"]),
        ]
        for r in rows
    ]
    figure = _png(transfer_figure(rows, settings.get("title", "transfer")))
    return (
        transfer_summary(rows),
        ["<h2>Transfer matrix</h2>" + _table(header, table_rows)],
        [("Attacked Dice and Dice drop", figure)],
    )


def _dataset_section(folder: Path, settings: dict) -> tuple[list[str], list[str], list[tuple[str, bytes]]]:
    rows = read_csv(folder / AGGREGATE_CSV)
    by_key = {(r["scope"], r["metric"]): r for r in rows}
    organs = list(dict.fromkeys(r["scope"] for r in rows if r["scope"] not in (ALL_ORGANS, "perturbation")))
    table_rows = [
        [
            organ,
            by_key[(organ, "dice_clean")]["n"],
            _mean_sd(by_key.get((organ, "dice_clean"))),
            _mean_sd(by_key.get((organ, "dice_adv"))),
            _mean_sd(by_key.get((organ, "hd95_clean_mm")), 1),
            _mean_sd(by_key.get((organ, "hd95_adv_mm")), 1),
        ]
        for organ in organs
    ]
    table_rows.append(
        [
            ALL_ORGANS,
            by_key[(ALL_ORGANS, "mean_dice_clean")]["n"],
            _mean_sd(by_key.get((ALL_ORGANS, "mean_dice_clean"))),
            _mean_sd(by_key.get((ALL_ORGANS, "mean_dice_adv"))),
            _mean_sd(by_key.get((ALL_ORGANS, "mean_hd95_clean_mm")), 1),
            _mean_sd(by_key.get((ALL_ORGANS, "mean_hd95_adv_mm")), 1),
        ]
    )
    header = ["organ", "cases", "Dice clean", "Dice attacked", "HD95 clean (mm)", "HD95 attacked (mm)"]
    clean, adv = (by_key.get((ALL_ORGANS, k)) for k in ("mean_dice_clean", "mean_dice_adv"))
    summary = []
    if clean and adv and math.isfinite(_float(clean["mean"])) and math.isfinite(_float(adv["mean"])):
        summary.append(
            f"Over {adv['n']} cases the mean organ Dice goes from {_float(clean['mean']):.3f} clean to "
            f"{_float(adv['mean']):.3f} attacked (−{_float(clean['mean']) - _float(adv['mean']):.3f}); "
            f"SSIM 3-D {_mean_sd(by_key.get(('perturbation', 'ssim_3d')), 4)}."
        )
    else:
        summary.append("No case was scored, so there is nothing to summarise.")
    return summary, ["<h2>Per organ (mean ± sd over cases)</h2>" + _table(header, table_rows)], []


KINDS = (
    (SWEEP_SETTINGS, SWEEP_CSV, "Budget sweep", _sweep_section),
    (TRANSFER_SETTINGS, TRANSFER_CSV, "Transfer matrix", _transfer_section),
    (RUN_SETTINGS, AGGREGATE_CSV, "Dataset run", _dataset_section),
)


def render_report(folder: Path) -> str:
    """The HTML report of a sweep, transfer or dataset-run folder (see the module docstring)."""
    esc = html.escape
    found = [k for k in KINDS if (folder / k[0]).is_file() and (folder / k[1]).is_file()]
    if not found:
        raise InputError(
            f"{folder} is not a sweep, transfer or dataset-run folder (no sweep.json + sweep.csv, "
            "transfer.json + transfer.csv or run.json + aggregate.csv)."
        )
    settings_name, _, kind, section = found[0]
    try:
        settings = json.loads((folder / settings_name).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{folder / settings_name} is not valid JSON ({error.msg}).") from None
    summary, tables, figures = section(folder, settings)
    title = settings.get("title") or kind
    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{esc(kind)}: {esc(title)}</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;"
        "margin-bottom:1.5em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>{esc(kind)}: {esc(title)}</h1>",
        "<h2>Findings</h2>",
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in summary) + "</ul>",
        *tables,
        *(
            f'<h2>{esc(t)}</h2><img alt="{esc(t)}" src="data:image/png;base64,{base64.b64encode(d).decode("ascii")}">'
            for t, d in figures
        ),
        "<h2>Settings and provenance</h2>",
        f"<pre>{esc(json.dumps(settings, indent=2, ensure_ascii=False))}</pre>",
    ]
    cases_path = folder / CASES_CSV
    if cases_path.is_file():
        text = cases_path.read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text)))
        link = base64.b64encode(text.encode("utf-8")).decode("ascii")
        parts += [
            f"<h2>Per case ({max(len(rows) - 1, 0)} rows: case × organ)</h2>",
            f'<p><a download="cases.csv" href="data:text/csv;base64,{link}">cases.csv</a></p>',
            _table(rows[0], [[_short(cell) for cell in row] for row in rows[1:]]) if rows else "<p>none</p>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(folder: str | Path) -> Path:
    """Write `folder/report.html` (see `render_report`); returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder.")
    path = folder / REPORT
    write_text_atomic(path, render_report(folder))
    return path
