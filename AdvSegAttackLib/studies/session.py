"""Blinded real-or-manipulated reader sessions: building, verifying, and the per-reader ratings store.

A session folder holds what readers load and, apart from it, the key::

    SESSION/cases/<ID>.nii                 every volume, written freshly with identical header fields,
                                           uncompressed: the two versions of a patient have the same size
    SESSION/readers/<reader>/order.json    that reader's shuffled list of case IDs
    SESSION/readers/<reader>/ratings.jsonl that reader's answers, one JSON object per line (appended)
    SESSION/key/key.json                   which ID is what (real/manipulated, attack, organ, patient)
    SESSION/manifest.json                  SHA-256 of every file above except the ratings

A patient is the SHA-256 of an attack's input volume. Every case folder yields its adversarial volume
and the clean source volume (one clean item per patient, however many case folders share it). By default
each reader sees the real volume of every patient and one of its manipulated versions (a patient attacked
several times has its versions rotated over the readers), never two items of the same patient back to
back. `all_versions` shows every reader every version; that is a risk: the real volume is the voxel-wise
centre of three versions of a patient. With `never_both` each reader sees exactly one version of each
patient, the versions balanced across readers.

What a curious reader could read from the files is the same for every version of a patient: name (random
ID), size, header, pixel type, and modification and access time (all case files get the session's build
time). Every case file is created, in ID order, before any volume is decoded, so creation time, inode
number and directory order follow the random IDs, not the decoding time of a source.
`handout` makes a reader's copy: their order and only their cases, without the key.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import string
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..evaluation.casefolder import read_case
from ..volumes.io import make_staging_dir, read_image, sha256_file, staged_output_dir, write_json_atomic
from ..volumes.nofollow import inside, irregular_entries, open_nofollow

CASES = "cases"
CASE_SUFFIX = ".nii"  # uncompressed: a compressed size would differ between real and manipulated
READERS = "readers"
KEY = "key"
KEY_FILE = "key/key.json"
MANIFEST = "manifest.json"
ORDER = "order.json"
RATINGS = "ratings.jsonl"
REPORT = "report"
ANSWERS = ("real", "manipulated")
ID_ALPHABET = string.ascii_uppercase + string.digits
ID_LENGTH = 8


class RatingsWarning(UserWarning):
    """A ratings file has a damaged or half-written line (it is ignored)."""


@dataclass(frozen=True)
class Item:
    """One volume a reader may see; `truth` is "real" or "manipulated"."""

    source: Path
    truth: str
    patient: str
    case_folder: str | None = None
    attack: str | None = None
    organs: tuple[str, ...] = ()


# --- building ---------------------------------------------------------------------------------------------


def collect_items(case_dirs: list[str | Path]) -> list[Item]:
    """Clean and adversarial items of the case folders (clean source checked against its SHA-256)."""
    if not case_dirs:
        raise InputError("session build needs at least one case folder (--cases).")
    clean: dict[str, Item] = {}
    items: list[Item] = []
    for case_dir in case_dirs:
        case = read_case(case_dir)
        try:
            provenance = case.load_provenance()
            source = Path(provenance["input"]["path"])
            patient = str(provenance["input"]["sha256"])
            attack = str(provenance["attack"]["name"])
            organs = tuple(provenance.get("organs") or {})
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{case.provenance} lacks input path/sha256 or attack name ({error}).") from None
        if patient not in clean:
            if not source.exists():
                raise InputError(f"{case.provenance}: the clean source {source} does not exist.")
            if sha256_file(source) != patient:
                raise InputError(
                    f"{source}: SHA-256 differs from the one in {case.provenance} (source changed)."
                )
            clean[patient] = Item(source=source, truth="real", patient=patient)
            items.append(clean[patient])
        items.append(
            Item(
                source=case.adversarial,
                truth="manipulated",
                patient=patient,
                case_folder=str(case.root.resolve()),
                attack=attack,
                organs=organs,
            )
        )
    return items


def _neutral_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        new = "".join(rng.choice(list(ID_ALPHABET), ID_LENGTH))
        if new not in seen:
            seen.add(new)
            ids.append(new)
    return ids


def assign_ids(items: list[Item], rng: np.random.Generator) -> dict[str, Item]:
    """Items under random neutral IDs (drawn independently of what an item is)."""
    return dict(zip(_neutral_ids(rng, len(items)), items, strict=True))


def order_without_repeats(ids: list[str], patient: dict[str, str], rng: np.random.Generator) -> list[str]:
    """A random order of `ids` in which no two neighbours share a patient (InputError if impossible)."""
    remaining: dict[str, list[str]] = {}
    for case_id in ids:
        remaining.setdefault(patient[case_id], []).append(case_id)
    for group in remaining.values():
        rng.shuffle(group)
    order: list[str] = []
    last: str | None = None
    while len(order) < len(ids):
        left = len(ids) - len(order) - 1
        counts = {p: len(g) for p, g in remaining.items() if g}
        candidates = []
        for p in sorted(counts):
            if p == last:
                continue
            after = dict(counts)
            after[p] -= 1
            # the rest must be arrangeable with a first element not of patient p
            if after[p] <= left // 2 and all(c <= (left + 1) // 2 for c in after.values()):
                candidates.append(p)
        if not candidates:
            raise InputError(
                "cannot order the cases without showing one patient's clean and attacked volume back "
                "to back (too few patients); use --never-both."
            )
        chosen = candidates[int(rng.integers(len(candidates)))]
        order.append(remaining[chosen].pop())
        last = chosen
    return order


def assign_never_both(
    ids_by_patient: dict[str, list[str]], readers: int, rng: np.random.Generator
) -> list[list[str]]:
    """One version per patient for each reader, versions rotated so each is seen by as many readers."""
    patients = sorted(ids_by_patient)
    rng.shuffle(patients)
    lists: list[list[str]] = [[] for _ in range(readers)]
    for index, patient in enumerate(patients):
        versions = ids_by_patient[patient]
        for reader in range(readers):
            lists[reader].append(versions[(reader + index) % len(versions)])
    for chosen in lists:
        rng.shuffle(chosen)
    return lists


def assign_one_manipulated(
    real: dict[str, str], manipulated: dict[str, list[str]], readers: int, rng: np.random.Generator
) -> list[list[str]]:
    """Per reader: the real ID of every patient and one of its manipulated IDs (the default orders' items).

    A patient's manipulated versions are rotated over the readers, so each is shown to as many readers as
    the others (+-1); with fewer readers than versions, some version is shown to nobody.
    """
    patients = sorted(real)
    rng.shuffle(patients)
    chosen: list[list[str]] = [[] for _ in range(readers)]
    for index, patient in enumerate(patients):
        versions = sorted(manipulated[patient])
        rng.shuffle(versions)
        for reader in range(readers):
            chosen[reader] += [real[patient], versions[(reader + index) % len(versions)]]
    return chosen


def plan_orders(
    by_id: dict[str, Item], readers: int, rng: np.random.Generator, never_both: bool, all_versions: bool
) -> list[list[str]]:
    """Each reader's order of case IDs (see the module docstring for the three modes)."""
    if never_both and all_versions:
        raise InputError("--never-both and --all-versions exclude each other; choose one.")
    patient = {case_id: item.patient for case_id, item in by_id.items()}
    if never_both:
        ids_by_patient: dict[str, list[str]] = {}
        for case_id in by_id:
            ids_by_patient.setdefault(patient[case_id], []).append(case_id)
        return assign_never_both(ids_by_patient, readers, rng)
    if all_versions:
        return [order_without_repeats(list(by_id), patient, rng) for _ in range(readers)]
    real = {item.patient: case_id for case_id, item in by_id.items() if item.truth == "real"}
    manipulated: dict[str, list[str]] = {}
    for case_id, item in by_id.items():
        if item.truth == "manipulated":
            manipulated.setdefault(item.patient, []).append(case_id)
    chosen = assign_one_manipulated(real, manipulated, readers, rng)
    return [order_without_repeats(ids, patient, rng) for ids in chosen]


def _common_pixel_type(items: list[Item]) -> int:
    """Int16 when every volume is integer-valued within its range, else Float32 (same type for all)."""
    for item in items:
        image = read_image(item.source)  # held while its view is read (a view does not keep it alive)
        voxels = sitk.GetArrayViewFromImage(image)
        if voxels.size and (
            voxels.min() < -32768 or voxels.max() > 32767 or not np.array_equal(voxels, np.round(voxels))
        ):
            return sitk.sitkFloat32
    return sitk.sitkInt16


def _write_neutral(source: Path, path: Path, pixel_type: int) -> None:
    """A fresh image with only voxels, origin, spacing and direction (no description or metadata)."""
    image = read_image(source)
    dtype = np.int16 if pixel_type == sitk.sitkInt16 else np.float32
    fresh = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image).astype(dtype))
    fresh.SetOrigin(image.GetOrigin())
    fresh.SetSpacing(image.GetSpacing())
    fresh.SetDirection(image.GetDirection())
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(False)
    writer.KeepOriginalImageUIDOff()
    writer.Execute(fresh)


