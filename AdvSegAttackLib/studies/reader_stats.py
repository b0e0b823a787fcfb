"""Statistics of a blinded reader session and its report (Markdown + self-contained HTML).

Per reader and pooled: accuracy with an exact binomial test against 50 % and its 95 % Clopper-Pearson
interval, sensitivity (manipulated called manipulated) and specificity (real called real), per attack
and per organ, ROC AUC of the confidence-weighted ratings (Mann-Whitney), inter-reader agreement
(Cohen's kappa for two readers, Fleiss' kappa for more), time per case, and optionally a TOST
equivalence test of accuracy against 50 % +- margin. Pooled numbers treat every rating as independent.
"""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import InputError
from ..volumes.io import write_json_atomic, write_text_atomic
from ..volumes.nofollow import inside
from .session import READERS, REPORT, load_key, load_order, parse_ratings, ratings_path

ALPHA = 0.05


# --- statistics -------------------------------------------------------------------------------------------


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion k/n."""
    if n == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.isf(alpha / 2, k + 1, n - k))
    return low, high


def proportion(k: int, n: int, test_half: bool = False) -> dict:
    """k of n with its proportion, 95 % Clopper-Pearson interval and (optionally) binomial p vs 50 %."""
    low, high = clopper_pearson(k, n)
    result = {"k": k, "n": n, "value": k / n if n else None, "ci_low": low if n else None}
    result["ci_high"] = high if n else None
    if test_half:
        result["p_value"] = float(stats.binomtest(k, n, 0.5).pvalue) if n else None
    return result


def tost_binomial(k: int, n: int, margin: float, alpha: float = ALPHA) -> dict:
    """Two one-sided exact binomial tests: is the proportion within 0.5 +- margin?

    H0: p <= 0.5 - margin or p >= 0.5 + margin. Equivalence is shown when both one-sided p < alpha.
    """
    if not 0 < margin < 0.5:
        raise InputError(f"--margin {margin} must be between 0 and 0.5 (exclusive).")
    if n == 0:
        return {"margin": margin, "p_lower": None, "p_upper": None, "p_value": None, "equivalent": False}
    p_lower = float(stats.binomtest(k, n, 0.5 - margin, alternative="greater").pvalue)
    p_upper = float(stats.binomtest(k, n, 0.5 + margin, alternative="less").pvalue)
    p_value = max(p_lower, p_upper)
    return {
        "margin": margin,
        "p_lower": p_lower,
        "p_upper": p_upper,
        "p_value": p_value,
        "equivalent": p_value < alpha,
    }


def rating_score(answer: str, confidence: int) -> int:
    """Confidence-weighted rating: +confidence for "manipulated", -confidence for "real"."""
    return confidence if answer == "manipulated" else -confidence


def auc_mann_whitney(positive: list[float], negative: list[float]) -> float | None:
    """ROC AUC = P(score of a positive > score of a negative) + 0.5 P(tie), via the rank-sum statistic."""
    n_pos, n_neg = len(positive), len(negative)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(np.concatenate([np.asarray(positive, float), np.asarray(negative, float)]))
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items (None when undefined)."""
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return None
    categories = sorted(set(a) | set(b))
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((a.count(c) / n) * (b.count(c) / n) for c in categories)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(table) -> float | None:
    """Fleiss' kappa of a subjects x categories count table (every subject rated by as many raters)."""
    counts = np.asarray(table, dtype=float)
    if counts.ndim != 2 or counts.shape[0] == 0:
        return None
    raters = counts.sum(axis=1)
    if not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError("every subject needs the same number (>= 2) of ratings")
    n = raters[0]
    subjects = counts.shape[0]
    p_j = counts.sum(axis=0) / (subjects * n)
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = p_i.mean(), float((p_j**2).sum())
    if p_e == 1:
        return None
    return float((p_bar - p_e) / (1 - p_e))


