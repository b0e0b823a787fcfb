"""`advseg export`: a case bundle with the attacked CT as NIfTI/NRRD and as a DICOM series made from the source
series (same voxels and geometry on re-reading, new UIDs, PHI removed or kept), a manifest of SHA-256s, and
never a write over or into a source.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import write_case_folder
from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.studies.export import (
    DICOM_FOLDER,
    EXPORT_FORMATS,
    MANIPULATED_NOTE,
    AttackDescription,
    basic_profile,
    encode_pixels,
    export_case,
    profile_action,
    sop_class_uid,
    write_dicom_series,
)
from AdvSegAttackLib.volumes.io import read_image, sha256_file, write_image, write_segmentation

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3
PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-0042",
    "PatientBirthDate": "19610704",
    "PatientSex": "F",
    "PatientAge": "062Y",
    "InstitutionName": "St Example Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "OperatorsName": "TECH^TOM",
    "AccessionNumber": "ACC-7781",
    "StudyID": "S42",
    "StudyDate": "20240102",
    "StudyTime": "101500",
    "SeriesDate": "20240102",
    "AcquisitionDate": "20240102",
    "StudyDescription": "CT ABDOMEN for Jane Doe",
    "StationName": "CTROOM1",
}
PHI_TEXTS = [b"DOE", b"Doe", b"MRN-0042", b"19610704", b"Example Hospital", b"HOUSE", b"ACC-7781", b"TECH"]
PRIVATE_NOTE = "private note on DOE"


def oblique_crop(real_ct_small: Path) -> sitk.Image:
    """A 80x70x12 crop of the real CT (int16 HU) turned onto an oblique grid with a non-trivial origin."""
    image = read_image(real_ct_small)[20:100, 15:85, 4:16]
    a, b = np.deg2rad(11.0), np.deg2rad(-6.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    image.SetDirection((rz @ rx @ np.array(image.GetDirection()).reshape(3, 3)).flatten().tolist())
    image.SetOrigin((123.456789, -45.678912, -789.012345))
    image.SetSpacing((3.0, 2.75, 3.5))
    return image


def save_dicom(ds: pydicom.Dataset, path: Path, implicit_vr: bool = False, file_format: bool = True) -> None:
    """Write `ds` with pydicom 3 or 2 (as in Slicer 5.10); `file_format=False`: no preamble, no file meta."""
    if PYDICOM_3 and file_format:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    elif PYDICOM_3:
        pydicom.dcmwrite(path, ds, implicit_vr=implicit_vr, little_endian=True)
    else:
        ds.is_implicit_VR, ds.is_little_endian = implicit_vr, True
        pydicom.dcmwrite(path, ds, write_like_original=not file_format)


def write_ct_series(
    image: sitk.Image,
    folder: Path,
    implicit_vr: bool = False,
    file_meta: bool = True,
    edit: Callable[[pydicom.Dataset], None] | None = None,
) -> Path:
    """A CT series as a scanner writes it: uint16 stored = HU + 2048, PHI, a private tag, shuffled file names.

    `file_meta=False` writes bare data sets (no preamble, no file meta, as old archives hold); `edit` changes
    each data set before it is written.
    """
    folder.mkdir(parents=True)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    voxels = sitk.GetArrayFromImage(image)
    for k in range(image.GetDepth()):
        ds = pydicom.Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        request = pydicom.Dataset()
        request.RequestedProcedureID = "RP-DOE"
        ds.RequestAttributesSequence = [request]
        ds.add_new(0x00090010, "LO", "ACME PRIVATE")
        ds.add_new(0x00091001, "LO", PRIVATE_NOTE)
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{image.GetSpacing()[1]:.6f}", f"{image.GetSpacing()[0]:.6f}"]
        ds.SliceThickness = f"{image.GetSpacing()[2]:.6f}"
        ds.Rows, ds.Columns = image.GetSize()[1], image.GetSize()[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-2048", "HU"
        ds.SmallestImagePixelValue = 0
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = (voxels[k].astype(np.int32) + 2048).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        if file_meta:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
                CT_IMAGE_STORAGE,
                ds.SOPInstanceUID,
            )
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
        if edit:
            edit(ds)
        name = hashlib.sha256(ds.SOPInstanceUID.encode()).hexdigest()[:10]  # file order != slice order
        save_dicom(ds, folder / f"{name}.dcm", implicit_vr, file_format=file_meta)
    return folder


@pytest.fixture(scope="module")
def made(real_ct_small, tmp_path_factory) -> dict[str, Path]:
    """A DICOM series (in a folder named after the patient), its case, and a NIfTI-source case of the same CT.

    The case folders are written the way `advseg attack` writes them, with SimpleITK only (no torch), so
    that these tests also run with Slicer's Python and packages (`make test`)."""
    root = tmp_path_factory.mktemp("export")
    crop = oblique_crop(real_ct_small)
    series = write_ct_series(crop, root / "DOE_JANE_CT")
    nifti = write_image(crop, root / "crop.nii.gz")
    parameters = {"eps": 8.0, "alpha": 0.01, "steps": 1}  # the engine's PGD options, in its order
    return {
        "series": series,
        "case": write_case_folder(series, root / "case", "pgd", parameters),
        "nifti": nifti,
        "nifti_case": write_case_folder(nifti, root / "nifti_case", "pgd", parameters),
        "root": root,
    }


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def dicom_files(bundle: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted((bundle / DICOM_FOLDER).iterdir())]


