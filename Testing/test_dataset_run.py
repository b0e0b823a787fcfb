"""Dataset runs in one process: datalists and folders, `advseg attack-dataset` (manifest, aggregate, reruns,
failing cases) and `advseg evaluate`, on tiny phantoms with a tiny model."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import save_tiny_model

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.datasets.datalist import load_cases, read_datalist, read_folder
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.volumes.phantom import make_phantom, write_phantom

PHANTOM = {"shape": (36, 32, 30), "spacing": (6.0, 6.0, 6.0)}  # 216 x 192 x 180 mm, the phantom's field


def write_dataset(root: Path, seeds) -> Path:
    """Tiny phantoms in ROOT/data and a datalist ROOT/datalist.json (split `validation`)."""
    items = []
    for seed in seeds:
        image, label = write_phantom(seed, root / "data", **PHANTOM)
        items.append({"image": f"data/{image.name}", "label": f"data/{label.name}"})
    datalist = root / "datalist.json"
    datalist.write_text(
        json.dumps({"name": "phantoms", "training": items[:1], "validation": items}), encoding="utf-8"
    )
    return datalist


def attack_args(datalist: Path, model: Path, out: Path, steps: int = 1) -> list[str]:
    return [
        "attack-dataset",
        "--datalist",
        str(datalist),
        "--split",
        "validation",
        "--model",
        str(model),
        "--attack",
        "pgd",
        "--steps",
        str(steps),
        "--no-preview",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def manifest(out: Path) -> dict[str, dict]:
    return {
        r["case"]: r
        for r in map(json.loads, (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines())
    }


def voxels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# --- datalists and folders --------------------------------------------------------------------------------


def test_datalist_resolves_paths_and_lists_missing_files(tmp_path):
    image, label = write_phantom(0, tmp_path / "data" / "imagesTr", **PHANTOM)
    spec = {
        "validation": [
            {"image": f"imagesTr/{image.name}", "label": f"imagesTr/{label.name}"},
            {"image": "imagesTr/img0002.nii.gz", "label": f"imagesTr/{label.name}"},
            {"image": f"imagesTr/{image.name.replace('seed0', 'seed9')}", "label": "labels/gone.nii.gz"},
        ],
        "test": [f"imagesTr/{image.name}"],
    }
    datalist = tmp_path / "lists" / "synapse.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps(spec), encoding="utf-8")

    cases = read_datalist(datalist, tmp_path / "data", "validation")
    assert [c.name for c in cases] == ["phantom_seed0_image", "img0002", "phantom_seed9_image"]
    assert cases[0].image == image and cases[0].label == label and cases[0].problem is None
    assert "img0002.nii.gz does not exist" in cases[1].problem
    assert "seed9" in cases[2].problem and "image" in cases[2].problem  # the first missing file is named
    test_cases = read_datalist(datalist, tmp_path / "data", "test")  # MSD's plain list of images
    assert test_cases[0].image == image and test_cases[0].label is None

    # without --data-dir the paths are relative to the datalist's folder (MONAI's rule)
    assert "does not exist" in read_datalist(datalist, None, "validation")[0].problem

    with pytest.raises(InputError, match="has no split 'training' .*validation, test"):
        read_datalist(datalist, tmp_path / "data", "training")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="broken.json is not valid JSON"):
        read_datalist(tmp_path / "broken.json", tmp_path, "validation")
    twice = tmp_path / "twice.json"
    twice.write_text(
        json.dumps({"validation": [{"image": f"data/imagesTr/{image.name}"}] * 2}), encoding="utf-8"
    )
    with pytest.raises(InputError, match="two cases 'phantom_seed0_image'"):
        read_datalist(twice, None, "validation")
    with pytest.raises(InputError, match="--datalist .*nothing.json does not exist"):
        load_cases(None, tmp_path / "nothing.json", None)


def test_plain_folder_matches_labels_by_name(tmp_path):
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    image, label = make_phantom(1, **PHANTOM)
    for name in ("spleen_2.nii.gz", "case7_0000.nii.gz", "nolabel.nii.gz"):
        images.mkdir(exist_ok=True)
        sitk.WriteImage(image, str(images / name))
    labels.mkdir()
    sitk.WriteImage(label, str(labels / "spleen_2.nii.gz"))
    sitk.WriteImage(label, str(labels / "case7.nii.gz"))  # nnU-Net: the _0000 channel suffix is dropped

    cases = {c.name: c for c in read_folder(tmp_path)}
    assert set(cases) == {"spleen_2", "case7_0000", "nolabel"}
    assert cases["spleen_2"].label == labels / "spleen_2.nii.gz" and cases["spleen_2"].problem is None
    assert cases["case7_0000"].label == labels / "case7.nii.gz" and cases["case7_0000"].problem is None
    assert "label" in cases["nolabel"].problem and "nolabel.nii.gz does not exist" in cases["nolabel"].problem
    with pytest.raises(InputError, match="no imagesTs folder"):
        read_folder(tmp_path, "test")
    with pytest.raises(InputError, match="--split 'validation' needs a --datalist"):
        load_cases(tmp_path, None, "validation")


# --- attack-dataset ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), spacing_mm=6.0, roi=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Datalist of 3 good phantoms, one whose label covers another space, one truncated image, one missing."""
    root = tmp_path_factory.mktemp("dataset")
    datalist = write_dataset(root, range(3))
    spec = json.loads(datalist.read_text(encoding="utf-8"))
    _, small_label = make_phantom(3, shape=(20, 20, 20), spacing=(6.0, 6.0, 6.0))
    image, _ = write_phantom(3, root / "data", **PHANTOM)
    sitk.WriteImage(small_label, str(root / "data" / "small_label.nii.gz"))
    truncated = root / "data" / "truncated.nii.gz"
    raw = gzip.decompress(image.read_bytes())
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    spec["validation"] += [
        {"image": f"data/{image.name}", "label": "data/small_label.nii.gz"},
        {"image": "data/truncated.nii.gz", "label": spec["validation"][0]["label"]},
        {"image": "data/absent.nii.gz", "label": spec["validation"][0]["label"]},
    ]
    datalist.write_text(json.dumps(spec), encoding="utf-8")
    return datalist


