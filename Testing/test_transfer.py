"""`advseg transfer`: two tiny models of different weights attack a phantom; every adversarial volume is
scored on both models from its written file (never attacked again), white-box on the diagonal."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import save_tiny_model

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.volumes.io import sha256_file
from AdvSegAttackLib.volumes.phantom import write_phantom

CASE = "phantom_seed0_image"


def transfer_args(models: list[Path], out: Path, image: Path, label: Path, *extra: str) -> list[str]:
    names = [str(m) for m in models]
    return [
        "transfer",
        "--image",
        str(image),
        "--label",
        str(label),
        "--source-models",
        *names,
        "--target-models",
        *names,
        "--attack",
        "pgd",
        "--eps",
        "16",
        "--steps",
        "1",
        "--no-preview",
        "--device",
        "cpu",
        "--progress",
        "log",
        *extra,
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def transferred(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    models = [
        save_tiny_model(root / "models", 6.0, 32, name=n, seed=s) for n, s in (("tiny-a", 1), ("tiny-b", 2))
    ]
    image, label = write_phantom(0, root / "data", shape=(36, 32, 30), spacing=(6.0, 6.0, 6.0))
    out = root / "out"
    assert main(transfer_args(models, out, image, label)) == 0
    return out, models, image, label


def test_transfer_matrix_scores_the_written_volumes_on_every_model(transferred):
    out, _, _, _ = transferred
    rows = list(csv.DictReader((out / "transfer.csv").open(encoding="utf-8")))
    assert [(r["source_model"], r["target_model"], r["box"]) for r in rows] == [
        ("tiny-a", "tiny-a", "white"),
        ("tiny-a", "tiny-b", "black"),
        ("tiny-b", "tiny-a", "black"),
        ("tiny-b", "tiny-b", "white"),
    ]
    for row in rows:
        source, target = row["source_model"], row["target_model"]
        written = out / "attacks" / source / "cases" / CASE / "adversarial.nii.gz"
        scored = json.loads(
            (out / "scores" / f"{source}--on--{target}" / "cases" / CASE / "metrics.json").read_text(
                encoding="utf-8"
            )
        )
        assert scored["adversarial"]["sha256"] == sha256_file(written)  # the source's file, as written
        assert scored["model"] == target and int(row["cases"]) == 1
        assert float(row["dice_adv"]) == pytest.approx(scored["mean_dice_adv"], abs=1e-6)
        assert float(row["dice_drop"]) == pytest.approx(
            scored["mean_dice_clean"] - scored["mean_dice_adv"], abs=1e-6
        )
        if source == target:  # white-box: the attack run's own score of its written file
            attacked = json.loads(
                (out / "attacks" / source / "cases" / CASE / "metrics.json").read_text(encoding="utf-8")
            )
            assert scored["mean_dice_adv"] == pytest.approx(attacked["mean_dice_adv"], abs=1e-9)
    assert not list((out / "scores").rglob("adversarial.nii.gz"))  # scoring never attacks
    for source in ("tiny-a", "tiny-b"):  # one attack per source and case
        lines = (out / "attacks" / source / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1
    a, b = (out / "attacks" / s / "cases" / CASE / "adversarial.nii.gz" for s in ("tiny-a", "tiny-b"))
    assert sha256_file(a) != sha256_file(b)  # two models, two different attacks
    cases = list(csv.DictReader((out / "cases.csv").open(encoding="utf-8")))
    assert {(r["source_model"], r["model"]) for r in cases} == {
        (s, t) for s in ("tiny-a", "tiny-b") for t in ("tiny-a", "tiny-b")
    }
    assert {r["attack"] for r in cases} == {"pgd"}
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "white-box" in report and "black-box" in report and "http" not in report


def test_a_rerun_redoes_nothing(transferred):
    out, models, image, label = transferred
    stamp = (out / "attacks" / "tiny-a" / "cases" / CASE / "adversarial.nii.gz").stat().st_mtime_ns
    assert main(transfer_args(models, out, image, label)) == 0
    summaries = list(out.glob("*/*/summary.json"))
    assert len(summaries) == 2 + 4  # two attack runs, four scoring runs
    for summary in summaries:
        assert json.loads(summary.read_text(encoding="utf-8"))["ran_now"] == 0, summary
    assert (out / "attacks" / "tiny-a" / "cases" / CASE / "adversarial.nii.gz").stat().st_mtime_ns == stamp


def test_two_models_of_one_name_are_refused(transferred, tmp_path, capsys):
    _, models, image, label = transferred
    twin = tmp_path / "twin"
    shutil.copytree(models[0].parent, twin)
    out = tmp_path / "out"
    assert main(transfer_args([models[0], twin / "card.json"], out, image, label)) == 2
    assert "have the same card name" in capsys.readouterr().err
    assert not out.exists()