def test_all_formats_round_trip_voxels_geometry_uids_and_remove_phi(made, tmp_path):
    before = {"series": tree_hashes(made["series"]), "case": tree_hashes(made["case"])}
    bundle = tmp_path / "bundle"
    export_case(
        made["case"], bundle, list(EXPORT_FORMATS)
    )  # the library, so that this runs without torch too
    assert {"series": tree_hashes(made["series"]), "case": tree_hashes(made["case"])} == before

    adversarial = read_image(made["case"] / "adversarial.nii.gz")
    source = read_image(made["series"])
    again = read_image(bundle / DICOM_FOLDER)
    assert again.GetSize() == adversarial.GetSize()
    for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(
            getattr(again, getter)(), getattr(adversarial, getter)(), atol=1e-4, rtol=0
        )
    voxels = sitk.GetArrayFromImage(again)
    np.testing.assert_array_equal(voxels, sitk.GetArrayFromImage(adversarial))
    changed = voxels != sitk.GetArrayFromImage(source)
    assert 0.1 < changed.mean() < 1.0  # the series holds the attacked voxels, not the source's

    for volume in ("adversarial", "pred_clean", "pred_adv"):
        nifti, nrrd = read_image(bundle / f"{volume}.nii.gz"), read_image(bundle / f"{volume}.nrrd")
        assert nrrd.GetPixelID() == nifti.GetPixelID()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(nrrd), sitk.GetArrayFromImage(nifti))
        np.testing.assert_allclose(nrrd.GetOrigin(), nifti.GetOrigin(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(nrrd.GetDirection(), nifti.GetDirection(), atol=1e-6, rtol=0)
        assert (bundle / f"{volume}.seg.nrrd").is_file() or volume == "adversarial"
    assert read_image(bundle / "adversarial.nrrd").GetPixelID() == adversarial.GetPixelID() == sitk.sitkInt16

    sources = [pydicom.dcmread(p) for p in sorted(made["series"].iterdir())]
    exported = dicom_files(bundle)
    assert len(exported) == len(sources) == adversarial.GetDepth()
    assert {str(d.StudyInstanceUID) for d in exported} != {str(d.StudyInstanceUID) for d in sources}
    assert len({str(d.SeriesInstanceUID) for d in exported}) == 1
    assert str(exported[0].SeriesInstanceUID) != str(sources[0].SeriesInstanceUID)
    new_sops = {str(d.SOPInstanceUID) for d in exported}
    assert len(new_sops) == len(exported) and not new_sops & {str(d.SOPInstanceUID) for d in sources}
    assert len({str(d.FrameOfReferenceUID) for d in exported}) == 1
    assert exported[0].FrameOfReferenceUID != sources[0].FrameOfReferenceUID
    for ds in exported:
        assert list(ds.ImageType)[:3] == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SeriesDescription.startswith("AdvSegAttack pgd eps=8 alpha=0.01 steps=1")
        assert len(ds.SeriesDescription) <= 64
        assert "pgd" in ds.DerivationDescription and "steps=1" in ds.DerivationDescription
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        # PHI removed per the basic profile actions
        assert ds.PatientName == "ANONYMIZED" and ds.PatientID.startswith("ADVSEG-")
        for keyword in (
            "PatientBirthDate",
            "PatientSex",
            "ReferringPhysicianName",
            "AccessionNumber",
            "StudyDate",
        ):
            assert ds.data_element(keyword).value in ("", None)
        for keyword in ("InstitutionName", "OperatorsName", "PatientAge", "SeriesDate", "StationName"):
            assert keyword not in ds
        assert "RequestAttributesSequence" not in ds and "SmallestImagePixelValue" not in ds
        assert not any(element.tag.is_private for element in ds)
        assert ds.PatientIdentityRemoved == "YES" and "AdvSegAttack" in ds.DeidentificationMethod[0]
    # No patient text anywhere in the bundle (the input folder is named after the patient).
    for path in bundle.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            if path.suffix == ".nrrd":  # the text header; the payload is gzip-compressed voxels
                data = data.split(b"\n\n")[0]
            assert not [t for t in PHI_TEXTS if t in data], path
    assert not (bundle / "preview.png").exists() and (made["case"] / "preview.png").exists()
    provenance = json.loads((bundle / "provenance.json").read_text(encoding="utf-8"))
    assert provenance["input"]["sha256"] == sha256_file(made["series"])

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    on_disk = tree_hashes(bundle)
    assert on_disk.pop("manifest.json")
    assert {name: entry["sha256"] for name, entry in manifest["files"].items()} == on_disk
    assert manifest["dicom"]["exact"] and manifest["dicom"]["source_matches_provenance"]
    assert manifest["dicom"]["stored_as"] == "int16" and manifest["dicom"]["rescale_intercept"] == 0.0
    readme = (bundle / "README.txt").read_text(encoding="utf-8")
    assert "pgd" in readme and "steps = 1" in readme and "NOT FOR CLINICAL USE" in readme
    # no staging left (the released lock file of the bundle folder stays, see outputs.py)
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".") and p.name != ".bundle.lock"]
    assert all(
        p.stat().st_mode & 0o044 == 0o044 for p in bundle.rglob("*")
    )  # readable by whom it is shared with