def group_stats(rows: list[dict], margin: float | None = None) -> dict:
    """All per-group numbers of joined rating rows (keys truth, answer, confidence, seconds)."""
    correct = sum(r["answer"] == r["truth"] for r in rows)
    manipulated = [r for r in rows if r["truth"] == "manipulated"]
    real = [r for r in rows if r["truth"] == "real"]
    seconds = [r["seconds"] for r in rows]
    result = {
        "n": len(rows),
        "accuracy": proportion(correct, len(rows), test_half=True),
        "sensitivity": proportion(sum(r["answer"] == "manipulated" for r in manipulated), len(manipulated)),
        "specificity": proportion(sum(r["answer"] == "real" for r in real), len(real)),
        "auc": auc_mann_whitney(
            [rating_score(r["answer"], r["confidence"]) for r in manipulated],
            [rating_score(r["answer"], r["confidence"]) for r in real],
        ),
        "seconds_mean": statistics.fmean(seconds) if seconds else None,
        "seconds_median": statistics.median(seconds) if seconds else None,
    }
    if margin is not None:
        result["tost"] = tost_binomial(correct, len(rows), margin)
    return result


def roc_points(rows: list[dict]) -> tuple[list[float], list[float]]:
    """False and true positive rates of every threshold of the confidence-weighted score."""
    pos = [rating_score(r["answer"], r["confidence"]) for r in rows if r["truth"] == "manipulated"]
    neg = [rating_score(r["answer"], r["confidence"]) for r in rows if r["truth"] == "real"]
    fpr, tpr = [0.0], [0.0]
    if not pos or not neg:
        return fpr, tpr
    for threshold in range(5, -6, -1):
        tpr.append(sum(s >= threshold for s in pos) / len(pos))
        fpr.append(sum(s >= threshold for s in neg) / len(neg))
    return fpr, tpr


def agreement(rows: list[dict], readers: list[str]) -> dict:
    """Cohen's kappa (two readers) or Fleiss' kappa (more) on the cases every reader answered."""
    answers: dict[str, dict[str, str]] = {}
    for r in rows:
        answers.setdefault(r["case_id"], {})[r["reader"]] = r["answer"]
    common = sorted(c for c, by in answers.items() if all(name in by for name in readers))
    method = "Cohen" if len(readers) == 2 else "Fleiss"
    result = {"method": method, "cases": len(common), "kappa": None}
    if len(readers) < 2 or len(common) < 2:
        result["note"] = "not available: fewer than two cases were answered by every reader"
        if len(readers) < 2:
            result["note"] = "not available: one reader"
        return result
    if method == "Cohen":
        result["kappa"] = cohen_kappa(
            [answers[c][readers[0]] for c in common], [answers[c][readers[1]] for c in common]
        )
    else:
        table = [
            [sum(answers[c][n] == label for n in readers) for label in ("real", "manipulated")]
            for c in common
        ]
        result["kappa"] = fleiss_kappa(table)
    return result


def agreement_with_notes(rows: list[dict], readers: list[str]) -> dict:
    """`agreement` plus a note where kappa is undefined or says nothing about agreement.

    A reader who gave one answer to every common case makes Cohen's kappa 0 whatever the other reader did
    (and undefined when both did), and leaves Fleiss' kappa to the other readers' answers alone.
    """
    result = agreement(rows, readers)
    if result.get("note"):
        return result
    answers: dict[str, dict[str, str]] = {}
    for r in rows:
        answers.setdefault(r["reader"], {})[r["case_id"]] = r["answer"]
    common = set.intersection(*(set(answers.get(name, {})) for name in readers))
    constant = {}
    for name in readers:
        given = {answers[name][case_id] for case_id in common}
        if len(given) == 1:
            constant[name] = given.pop()
    notes = [
        f"{name} gave the same answer ({answer}) to every case all readers answered"
        for name, answer in constant.items()
    ]
    if result["kappa"] is None:
        notes.append("kappa is undefined: the expected agreement is 1")
    elif constant:
        meaning = "is 0 whatever the other reader answered" if result["method"] == "Cohen" else "says little"
        notes.append(f"kappa {meaning}, so it does not measure agreement here")
    if notes:
        result["note"] = "; ".join(notes) + "."
    return result


# --- joining key and ratings ------------------------------------------------------------------------------