GOOD = ["phantom_seed0_image", "phantom_seed1_image", "phantom_seed2_image"]
BAD = ["phantom_seed3_image", "truncated", "absent"]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, dataset, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("attacked") / "run"
    assert main(attack_args(dataset, tiny_model, out)) == 1  # some cases failed, the others were done
    return out


def test_attack_dataset_writes_case_folders_manifest_and_aggregate(attacked, capsys):
    records = manifest(attacked)
    assert list(records) == GOOD + BAD  # datalist order, one line per case
    for name in GOOD:
        record = records[name]
        assert record["status"] == "ok" and record["error"] is None and record["seconds"] > 0
        metrics = json.loads((attacked / "cases" / name / "metrics.json").read_text(encoding="utf-8"))
        assert record["metrics"]["mean_dice_adv"] == pytest.approx(metrics["mean_dice_adv"])
        assert record["metrics"]["ssim_3d"] == pytest.approx(metrics["perturbation"]["ssim_3d"])
        assert set(record["outputs"]) >= {"adversarial.nii.gz", "pred_adv.nii.gz", "provenance.json"}
        # the adversarial volume differs from its source on the same grid (the attack ran)
        source = json.loads((attacked / "cases" / name / "provenance.json").read_text(encoding="utf-8"))[
            "input"
        ]["path"]
        assert np.any(voxels(attacked / "cases" / name / "adversarial.nii.gz") != voxels(Path(source)))
    assert "does not cover the same physical space" in records["phantom_seed3_image"]["error"]
    assert "truncated" in records["truncated"]["error"]
    assert "absent.nii.gz does not exist" in records["absent"]["error"]
    assert all(records[name]["status"] == "failed" for name in BAD)
    assert not any((attacked / "cases" / name).exists() for name in BAD)

    rows = {
        (r["scope"], r["metric"]): r
        for r in csv.DictReader((attacked / "aggregate.csv").open(encoding="utf-8"))
    }
    case_means = [records[name]["metrics"]["mean_dice_adv"] for name in GOOD]
    row = rows[("mean over organs", "mean_dice_adv")]
    assert int(row["n"]) == 3
    assert float(row["mean"]) == pytest.approx(np.mean(case_means), abs=1e-6)
    assert float(row["sd"]) == pytest.approx(np.std(case_means, ddof=1), abs=1e-6)
    liver = [records[name]["metrics"]["organs"]["liver"]["dice_clean"] for name in GOOD]
    assert float(rows[("liver", "dice_clean")]["mean"]) == pytest.approx(np.mean(liver), abs=1e-6)
    assert float(rows[("perturbation", "psnr_db")]["mean"]) > 20
    markdown = (attacked / "aggregate.md").read_text(encoding="utf-8")
    assert "| liver | 3 |" in markdown and "## Failed cases (3)" in markdown
    assert "`absent`" in markdown
    summary = json.loads((attacked / "summary.json").read_text(encoding="utf-8"))
    assert summary["ok"] == 3 and [f["case"] for f in summary["failed"]] == BAD

    # cases.csv: one row per case x organ (the failed cases have none), numbers as in the case's metrics
    cases = list(csv.DictReader((attacked / "cases.csv").open(encoding="utf-8")))
    metrics = {
        name: json.loads((attacked / "cases" / name / "metrics.json").read_text(encoding="utf-8"))
        for name in GOOD
    }
    assert [(r["case"], r["organ"]) for r in cases] == [
        (name, organ)
        for name in GOOD
        for organ in sorted(metrics[name]["organs"], key=lambda o: metrics[name]["organs"][o]["label"])
    ]
    for row in cases:
        organ = metrics[row["case"]]["organs"][row["organ"]]
        assert row["attack"] == "pgd" and row["model"] == metrics[row["case"]]["model"]
        assert int(row["label"]) == organ["label"]
        for key in ("dice_clean", "dice_adv"):
            assert (float(row[key]) if row[key] else None) == pytest.approx(organ[key])
        if organ["dice_clean"] is not None and organ["dice_adv"] is not None:
            assert float(row["dice_drop"]) == pytest.approx(organ["dice_clean"] - organ["dice_adv"])
        assert float(row["psnr_db"]) == pytest.approx(metrics[row["case"]]["perturbation"]["psnr_db"])