def test_phi_keep_copies_patient_context_with_new_uids(made, tmp_path, capsys):
    bundle = tmp_path / "kept"
    args = ["export", str(made["case"]), "--out", str(bundle), "--format", "dicom", "--phi", "keep"]
    assert main([*args, "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1] == {"event": "done", "out": str(bundle)}
    steps = [e for e in events if e["event"] == "progress"]
    assert steps[-1]["stage"] == "export" and steps[-1]["step"] == steps[-1]["total"] > 12
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    sources = {int(d.InstanceNumber): d for d in (pydicom.dcmread(p) for p in made["series"].iterdir())}
    for ds in dicom_files(bundle):
        source = sources[int(ds.InstanceNumber)]
        for keyword, value in PHI.items():
            if keyword not in ("StudyDescription",):
                assert str(ds.data_element(keyword).value) == value, keyword
        assert ds[0x00091001].value == PRIVATE_NOTE
        assert ds.ImagePositionPatient == source.ImagePositionPatient
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID  # same patient space
        assert ds.SOPInstanceUID != source.SOPInstanceUID and ds.StudyInstanceUID != source.StudyInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "PatientIdentityRemoved" not in ds
    assert (bundle / "preview.png").is_file() and not (bundle / "adversarial.nii.gz").exists()
    assert manifest["phi"] == "keep" and set(manifest["files"]) >= {"pred_adv.seg.nrrd", "README.txt"}
    provenance = json.loads((bundle / "provenance.json").read_text(encoding="utf-8"))
    assert provenance["input"]["path"] == str(made["series"].resolve())
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_image(bundle / DICOM_FOLDER)),
        sitk.GetArrayFromImage(read_image(made["case"] / "adversarial.nii.gz")),
    )