def collect_rows(session: Path) -> tuple[list[dict], list[str], list[str]]:
    """Joined rows (one per valid rating), reader names and problems (one sentence each)."""
    key = load_key(session)
    items = key.get("items", {})
    readers = (
        sorted(p.name for p in (session / READERS).iterdir() if p.is_dir())
        if (session / READERS).is_dir()
        else []
    )
    if not readers:
        raise InputError(f"{session} has no readers/ folder with reader orders; is it a session?")
    rows: list[dict] = []
    problems: list[str] = []
    for reader in readers:
        order = set(load_order(session, reader))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ratings, damaged, _ = parse_ratings(ratings_path(session, reader))
        problems += damaged
        seen: set[str] = set()
        for rating in ratings:
            case_id = rating["case_id"]
            if case_id not in order or case_id not in items:
                problems.append(f"{reader}: rating of unknown case {case_id!r} ignored.")
                continue
            if case_id in seen:
                problems.append(f"{reader}: second rating of case {case_id} ignored.")
                continue
            try:
                confidence = int(rating["confidence"])
                seconds = float(rating.get("seconds", math.nan))
            except (KeyError, TypeError, ValueError):
                problems.append(f"{reader}: rating of case {case_id} lacks a confidence, ignored.")
                continue
            seen.add(case_id)
            item = items[case_id]
            rows.append(
                {
                    "reader": reader,
                    "case_id": case_id,
                    "answer": rating["answer"],
                    "confidence": confidence,
                    "seconds": seconds,
                    "truth": item["truth"],
                    "attack": item.get("attack"),
                    "organs": item.get("organs") or [],
                    "patient": item.get("patient"),
                }
            )
    return rows, readers, problems


def session_details(session: Path, readers: list[str], rows: list[dict]) -> dict:
    """What the session was: build date and mode, cases per attack and organ, and every case's answers.

    `cases[i]["answers"][reader]` is that reader's rating (answer, confidence, seconds), None when the case
    is in the reader's order but unanswered; readers who were not shown the case are absent.
    """
    key = load_key(session)
    items = key.get("items", {})
    patients = {item.get("patient") for item in items.values()}
    label = {patient: f"P{number}" for number, patient in enumerate(sorted(patients, key=str), start=1)}
    counts: dict[tuple[str, str, str], int] = {}
    for item in items.values():
        group = (item["truth"], item.get("attack") or "-", ", ".join(item.get("organs") or []) or "-")
        counts[group] = counts.get(group, 0) + 1
    orders = {name: set(load_order(session, name)) for name in readers}
    rated = {(r["reader"], r["case_id"]): r for r in rows}
    cases = []
    for case_id, item in sorted(
        items.items(), key=lambda c: (label[c[1].get("patient")], c[1]["truth"] != "real", c[0])
    ):
        answers = {}
        for name in readers:
            if case_id in orders[name]:
                rating = rated.get((name, case_id))
                answers[name] = rating and {k: rating[k] for k in ("answer", "confidence", "seconds")}
        cases.append(
            {
                "id": case_id,
                "patient": label[item.get("patient")],
                "truth": item["truth"],
                "attack": item.get("attack"),
                "organs": item.get("organs") or [],
                "answers": answers,
            }
        )
    if key.get("never_both"):
        mode = "each reader saw one version of each patient (--never-both)"
    elif key.get("all_versions"):
        mode = "each reader saw every version of each patient (--all-versions)"
    elif "all_versions" in key:
        mode = "each reader saw the real and one manipulated version of each patient"
    else:
        mode = "each reader saw every version of each patient (session built before --all-versions existed)"
    return {
        "created": key.get("created"),
        "seed": key.get("seed"),
        "mode": mode,
        "readers": len(readers),
        "patients": len(patients),
        "cases": len(items),
        "per_attack_organ": [
            {"truth": truth, "attack": attack, "organs": organs, "cases": n}
            for (truth, attack, organs), n in sorted(counts.items(), key=lambda c: (c[0][0] != "real", c[0]))
        ],
        "per_case": cases,
    }


def analyze(rows: list[dict], readers: list[str], margin: float | None = None) -> dict:
    """Every number of the report as a plain dict."""
    per_reader = {name: group_stats([r for r in rows if r["reader"] == name], margin) for name in readers}
    manipulated = [r for r in rows if r["truth"] == "manipulated"]
    attacks = sorted({r["attack"] for r in manipulated if r["attack"]})
    organs = sorted({o for r in manipulated for o in r["organs"]})
    return {
        "readers": per_reader,
        "pooled": group_stats(rows, margin),
        "per_attack": {
            a: proportion(*_detected([r for r in manipulated if r["attack"] == a])) for a in attacks
        },
        "per_organ": {
            o: proportion(*_detected([r for r in manipulated if o in r["organs"]])) for o in organs
        },
        "agreement": agreement_with_notes(rows, readers),
        "margin": margin,
    }


