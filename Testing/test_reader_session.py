"""One reader's side of a session (`AdvSegAttackLib.studies.reader_session`): resume, crash safety, isolation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.studies.reader_session import ORGAN_CHOICES, ReaderSession, case_file
from AdvSegAttackLib.studies.session import (
    RatingsWarning,
    build_session,
    handout,
    load_key,
    load_order,
    ratings_path,
)
from AdvSegAttackLib.volumes.io import sha256_file

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

REPO = Path(__file__).resolve().parent.parent


def _volume(path: Path, seed: int, description: str) -> Path:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.integers(-150, 250, (5, 9, 8)).astype(np.int16))
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-20.0, 15.0, 40.0))
    image.SetMetaData("descrip", description)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def make_cases(root: Path, patients: int = 3) -> list[Path]:
    """Case folders of the engine's shape: one attacked volume per patient (voxels + 4 HU)."""
    folders = []
    for index in range(patients):
        source = _volume(root / f"clean_source_{index}.nii.gz", index, f"clean patient {index}")
        folder = root / f"adv_case_{index}"
        folder.mkdir()
        image = sitk.ReadImage(str(source))
        attacked = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) + np.int16(4))
        attacked.CopyInformation(image)
        attacked.SetMetaData("descrip", "adversarial saa")
        sitk.WriteImage(attacked, str(folder / "adversarial.nii.gz"), useCompression=True)
        for name in ("pred_clean.nii.gz", "pred_clean.seg.nrrd", "pred_adv.nii.gz", "pred_adv.seg.nrrd"):
            (folder / name).write_bytes(b"")
        (folder / "metrics.json").write_text("{}", encoding="utf-8")
        provenance = {
            "input": {"path": str(source), "sha256": sha256_file(source)},
            "attack": {"name": "saa"},
            "organs": {"liver": 6},
        }
        (folder / "provenance.json").write_text(json.dumps(provenance), encoding="utf-8")
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A session of 3 patients (6 cases) for 2 readers; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("reader_cases")
    out = root / "study"
    build_session(make_cases(root), readers=2, seed=5, out=out)
    return out


@pytest.fixture
def session(built, tmp_path) -> Path:
    copy = tmp_path / "study"
    shutil.copytree(built, copy)
    return copy


def _answer_all(reader: ReaderSession, verdict: str = "real") -> None:
    while (case_id := reader.current()) is not None:
        reader.answer(case_id, verdict, 3, seconds_on_case=1.5)


# --- resume and the basic flow ----------------------------------------------------------------------------


def test_current_answer_progress_and_resume(session):
    order = load_order(session, "reader1")
    reader = ReaderSession.open(session, "reader1")
    assert (reader.answered, reader.total, reader.current()) == (0, 6, order[0])
    assert reader.image_path(order[0]) == case_file(session, order[0])
    record = reader.answer(
        order[0], "manipulated", 4, comment=" blurry liver ", organ="liver", seconds_on_case=7.25
    )
    assert record["organ"] == "liver" and record["comment"] == "blurry liver" and record["seconds"] == 7.25
    reader.answer(order[1], "real", 2, seconds_on_case=3.0)
    assert (reader.progress, reader.current()) == ((2, 6), order[2])
    # A new process (here: a new object) resumes at the first unanswered case.
    again = ReaderSession.open(session, " reader1 ")
    assert (again.answered, again.current()) == (2, order[2])
    _answer_all(again)
    assert again.done and again.current() is None
    saved = [
        json.loads(line) for line in ratings_path(session, "reader1").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["case_id"] for r in saved] == order
    assert {r["reader"] for r in saved} == {"reader1"}
    # The other reader is untouched.
    assert ReaderSession.open(session, "reader2").answered == 0


def test_validation_errors_are_one_sentence(session):
    order = load_order(session, "reader1")
    reader = ReaderSession.open(session, "reader1")
    cases = [
        ((order[0], "real", 0), "confidence"),
        ((order[0], "real", 6), "confidence"),
        ((order[0], "real", 2.5), "confidence"),
        ((order[0], "fake", 3), "verdict 'fake' is not one of real, manipulated"),
        (("ZZZZZZZZ", "real", 3), "'ZZZZZZZZ' is not in the order of reader1"),
        (
            (order[1], "real", 3),
            f"not the current case of reader1 \\({order[0]}\\); cases are answered in order",
        ),
    ]
    for arguments, message in cases:
        with pytest.raises(InputError, match=message) as error:
            reader.answer(*arguments)
        assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")
    with pytest.raises(InputError, match="only be given with the verdict 'manipulated'"):
        reader.answer(order[0], "real", 3, organ="liver")
    with pytest.raises(InputError, match="organ 'brain' is not one of spleen"):
        reader.answer(order[0], "manipulated", 3, organ="brain")
    with pytest.raises(InputError, match="seconds"):
        reader.answer(order[0], "real", 3, seconds_on_case=-1.0)
    assert not ratings_path(session, "reader1").exists()  # nothing was written by a refused answer
    reader.answer(order[0], "manipulated", 5, organ=ORGAN_CHOICES[0])
    with pytest.raises(InputError, match=f"already answered case {order[0]}"):
        reader.answer(order[0], "real", 3)
    with pytest.raises(InputError, match="not in the order"):
        reader.image_path("ZZZZZZZZ")
    assert len(ratings_path(session, "reader1").read_text(encoding="utf-8").splitlines()) == 1


