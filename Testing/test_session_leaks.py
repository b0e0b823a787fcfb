"""The curious reader: from a session's files alone, real and manipulated cases must not be told apart.

The reader here is stronger than a real one: they know which files belong to one patient (the key's
patient) and use every version of that patient in the files they were given (`session handout`). A
feature that is equal for all versions of each patient cannot classify better than chance (50 %);
the voxel-wise "centre" of three versions can, which is why a reader sees at most one manipulated version
of a patient by default. Case folders are real `advseg attack` outputs of small phantoms (one int16
patient attacked twice, one once) and of a float32-typed source whose voxels are integers.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import save_tiny_model
from scipy import stats
from test_session import make_case, make_source

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.studies.session import Item, assign_ids, build_session, handout, load_key, plan_orders
from AdvSegAttackLib.volumes.phantom import make_phantom

CHANCE = 0.5
NIFTI_HEADER = 352  # bytes of a NIfTI-1 single file header with its extension flag


def _attack(out: Path, image: Path, label: Path, model: Path, attack: str, *extra: str) -> Path:
    common = ["--model", str(model), "--organ", "liver", "--region", "organ", "--seed", "1"]
    args = ["attack", "--image", str(image), "--label", str(label), *common, "--attack", attack, *extra]
    assert main([*args, "--out", str(out), "--device", "cpu", "--no-preview", "--progress", "jsonl"]) == 0
    return out


@pytest.fixture(scope="module")
def case_folders(tmp_path_factory) -> dict[str, list[Path]]:
    """Case folders by patient: "int-twice" (PGD and SA²), "int-once" (PGD), "float" (FGSM, float32 file)."""
    root = tmp_path_factory.mktemp("attacked")
    model = save_tiny_model(root, spacing_mm=3.0, roi=32)
    sources = {}
    for seed, name in ((11, "int-twice"), (12, "int-once"), (13, "float")):
        image, label = make_phantom(seed, shape=(48, 40, 24), spacing=(3.0, 3.0, 4.0))
        if name == "float":
            image = sitk.Cast(image, sitk.sitkFloat32)  # integer HU stored as float32, as many archives do
        sources[name] = (root / f"{name}.nii.gz", root / f"{name}_label.nii.gz")
        sitk.WriteImage(image, str(sources[name][0]))
        sitk.WriteImage(label, str(sources[name][1]))
    steps = ("--steps", "2")
    return {
        "int-twice": [
            _attack(root / "twice-pgd", *sources["int-twice"], model, "pgd", *steps),
            _attack(root / "twice-saa", *sources["int-twice"], model, "saa", *steps),
        ],
        "int-once": [_attack(root / "once-pgd", *sources["int-once"], model, "pgd", *steps)],
        "float": [_attack(root / "float-fgsm", *sources["float"], model, "fgsm")],
    }


@pytest.fixture(scope="module")
def session(case_folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "session"
    build_session([c for cases in case_folders.values() for c in cases], readers=2, seed=3, out=out)
    return out


@pytest.fixture(scope="module")
def handouts(session, tmp_path_factory) -> dict[str, Path]:
    """What each reader is given (`advseg session handout`)."""
    root = tmp_path_factory.mktemp("handouts")
    return {reader: handout(session, reader, root / reader) for reader in load_key(session)["readers"]}


def _source_kind(session: Path, case_folders: dict[str, list[Path]]) -> dict[str, str]:
    """Patient SHA-256 -> "int-twice", "int-once" or "float"."""
    folder_kind = {str(c.resolve()): kind for kind, cases in case_folders.items() for c in cases}
    return {
        item["patient"]: folder_kind[item["case_folder"]]
        for item in load_key(session)["items"].values()
        if item["case_folder"]
    }


def reader_groups(copy: Path, key: dict) -> dict[str, dict[str, list[Path]]]:
    """Patient -> truth -> the case files of one reader's copy."""
    groups: dict[str, dict[str, list[Path]]] = {}
    for path in sorted((copy / "cases").iterdir()):
        item = key["items"][path.stem]
        groups.setdefault(item["patient"], {}).setdefault(item["truth"], []).append(path)
    return groups