def error_of(capsys, *args: str) -> str:
    assert main(["export", *args, "--progress", "jsonl"]) == 2
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "error"
    return events[-1]["message"]


def test_refuses_sources_and_existing_bundles_leaving_nothing(made, tmp_path, capsys):
    case, series = made["case"], made["series"]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine", encoding="utf-8")
    before = {"series": tree_hashes(series), "case": tree_hashes(case), "existing": tree_hashes(existing)}
    listing = {p: sorted(p.iterdir()) for p in (made["root"], tmp_path)}
    refusals = {
        str(case): "is the case folder",
        str(case / "bundle"): "is inside the case folder",
        str(series): "is the attack's input",
        str(series / "bundle"): "is inside the attack's input",
        str(made["root"]): "contains the case folder",
        str(existing): "already exists and is not an empty folder",
    }
    for out, message in refusals.items():
        assert message in error_of(capsys, str(case), "--out", out, "--format", "nifti", "dicom")
    assert {
        "series": tree_hashes(series),
        "case": tree_hashes(case),
        "existing": tree_hashes(existing),
    } == before
    assert {p: sorted(p.iterdir()) for p in (made["root"], tmp_path)} == listing

    empty = tmp_path / "empty"
    empty.mkdir()
    export_case(case, empty, ["nrrd"])  # an existing empty folder is fine
    assert (empty / "adversarial.nrrd").is_file() and not (empty / "adversarial.nii.gz").exists()


def test_dicom_format_needs_a_dicom_source(made, real_ct_small, tmp_path, capsys):
    out = tmp_path / "bundle"
    message = error_of(capsys, str(made["nifti_case"]), "--out", str(out), "--format", "dicom")
    assert "was not a DICOM folder" in message and "--dicom-source" in message and not out.exists()
    assert "only used with --format dicom" in error_of(
        capsys, str(made["nifti_case"]), "--out", str(out), "--dicom-source", str(made["series"])
    )
    other_grid = write_ct_series(oblique_crop(real_ct_small)[:, :, :6], tmp_path / "other")
    assert "is not on the attacked volume's grid" in error_of(
        capsys,
        str(made["nifti_case"]),
        "--out",
        str(out),
        "--format",
        "dicom",
        "--dicom-source",
        str(other_grid),
    )
    assert not out.exists()

    # The series the NIfTI was written from fits its grid: exported with the attacked voxels.
    manifest = export_case(made["nifti_case"], out, ["dicom", "nifti"], dicom_source=made["series"])
    assert manifest["dicom"]["source_matches_provenance"] is False and manifest["dicom"]["exact"]
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_image(out / DICOM_FOLDER)),
        sitk.GetArrayFromImage(read_image(made["nifti_case"] / "adversarial.nii.gz")),
    )


