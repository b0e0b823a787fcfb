"""Reader-session statistics against scipy, hand computations and textbook examples; the report."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats
from test_session import make_case, make_source

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.studies.reader_stats import (
    _roc_figure,
    agreement,
    agreement_with_notes,
    analyze,
    analyze_session,
    auc_mann_whitney,
    clopper_pearson,
    cohen_kappa,
    collect_rows,
    fleiss_kappa,
    group_stats,
    proportion,
    rating_score,
    tost_binomial,
)
from AdvSegAttackLib.studies.session import build_session, load_key, load_order, ratings_path

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (37, 60), (1, 1), (250, 400)])
def test_binomial_p_and_clopper_pearson_match_scipy(k, n):
    result = proportion(k, n, test_half=True)
    reference = stats.binomtest(k, n, 0.5)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-12)
    ci = reference.proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert result["value"] == k / n


def test_cohen_kappa_by_hand():
    # 50 items: both "yes" 20, A yes/B no 5, A no/B yes 10, both "no" 15 -> po 0.7, pe 0.5, kappa 0.4
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa = 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=5e-4)
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 1], [2, 1]])


def test_auc_equals_brute_force_pair_count():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = list(rng.integers(-5, 6, rng.integers(1, 15)))
        neg = list(rng.integers(-5, 6, rng.integers(1, 15)))
        pairs = list(itertools.product(pos, neg))
        brute = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs) / len(pairs)
        assert auc_mann_whitney(pos, neg) == pytest.approx(brute)
    assert auc_mann_whitney([1], []) is None
    assert rating_score("manipulated", 4) == 4 and rating_score("real", 4) == -4


def test_tost_logic():
    at_chance = tost_binomial(200, 400, 0.1)
    assert at_chance["equivalent"] and at_chance["p_value"] < 0.05
    assert at_chance["p_lower"] == pytest.approx(stats.binomtest(200, 400, 0.4, alternative="greater").pvalue)
    assert at_chance["p_upper"] == pytest.approx(stats.binomtest(200, 400, 0.6, alternative="less").pvalue)
    # few ratings at 50 %: neither different from chance nor shown equivalent
    small = tost_binomial(10, 20, 0.1)
    assert not small["equivalent"] and stats.binomtest(10, 20).pvalue > 0.05
    assert not tost_binomial(300, 400, 0.1)["equivalent"]  # clearly better than chance
    with pytest.raises(InputError):
        tost_binomial(1, 2, 0.6)


def test_group_stats_sensitivity_specificity():
    rows = (
        [{"truth": "manipulated", "answer": "manipulated", "confidence": 5, "seconds": 2.0}] * 6
        + [{"truth": "manipulated", "answer": "real", "confidence": 2, "seconds": 4.0}] * 4
        + [{"truth": "real", "answer": "real", "confidence": 3, "seconds": 6.0}] * 7
        + [{"truth": "real", "answer": "manipulated", "confidence": 1, "seconds": 8.0}] * 3
    )
    result = group_stats(rows, margin=0.2)
    assert result["accuracy"]["k"] == 13 and result["accuracy"]["n"] == 20
    assert result["sensitivity"]["value"] == 0.6 and result["specificity"]["value"] == 0.7
    assert result["seconds_mean"] == pytest.approx((6 * 2 + 4 * 4 + 7 * 6 + 3 * 8) / 20)
    assert "tost" in result


@pytest.fixture
def rated_session(tmp_path):
    """Three patients x (clean + one attack), two readers who see everything, known answers."""
    cases = []
    for index in range(3):
        source = make_source(tmp_path / f"src{index}.nii.gz", index)
        organs = {"liver": 6} if index else {"spleen": 1}
        cases.append(make_case(tmp_path / f"case{index}", source, "saa" if index < 2 else "pgd", organs))
    session = tmp_path / "session"
    build_session(cases, readers=2, seed=4, out=session)
    items = load_key(session)["items"]
    for reader in ("reader1", "reader2"):
        lines = []
        for number, case_id in enumerate(load_order(session, reader)):
            truth = items[case_id]["truth"]
            # reader1 always right; reader2 calls everything "real"
            answer = truth if reader == "reader1" else "real"
            record = {
                "reader": reader,
                "case_id": case_id,
                "answer": answer,
                "confidence": 3,
                "seconds": 10.0,
            }
            lines.append(json.dumps(record))
            if number == 2 and reader == "reader2":
                lines.append('{"case_id": "broken"')  # damaged line in the middle
        ratings_path(session, reader).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return session, items


def test_analyze_session_report(rated_session):
    session, items = rated_session
    summary = analyze_session(session, margin=0.1)
    r1, r2 = summary["readers"]["reader1"], summary["readers"]["reader2"]
    assert r1["accuracy"]["k"] == 6 and r1["auc"] == 1.0
    assert r1["accuracy"]["p_value"] == pytest.approx(stats.binomtest(6, 6).pvalue)
    assert r2["accuracy"]["k"] == 3 and r2["sensitivity"]["value"] == 0 and r2["specificity"]["value"] == 1
    assert r2["auc"] == 0.5
    assert summary["pooled"]["accuracy"]["n"] == 12
    assert summary["per_attack"]["saa"]["n"] == 4 and summary["per_attack"]["pgd"]["k"] == 1
    assert summary["per_organ"]["liver"]["n"] == 4
    truths = [items[c]["truth"] for c in sorted(items)]
    assert summary["agreement"]["method"] == "Cohen"
    assert summary["agreement"]["kappa"] == pytest.approx(cohen_kappa(truths, ["real"] * 6))
    assert len(summary["problems"]) == 1 and "line 4" in summary["problems"][0]
    markdown = (session / "report" / "report.md").read_text(encoding="utf-8")
    assert "reader1" in markdown and "TOST" in markdown and "line 4" in markdown
    page = (session / "report" / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2
    for remote in ("<script", "<link", 'src="http', "url(http", "@import"):
        assert remote not in page


def test_cli_analyze(rated_session, capsys):
    session, _ = rated_session
    assert main(["session", "analyze", str(session)]) == 0
    captured = capsys.readouterr()
    assert "pooled accuracy 75.0 %" in captured.out and "line 4" in captured.err
    assert main(["session", "analyze", str(session), "--margin", "0.7"]) == 2


def test_agreement_uses_fleiss_for_three_readers_on_common_cases():
    answers = {
        "a": ["real", "real", "real"],
        "b": ["real", "manipulated", "manipulated"],
        "c": ["manipulated", "manipulated", "manipulated"],
        "d": ["real", "manipulated"],  # not answered by reader3: left out
    }
    rows = [
        {"case_id": case, "reader": f"reader{i + 1}", "answer": answer}
        for case, given in answers.items()
        for i, answer in enumerate(given)
    ]
    result = agreement(rows, ["reader1", "reader2", "reader3"])
    assert result["method"] == "Fleiss" and result["cases"] == 3
    assert result["kappa"] == pytest.approx(fleiss_kappa([[3, 0], [1, 2], [0, 3]]))
    two = agreement(rows, ["reader1", "reader2"])
    assert two["method"] == "Cohen" and two["cases"] == 4


def test_report_has_the_session_details_and_every_answer(rated_session):
    session, items = rated_session
    summary = analyze_session(session)
    details, key = summary["session"], load_key(session)
    assert (details["created"], details["seed"]) == (key["created"], 4)
    assert (details["cases"], details["patients"], details["readers"]) == (6, 3, 2)
    assert details["per_attack_organ"] == [
        {"truth": "real", "attack": "-", "organs": "-", "cases": 3},
        {"truth": "manipulated", "attack": "pgd", "organs": "liver", "cases": 1},
        {"truth": "manipulated", "attack": "saa", "organs": "liver", "cases": 1},
        {"truth": "manipulated", "attack": "saa", "organs": "spleen", "cases": 1},
    ]
    assert sorted(c["id"] for c in details["per_case"]) == sorted(items)
    for case in details["per_case"]:
        truth = items[case["id"]]["truth"]
        assert case["truth"] == truth
        assert case["answers"]["reader1"] == {"answer": truth, "confidence": 3, "seconds": 10.0}
        assert case["answers"]["reader2"] == {"answer": "real", "confidence": 3, "seconds": 10.0}
    # the versions of one patient are listed together, under a neutral patient label
    patients = [c["patient"] for c in details["per_case"]]
    assert patients == sorted(patients) and set(patients) == {"P1", "P2", "P3"}
    note = summary["agreement"]["note"]
    assert "reader2 gave the same answer (real) to every case" in note and "is 0 whatever" in note
    for page in ("report.md", "report.html"):
        text = (session / "report" / page).read_text(encoding="utf-8")
        assert f"Session built {key['created']} (seed 4): 6 cases of 3 patients, 2 readers" in text
        assert "Cases per attack and organ" in text and "Answers per case" in text
        assert "reader2 gave the same answer (real) to every case" in text
        for case in details["per_case"]:
            assert case["id"] in text
        assert text.count("manipulated (confidence 3, 10.0 s)") == 3  # reader1 on the manipulated cases


def test_report_tells_unanswered_from_not_shown(tmp_path):
    cases = [
        make_case(tmp_path / f"case{i}", make_source(tmp_path / f"src{i}.nii.gz", i), "pgd", {"liver": 6})
        for i in range(2)
    ]
    session = tmp_path / "session"
    build_session(cases, readers=2, seed=1, out=session, never_both=True)
    order = load_order(session, "reader1")
    ratings_path(session, "reader1").write_text(
        json.dumps({"case_id": order[0], "answer": "real", "confidence": 2, "seconds": 3.0}) + "\n",
        encoding="utf-8",
    )
    details = analyze_session(session)["session"]
    assert "never-both" in details["mode"]
    cells = {c["id"]: c["answers"] for c in details["per_case"]}
    # never-both: each reader has one version of each patient, the other reader the other one
    assert cells[order[0]] == {"reader1": {"answer": "real", "confidence": 2, "seconds": 3.0}}
    assert cells[order[1]] == {"reader1": None}
    assert [cells[i] for i in cells if i not in order] == [{"reader2": None}] * 2
    page = (session / "report" / "report.md").read_text(encoding="utf-8")
    assert "not shown" in page and "not answered" in page


def test_kappa_notes():
    rows = [
        {"case_id": c, "reader": r, "answer": "real"} for c in ("a", "b", "c") for r in ("reader1", "reader2")
    ]
    undefined = agreement_with_notes(rows, ["reader1", "reader2"])
    assert undefined["kappa"] is None and "undefined" in undefined["note"]
    rows[0]["answer"] = "manipulated"  # reader1 varies, reader2 does not
    zero = agreement_with_notes(rows, ["reader1", "reader2"])
    assert zero["kappa"] == 0 and zero["note"].startswith("reader2 gave the same answer (real)")
    assert "reader1" not in zero["note"]
    assert agreement_with_notes(rows, ["reader1"])["note"] == "not available: one reader"
    given = [("a", "real", "real"), ("b", "manipulated", "manipulated"), ("c", "real", "manipulated")]
    varied = [{"case_id": c, "reader": "x", "answer": x} for c, x, _ in given]
    varied += [{"case_id": c, "reader": "y", "answer": y} for c, _, y in given]
    assert "note" not in agreement_with_notes(varied, ["x", "y"])


def test_roc_legend_is_beside_the_curves(rated_session):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    session, _ = rated_session
    rows, readers, _ = collect_rows(session)
    summary = analyze(rows, readers)
    figure = _roc_figure(rows, summary, readers)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = figure.axes[0]
    legend = axes.get_legend()
    assert not legend.get_window_extent(renderer).overlaps(axes.get_window_extent(renderer))
    assert figure.bbox.contains(*legend.get_window_extent(renderer).p1)  # not cut off
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["reader1 (AUC 1.000)", "reader2 (AUC 0.500)", "pooled (AUC 0.750)", "chance"]
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8
