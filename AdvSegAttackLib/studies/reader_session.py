"""One reader's side of a blinded session: which case is next, where its volume is, and saving answers.

This is what the Slicer reader mode (and any other front end) calls; it is plain Python, tested without
Slicer. A `ReaderSession` only ever opens these files of the session folder:

    SESSION/manifest.json                    to check the files below against their SHA-256
    SESSION/cases/<ID>.nii                   the neutral volumes in this reader's order
    SESSION/readers/<reader>/order.json      this reader's order
    SESSION/readers/<reader>/ratings.jsonl   this reader's answers (read, and appended to)

It never opens ``SESSION/key/`` or another reader's folder, so a coordinator can hand each reader a copy
of the session without ``key/`` and without the other readers' folders, and it still opens.

Answers are given in the reader's order, one at a time; each is appended as one JSON line, flushed and
fsynced before `answer` returns (`session.append_rating`), so after a crash or a killed process the
reader resumes at the first unanswered case with nothing lost and nothing twice.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..errors import InputError
from ..models.labels import BTCV_LABEL_NAMES
from ..volumes.io import sha256_file
from ..volumes.nofollow import inside
from .session import (
    ANSWERS,
    CASE_SUFFIX,
    CASES,
    MANIFEST,
    ORDER,
    RATINGS,
    READERS,
    RatingsWarning,
    append_rating,
    load_order,
    parse_ratings,
    ratings_path,
)

ORGAN_CHOICES: tuple[str, ...] = tuple(BTCV_LABEL_NAMES[1:])


def _load_manifest(session: Path) -> dict[str, str]:
    path = inside(session, session / MANIFEST)
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            f"{path} is missing or not a session manifest; is {session} a session folder?"
        ) from None
    return {str(name): str(digest) for name, digest in files.items()}


def manifest_readers(manifest: dict[str, str]) -> list[str]:
    """Reader names of a session, from the order files its manifest lists."""
    names = []
    for name in manifest:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == READERS and parts[2] == ORDER:
            names.append(parts[1])
    return sorted(names)


def case_file(session: str | Path, case_id: str) -> Path:
    """Path of the neutral volume of `case_id` in a session folder."""
    return Path(session) / CASES / f"{case_id}{CASE_SUFFIX}"


class ReaderSession:
    """The session as one reader sees it (use `ReaderSession.open`)."""

    def __init__(
        self, session: Path, reader: str, order: list[str], manifest: dict[str, str], verified: dict
    ) -> None:
        self.session = session
        self.reader = reader
        self.order: tuple[str, ...] = tuple(order)
        self._manifest = manifest
        self._verified = verified  # path -> (size in bytes, mtime in ns) when its SHA-256 was checked
        self.problems: list[str] = []
        self._answered: set[str] = set()
        self._read_answers()

    # --- opening ------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, session_dir: str | Path, reader: str) -> ReaderSession:
        """Open `session_dir` for `reader`, after checking this reader's files against the manifest.

        :raises InputError: one sentence if the folder is not a session, the reader is not one of its
          readers, or a file this reader would load was changed, removed or added after building.
        """
        session = Path(session_dir)
        if not session.is_dir():
            raise InputError(
                f"{session} is not a folder; choose the session folder the coordinator gave you."
            )
        reader = str(reader).strip()
        manifest = _load_manifest(session)
        readers = manifest_readers(manifest)
        if reader not in readers:
            raise InputError(
                f"{reader!r} is not a reader of session {session} (its readers are {', '.join(readers)})."
            )
        order_name = f"{READERS}/{reader}/{ORDER}"
        problems, verified = cls._check(session, [order_name], manifest)
        if not problems:
            order = load_order(session, reader)
            names = [f"{CASES}/{case_id}{CASE_SUFFIX}" for case_id in order]
            unknown = [name for name in names if name not in manifest]
            if unknown:
                problems.append(
                    f"{session / order_name} names a case that is not in the manifest ({unknown[0]})."
                )
            else:
                more, more_verified = cls._check(session, names, manifest)
                problems += more
                verified.update(more_verified)
            listed = {name for name in manifest if name.startswith(f"{CASES}/")}
            folder = session / CASES
            added = (
                sorted(p.name for p in folder.iterdir() if f"{CASES}/{p.name}" not in listed)
                if folder.is_dir()
                else []
            )
            problems += [f"{folder / name} was added after the session was built." for name in added]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise InputError(
                f"Session {session} was altered after it was built: {problems[0].rstrip('.')}{more}; "
                "ask the coordinator for an intact copy."
            )
        return cls(session, reader, order, manifest, verified)

    @staticmethod
    def _check(session: Path, names: list[str], manifest: dict[str, str]):
        """Problems of the manifest entries `names` and (size, mtime) of the files that matched."""
        problems: list[str] = []
        verified: dict[Path, tuple[int, int]] = {}
        for name in names:
            path = inside(session, session / name)
            if not path.is_file():
                problems.append(f"{path} is missing.")
                continue
            before = path.stat()
            if name not in manifest or sha256_file(path) != manifest[name]:
                problems.append(f"{path} was modified after the session was built.")
                continue
            verified[path] = (before.st_size, before.st_mtime_ns)
        return problems, verified

    def _read_answers(self) -> None:
        ratings, self.problems, _ = parse_ratings(ratings_path(self.session, self.reader))
        for rating in ratings:
            if rating["case_id"] in self.order:
                self._answered.add(rating["case_id"])
            else:
                problem = f"{self.ratings_file}: a rating of case {rating['case_id']!r}, not in this order, ignored."
                self.problems.append(problem)
                warnings.warn(problem, RatingsWarning, stacklevel=3)

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def ratings_file(self) -> Path:
        """This reader's ratings file (JSON lines)."""
        return self.session / READERS / self.reader / RATINGS

    @property
    def total(self) -> int:
        """Number of cases in this reader's order."""
        return len(self.order)

    @property
    def answered(self) -> int:
        """Number of cases this reader has answered."""
        return len(self._answered)

    @property
    def progress(self) -> tuple[int, int]:
        """(answered, total) cases of this reader."""
        return self.answered, self.total

    @property
    def done(self) -> bool:
        return self.answered == self.total

    def current(self) -> str | None:
        """The neutral ID of the first unanswered case of the order, or None when all are answered."""
        return next((case_id for case_id in self.order if case_id not in self._answered), None)

    def image_path(self, case_id: str) -> Path:
        """The neutral volume of a case of this reader's order, checked against the manifest.

        :raises InputError: for a case not in the order, or a file changed since `open` verified it.
        """
        if case_id not in self.order:
            raise InputError(f"case {case_id!r} is not in the order of {self.reader}.")
        path = inside(self.session, case_file(self.session, case_id))
        try:
            status = path.stat()
        except OSError:
            raise InputError(f"{path} is missing; the session was altered after it was built.") from None
        if self._verified.get(path) != (status.st_size, status.st_mtime_ns):
            name = f"{CASES}/{path.name}"
            problems, verified = self._check(self.session, [name], self._manifest)
            if problems:
                raise InputError(f"{problems[0].rstrip('.')}; ask the coordinator for an intact copy.")
            self._verified.update(verified)
        return path

    # --- answering ----------------------------------------------------------------------------------------

    def answer(
        self,
        case_id: str,
        verdict: str,
        confidence: int,
        comment: str = "",
        organ: str | None = None,
        seconds_on_case: float = 0.0,
    ) -> dict:
        """Save the answer to the current case (on disk, fsynced, when this returns); returns the record.

        :param verdict: "real" or "manipulated".
        :param confidence: 1 (guess) to 5 (certain).
        :param organ: for "manipulated" only: which organ looked changed (one of `ORGAN_CHOICES`), or None.
        :param seconds_on_case: time from showing the case to the answer, in seconds.
        :raises InputError: one sentence for any invalid field, an unknown case, a case answered before,
          or a case that is not the current one.
        """
        if case_id not in self.order:
            raise InputError(f"case {case_id!r} is not in the order of {self.reader}.")
        if case_id in self._answered:
            raise InputError(f"{self.reader} has already answered case {case_id}.")
        current = self.current()
        if case_id != current:
            raise InputError(
                f"case {case_id} is not the current case of {self.reader} ({current}); cases are answered in order."
            )
        if verdict not in ANSWERS:
            raise InputError(f"verdict {verdict!r} is not one of {', '.join(ANSWERS)}.")
        organ = organ.strip() if isinstance(organ, str) else organ
        if organ in (None, ""):
            organ = None
        elif verdict != "manipulated":
            raise InputError(f"an organ ({organ!r}) can only be given with the verdict 'manipulated'.")
        elif organ not in ORGAN_CHOICES:
            raise InputError(f"organ {organ!r} is not one of {', '.join(ORGAN_CHOICES)}.")
        if not isinstance(comment, str):
            raise InputError(f"comment {comment!r} is not text.")
        record = append_rating(
            self.session,
            self.reader,
            case_id,
            verdict,
            confidence,
            seconds_on_case,
            comment=comment.strip(),
            organ=organ,
        )
        self._answered.add(case_id)
        return record