def pair_accuracy(feature, groups: dict[str, dict[str, list[Path]]]) -> float:
    """Best accuracy of "within a patient, the larger `feature` is manipulated" or its reverse.

    A tie is a coin toss (0.5); a feature that is not ordered counts as separating when it differs.
    """
    scores = []
    for by_truth in groups.values():
        for real in by_truth.get("real", []):
            for manipulated in by_truth.get("manipulated", []):
                a, b = feature(real), feature(manipulated)
                if a == b:
                    scores.append(0.5)
                else:
                    try:
                        scores.append(1.0 if b > a else 0.0)
                    except TypeError:
                        scores.append(1.0)
    assert scores, "no patient with a real and a manipulated version"
    accuracy = float(np.mean(scores))
    return max(accuracy, 1 - accuracy)


def voxels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def centre_accuracy(groups: dict[str, dict[str, list[Path]]]) -> float:
    """Accuracy of "the version with the fewest differing voxels to the others is real" (ties: shared)."""
    scores = []
    for by_truth in groups.values():
        paths = [p for t in ("real", "manipulated") for p in by_truth.get(t, [])]
        arrays = [voxels(p) for p in paths]
        distance = [sum(int((a != b).sum()) for b in arrays) for a in arrays]
        centre = [i for i, d in enumerate(distance) if d == min(distance)]
        real = [i for i, p in enumerate(paths) if p in by_truth.get("real", [])]
        scores.append(len(set(centre) & set(real)) / len(centre))
    return float(np.mean(scores))


# --- names ------------------------------------------------------------------------------------------------


def test_names_do_not_order_real_before_manipulated():
    """Over 400 seeds the real version's ID sorts first in about half of the patients (binomial test)."""
    items = [
        Item(Path(f"p{p}{v}"), "real" if v == 0 else "manipulated", f"patient{p}")
        for p in range(3)
        for v in range(2)
    ]
    real_first = 0
    for seed in range(400):
        by_id = assign_ids(items, np.random.default_rng(seed))
        for patient in range(3):
            ids = sorted(i for i, item in by_id.items() if item.patient == f"patient{patient}")
            real_first += by_id[ids[0]].truth == "real"
    assert stats.binomtest(real_first, 1200, CHANCE).pvalue > 0.001, real_first


# --- sizes, headers, pixel types ------------------------------------------------------------------------


def test_sizes_headers_and_pixel_types_are_those_of_the_patient(session, handouts):
    key = load_key(session)
    for copy in [session, *handouts.values()]:
        groups = reader_groups(copy, key)
        assert pair_accuracy(lambda p: p.stat().st_size, groups) == CHANCE
        assert pair_accuracy(lambda p: p.read_bytes()[:NIFTI_HEADER], groups) == CHANCE
        metadata, pixel_types = {}, set()
        for path in (copy / "cases").iterdir():
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            metadata[path] = tuple((k, reader.GetMetaData(k)) for k in sorted(reader.GetMetaDataKeys()))
            pixel_types.add(reader.GetPixelID())
        assert pair_accuracy(metadata.get, groups) == CHANCE
        assert len(pixel_types) == 1, "one pixel type for the whole session"


# --- value sets -------------------------------------------------------------------------------------------


def _fractional(path: Path) -> float:
    values = voxels(path)
    return float(np.mean(values != np.round(values)))


def _value_set_accuracies(groups) -> list[float]:
    return [
        pair_accuracy(_fractional, groups),
        pair_accuracy(lambda p: float(voxels(p).min()), groups),
        pair_accuracy(lambda p: float(voxels(p).max()), groups),
    ]


def test_value_sets_of_integer_typed_sources(session, handouts, case_folders):
    key, kinds = load_key(session), _source_kind(session, case_folders)
    for copy in handouts.values():
        groups = {p: g for p, g in reader_groups(copy, key).items() if kinds[p] != "float"}
        assert _value_set_accuracies(groups) == [CHANCE] * 3


def test_value_sets_of_a_float_typed_source(session, handouts, case_folders):
    """FGSM on integer HU stored as float32: the written adversarial volume must stay on integers."""
    key, kinds = load_key(session), _source_kind(session, case_folders)
    for copy in handouts.values():
        groups = {p: g for p, g in reader_groups(copy, key).items() if kinds[p] == "float"}
        assert _value_set_accuracies(groups) == [CHANCE] * 3


# --- voxel comparisons between the cases of one patient ---------------------------------------------------


