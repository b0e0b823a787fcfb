"""Blinded reader sessions: builder, manifest, and the crash-safe per-reader ratings store."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.studies.session import (
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
from AdvSegAttackLib.volumes.io import sha256_file

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

REPO = Path(__file__).resolve().parent.parent


def make_source(path: Path, seed: int, shape: tuple[int, int, int] = (6, 8, 7)) -> Path:
    """A random int16 CT-like volume of `shape` (z, y, x) with a description in its header."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.integers(-200, 300, shape).astype(np.int16))
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
    shown = set()
    for name in key["readers"]:
        order = load_order(session, name)
        shown.update(order)
        # every patient's real volume and one of its manipulated versions (patient 0 has two)
        assert sorted(items[c]["truth"] for c in order) == ["manipulated"] * 4 + ["real"] * 4
        assert len({items[c]["patient"] for c in order if items[c]["truth"] == "manipulated"}) == 4
        assert all(name in items[c]["readers"] for c in order)
    assert shown == set(items)  # two readers: both versions of patient 0 are shown
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


def _glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="MALLOC_MMAP_THRESHOLD_ is a glibc setting")
def test_build_reads_no_freed_image(tmp_path):
    """`session build` read a view of an image freed at once (use-after-free, exit 139 in the issue).

    With MALLOC_MMAP_THRESHOLD_ at 64 KiB glibc gives every freed volume buffer back to the
    system at once (here 590 kB each), so reading freed voxels is a segmentation fault, not stale memory.
    """
    cases = [
        make_case(tmp_path / f"case{i}", make_source(tmp_path / f"src{i}.nii.gz", i, (32, 96, 96)), "pgd", {})
        for i in range(2)
    ]
    out = tmp_path / "S"
    # the build alone, without the command line's torch import (slow with this allocator setting)
    build = "import sys; from AdvSegAttackLib.studies.session import build_session as b; b(sys.argv[2:], 2, 1, sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", build, str(out), *map(str, cases)],
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert verify_session(out) == [] and not list(tmp_path.glob(".S.building-*"))
    key = load_key(out)
    real = next(i for i, item in key["items"].items() if item["truth"] == "real" and "src0" in item["source"])
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cases" / f"{real}.nii")))
    assert np.array_equal(written, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "src0.nii.gz"))))


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
    from AdvSegAttackLib.studies.session import append_rating, next_case
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


# --- interrupted builds -------------------------------------------------------------------------------------

BUILDER = textwrap.dedent(
    """
    import sys
    from AdvSegAttackLib.studies.session import build_session
    build_session(sys.argv[2:], readers=2, seed=0, out=sys.argv[1], never_both=True)
    """
)


@pytest.fixture(scope="module")
def heavy_cases(tmp_path_factory) -> list[Path]:
    """Two patients attacked four times each, 1.5 MB volumes: a build takes about a second."""
    root = tmp_path_factory.mktemp("heavy")
    cases = []
    for index in range(2):
        source = make_source(root / f"source{index}.nii.gz", index, (48, 128, 128))
        cases += [make_case(root / f"case{index}{a}", source, "pgd", {}) for a in range(4)]
    return cases


def _builder_in_progress(out: Path, cases: list[Path]) -> tuple[subprocess.Popen, Path]:
    """A `build_session` process and its staging folder, caught while it writes the case files."""
    process = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(out), *map(str, cases)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        for staging in out.parent.glob(f".{out.name}.building-*"):
            if (staging / "cases").is_dir() and any((staging / "cases").iterdir()):
                return process, staging
        time.sleep(0.002)
    process.kill()
    process.wait()
    pytest.fail(f"the build of {out} ended (exit {process.returncode}) before it was caught in progress")


def test_killed_build_leaves_no_staging_folder_after_the_next_build(heavy_cases, cases, tmp_path):
    process, staging = _builder_in_progress(tmp_path / "A", heavy_cases)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert staging.is_dir() and not (tmp_path / "A").exists()  # SIGKILL runs no clean-up
    build_session(
        cases, readers=1, seed=0, out=tmp_path / "B", never_both=True
    )  # another session, same folder
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B"]
    assert verify_session(tmp_path / "B") == []


def test_staging_folder_of_a_live_builder_is_kept(heavy_cases, cases, tmp_path):
    process, staging = _builder_in_progress(tmp_path / "C", heavy_cases)
    os.kill(process.pid, signal.SIGSTOP)  # alive but not progressing while the other build runs
    try:
        build_session(cases, readers=1, seed=0, out=tmp_path / "D", never_both=True)
        assert staging.is_dir()
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert process.wait(timeout=120) == 0
    assert verify_session(tmp_path / "C") == [] and verify_session(tmp_path / "D") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["C", "D"]


def test_which_staging_folders_are_removed(tmp_path):
    import psutil

    from AdvSegAttackLib.volumes.staging import StagingWarning, host_tag, remove_abandoned_staging

    me = psutil.Process()
    started = round(me.create_time() * 100)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(finished.stdout)
    host = host_tag()
    other_host = f"{(int(host, 16) + 1) % 16**8:08x}"
    folders = {
        "alive": f".S.building-{host}-{me.pid}-{started}-ab12_x",
        "dead": f".S.building-{host}-{dead_pid}-{started}-cd34_y",
        "pid reused": f".T.building-{host}-{me.pid}-{started - 500}-ef56_z",
        "other computer": f".S.building-{other_host}-{dead_pid}-{started}-gh78_w",
        "no record": ".S.building-k2j4h5g6",
    }
    for name in folders.values():
        (tmp_path / name / "cases").mkdir(parents=True)
    (tmp_path / ".S.building-file").write_bytes(b"")  # not a folder: left alone
    with pytest.warns(StagingWarning, match="without a writer record"):
        removed = remove_abandoned_staging(tmp_path)
    assert sorted(p.name for p in removed) == sorted([folders["dead"], folders["pid reused"]])
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {folders["alive"], folders["other computer"], folders["no record"], ".S.building-file"}


def test_any_staged_output_removes_staging_folders_of_killed_writers(tmp_path):
    """`attack`, `export` and `segment` stage too: a writer killed with SIGKILL leaves its folder, which the
    next staged output in the same parent removes (a live writer's folder stays)."""
    import psutil

    from AdvSegAttackLib.volumes.io import staged_output_dir
    from AdvSegAttackLib.volumes.staging import host_tag

    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from AdvSegAttackLib.volumes.staging import make_staging_dir; "
            "print(make_staging_dir(sys.argv[1], 'staging'), flush=True); import time; time.sleep(60)",
            str(tmp_path / "case"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    abandoned = Path(writer.stdout.readline().strip())
    assert abandoned.is_dir() and f"-{host_tag()}-{writer.pid}-" in abandoned.name
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    me = psutil.Process()
    alive = tmp_path / f".other.staging-{host_tag()}-{me.pid}-{round(me.create_time() * 100)}-ab12_x"
    alive.mkdir()
    with staged_output_dir(tmp_path / "next") as staging:
        (staging / "file.txt").write_text("x", encoding="utf-8")
    assert not abandoned.exists() and alive.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "next"]