def test_recorded_dicom_source_that_changed_or_vanished_is_refused(made, tmp_path, capsys):
    copy = shutil.copytree(made["series"], tmp_path / "copy")
    case = tmp_path / "case"
    shutil.copytree(made["case"], case)
    provenance = json.loads((case / "provenance.json").read_text(encoding="utf-8"))
    provenance["input"]["path"] = str(copy)  # as if the attack had read the copy (same bytes, same SHA-256)
    (case / "provenance.json").write_text(json.dumps(provenance), encoding="utf-8")
    assert export_case(case, tmp_path / "ok", ["dicom"])["dicom"]["source_matches_provenance"]

    first = sorted(copy.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.PatientComments = "edited later"
    ds.save_as(first)
    assert "changed since the attack" in error_of(
        capsys, str(case), "--out", str(tmp_path / "b"), "--format", "dicom"
    )
    shutil.rmtree(copy)
    assert "no longer exists" in error_of(
        capsys, str(case), "--out", str(tmp_path / "b"), "--format", "dicom"
    )
    assert not (tmp_path / "b").exists()


def test_implicit_vr_source_is_written_as_explicit_vr(real_ct_small, made, tmp_path):
    implicit = write_ct_series(oblique_crop(real_ct_small), tmp_path / "implicit", implicit_vr=True)
    bundle = tmp_path / "bundle"
    export_case(made["case"], bundle, ["dicom"], dicom_source=implicit)
    ds = dicom_files(bundle)[0]
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_image(bundle / DICOM_FOLDER)),
        sitk.GetArrayFromImage(read_image(made["case"] / "adversarial.nii.gz")),
    )


def test_pixel_encoding_is_exact_for_integers_and_bounded_otherwise():
    hu = np.array([[-1024, 0, 3071]], dtype=np.int16)
    plain = encode_pixels(hu)
    assert plain.signed and (plain.slope, plain.intercept, plain.max_error_hu) == (1.0, 0.0, 0.0)
    wide = np.array([-40000.0, 20000.0])  # beyond int16, within 65536 values
    encoded = encode_pixels(wide)
    assert not encoded.signed and encoded.intercept == -40000.0
    np.testing.assert_array_equal(encoded.stored * encoded.slope + encoded.intercept, wide)
    fractional = np.array([-1000.25, 10.6, 200.0])
    lattice = encode_pixels(fractional, source_slope=0.5, source_intercept=-1024.0)
    assert lattice.slope == 0.5 and 0 < lattice.max_error_hu <= 0.25
    np.testing.assert_allclose(lattice.stored * 0.5 - 1024.0, fractional, atol=0.25)
    with pytest.raises(InputError, match="more than 16-bit DICOM can hold"):
        encode_pixels(np.array([-1e6, 1e6, 0.5]))


def phi_value(tag: int, vr: str, uids: dict[int, str]) -> object:
    """An identifying value of `vr` for `tag` ("DOE" in every text; one UID per tag for the whole series)."""
    if vr == "UI":
        return uids.setdefault(tag, generate_uid())
    if vr == "SQ":
        item = pydicom.Dataset()
        item.PatientName, item.PatientComments = "DOE^NESTED", "DOE nested MRN-0042"
        return [item]
    numbers = {"US": 7, "SS": 7, "UL": 7, "SL": 7, "FL": 1.5, "FD": 1.5, "DS": "7.5", "IS": "7"}
    text = {"PN": "DOE^JANE", "DA": "19610704", "TM": "101500", "DT": "19610704101500", "AS": "062Y"}
    text |= {"CS": "DOE", "AE": "DOEAE", "UR": "http://phi.example/DOE"}
    if vr in ("OB", "OW", "UN"):
        return b"DOE!"
    return numbers.get(vr, text.get(vr, f"DOE {tag:08X}"))


def outside_profile(vr: str) -> int:
    """The first current attribute of `vr` that Table E.1-1 does not list."""
    return next(
        tag
        for tag, entry in sorted(DicomDictionary.items())
        if entry[0] == vr and not entry[3] and profile_action(tag) is None and tag >> 16 not in (0, 2, 4)
    )


OVERLAY = [  # a 70x80 graphics overlay whose bits and comment carry text (60xx groups)
    (0x0010, "US", 70),
    (0x0011, "US", 80),
    (0x0040, "CS", "G"),
    (0x0050, "SS", [1, 1]),
    (0x0100, "US", 1),
    (0x0102, "US", 0),
    (0x3000, "OB", b"DOE!" * 175),
    (0x24000, "LT", "DOE overlay comment"),  # group 6002 (GDCM cannot read a comment beside overlay data)
]