def test_one_manipulated_version_per_patient_and_reader(session, handouts, case_folders):
    """Two versions of a patient are symmetric; three give the real one away (it is their centre)."""
    key, kinds = load_key(session), _source_kind(session, case_folders)
    for copy in handouts.values():
        groups = reader_groups(copy, key)
        assert all(len(g["real"]) == 1 and len(g["manipulated"]) == 1 for g in groups.values())
        assert centre_accuracy(groups) == CHANCE
    # both attacks of the patient attacked twice are shown, each to one of the two readers
    twice = next(p for p, kind in kinds.items() if kind == "int-twice")
    shown = {c.stem for copy in handouts.values() for c in reader_groups(copy, key)[twice]["manipulated"]}
    assert len(shown) == 2


def test_all_versions_is_the_risk_its_help_states(case_folders, tmp_path, capsys):
    cases = [str(c) for cases in case_folders.values() for c in cases]
    build = ["session", "build", "--cases", *cases, "--readers", "1"]
    assert main([*build, "--out", str(tmp_path / "all"), "--all-versions"]) == 0
    copy = handout(tmp_path / "all", "reader1", tmp_path / "reader1")
    twice = {
        p: g for p, g in reader_groups(copy, load_key(tmp_path / "all")).items() if len(g["manipulated"]) > 1
    }
    assert len(twice) == 1 and centre_accuracy(twice) == 1.0
    assert main([*build, "--out", str(tmp_path / "default")]) == 0
    assert "1 cases are in no reader's order" in capsys.readouterr().err  # one reader, two attacks
    with pytest.raises(SystemExit):
        main([*build, "--out", str(tmp_path / "both"), "--never-both", "--all-versions"])
    with pytest.raises(SystemExit):
        main(["session", "build", "--help"])
    assert "RISK: the real volume is the voxel-wise centre" in " ".join(capsys.readouterr().out.split())


# --- timestamps -------------------------------------------------------------------------------------------


def _birth_and_change_ns(paths: list[Path]) -> tuple[list[int | None], list[int]]:
    """Creation (statx birth, None where the file system has none) and change times of `paths`, in ns."""
    result = subprocess.run(
        ["stat", "-c", "%W %.9W", *map(str, paths)], capture_output=True, text=True, encoding="utf-8"
    )
    births = []
    for line in result.stdout.splitlines():
        seconds, precise = line.split()
        births.append(None if seconds == "0" else round(float(precise) * 1e9))
    return births, [p.stat().st_ctime_ns for p in paths]


def test_times_tell_nothing_about_slow_sources(tmp_path):
    """A source that is slow to decode (the issue: a DICOM series, 1.38 s) must not show in any time.

    Modification and access times are one value for every case file; creation and change times grow in
    the order of the random IDs and span far less than the decoding of the slow source.
    """
    slow = make_source(tmp_path / "slow.nii.gz", 0, (96, 256, 256))
    started = time.perf_counter()
    voxels(slow)
    decode_seconds = time.perf_counter() - started
    cases = [make_case(tmp_path / "case-slow", slow, "pgd", {"liver": 6})]
    for index in (1, 2):
        source = make_source(tmp_path / f"fast{index}.nii.gz", index, (6, 8, 7))
        cases.append(make_case(tmp_path / f"case{index}", source, "saa", {"liver": 6}))
    out = tmp_path / "session"
    key = build_session(cases, readers=1, seed=4, out=out)
    paths = sorted((out / "cases").iterdir())
    status = [p.stat() for p in paths]
    assert len({s.st_mtime_ns for s in status}) == 1 and len({s.st_atime_ns for s in status}) == 1
    assert status[0].st_mtime_ns == datetime.fromisoformat(key["created"]).timestamp() * 1e9
    copy = handout(out, "reader1", tmp_path / "copy")
    copied = sorted((copy / "cases").iterdir())
    assert {p.stat().st_mtime_ns for p in copied} == {status[0].st_mtime_ns}
    for folder in (paths, copied):
        births, changes = _birth_and_change_ns(folder)
        for times in ([b for b in births if b is not None], changes):
            assert times == sorted(times), "times follow the random IDs"
            if times:
                assert (max(times) - min(times)) / 1e9 < decode_seconds / 2, (times, decode_seconds)


def test_mode_flags_exclude_each_other():
    items = [Item(Path("a"), "real", "p"), Item(Path("b"), "manipulated", "p")]
    by_id = assign_ids(items, np.random.default_rng(0))
    with pytest.raises(InputError, match="exclude each other"):
        plan_orders(by_id, 1, np.random.default_rng(0), never_both=True, all_versions=True)