def _detected(rows: list[dict]) -> tuple[int, int]:
    return sum(r["answer"] == "manipulated" for r in rows), len(rows)


# --- report -----------------------------------------------------------------------------------------------


def _pct(p: dict) -> str:
    if p["value"] is None:
        return "-"
    return f"{100 * p['value']:.1f} % ({p['k']}/{p['n']}; 95 % CI {100 * p['ci_low']:.1f}-{100 * p['ci_high']:.1f})"


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if digits == 3 and abs(value) < 0.001 else f"{value:.{digits}f}"


def _session_line(details: dict) -> str:
    return (
        f"Session built {details['created'] or 'at an unknown date'} (seed {details['seed']}): "
        f"{details['cases']} cases of {details['patients']} patients, {details['readers']} readers; "
        f"{details['mode']}."
    )


def _answer_cell(answer: dict | None) -> str:
    if answer is None:
        return "not answered"
    return f"{answer['answer']} (confidence {answer['confidence']}, {_num(answer['seconds'], 1)} s)"


def _case_table(details: dict, readers: list[str]) -> tuple[str, list[str], list[list[str]]]:
    rows = [
        [c["id"], c["patient"], c["truth"], c["attack"] or "-", ", ".join(c["organs"]) or "-"]
        + [_answer_cell(c["answers"][name]) if name in c["answers"] else "not shown" for name in readers]
        for c in details["per_case"]
    ]
    return "Answers per case", ["ID", "patient", "truth", "attack", "organ", *readers], rows


def _tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    groups = [*summary["readers"].items(), ("pooled", summary["pooled"])]
    main = [
        [
            name,
            str(g["n"]),
            _pct(g["accuracy"]),
            _num(g["accuracy"].get("p_value")),
            _pct(g["sensitivity"]),
            _pct(g["specificity"]),
            _num(g["auc"]),
            _num(g["seconds_mean"], 1),
            _num(g["seconds_median"], 1),
        ]
        for name, g in groups
    ]
    details = summary.get("session")
    tables = []
    if details:
        tables.append(
            (
                "Cases per attack and organ",
                ["truth", "attack", "organ", "cases"],
                [
                    [g["truth"], g["attack"], g["organs"], str(g["cases"])]
                    for g in details["per_attack_organ"]
                ],
            )
        )
    tables.append(
        (
            "Accuracy, sensitivity, specificity, AUC and time per case",
            [
                "reader",
                "n",
                "accuracy",
                "p (binomial vs 50 %)",
                "sensitivity",
                "specificity",
                "ROC AUC",
                "mean s",
                "median s",
            ],
            main,
        )
    )
    if summary["margin"] is not None:
        rows = []
        for name, g in groups:
            t = g["tost"]
            verdict = "equivalent to chance" if t["equivalent"] else "equivalence not shown"
            rows.append([name, _num(t["p_lower"]), _num(t["p_upper"]), _num(t["p_value"]), verdict])
        tables.append(
            (
                f"TOST equivalence of accuracy with 50 % +- {100 * summary['margin']:.1f} % (alpha {ALPHA})",
                ["reader", "p (acc > lower bound)", "p (acc < upper bound)", "p TOST", "verdict"],
                rows,
            )
        )
    tables.append(
        (
            "Detection per attack (sensitivity, pooled)",
            ["attack", "detected"],
            [[a, _pct(p)] for a, p in summary["per_attack"].items()],
        )
    )
    tables.append(
        (
            "Detection per organ (sensitivity, pooled)",
            ["organ", "detected"],
            [[o, _pct(p)] for o, p in summary["per_organ"].items()],
        )
    )
    a = summary["agreement"]
    tables.append(
        (
            "Inter-reader agreement",
            ["method", "cases answered by every reader", "kappa", "note"],
            [
                [
                    "Cohen's kappa" if a["method"] == "Cohen" else "Fleiss' kappa",
                    str(a["cases"]),
                    _num(a["kappa"]),
                    a.get("note", ""),
                ]
            ],
        )
    )
    return tables


NOTE = (
    "A non-significant binomial p does not show that readers cannot tell manipulated from real volumes; "
    "only the TOST equivalence test (--margin) can support that. Pooled tests treat every rating as "
    "independent."
)