def fill_every_profile_attribute(uids: dict[int, str]) -> Callable[[pydicom.Dataset], None]:
    """An `edit` for write_ct_series: every attribute of the Basic Profile table, overlays, curves, a name and
    a date the table does not list, and private data nested in a sequence."""
    single, _ = basic_profile()

    def fill(ds: pydicom.Dataset) -> None:
        for tag in single:
            if tag >> 16 in (0x0000, 0x0002, 0x0004) or tag == tag_for_keyword("SOPInstanceUID"):
                continue  # command, file meta and directory groups; each slice has its own SOP UID
            try:
                vr = dictionary_VR(tag).split(" or ")[0]
            except KeyError:
                vr = "LO"  # newer than this pydicom's dictionary
            ds.add_new(tag, vr, phi_value(tag, vr, uids))
        ds.add_new(0x50000005, "US", 1)  # curve dimensions
        ds.add_new(0x50003000, "OB", b"DOE!")  # curve data
        for element, vr, value in OVERLAY:
            ds.add_new(0x60000000 | element, vr, value)
        for vr in ("PN", "DA"):
            ds.add_new(outside_profile(vr), vr, phi_value(0, vr, uids))
        ds.AnatomicRegionSequence = phi_value(0, "SQ", uids)  # a sequence the table does not list
        ds.AnatomicRegionSequence[0].add_new(0x00190010, "LO", "ACME")
        ds.AnatomicRegionSequence[0].add_new(0x00191001, "LO", "DOE private nested")

    return fill