def test_rerun_skips_verified_cases_and_redoes_broken_ones(attacked, dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(attacked, out)
    before = voxels(out / "cases" / GOOD[1] / "adversarial.nii.gz")
    stamp = (out / "cases" / GOOD[0] / "adversarial.nii.gz").stat().st_mtime_ns
    # a half-written output and a staging folder left by a killed run
    damaged = out / "cases" / GOOD[1] / "adversarial.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    (out / "cases" / f".{GOOD[1]}.staging-abc123").mkdir()
    (out / "cases" / GOOD[2] / "metrics.json").write_text("{}", encoding="utf-8")
    capsys.readouterr()

    assert main(attack_args(dataset, tiny_model, out)) == 1
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["skipped_now"] == 1 and summary["ran_now"] == 5  # 2 broken + 3 failing cases retried
    assert (out / "cases" / GOOD[0] / "adversarial.nii.gz").stat().st_mtime_ns == stamp
    assert np.array_equal(voxels(damaged), before)  # redone, identically
    assert not list((out / "cases").glob(".*staging*"))
    redone = json.loads((out / "cases" / GOOD[2] / "metrics.json").read_text(encoding="utf-8"))
    assert redone["mean_dice_adv"] == pytest.approx(manifest(attacked)[GOOD[2]]["metrics"]["mean_dice_adv"])
    assert len((out / "manifest.rank0.jsonl").read_text(encoding="utf-8").splitlines()) == 6 + 5


def test_rerun_with_other_settings_is_refused(attacked, dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(attacked, out)
    assert main(attack_args(dataset, tiny_model, out, steps=2)) == 2
    assert "holds a run with other settings" in capsys.readouterr().err


# --- evaluate ---------------------------------------------------------------------------------------------


def test_evaluate_reproduces_the_attacked_dice(attacked, dataset, tiny_model, tmp_path):
    records = manifest(attacked)
    out = tmp_path / "eval"
    assert main(["evaluate", "--adv-dir", str(attacked), "--model", str(tiny_model), "--out", str(out)]) == 0
    evaluated = manifest(out)
    assert sorted(evaluated) == sorted(GOOD)  # the case folders, inputs and labels from their provenance
    for name in GOOD:
        assert evaluated[name]["metrics"]["mean_dice_adv"] == pytest.approx(
            records[name]["metrics"]["mean_dice_adv"]
        )
        assert evaluated[name]["metrics"]["mean_dice_clean"] == pytest.approx(
            records[name]["metrics"]["mean_dice_clean"]
        )
        assert np.array_equal(
            voxels(out / "cases" / name / "pred_adv.nii.gz"),
            voxels(attacked / "cases" / name / "pred_adv.nii.gz"),
        )

    # a flat folder of adversarial volumes named as the images, matched through the datalist
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in GOOD[:2]:
        shutil.copy(attacked / "cases" / name / "adversarial.nii.gz", flat / f"{name}.nii.gz")
    out_flat = tmp_path / "eval-flat"
    args = ["evaluate", "--adv-dir", str(flat), "--datalist", str(dataset), "--split", "validation"]
    assert main([*args, "--model", str(tiny_model), "--out", str(out_flat)]) == 1
    flat_records = manifest(out_flat)
    for name in GOOD[:2]:
        assert flat_records[name]["metrics"]["mean_dice_adv"] == pytest.approx(
            records[name]["metrics"]["mean_dice_adv"]
        )
    assert "no adversarial volume was found" in flat_records[GOOD[2]]["error"]
    rows = {
        (r["scope"], r["metric"]): r
        for r in csv.DictReader((out_flat / "aggregate.csv").open(encoding="utf-8"))
    }
    assert int(rows[("mean over organs", "mean_dice_adv")]["n"]) == 2
    # cases.csv names the attack of a case folder (from its provenance), not of a bare volume
    assert {r["attack"] for r in csv.DictReader((out / "cases.csv").open(encoding="utf-8"))} == {"pgd"}
    assert {r["attack"] for r in csv.DictReader((out_flat / "cases.csv").open(encoding="utf-8"))} == {""}


@pytest.mark.slow
def test_attack_dataset_and_evaluate_on_real_ct(
    tmp_path, tiny_model, real_ct_small, real_ct_small_labels, msd_spleen
):
    data_dir = real_ct_small.parent.parent  # ../shared/data/real: the datalist paths are relative to it
    spec = {
        "validation": [
            {
                "image": str(path.relative_to(data_dir)),
                "label": str(label.relative_to(data_dir)),
            }
            for path, label in ((real_ct_small, real_ct_small_labels), msd_spleen)
        ]
    }
    datalist = tmp_path / "real.json"
    datalist.write_text(json.dumps(spec), encoding="utf-8")
    out = tmp_path / "real"
    args = attack_args(datalist, tiny_model, out)
    assert main([*args, "--data-dir", str(data_dir)]) == 0
    records = manifest(out)
    assert list(records) == ["example_ct_sm", "sub-spleen2_ct"]
    for (name, record), (image, _) in zip(records.items(), ((real_ct_small, 0), msd_spleen), strict=True):
        assert record["status"] == "ok"
        source = sitk.ReadImage(str(image))
        adversarial = sitk.ReadImage(str(out / "cases" / name / "adversarial.nii.gz"))
        assert adversarial.GetSize() == source.GetSize()
        assert np.allclose(adversarial.GetOrigin(), source.GetOrigin())
        assert np.allclose(adversarial.GetDirection(), source.GetDirection())
        assert record["metrics"]["reference"] == "reference label"
    assert "spleen" in records["sub-spleen2_ct"]["metrics"]["organs"]  # MSD spleen is BTCV label 1

    evaluated = tmp_path / "real-eval"
    assert main(["evaluate", "--adv-dir", str(out), "--model", str(tiny_model), "--out", str(evaluated)]) == 0
    for name, record in manifest(evaluated).items():
        assert record["metrics"]["mean_dice_adv"] == pytest.approx(records[name]["metrics"]["mean_dice_adv"])


# --- bad options and datalist items: refused before any case runs (issue 12) ------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--organ", "heart"], "--organ 'heart' is not an organ of this model"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--region", "organ"], "--region organ needs --organ"),
        (["--targeted"], "--targeted needs --organ"),
    ],
)
def test_dataset_options_are_checked_once_before_any_case_runs(
    options, message, dataset, tiny_model, tmp_path, capsys
):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*attack_args(dataset, tiny_model, out), *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "segment", "attack", "train"])
def test_a_missing_cuda_device_is_refused_before_the_output_folder(
    command, attacked, dataset, tiny_model, tmp_path, capsys
):
    data = dataset.parent / "data"
    image, label = data / "phantom_seed0_image.nii.gz", data / "phantom_seed0_label.nii.gz"
    args = {
        "evaluate": ["evaluate", "--adv-dir", str(attacked), "--model", str(tiny_model)],
        "segment": ["segment", "--image", str(image), "--model", str(tiny_model)],
        "attack": ["attack", "--image", str(image), "--model", str(tiny_model), "--attack", "gn"],
        "train": ["train", "--image", str(image), "--label", str(label), "--steps", "1"],
    }[command]
    out = tmp_path / "out"
    capsys.readouterr()
    assert main([*args, "--device", "cuda:7", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda:7" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("item", ["/", "", ".", "..", "../data/phantom_seed0_image.nii.gz", "/etc/hostname"])
def test_datalist_items_outside_the_data_folder_are_refused(item, tmp_path):
    root = tmp_path / "root"
    write_dataset(root, [0])
    datalist = root / "datalist.json"
    spec = json.loads(datalist.read_text(encoding="utf-8"))
    spec["validation"].append({"image": item})
    datalist.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(InputError, match=rf"split 'validation', item 1: image {item!r} is not a path inside"):
        read_datalist(datalist, root, "validation")


def test_case_names_that_differ_only_in_case_are_refused(tmp_path):
    datalist = tmp_path / "datalist.json"
    items = [{"image": "Case1.nii.gz"}, {"image": "case1.nii.gz"}]
    datalist.write_text(json.dumps({"validation": items}), encoding="utf-8")
    with pytest.raises(InputError, match="names two cases 'case1'"):
        read_datalist(datalist, None, "validation")


def test_a_bad_datalist_item_never_deletes_a_finished_case(attacked, dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(attacked, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    spec = json.loads(dataset.read_text(encoding="utf-8"))
    spec["validation"].append({"image": "/", "label": spec["validation"][0]["label"]})  # once named case ""
    bad = dataset.parent / "bad-datalist.json"
    bad.write_text(json.dumps(spec), encoding="utf-8")
    capsys.readouterr()
    assert main(attack_args(bad, tiny_model, out)) == 2
    assert "image '/' is not a path inside the data folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_clearing_a_case_touches_only_its_own_folders(tmp_path):
    from AdvSegAttackLib.datasets.runs import clear_case_dir

    cases = tmp_path / "cases"
    for folder in ("finished", ".finished.staging-1", "*", ".*.staging-2"):
        (cases / folder).mkdir(parents=True)
        (cases / folder / "file").write_text("x", encoding="utf-8")
    for unsafe in ("", ".", "..", ".hidden", "a/b"):
        with pytest.raises(InputError, match="not a safe folder name; nothing was deleted"):
            clear_case_dir(cases, unsafe)
    assert sorted(p.name for p in cases.iterdir()) == sorted(
        ["finished", ".finished.staging-1", "*", ".*.staging-2"]
    )
    assert clear_case_dir(cases, "*") == cases / "*"  # a name with glob characters matches only itself
    assert sorted(p.name for p in cases.iterdir()) == [".finished.staging-1", "finished"]


def test_a_dataset_run_loads_its_model_once(tmp_path, tiny_model, monkeypatch):
    """attack-dataset and evaluate load the model once for all their cases, not once per case."""
    import AdvSegAttackLib.pipeline.case as case_steps

    loads = []
    real_load = case_steps.load_model

    def counted_load(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(case_steps, "load_model", counted_load)
    datalist = write_dataset(tmp_path / "data", [0, 1, 2])
    assert main(attack_args(datalist, tiny_model, tmp_path / "attacked")) == 0
    assert loads == [str(tiny_model)]
    loads.clear()
    evaluate = ["evaluate", "--adv-dir", str(tmp_path / "attacked"), "--model", str(tiny_model)]
    assert main([*evaluate, "--device", "cpu", "--out", str(tmp_path / "evaluated")]) == 0
    assert loads == [str(tiny_model)]