def test_unknown_reader_and_non_sessions_are_refused(session, tmp_path):
    with pytest.raises(
        InputError, match=r"'bob' is not a reader of session .* \(its readers are reader1, reader2\)"
    ):
        ReaderSession.open(session, "bob")
    with pytest.raises(InputError, match="is not a reader"):
        ReaderSession.open(session, "../key")
    with pytest.raises(InputError, match="not a folder"):
        ReaderSession.open(tmp_path / "nowhere", "reader1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a session manifest"):
        ReaderSession.open(tmp_path / "empty", "reader1")


# --- isolation: the key and other readers' files are never opened -----------------------------------------


_OPENED: list[str] = []
_RECORDING: list[bool] = []


def _audit(event: str, args) -> None:
    if _RECORDING and event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
        _OPENED.append(
            os.fsdecode(args[0]) if isinstance(args[0], str | bytes | os.PathLike) else str(args[0])
        )


sys.addaudithook(_audit)


def test_reader_never_opens_the_key_or_other_readers_files(session):
    order2 = load_order(session, "reader2")
    ReaderSession.open(session, "reader2").answer(order2[0], "real", 1)
    _OPENED.clear()
    _RECORDING.append(True)
    try:
        reader = ReaderSession.open(session, "reader1")
        reader.image_path(reader.current())
        reader.answer(reader.current(), "real", 3)
        ReaderSession.open(session, "reader1").current()
    finally:
        _RECORDING.clear()
    inside = [Path(p).resolve() for p in _OPENED if str(Path(p).resolve()).startswith(str(session.resolve()))]
    assert inside, "the audit hook saw the session's files"
    relative = {p.relative_to(session.resolve()).as_posix() for p in inside}
    assert not any(name.startswith("key") or name.startswith("readers/reader2") for name in relative), (
        relative
    )
    assert "readers/reader1/ratings.jsonl" in relative and "manifest.json" in relative


def test_a_copy_without_the_key_and_other_readers_opens(session, tmp_path):
    """What a coordinator hands one reader: the session without key/ and without other readers' folders."""
    copy = tmp_path / "for_reader2"
    shutil.copytree(session, copy, ignore=shutil.ignore_patterns("key", "reader1"))
    assert not (copy / "key").exists() and not (copy / "readers" / "reader1").exists()
    reader = ReaderSession.open(copy, "reader2")
    _answer_all(reader, "manipulated")
    assert reader.done


def test_handout_holds_only_this_readers_files_and_opens(tmp_path):
    """`advseg session handout`: the reader's order, ratings and cases; no key, no other reader's cases."""
    session = tmp_path / "study"
    build_session(make_cases(tmp_path), readers=2, seed=1, out=session, never_both=True)
    order = load_order(session, "reader2")
    assert len(order) == 3  # one version of each of the three patients
    ReaderSession.open(session, "reader2").answer(order[0], "real", 2)
    copy = tmp_path / "for_reader2"
    assert main(["session", "handout", str(session), "--reader", "reader2", "--out", str(copy)]) == 0
    files = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
    expected = ["manifest.json", "readers/reader2/order.json", "readers/reader2/ratings.jsonl"]
    assert files == sorted(expected + [f"cases/{case_id}.nii" for case_id in order])
    for case_id in order:
        original, copied = case_file(session, case_id), case_file(copy, case_id)
        assert copied.read_bytes() == original.read_bytes()
        assert copied.stat().st_mtime_ns == original.stat().st_mtime_ns
    reader = ReaderSession.open(copy, "reader2")
    assert reader.current() == order[1]  # the answer given before the handout came along
    _answer_all(reader)
    assert reader.done
    assert main(["session", "handout", str(session), "--reader", "reader2", "--out", str(copy)]) == 2
    with pytest.raises(InputError, match="not a reader"):
        handout(session, "reader3", tmp_path / "nobody")
    victim = case_file(session, load_order(session, "reader1")[0])
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(InputError, match="modified after the session was built; a reader's copy needs"):
        handout(session, "reader2", tmp_path / "from_altered")
    assert not (tmp_path / "from_altered").exists()