def test_basic_profile_every_action_holds_tag_class_by_tag_class(real_ct_small, tmp_path):
    uids: dict[int, str] = {}
    crop = oblique_crop(real_ct_small)[:, :, :4]
    source = write_ct_series(crop, tmp_path / "source", edit=fill_every_profile_attribute(uids))
    adversarial = read_image(source) + 5
    description = AttackDescription("AdvSegAttack pgd eps=8", "AdvSegAttack pgd eps=8; seed 0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns about values invalid for their VR: none is written
        summary = write_dicom_series(adversarial, source, tmp_path / "out", description, "remove")

    single, _ = basic_profile()
    sources = {int(d.InstanceNumber): d for d in (pydicom.dcmread(p) for p in source.iterdir())}
    written = sorted((tmp_path / "out").iterdir())
    exported = [pydicom.dcmread(p) for p in written]
    ours = {"SeriesDescription", "DerivationDescription", "ImageComments", "PatientName", "PatientID"}
    new_uids: dict[str, set[str]] = {}
    for ds in exported:
        original = sources[int(ds.InstanceNumber)]
        for tag, action in single.items():
            if tag >> 16 in (0x0000, 0x0002, 0x0004) or keyword_for_tag(tag) in ours:
                continue
            before, after = original.get(tag), ds.get(tag)
            name = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {action}"
            if action[0] == "X" or before.VR == "SQ":  # every sequence is removed (stricter than D/Z/U)
                assert after is None, name
            elif action == "Z" or action == "Z/D":
                assert after is not None and after.value in ("", None), name
            elif action == "D":
                assert after.value not in ("", None) and after.value != before.value, name
            else:
                assert action == "U" and after.value != before.value, name
                assert pydicom.uid.UID(str(after.value)).is_valid, name
                new_uids.setdefault(str(before.value), set()).add(str(after.value))
        for keyword in ("StudyComments", "ImagingServiceRequestComments", "RequestedProcedureComments"):
            assert keyword not in ds  # issue 12: left in by the hand-written list
        assert "IdentifyingComments" not in ds
        assert ds.PatientName == "ANONYMIZED" and ds.PatientID.startswith("ADVSEG-")
        assert ds.SeriesDescription == description.short and ds.DerivationDescription == description.full
        assert ds.ImageComments == MANIPULATED_NOTE and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "REMOVED"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert [e.keyword for e in ds if e.VR == "SQ"] == ["DeidentificationMethodCodeSequence"]
        assert not any(e.tag.is_private or 0x5000 <= e.tag.group <= 0x60FF for e in ds)
        assert outside_profile("PN") not in ds and outside_profile("DA") not in ds
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Modality"):
            assert ds.data_element(keyword).value == original.data_element(keyword).value  # kept (K)
        assert ds.BurnedInAnnotation == "NO" and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # U: every source UID became one new UID, the same in every slice, shared by no other source UID
    assert all(len(new) == 1 for new in new_uids.values()) and len(new_uids) >= len(uids) - 1
    assert len({next(iter(new)) for new in new_uids.values()}) == len(new_uids)
    assert not {next(iter(new)) for new in new_uids.values()} & set(uids.values())
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({str(ds.data_element(keyword).value) for ds in exported}) == 1
    assert str(exported[0].StudyInstanceUID) == summary["study_instance_uid"]
    assert len({str(ds.SOPInstanceUID) for ds in exported}) == len(exported) == 4
    for path in written:  # no identifying byte anywhere before the pixels
        header = path.read_bytes().split(b"\xe0\x7f\x10\x00")[0]
        assert b"DOE" not in header and b"MRN" not in header, path
    again = read_image(tmp_path / "out")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(adversarial))
    np.testing.assert_allclose(again.GetOrigin(), adversarial.GetOrigin(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(again.GetDirection(), adversarial.GetDirection(), atol=1e-6, rtol=0)


AWKWARD = {
    # real archives: the crash of issue 12 was an empty SOPClassUID, in both --phi modes
    "empty SOPClassUID": {"edit": lambda ds: setattr(ds, "SOPClassUID", "")},
    "no file meta, implicit VR": {"file_meta": False, "implicit_vr": True},
    "no PatientName": {"edit": lambda ds: delattr(ds, "PatientName")},
}


@pytest.mark.parametrize("phi", ["remove", "keep"])
@pytest.mark.parametrize("kind", sorted(AWKWARD))
def test_awkward_archive_series_export_exactly(kind, phi, made, real_ct_small, tmp_path, capsys):
    series = write_ct_series(oblique_crop(real_ct_small), tmp_path / "source", **AWKWARD[kind])
    bundle = tmp_path / "bundle"
    manifest = export_case(made["case"], bundle, ["dicom"], dicom_source=series, phi=phi)
    log = capsys.readouterr().err
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_image(bundle / DICOM_FOLDER)),
        sitk.GetArrayFromImage(read_image(made["case"] / "adversarial.nii.gz")),
    )
    for ds in dicom_files(bundle):
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.ImageComments.startswith("Adversarially manipulated")
    assert manifest["dicom"]["sop_class_uid"] == CT_IMAGE_STORAGE
    if kind == "empty SOPClassUID":  # pydicom 2 wrote the empty class into the file meta as well
        meta = pydicom.dcmread(next(series.iterdir()), force=True).file_meta
        kept = meta.get("MediaStorageSOPClassUID")
        assert manifest["dicom"]["sop_class_replaced_in_slices"] == 12
        replaced_by = "the file meta's MediaStorageSOPClassUID" if kept else "CT Image Storage"
        assert f"SOPClassUID is empty; written as {replaced_by}" in log
    else:
        assert manifest["dicom"]["sop_class_replaced_in_slices"] == 0 and "SOPClassUID" not in log


