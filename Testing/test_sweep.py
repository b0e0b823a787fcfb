"""`advseg sweep` and `advseg report`: a budget sweep on one phantom and on a dataset of two, with a tiny
model (1 PGD step): the tables agree with each value's dataset run, a rerun resumes, bad --param is one
sentence before any output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import save_tiny_model

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.volumes.phantom import write_phantom

PHANTOM = {"shape": (36, 32, 30), "spacing": (6.0, 6.0, 6.0)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    model = save_tiny_model(root / "model", spacing_mm=6.0, roi=32)
    items = []
    for seed in (0, 1):
        image, label = write_phantom(seed, root / "data", **PHANTOM)
        items.append({"image": f"data/{image.name}", "label": f"data/{label.name}"})
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"validation": items}), encoding="utf-8")
    return root, model, datalist


def sweep_args(model: Path, out: Path, values: str, *cases: str) -> list[str]:
    return [
        "sweep",
        *cases,
        "--model",
        str(model),
        "--attack",
        "pgd",
        "--steps",
        "1",
        "--param",
        f"eps={values}",
        "--no-preview",
        "--device",
        "cpu",
        "--progress",
        "log",
        "--out",
        str(out),
    ]


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


@pytest.fixture(scope="module")
def single(setup):
    root, model, _ = setup
    out = root / "single"
    image, label = root / "data" / "phantom_seed0_image.nii.gz", root / "data" / "phantom_seed0_label.nii.gz"
    assert main(sweep_args(model, out, "2,8", "--image", str(image), "--label", str(label))) == 0
    return out, image, label


def test_single_volume_sweep_tables_plot_and_report(single):
    out, _, _ = single
    assert sorted(p.name for p in out.iterdir()) == [
        "cases.csv",
        "report.html",
        "runs",
        "sweep.csv",
        "sweep.json",
        "sweep.png",
    ]
    settings = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert settings["parameter"] == "eps" and settings["values"] == [2.0, 8.0]
    assert settings["unit"].startswith("k/255") and settings["cases"] == ["phantom_seed0_image"]
    provenance = settings["provenance"]
    assert provenance["command_line"].startswith("advseg sweep") and provenance["versions"]["torch"]
    assert provenance["models"][0]["name"] == "tiny" and len(provenance["models"][0]["weights_sha256"]) == 64
    table = rows(out / "sweep.csv")
    for value in ("2", "8"):  # each value's rows are its dataset run's aggregate, as written there
        run = rows(out / "runs" / f"eps-{value}" / "aggregate.csv")
        mine = [{k: r[k] for k in run[0]} for r in table if r["value"] == value]
        assert mine == run and all(r["parameter"] == "eps" for r in table)
    cases = rows(out / "cases.csv")
    metrics = {
        value: json.loads(
            (out / "runs" / f"eps-{value}" / "cases" / "phantom_seed0_image" / "metrics.json").read_text(
                encoding="utf-8"
            )
        )
        for value in ("2", "8")
    }
    assert len(cases) == sum(len(m["organs"]) for m in metrics.values())
    for row in cases:
        organ = metrics[f"{float(row['value']):g}"]["organs"][row["organ"]]
        assert row["attack"] == "pgd" and row["parameter"] == "eps"
        expected = float("nan") if organ["dice_adv"] is None else organ["dice_adv"]
        assert float(row["dice_adv"] or "nan") == pytest.approx(expected, nan_ok=True)
    linf = {r["value"]: float(r["mean"]) for r in table if r["metric"] == "linf_hu"}
    assert linf["8"] > linf["2"]  # a larger budget changes the volume more
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Findings" in report and "data:image/png;base64," in report and "cases.csv" in report
    assert "http://" not in report and "https://" not in report and "<script" not in report


def test_a_rerun_with_another_value_reuses_the_finished_ones(single, setup, tmp_path):
    import shutil

    out, image, label = single
    root, model, _ = setup
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    before = (
        (copy / "runs" / "eps-2" / "cases" / "phantom_seed0_image" / "adversarial.nii.gz").stat().st_mtime_ns
    )
    assert main(sweep_args(model, copy, "2,8,16", "--image", str(image), "--label", str(label))) == 0
    for value, skipped in (("2", 1), ("8", 1), ("16", 0)):
        summary = json.loads((copy / "runs" / f"eps-{value}" / "summary.json").read_text(encoding="utf-8"))
        assert summary["skipped_now"] == skipped and summary["ok"] == 1
    after = (
        (copy / "runs" / "eps-2" / "cases" / "phantom_seed0_image" / "adversarial.nii.gz").stat().st_mtime_ns
    )
    assert after == before
    assert {r["value"] for r in rows(copy / "sweep.csv")} == {"2", "8", "16"}


def test_dataset_sweep_has_the_spread_over_cases(setup):
    root, model, datalist = setup
    out = root / "dataset"
    assert main(sweep_args(model, out, "4", "--datalist", str(datalist), "--split", "validation")) == 0
    table = {(r["scope"], r["metric"]): r for r in rows(out / "sweep.csv")}
    assert int(table[("mean over organs", "mean_dice_adv")]["n"]) == 2
    assert table[("perturbation", "psnr_db")]["sd"] != ""  # two cases: a sample sd
    assert {r["case"] for r in rows(out / "cases.csv")} == {"phantom_seed0_image", "phantom_seed1_image"}
    (out / "report.html").unlink()
    assert main(["report", str(out), str(out / "runs" / "eps-4")]) == 0  # also a plain dataset run
    assert (out / "report.html").is_file() and (out / "runs" / "eps-4" / "report.html").is_file()


@pytest.mark.parametrize(
    ("param", "extra", "sentence"),
    [
        ("rho=0.1", [], "--param rho is not a numeric parameter of --attack pgd"),
        ("eps=2,x", [], "--param eps: 'x' is not a number"),
        ("eps=2,300", [], "--eps must be in (0, 255]"),
        ("eps=2,2", [], "--param eps lists a value twice"),
        ("eps", [], "--param 'eps' must be NAME=V1,V2"),
        ("eps=2,4", ["--eps", "4"], "--eps is swept by --param"),
        ("eps=2,4", ["--datalist", "d.json"], "give either --image"),
    ],
)
def test_bad_sweeps_are_one_sentence_before_any_output(setup, tmp_path, capsys, param, extra, sentence):
    root, model, _ = setup
    out = tmp_path / "bad"
    image = root / "data" / "phantom_seed0_image.nii.gz"
    args = sweep_args(model, out, "", "--image", str(image), *extra)
    args[args.index("--param") + 1] = param
    assert main(args) == 2
    assert sentence in capsys.readouterr().err
    assert not out.exists()


def test_report_of_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a sweep, transfer or dataset-run folder" in capsys.readouterr().err