def reader_names(readers: int) -> list[str]:
    width = len(str(readers))
    return [f"reader{index + 1:0{width}d}" for index in range(readers)]


def build_session(
    case_dirs: list[str | Path],
    readers: int,
    seed: int,
    out: str | Path,
    never_both: bool = False,
    all_versions: bool = False,
) -> dict:
    """Build a session folder at `out` (must not exist or be empty); returns the key.

    :param never_both: each reader sees one version of each patient.
    :param all_versions: each reader sees every version of each patient (a reader who compares three
      versions of a patient can find the real one); the default shows the real and one manipulated version.
    """
    out = Path(out)
    if readers < 1:
        raise InputError(f"--readers must be at least 1, got {readers}.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder.")
    items = collect_items(case_dirs)
    rng = np.random.default_rng(seed)
    by_id = assign_ids(items, rng)
    names = reader_names(readers)
    orders = plan_orders(by_id, readers, rng, never_both, all_versions)
    shown_to = {
        case_id: [n for n, order in zip(names, orders, strict=True) if case_id in order] for case_id in by_id
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    building = make_staging_dir(out, "building")  # with the umask mode: readers share the session
    try:
        created = datetime.now(timezone.utc).replace(microsecond=0)
        pixel_type = _common_pixel_type(items)
        (building / CASES).mkdir()
        case_files = {case_id: building / CASES / f"{case_id}{CASE_SUFFIX}" for case_id in sorted(by_id)}
        for path in case_files.values():
            path.touch()  # all exist before any source is decoded: creation times tell nothing
        for case_id, path in case_files.items():
            _write_neutral(by_id[case_id].source, path, pixel_type)  # in place (same inode)
        for name, order in zip(names, orders, strict=True):
            write_json_atomic(building / READERS / name / ORDER, {"reader": name, "cases": order})
        key = {
            "seed": seed,
            "never_both": never_both,
            "all_versions": all_versions,
            "readers": names,
            "created": created.isoformat(timespec="seconds"),
            "items": {
                case_id: {
                    "truth": by_id[case_id].truth,
                    "attack": by_id[case_id].attack,
                    "organs": list(by_id[case_id].organs),
                    "organ": ", ".join(by_id[case_id].organs) or None,
                    "patient": by_id[case_id].patient,
                    "source": str(by_id[case_id].source.resolve()),
                    "case_folder": by_id[case_id].case_folder,
                    "readers": shown_to[case_id],
                }
                for case_id in sorted(by_id)
            },
        }
        (building / KEY).mkdir(mode=0o700)  # the key is private on purpose (mkdir's mode is also masked)
        (building / KEY).chmod(0o700)
        write_json_atomic(building / KEY_FILE, key)
        (building / KEY_FILE).chmod(0o600)
        write_json_atomic(building / MANIFEST, {"algorithm": "sha256", "files": _checksums(building)})
        _same_times(case_files.values(), round(created.timestamp()) * 10**9)
        if out.exists():
            out.rmdir()
        os.replace(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return key


def _same_times(paths, time_ns: int) -> None:
    """Give every file the same access and modification time (their change times follow, in this order)."""
    for path in paths:
        os.utime(path, ns=(time_ns, time_ns))


def handout(session: str | Path, reader: str, out: str | Path) -> Path:
    """A reader's copy of an intact session at `out`: manifest, the reader's order (and ratings, if any)
    and only the cases of that order; no key, no other reader's files or cases. Returns `out`.

    Copied case files are created in ID order before any is filled and all get the time of the newest
    original (whole seconds), so a copy of a session built before the common time was set has one too.
    """
    session, out = Path(session), Path(out)
    order = load_order(session, reader)
    problems = verify_session(session)
    if problems:
        raise InputError(f"{problems[0].rstrip('.')}; a reader's copy needs an intact session.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder.")
    with staged_output_dir(out) as staging:
        shutil.copyfile(session / MANIFEST, staging / MANIFEST)
        (staging / READERS / reader).mkdir(parents=True)
        for name in (ORDER, RATINGS):
            if (session / READERS / reader / name).is_file():
                shutil.copyfile(session / READERS / reader / name, staging / READERS / reader / name)
        (staging / CASES).mkdir()
        copies = {
            staging / CASES / f"{case_id}{CASE_SUFFIX}": session / CASES / f"{case_id}{CASE_SUFFIX}"
            for case_id in sorted(order)
        }
        for copy in copies:
            copy.touch()
        for copy, original in copies.items():
            shutil.copyfile(original, copy)  # into the existing file (same inode)
        newest = max(original.stat().st_mtime_ns for original in copies.values())
        _same_times(copies, newest // 10**9 * 10**9)
    return out


# --- manifest ---------------------------------------------------------------------------------------------


def _covered(session: Path) -> list[Path]:
    """Files the manifest covers: everything but itself, ratings files and the report folder."""
    files = []
    for path in sorted(session.rglob("*")):
        relative = path.relative_to(session)
        if not path.is_file() or relative.parts[0] == REPORT or relative.as_posix() == MANIFEST:
            continue
        if relative.parts[0] == READERS and relative.name == RATINGS:
            continue
        files.append(path)
    return files


def _checksums(session: Path) -> dict[str, str]:
    return {path.relative_to(session).as_posix(): sha256_file(path) for path in _covered(session)}


def verify_session(session: str | Path) -> list[str]:
    """Problems (one sentence each) of a session altered after building; an empty list when intact."""
    session = Path(session)
    manifest_path = session / MANIFEST
    links = irregular_entries(session)
    if links:
        return links
    try:
        recorded = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{manifest_path} is missing or not a session manifest."]
    actual = _checksums(session)
    problems = []
    for name in sorted(recorded):
        if name not in actual:
            problems.append(f"{session / name} is missing.")
        elif actual[name] != recorded[name]:
            problems.append(f"{session / name} was modified after the session was built.")
    problems += [
        f"{session / name} was added after the session was built."
        for name in sorted(actual)
        if name not in recorded
    ]
    return problems


# --- ratings store ----------------------------------------------------------------------------------------


def load_key(session: str | Path) -> dict:
    path = inside(session, Path(session) / KEY_FILE)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is missing or not valid JSON ({error}).") from None


def load_order(session: str | Path, reader: str) -> list[str]:
    path = Path(session) / READERS / reader / ORDER
    if reader in ("", ".", "..") or "/" in reader or "\\" in reader or not inside(session, path).is_file():
        raise InputError(f"{reader!r} is not a reader of session {session} (no {path}).")
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["cases"])
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} is not a reader order file ({error}).") from None


def ratings_path(session: str | Path, reader: str) -> Path:
    """The reader's ratings file; InputError when it (or readers/, readers/<reader>/) is a link or special file."""
    return inside(session, Path(session) / READERS / reader / RATINGS)


def parse_ratings(path: Path) -> tuple[list[dict], list[str], bool]:
    """Ratings of one file, problems (one per damaged line) and whether the last line is half-written.

    Damaged lines are skipped with a RatingsWarning; the rest is returned in file order.
    """
    if not path.exists():
        return [], [], False
    data = path.read_bytes()
    lines = data.split(b"\n")
    partial = not data.endswith(b"\n") and data != b""
    ratings: list[dict] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if raw == b"" and number == len(lines):
            break
        if partial and number == len(lines):
            problems.append(f"{path} line {number}: half-written last line (a crash while saving), ignored.")
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict) or "case_id" not in record or record.get("answer") not in ANSWERS:
                raise ValueError("not a rating")
            ratings.append(record)
        except (ValueError, UnicodeDecodeError):
            problems.append(f"{path} line {number}: not a valid rating, ignored.")
    for problem in problems:
        warnings.warn(problem, RatingsWarning, stacklevel=3)
    return ratings, problems, partial