def test_sop_class_falls_back_to_file_meta_then_ct_image_storage():
    """GDCM cannot place the slices of a series without file meta and SOP class (so it never gets here);
    the last fallback is for data sets read without either."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT: kept as it is
    assert sop_class_uid(ds) == ("1.2.840.10008.5.1.4.1.1.2.1", None)
    ds.SOPClassUID = ""
    assert sop_class_uid(ds) == (CT_IMAGE_STORAGE, "CT Image Storage")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    assert sop_class_uid(ds) == ("1.2.840.10008.5.1.4.1.1.7", "the file meta's MediaStorageSOPClassUID")
    del ds.SOPClassUID
    assert sop_class_uid(ds)[0] == "1.2.840.10008.5.1.4.1.1.7"


def test_linked_corrupt_or_misplaced_case_files_are_refused_and_nothing_written(made, tmp_path, capsys):
    case = Path(shutil.copytree(made["case"], tmp_path / "case"))
    out = tmp_path / "bundle"
    listing = sorted(tmp_path.iterdir())
    secret = tmp_path / "secret.txt"
    secret.write_text("an arbitrary file of the user", encoding="utf-8")
    good = (case / "pred_clean.seg.nrrd").read_bytes()

    (case / "pred_clean.seg.nrrd").unlink()
    (case / "pred_clean.seg.nrrd").symlink_to(secret)
    assert "pred_clean.seg.nrrd is a symbolic link" in error_of(capsys, str(case), "--out", str(out))
    (case / "pred_clean.seg.nrrd").unlink()

    (case / "pred_clean.seg.nrrd").write_bytes(good[: len(good) // 2])  # truncated
    assert "pred_clean.seg.nrrd could not be read" in error_of(capsys, str(case), "--out", str(out))

    label = read_image(made["case"] / "pred_clean.nii.gz")[:, :, :6]
    write_segmentation(label, case / "pred_clean.seg.nrrd", ["background", "spleen"], [[0, 0, 0], [1, 2, 3]])
    message = error_of(capsys, str(case), "--out", str(out))
    assert "pred_clean.seg.nrrd is not on the grid of" in message and "adversarial.nii.gz" in message
    (case / "pred_clean.seg.nrrd").write_bytes(good)

    (case / "pred_adv.nii.gz").write_bytes((made["case"] / "pred_adv.nii.gz").read_bytes()[:200])
    assert "pred_adv.nii.gz" in error_of(capsys, str(case), "--out", str(out), "--phi", "keep")
    assert not out.exists() and sorted(p for p in tmp_path.iterdir() if p != secret) == listing


def test_phi_remove_strips_every_local_path(made, tmp_path):
    """Card and texture-weights folders, diagnostics and the command line name local folders (often the
    patient's): none reaches provenance.json, metrics.json, README.txt, manifest.json or the DICOM headers."""
    case = Path(shutil.copytree(made["case"], tmp_path / "case"))
    provenance = json.loads((case / "provenance.json").read_text(encoding="utf-8"))
    provenance["attack"]["parameters"]["weights"] = {
        "value": "/home/doe_jane/weights",
        "unit": "",
        "flag": "--weights",
    }
    provenance["model"]["source"] = "~/models/doe_jane"
    (case / "provenance.json").write_text(json.dumps(provenance), encoding="utf-8")
    metrics = json.loads((case / "metrics.json").read_text(encoding="utf-8"))
    metrics["attack"] = {"name": "texture", "diagnostics": {"weights": "folder C:\\Users\\doe_jane\\w"}}
    (case / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    bundle = tmp_path / "bundle"
    export_case(case, bundle, ["dicom", "nifti"])
    for path in bundle.rglob("*"):
        if path.is_file() and path.suffix != ".gz":
            data = path.read_bytes().split(b"\xe0\x7f\x10\x00")[0].lower()
            assert b"doe_jane" not in data and str(tmp_path).encode() not in data, path
    kept = json.loads((bundle / "provenance.json").read_text(encoding="utf-8"))
    assert kept["attack"]["parameters"]["eps"] == provenance["attack"]["parameters"]["eps"]  # the rest stays
    assert (
        kept["input"]["sha256"] == provenance["input"]["sha256"]
        and kept["model"]["name"] == provenance["model"]["name"]
    )
    assert "weights=(removed" in (bundle / "README.txt").read_text(encoding="utf-8").replace(" = ", "=")