# --- altered sessions -------------------------------------------------------------------------------------


def test_altered_case_order_or_added_file_is_refused(session):
    order = load_order(session, "reader1")
    victim = case_file(session, order[2])
    original = victim.read_bytes()
    victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(
        InputError, match=rf"^Session .* was altered after it was built: .*{victim.name} was modified"
    ):
        ReaderSession.open(session, "reader1")
    victim.write_bytes(original)
    ReaderSession.open(session, "reader1")  # intact again

    extra = session / "cases" / "EXTRA000.nii"
    extra.write_bytes(original)
    with pytest.raises(InputError, match="EXTRA000.nii was added after the session was built"):
        ReaderSession.open(session, "reader1")
    extra.unlink()

    order_file = session / "readers" / "reader1" / "order.json"
    order_file.write_text(
        order_file.read_text(encoding="utf-8").replace(order[0], order[1], 1), encoding="utf-8"
    )
    with pytest.raises(InputError, match="order.json was modified"):
        ReaderSession.open(session, "reader1")


def test_case_changed_after_opening_is_refused_when_shown(session):
    reader = ReaderSession.open(session, "reader1")
    case_id = reader.current()
    path = case_file(session, case_id)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(InputError, match=f"{path.name} was modified after the session was built"):
        reader.image_path(case_id)
    path.unlink()
    with pytest.raises(InputError, match="is missing"):
        reader.image_path(case_id)


def test_missing_case_is_refused(session):
    case_file(session, load_order(session, "reader2")[-1]).unlink()
    with pytest.raises(InputError, match="is missing"):
        ReaderSession.open(session, "reader2")


# --- crashes: half-written lines, killed processes, two readers at once -----------------------------------


def test_half_written_line_is_ignored_with_a_warning_and_repaired(session):
    order = load_order(session, "reader1")
    ReaderSession.open(session, "reader1").answer(order[0], "real", 2)
    path = ratings_path(session, "reader1")
    with open(path, "ab") as handle:
        handle.write(b'{"reader": "reader1", "case_id": "' + order[1].encode() + b'", "answ')
    with pytest.warns(RatingsWarning, match="half-written"):
        reader = ReaderSession.open(session, "reader1")
    assert reader.current() == order[1] and reader.answered == 1
    assert len(reader.problems) == 1 and "line 2" in reader.problems[0]
    with pytest.warns(RatingsWarning):
        reader.answer(order[1], "manipulated", 4)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["case_id"] for x in lines[:-1]] == order[:2]


READER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from AdvSegAttackLib.studies.reader_session import ReaderSession
    session, name, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    reader = ReaderSession.open(session, name)
    print("open", flush=True)
    sys.stdin.readline()  # start together
    while (case_id := reader.current()) is not None:
        reader.answer(case_id, "manipulated", 5, comment="x" * 3000, seconds_on_case=0.5)
        print(case_id, flush=True)
        time.sleep(pause)
    """
)


def _start_reader(session: Path, name: str, pause: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", READER_PROCESS, str(session), name, str(pause)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert process.stdout.readline().strip() == "open"
    return process


def test_killed_between_answers_resumes_without_loss_or_duplication(session):
    process = _start_reader(session, "reader1", pause=0.2)
    process.stdin.write("go\n")
    process.stdin.flush()
    reported = [process.stdout.readline().strip() for _ in range(2)]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdin.close()
    process.stdout.close()
    order = load_order(session, "reader1")
    reader = ReaderSession.open(session, "reader1")
    assert reported == order[:2]
    assert reader.answered in (2, 3)  # every reported answer is on disk; the kill may follow one more
    assert reader.current() == order[reader.answered]
    _answer_all(reader)
    saved = [
        json.loads(line)["case_id"]
        for line in ratings_path(session, "reader1").read_text(encoding="utf-8").splitlines()
    ]
    assert saved == order


def test_two_readers_writing_at_once_do_not_corrupt_each_other(session):
    processes = [_start_reader(session, name, pause=0.0) for name in ("reader1", "reader2")]
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        assert len(out.split()) == 6
    key = load_key(session)
    for name in ("reader1", "reader2"):
        lines = ratings_path(session, name).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["case_id"] for r in records] == load_order(session, name)
        assert {r["reader"] for r in records} == {name} and all(len(r["comment"]) == 3000 for r in records)
        assert set(r["case_id"] for r in records) == set(key["items"])
