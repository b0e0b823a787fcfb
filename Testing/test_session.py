"""Blinded reader sessions: builder, manifest, and the crash-safe per-reader ratings store."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import engine_cli as main

from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.io import sha256_file
from AdvSegAttackLib.session import (
    RatingsWarning,
    append_rating,
    build_session,
    load_key,
    load_order,
    next_case,
    ratings_path,
    read_ratings,
    verify_session,
)

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

REPO = Path(__file__).resolve().parent.parent


def make_source(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.integers(-200, 300, (6, 8, 7)).astype(np.int16))
    image.SetSpacing((1.5, 1.5, 3.0))
    image.SetOrigin((10.0, -5.0, 2.0))
    image.SetMetaData("descrip", f"patient {seed} original")
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def make_case(folder: Path, source: Path, attack: str, organs: dict) -> Path:
    folder.mkdir(parents=True)
    image = sitk.ReadImage(str(source))
    voxels = sitk.GetArrayFromImage(image) + np.int16(3)
    adversarial = sitk.GetImageFromArray(voxels)
    adversarial.CopyInformation(image)
    adversarial.SetMetaData("descrip", f"adversarial {attack}")
    sitk.WriteImage(adversarial, str(folder / "adversarial.nii.gz"), useCompression=True)
    for name in ("pred_clean.nii.gz", "pred_clean.seg.nrrd", "pred_adv.nii.gz", "pred_adv.seg.nrrd"):
        (folder / name).write_bytes(b"")
    (folder / "metrics.json").write_text("{}", encoding="utf-8")
    provenance = {
        "input": {"path": str(source), "sha256": sha256_file(source)},
        "attack": {"name": attack},
        "organs": organs,
    }
    (folder / "provenance.json").write_text(json.dumps(provenance), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[Path]:
    """Four patients; patient 0 attacked twice (two case folders share its clean volume)."""
    root = tmp_path_factory.mktemp("cases")
    folders = []
    for index in range(4):
        source = make_source(root / f"source{index}.nii.gz", index)
        organ = {"liver": 6} if index % 2 else {"spleen": 1}
        folders.append(make_case(root / f"case{index}", source, "saa" if index < 2 else "pgd", organ))
    folders.append(make_case(root / "case0b", root / "source0.nii.gz", "vafa", {"liver": 6}))
    return folders


@pytest.fixture(scope="module")
def session(cases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s") / "session"
    build_session(cases, readers=2, seed=7, out=out)
    return out


def _patients(session: Path) -> dict[str, str]:
    return {case_id: item["patient"] for case_id, item in load_key(session)["items"].items()}


def test_layout_key_apart_and_neutral_volumes(session):
    key = load_key(session)
    items = key["items"]
    assert len(items) == 4 + 5  # one clean per patient + one adversarial per case folder
    assert sorted(t["truth"] for t in items.values()).count("real") == 4
    assert {p.name for p in session.iterdir()} == {"cases", "readers", "key", "manifest.json"}
    assert not list((session / "readers").rglob("key*")) and not list((session / "cases").rglob("*.json"))
    assert sorted(p.name for p in (session / "cases").iterdir()) == sorted(f"{i}.nii" for i in items)
    headers = set()
    for case_id in items:
        image = sitk.ReadImage(str(session / "cases" / f"{case_id}.nii"))
        assert "descrip" not in image.GetMetaDataKeys() or image.GetMetaData("descrip").strip() == ""
        headers.add((image.GetPixelID(), image.GetSize(), image.GetSpacing(), image.GetOrigin()))
    assert len(headers) == 1
    sizes = {(session / "cases" / f"{case_id}.nii").stat().st_size for case_id in items}
    assert len(sizes) == 1, "file sizes must not tell real from manipulated"
    for name in key["readers"]:
        assert sorted(load_order(session, name)) == sorted(items)
    # IDs are random, not ordered by kind
    ordered = sorted(items)
    truths = [items[i]["truth"] for i in ordered]
    assert truths != sorted(truths) and truths != sorted(truths, reverse=True)


def test_same_seed_same_session_other_seed_other_order(cases, session, tmp_path):
    build_session(cases, readers=2, seed=7, out=tmp_path / "again")
    build_session(cases, readers=2, seed=8, out=tmp_path / "other")
    first, again = load_key(session), load_key(tmp_path / "again")
    first.pop("created"), again.pop("created")
    for item in (*first["items"].values(), *again["items"].values()):
        item.pop("source"), item.pop("case_folder")
    assert first == again
    for name in first["readers"]:
        assert load_order(session, name) == load_order(tmp_path / "again", name)
    for case_id in first["items"]:
        relative = f"cases/{case_id}.nii"
        assert sha256_file(session / relative) == sha256_file(tmp_path / "again" / relative)
    assert sorted(load_key(tmp_path / "other")["items"]) != sorted(first["items"])


def test_never_back_to_back_same_patient(cases, tmp_path):
    for seed in range(6):
        out = tmp_path / f"s{seed}"
        key = build_session(cases, readers=3, seed=seed, out=out)
        patients = _patients(out)
        for name in key["readers"]:
            order = load_order(out, name)
            assert all(patients[a] != patients[b] for a, b in zip(order, order[1:], strict=False))


def test_impossible_order_refused(cases, tmp_path):
    with pytest.raises(InputError, match="never-both"):
        build_session(cases[:1], readers=1, seed=0, out=tmp_path / "one")
    assert not (tmp_path / "one").exists()


def test_never_both_balanced(cases, tmp_path):
    out = tmp_path / "nb"
    # patients 1..3 have one clean and one attacked version
    key = build_session(cases[1:4], readers=4, seed=3, out=out, never_both=True)
    patients, items = _patients(out), key["items"]
    seen_by: dict[str, int] = dict.fromkeys(items, 0)
    for name in key["readers"]:
        order = load_order(out, name)
        assert len(order) == 3 and len({patients[c] for c in order}) == 3
        real = sum(items[c]["truth"] == "real" for c in order)
        assert real in (1, 2)
        for c in order:
            seen_by[c] += 1
    assert set(seen_by.values()) == {2}  # each version seen by half of the readers


def test_source_checksum_mismatch_refused(tmp_path):
    source = make_source(tmp_path / "src.nii.gz", 0)
    case = make_case(tmp_path / "case", source, "saa", {"liver": 6})
    make_source(source, 1)  # source changed after the attack
    with pytest.raises(InputError, match="SHA-256"):
        build_session([case], readers=1, seed=0, out=tmp_path / "s", never_both=True)


def test_manifest_detects_changes(cases, tmp_path):
    out = tmp_path / "m"
    key = build_session(cases, readers=2, seed=1, out=out)
    assert verify_session(out) == []
    append_rating(out, "reader1", load_order(out, "reader1")[0], "real", 3, 4.0)
    assert verify_session(out) == []  # ratings are not part of the built session
    victim = out / "cases" / f"{sorted(key['items'])[0]}.nii"
    victim.write_bytes(victim.read_bytes() + b"\0")
    order = out / "readers" / "reader2" / "order.json"
    order.write_text(order.read_text(encoding="utf-8").replace('"reader2"', '"readerX"'), encoding="utf-8")
    (out / "cases" / "EXTRA.nii").write_bytes(b"x")
    problems = verify_session(out)
    assert len(problems) == 3
    assert any("modified" in p and victim.name in p for p in problems)
    assert any("order.json" in p for p in problems) and any("added" in p for p in problems)
    assert main(["session", "verify", str(out)]) == 2


def test_cli_build_and_verify(cases, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["session", "build", "--cases", *map(str, cases), "--readers", "2", "--out", str(out)]) == 0
    assert main(["session", "verify", str(out)]) == 0
    assert "intact" in capsys.readouterr().out
    assert main(["session", "build", "--cases", str(cases[0]), "--readers", "2", "--out", str(out)]) == 2


# --- ratings ----------------------------------------------------------------------------------------------


@pytest.fixture
def fresh(cases, tmp_path) -> Path:
    out = tmp_path / "r"
    build_session(cases, readers=2, seed=2, out=out)
    return out


def test_append_validate_and_resume(fresh):
    order = load_order(fresh, "reader1")
    assert next_case(fresh, "reader1") == order[0]
    record = append_rating(fresh, "reader1", order[0], "manipulated", 4, 12.5, comment="noisy", organ="liver")
    assert record["confidence"] == 4 and record["organ"] == "liver"
    assert next_case(fresh, "reader1") == order[1]
    assert next_case(fresh, "reader2") == load_order(fresh, "reader2")[0]
    with pytest.raises(InputError, match="already answered"):
        append_rating(fresh, "reader1", order[0], "real", 2, 1.0)
    with pytest.raises(InputError, match="not in the order"):
        append_rating(fresh, "reader1", "NOPE", "real", 2, 1.0)
    with pytest.raises(InputError, match="answer"):
        append_rating(fresh, "reader1", order[1], "fake", 2, 1.0)
    for bad in (0, 6, 2.5, True):
        with pytest.raises(InputError, match="confidence"):
            append_rating(fresh, "reader1", order[1], "real", bad, 1.0)
    with pytest.raises(InputError, match="reader"):
        append_rating(fresh, "../key", order[1], "real", 2, 1.0)
    for case_id in order[1:]:
        append_rating(fresh, "reader1", case_id, "real", 1, 2.0)
    assert next_case(fresh, "reader1") is None
    lines = ratings_path(fresh, "reader1").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["case_id"] for line in lines] == order


def test_half_written_line_ignored_then_repaired(fresh):
    order = load_order(fresh, "reader1")
    append_rating(fresh, "reader1", order[0], "real", 2, 3.0)
    path = ratings_path(fresh, "reader1")
    with open(path, "ab") as handle:
        handle.write(b'{"reader": "reader1", "case_id": "' + order[1].encode() + b'", "ans')
    with pytest.warns(RatingsWarning, match="half-written"):
        assert next_case(fresh, "reader1") == order[1]
    with pytest.warns(RatingsWarning):
        append_rating(fresh, "reader1", order[1], "manipulated", 5, 3.0)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["case_id"] for x in lines[:-1]] == order[:2]


KILLED_READER = textwrap.dedent(
    """
    import sys, time
    from AdvSegAttackLib.session import append_rating, next_case
    session = sys.argv[1]
    while (case_id := next_case(session, "reader1")) is not None:
        append_rating(session, "reader1", case_id, "real", 3, 1.0)
        print(case_id, flush=True)
        time.sleep(0.05)
    """
)


def test_kill_and_resume_loses_nothing_and_duplicates_nothing(fresh):
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_READER, str(fresh)],
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    answered = [process.stdout.readline().strip() for _ in range(3)]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    order = load_order(fresh, "reader1")
    saved = [r["case_id"] for r in read_ratings(fresh, "reader1")]
    assert saved[:3] == answered == order[:3]  # every printed answer was on disk
    while (case_id := next_case(fresh, "reader1")) is not None:
        append_rating(fresh, "reader1", case_id, "manipulated", 2, 1.0)
    saved = [r["case_id"] for r in read_ratings(fresh, "reader1")]
    assert saved == order


def _rate_all(session: str, reader: str) -> None:
    for case_id in load_order(session, reader):
        append_rating(session, reader, case_id, "real", 1, 0.5, comment="x" * 2000)


def test_two_readers_appending_at_once(fresh):
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_rate_all, args=(str(fresh), r)) for r in ("reader1", "reader2")]
    started = time.monotonic()
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert time.monotonic() - started < 60
    for reader in ("reader1", "reader2"):
        lines = ratings_path(fresh, reader).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert {r["reader"] for r in records} == {reader}
        assert [r["case_id"] for r in records] == load_order(fresh, reader)