def read_ratings(session: str | Path, reader: str) -> list[dict]:
    """Valid ratings of one reader (damaged lines skipped with a RatingsWarning)."""
    load_order(session, reader)
    return parse_ratings(ratings_path(session, reader))[0]


def next_case(session: str | Path, reader: str) -> str | None:
    """The first case of the reader's order not answered yet, or None when the reader is done."""
    order = load_order(session, reader)
    answered = {r["case_id"] for r in parse_ratings(ratings_path(session, reader))[0]}
    return next((case_id for case_id in order if case_id not in answered), None)


def _repair(path: Path) -> None:
    """Truncate a half-written last line (a crash during a write) back to the last complete line."""
    with os.fdopen(open_nofollow(path, os.O_RDWR), "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def append_rating(
    session: str | Path,
    reader: str,
    case_id: str,
    answer: str,
    confidence: int,
    seconds: float,
    comment: str = "",
    organ: str | None = None,
) -> dict:
    """Append one rating as a whole JSON line (O_APPEND, flushed and fsynced); returns the record."""
    order = load_order(session, reader)
    if case_id not in order:
        raise InputError(f"case {case_id!r} is not in the order of {reader}.")
    if answer not in ANSWERS:
        raise InputError(f"answer {answer!r} is not one of {', '.join(ANSWERS)}.")
    if isinstance(confidence, bool) or not isinstance(confidence, int) or not 1 <= confidence <= 5:
        raise InputError(f"confidence {confidence!r} is not an integer from 1 to 5.")
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"seconds {seconds!r} is not a non-negative number.")
    path = ratings_path(session, reader)
    ratings, _, partial = parse_ratings(path)
    if any(r["case_id"] == case_id for r in ratings):
        raise InputError(f"{reader} has already answered case {case_id}.")
    if partial:
        _repair(path)
    record = {
        "reader": reader,
        "case_id": case_id,
        "answer": answer,
        "confidence": confidence,
        "seconds": float(seconds),
        "comment": str(comment),
        "organ": organ,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }
    line = (json.dumps(record, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return record
