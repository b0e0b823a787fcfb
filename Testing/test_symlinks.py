"""No symbolic link (or FIFO) inside a session or case folder is ever followed: reads and writes there are
refused with one sentence, `session verify` reports them, and nothing outside the folder changes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_session import make_case, make_source

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.evaluation.casefolder import read_case
from AdvSegAttackLib.studies.reader_session import ReaderSession
from AdvSegAttackLib.studies.session import append_rating, build_session, load_key, load_order, verify_session

POSIX = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX links and FIFOs")
pytestmark = [pytest.mark.torchfree, POSIX]  # torchfree: also run with Slicer 5.10's Python and packages


@contextmanager
def no_hang(seconds: int = 20):
    """Turn a blocking open of a FIFO into a test failure instead of a hung run."""

    def fail(*_):
        raise TimeoutError("blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("links")
    cases = [
        make_case(root / f"case{i}", make_source(root / f"source{i}.nii.gz", i), "pgd", {"liver": 6})
        for i in range(3)
    ]
    build_session(cases, readers=2, seed=3, out=root / "session")
    return root / "session"


@pytest.fixture
def session(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "session"))


def link_to_copy(path: Path, outside: Path) -> Path:
    """Replace `path` by a link to a copy of it outside the session (same content, same checksum)."""
    shutil.move(path, outside)
    path.symlink_to(outside, target_is_directory=outside.is_dir())
    return outside


def test_linked_ratings_file_is_never_written_and_verify_reports_it(session, tmp_path, capsys):
    outside = tmp_path / "someone_elses.txt"
    outside.write_bytes(b"first line\nhalf a line without its end")  # the repair step would truncate it
    ratings = session / "readers" / "reader1" / "ratings.jsonl"
    ratings.symlink_to(outside)
    order = load_order(session, "reader1")
    with pytest.raises(
        InputError, match=r"ratings.jsonl is a symbolic link; links inside .* are never followed"
    ):
        append_rating(session, "reader1", order[0], "real", 3, 1.0)
    with pytest.raises(InputError, match="ratings.jsonl is a symbolic link"):
        ReaderSession.open(session, "reader1")
    assert outside.read_bytes() == b"first line\nhalf a line without its end"
    assert main(["session", "verify", str(session)]) == 2
    assert f"{ratings} is a symbolic link" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["manifest.json", "key/key.json", "readers/reader1/order.json", "readers"])
def test_linked_session_files_are_refused_even_with_identical_content(name, session, tmp_path, capsys):
    link_to_copy(session / name, tmp_path / "outside")
    assert main(["session", "verify", str(session)]) == 2
    assert f"{session / name} is a symbolic link" in capsys.readouterr().err
    with pytest.raises(InputError, match="is a symbolic link"):
        if name == "key/key.json":
            load_key(session)
        else:
            ReaderSession.open(session, "reader1")


def test_analyze_never_writes_through_a_linked_report_folder(session, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (session / "report").symlink_to(elsewhere, target_is_directory=True)
    assert main(["session", "analyze", str(session)]) == 2
    assert "report is a symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_fifo_in_a_session_is_refused_without_blocking(session, capsys):
    ratings = session / "readers" / "reader2" / "ratings.jsonl"
    os.mkfifo(ratings)
    with no_hang():
        with pytest.raises(InputError, match="not a regular file"):
            append_rating(session, "reader2", load_order(session, "reader2")[0], "real", 3, 1.0)
        assert any("ratings.jsonl is not a regular file" in p for p in verify_session(session))


def test_case_folder_with_a_linked_or_special_file_is_refused(built, tmp_path, capsys):
    case = Path(shutil.copytree(built.parent / "case0", tmp_path / "case"))
    secret = tmp_path / "secret.txt"
    secret.write_text("anything the user can read", encoding="utf-8")
    (case / "pred_clean.seg.nrrd").unlink()
    (case / "pred_clean.seg.nrrd").symlink_to(secret)
    with pytest.raises(InputError, match=r"pred_clean.seg.nrrd is a symbolic link"):
        read_case(case)
    out = tmp_path / "session"
    assert main(["session", "build", "--cases", str(case), "--readers", "1", "--out", str(out)]) == 2
    assert "is a symbolic link" in capsys.readouterr().err and not out.exists()

    (case / "pred_clean.seg.nrrd").unlink()
    shutil.copyfile(built.parent / "case0" / "pred_clean.seg.nrrd", case / "pred_clean.seg.nrrd")
    (case / "metrics.json").unlink()
    os.mkfifo(case / "metrics.json")
    with no_hang(), pytest.raises(InputError, match="metrics.json is not a regular file"):
        read_case(case)


def test_the_folder_given_on_the_command_line_may_be_a_link(built, tmp_path):
    (tmp_path / "case_link").symlink_to(built.parent / "case1", target_is_directory=True)
    assert json.loads(read_case(tmp_path / "case_link").provenance.read_text(encoding="utf-8"))
    (tmp_path / "session_link").symlink_to(built, target_is_directory=True)
    assert verify_session(tmp_path / "session_link") == []