def _accuracy_figure(summary: dict):
    """Accuracy with its 95 % interval per reader and pooled (a matplotlib Figure, no pyplot state)."""
    from matplotlib.figure import Figure

    groups = [*summary["readers"].items(), ("pooled", summary["pooled"])]
    figure = Figure(figsize=(max(4, 1 + 0.8 * len(groups)), 3.2))
    ax = figure.add_subplot()
    for x, (_, g) in enumerate(groups):
        acc = g["accuracy"]
        if acc["value"] is not None:
            ax.errorbar(
                x,
                acc["value"],
                yerr=[[acc["value"] - acc["ci_low"]], [acc["ci_high"] - acc["value"]]],
                fmt="o",
                capsize=4,
            )
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], rotation=30)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95 % CI)")
    return figure


def _roc_figure(rows: list[dict], summary: dict, readers: list[str]):
    """ROC curves per reader and pooled, the legend beside the axes (it never covers a curve)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4), layout="constrained")
    ax = figure.add_subplot()
    for name in [*readers, "pooled"]:
        subset = rows if name == "pooled" else [r for r in rows if r["reader"] == name]
        fpr, tpr = roc_points(subset)
        auc = summary["pooled"]["auc"] if name == "pooled" else summary["readers"][name]["auc"]
        style = {"color": "black", "linewidth": 2.2} if name == "pooled" else {"linewidth": 1.4}
        ax.plot(fpr, tpr, marker=".", label=f"{name} (AUC {_num(auc)})", **style)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0, fontsize=9, frameon=False)
    return figure


def _figures(rows: list[dict], summary: dict, readers: list[str]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of the accuracy chart and the ROC curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def png(figure) -> str:
        FigureCanvasAgg(figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    return [
        ("Accuracy per reader", png(_accuracy_figure(summary))),
        ("ROC of confidence-weighted ratings", png(_roc_figure(rows, summary, readers))),
    ]


def _markdown_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def render_markdown(summary: dict, problems: list[str]) -> str:
    lines = ["# Reader session report", ""]
    if summary.get("session"):
        lines += [_session_line(summary["session"]), ""]
    lines += [NOTE, ""]
    for table in _tables(summary):
        lines += _markdown_table(*table)
    if summary.get("session"):
        lines += _markdown_table(*_case_table(summary["session"], list(summary["readers"])))
    lines += ["## Problems in the ratings files", ""]
    lines += [f"- {p}" for p in problems] or ["none"]
    return "\n".join(lines) + "\n"


def render_html(summary: dict, problems: list[str], figures: list[tuple[str, str]]) -> str:
    esc = html.escape

    def table(title: str, header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<h2>{esc(title)}</h2><table><tr>{head}</tr>{body}</table>"

    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>Reader session report</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}</style>",
        "</head><body>",
        "<h1>Reader session report</h1>",
    ]
    if summary.get("session"):
        parts.append(f"<p>{esc(_session_line(summary['session']))}</p>")
    parts.append(f"<p>{esc(NOTE)}</p>")
    parts += [table(*t) for t in _tables(summary)]
    for title, data in figures:
        parts.append(f'<h2>{esc(title)}</h2><img alt="{esc(title)}" src="data:image/png;base64,{data}">')
    if summary.get("session"):
        parts.append(table(*_case_table(summary["session"], list(summary["readers"]))))
    parts.append("<h2>Problems in the ratings files</h2>")
    parts.append(
        "<ul>" + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul>" if problems else "<p>none</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def analyze_session(session: str | Path, margin: float | None = None) -> dict:
    """Read the key and every ratings file; write SESSION/report/report.{md,html} and summary.json."""
    session = Path(session)
    if margin is not None and not 0 < margin < 0.5:
        raise InputError(f"--margin {margin} must be between 0 and 0.5 (exclusive).")
    report = inside(session, session / REPORT)  # written atomically: a link there is refused, never followed
    rows, readers, problems = collect_rows(session)
    summary = analyze(rows, readers, margin)
    summary["session"] = session_details(session, readers, rows)
    summary["problems"] = problems
    write_text_atomic(report / "report.md", render_markdown(summary, problems))
    write_text_atomic(
        report / "report.html", render_html(summary, problems, _figures(rows, summary, readers))
    )
    write_json_atomic(report / "summary.json", summary)
    return summary
