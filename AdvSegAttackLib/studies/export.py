"""Case export: one case folder as a bundle others can open anywhere (`advseg export`, the module's Export).

A bundle is a new folder, built in a hidden staging folder beside it and renamed into place at the end::

    BUNDLE/adversarial.nii.gz | .nrrd          the attacked CT in HU: source grid, geometry and pixel type
    BUNDLE/pred_clean.nii.gz | .nrrd, .seg.nrrd the model's labels of the clean volume (.seg.nrrd: names, colours)
    BUNDLE/pred_adv.nii.gz | .nrrd, .seg.nrrd   the model's labels of the attacked volume
    BUNDLE/metrics.json, provenance.json        as in the case folder (paths removed with --phi remove)
    BUNDLE/preview.png                          only with --phi keep (its title names the input file)
    BUNDLE/dicom/IM00001.dcm ...                with format "dicom": one series of the attacked CT
    BUNDLE/README.txt                           what the bundle is, the attack, its parameters and the model
    BUNDLE/manifest.json                        SHA-256 and size of every other file

The DICOM series copies the source series slice by slice (so its geometry is the source's, tag for tag) and
replaces the pixels, the Study/Series/SOP Instance UIDs, ImageType (DERIVED\\SECONDARY), Series- and
DerivationDescription (naming the attack and its parameters) and the rescale slope/intercept (chosen so the
stored values give back the attacked HU exactly). Nothing is ever written into the case folder or the source.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..evaluation.casefolder import ADVERSARIAL, PRED_ADV, PRED_CLEAN, REGION, CaseFolder, read_case
from ..progress import Reporter
from ..volumes.io import (
    IMAGE_SUFFIXES,
    full_suffix,
    make_staging_dir,
    read_image,
    read_label,
    same_grid,
    sha256_file,
    write_image,
    write_json_atomic,
    write_text_atomic,
)
from ..volumes.outputs import claim_output_folder

EXPORT_FORMATS = ("nifti", "nrrd", "dicom")
PHI_OPTIONS = ("remove", "keep")
DICOM_FOLDER = "dicom"
MANIFEST = "manifest.json"
README = "README.txt"
REMOVED = "(removed by --phi remove)"
GRID_TOLERANCE_MM = 1e-3  # NIfTI keeps the affine in float32: ~1e-5 mm error at 1 m from the origin

# --- DICOM de-identification (--phi remove) ------------------------------------------------------------------
# The Basic Application Level Confidentiality Profile of DICOM PS3.15 Annex E: the actions of Table E.1-1's
# "Basic Profile" column, taken from the maintained copy of the table in `dicom-anonymizer` (Kitware, BSD-3),
# applied by `remove_phi` (its own engine keeps one UID map per process and does not clean nested data).
PROFILE_TABLE = "dicomfields_2026c"  # the table as of DICOM 2026c
PROFILE_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
CLASS_UIDS = ("SOPClassUID", "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID")
IDENTIFYING_VRS = ("PN", "DA", "DT", "TM", "AS")  # outside the table these are removed as well
DUMMY_VALUES = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "UR": "http://anonymized.invalid",
    "AT": 0,
}
TEXT_VRS = ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT")
NUMBER_VRS = ("FD", "FL", "SL", "SS", "SV", "UL", "US", "UV")
ANONYMIZED = "ANONYMIZED"
DEIDENTIFICATION_METHOD = [  # LO values: at most 64 characters each
    "AdvSegAttack export --phi remove",
    "PS3.15 E.1 Basic Profile (table 2026c); X/.. as X, Z/D as Z",
    "private tags, sequences, overlays, curves, names, dates removed",
    "UIDs replaced; pixels not checked for burned-in text",
]
# Pixel-module attributes that describe the source's stored values and would be wrong for the new ones.
STALE_PIXEL_ATTRIBUTES = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "IconImageSequence",
)
MANIPULATED_NOTE = "Adversarially manipulated by AdvSegAttack: not for clinical use"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class PixelEncoding:
    """Stored 16-bit values and the rescale that maps them to HU: hu = stored * slope + intercept."""

    stored: np.ndarray
    slope: float
    intercept: float
    max_error_hu: float

    @property
    def signed(self) -> bool:
        return self.stored.dtype == np.int16


def encode_pixels(hu: np.ndarray, source_slope: float = 1.0, source_intercept: float = 0.0) -> PixelEncoding:
    """16-bit stored values for a volume in HU, exact whenever the voxels are integers.

    Integers in [-32768, 32767] are stored as int16 with slope 1, intercept 0; a wider integer range of at most
    65536 values as uint16 with the minimum as intercept. Other voxels are rounded to the source's rescale
    lattice (`source_slope` HU per stored unit), and `max_error_hu` says how far that moved them.
    """
    values = np.asarray(hu)
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(values.dtype, np.integer) or np.array_equal(values, np.rint(values)):
        if low >= -32768 and high <= 32767:
            return PixelEncoding(values.astype(np.int16), 1.0, 0.0, 0.0)
        if high - low <= 65535:
            return PixelEncoding((values.astype(np.int64) - int(low)).astype(np.uint16), 1.0, low, 0.0)
    values = values.astype(np.float64)
    slope = float(source_slope)
    steps = np.rint((values - source_intercept) / slope)
    if steps.min() >= -32768 and steps.max() <= 32767:
        stored, intercept = steps.astype(np.int16), float(source_intercept)
    elif steps.max() - steps.min() <= 65535:
        stored = (steps - steps.min()).astype(np.uint16)
        intercept = float(source_intercept + steps.min() * slope)
    else:
        raise InputError(
            f"the attacked volume spans {low:g}..{high:g} HU, more than 16-bit DICOM can hold at "
            f"{slope:g} HU per stored unit; export it as nifti or nrrd."
        )
    error = float(np.abs(stored.astype(np.float64) * slope + intercept - values).max())
    return PixelEncoding(stored, slope, intercept, error)


def _ds_text(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value!r} does not fit a DICOM decimal string")


def sop_class_uid(dataset) -> tuple[str, str | None]:
    """The slice's SOP Class UID and, when its own is missing or empty (real archives hold such series), what
    replaced it: the file meta's MediaStorageSOPClassUID, else CT Image Storage."""
    own = str(dataset.get("SOPClassUID", "") or "").strip()
    if own:
        return own, None
    meta = getattr(dataset, "file_meta", None)
    stored = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""
    if stored:
        return stored, "the file meta's MediaStorageSOPClassUID"
    return CT_IMAGE_STORAGE, "CT Image Storage"


@functools.cache
def basic_profile() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """Table E.1-1's Basic Profile actions: {tag: action} and (group, element, group mask, element mask,
    action) for the repeating groups (curves 50xx, overlays 60xx)."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    table = dicom_anonymization_database_selector(PROFILE_TABLE)
    single: dict[int, str] = {}
    masked = []
    for category, action in PROFILE_ACTIONS.items():
        for tag in table[category]:
            if len(tag) == 2:
                single[(tag[0] << 16) | tag[1]] = action
            else:
                masked.append((*tag, action))
    return single, tuple(masked)


def profile_action(tag: int) -> str | None:
    """The Basic Profile action of a tag (D, Z, X, U or a compound one such as X/Z), None when unlisted."""
    single, masked = basic_profile()
    group, element = tag >> 16, tag & 0xFFFF
    if tag in single:
        return single[tag]
    return next((a for g, e, gm, em, a in masked if group & gm == g & gm and element & em == e & em), None)


def _new_uids(element, new_uid: Callable[[str], str]) -> str | list[str]:
    """The element's UIDs mapped by `new_uid`, also when a reader did not know it as UI (LO, bytes of UN)."""
    values = list(element.value) if element.VM > 1 else [element.value]
    texts = [v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in values]
    uids = [new_uid(uid.strip("\0 ")) for text in texts for uid in text.split("\\")]
    return uids if len(uids) > 1 else uids[0]


def _dummy(element, new_uid: Callable[[str], str]) -> object:
    """A non-empty value of the element's VR that identifies nobody (action D)."""
    if element.VR == "UI":
        return _new_uids(element, new_uid)
    if element.VR in TEXT_VRS:
        return ANONYMIZED
    if element.VR in NUMBER_VRS:
        return 0
    return DUMMY_VALUES.get(element.VR, bytes(8))  # OB, OW, OD, OF, OL, OV, UN


def remove_phi(dataset, new_uid: Callable[[str], str], patient_id: str) -> None:
    """De-identify one source slice's data set in place (`--phi remove`): the PS3.15 Basic Profile, stricter.

    First every private tag, every sequence (they can nest names, dates and references; none is Type 1 or 2
    in the CT Image IOD) and the curve and overlay groups (50xx, 60xx) are removed. Then each remaining
    attribute gets its `profile_action`: X removed, Z emptied, D a dummy value, U a new UID (`new_uid(old)`,
    the same old UID always the same new one, so the series keeps one Frame of Reference); a compound action
    is its first one (X/Z, X/D, X/Z/D and X/Z/U* are Type 3 in the CT Image IOD; Z/D is Type 2). Attributes
    the table does not list are kept, except names, dates, times and ages (removed) and UIDs other than SOP
    class UIDs (replaced). PatientName becomes "ANONYMIZED", PatientID `patient_id`; PatientIdentityRemoved,
    DeidentificationMethod(CodeSequence) and LongitudinalTemporalInformationModified record what was done.
    """
    import pydicom

    dataset.remove_private_tags()
    for element in list(dataset):
        group = element.tag.group
        if element.VR == "SQ" or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del dataset[element.tag]
    for element in list(dataset):
        action = profile_action(int(element.tag))
        if action is None:
            if element.VR in IDENTIFYING_VRS:
                del dataset[element.tag]
            elif element.VR == "UI" and element.keyword not in CLASS_UIDS and element.value:
                element.value = _dummy(element, new_uid)
        elif action[0] == "X":
            del dataset[element.tag]
        elif action[0] == "Z":
            element.value = None
        elif element.value in (None, "", b""):  # D or U: an empty value stays empty (nothing to hide)
            continue
        elif action == "U":
            dataset.add_new(element.tag, "UI", _new_uids(element, new_uid))
        else:
            element.value = _dummy(element, new_uid)
    dataset.PatientName = ANONYMIZED
    dataset.PatientID = patient_id
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = pydicom.Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    dataset.DeidentificationMethodCodeSequence = [code]
    dataset.LongitudinalTemporalInformationModified = "REMOVED"


@dataclass(frozen=True)
class AttackDescription:
    """What the DICOM series and the README say about how the volume was made."""

    short: str  # SeriesDescription (at most 64 characters)
    full: str  # DerivationDescription (at most 1024 characters)


def _parameter_text(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("\\", "/")


def describe_attack(provenance: dict) -> AttackDescription:
    """ "AdvSegAttack saa rho=0.2 steps=20 …" from a case's provenance (attack name and every parameter)."""
    attack = provenance.get("attack") or {}
    parameters = attack.get("parameters") or {}
    words = ["AdvSegAttack", str(attack.get("name", "unknown attack"))]
    words += [f"{name}={_parameter_text(entry.get('value'))}" for name, entry in parameters.items()]
    short = ""
    for word in words:
        candidate = f"{short} {word}".strip()
        if len(candidate) > 64:
            break
        short = candidate
    organs = ", ".join(provenance.get("organs") or {}) or "all organs"
    region = (provenance.get("region") or {}).get("mode", "whole")
    details = [
        " ".join(words),
        f"preset {attack.get('preset') or 'none'}",
        f"{'targeted' if provenance.get('targeted') else 'untargeted'} on {organs}",
        f"region {region}",
        f"model {(provenance.get('model') or {}).get('name', 'unknown')}",
        f"seed {provenance.get('seed')}",
        f"AdvSegAttack {provenance.get('version', __version__)}",
    ]
    return AttackDescription(short=short, full="; ".join(details)[:1024])


# --- DICOM series -------------------------------------------------------------------------------------------


def _source_series_files(folder: Path) -> list[str]:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        raise InputError(f"{folder} must hold exactly one DICOM series (it holds {len(series)}).")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def write_dicom_series(
    adversarial: sitk.Image,
    source_folder: Path,
    out_folder: Path,
    description: AttackDescription,
    phi: str,
    on_slice: Callable[[int, int], None] | None = None,
    source_image: sitk.Image | None = None,
) -> dict:
    """Write `adversarial` (on the grid of the series in `source_folder`) as a new series in `out_folder`.

    Slice k copies the source file of slice k (geometry tags unchanged) and gets new pixels, new UIDs and the
    derivation tags; with `phi="remove"` it is de-identified by `remove_phi`. `source_image` is the series as
    `read_image` gives it (read here when not given). Returns the series summary.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    pydicom_3 = int(pydicom.__version__.split(".")[0]) >= 3
    files = _source_series_files(source_folder)
    depth = adversarial.GetDepth()
    if len(files) != depth:
        raise InputError(
            f"{source_folder} has {len(files)} slice files but the attacked volume has {depth} slices "
            "(DICOM export needs one slice per file)."
        )
    source_image = read_image(source_folder) if source_image is None else source_image
    _check_same_grid(adversarial, source_image, source_folder)
    first = pydicom.dcmread(files[0], stop_before_pixels=True, force=True)  # force: files without file meta
    if phi == "remove" and str(first.get("BurnedInAnnotation", "")).upper() == "YES":
        raise InputError(
            f"{source_folder} declares burned-in annotation (0028,0301 YES): --phi remove cannot remove "
            "text from the pixels; use --phi keep if sharing it is allowed."
        )
    encoding = encode_pixels(
        sitk.GetArrayViewFromImage(adversarial),
        float(first.get("RescaleSlope", 1) or 1),
        float(first.get("RescaleIntercept", 0) or 0),
    )
    uid_map: dict[str, str] = {}

    def new_uid(old: str) -> str:
        return uid_map.setdefault(old, generate_uid())

    study_uid, series_uid = generate_uid(), generate_uid()
    patient_id = "ADVSEG-" + hashlib.sha256(study_uid.encode()).hexdigest()[:8].upper()
    out_folder.mkdir(parents=True, exist_ok=True)
    rows, columns = adversarial.GetSize()[1], adversarial.GetSize()[0]
    replacements = 0  # slices whose SOPClassUID was empty
    for k, path in enumerate(files):
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        shape = (dataset.get("Rows"), dataset.get("Columns"))
        if int(dataset.get("NumberOfFrames", 1) or 1) != 1 or shape != (rows, columns):
            raise InputError(f"{path} is not a single {columns}x{rows} slice of the attacked volume's grid.")
        position = np.array([float(v) for v in dataset.ImagePositionPatient])
        if not np.allclose(position, source_image.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-3):
            raise InputError(f"{path}: its ImagePositionPatient is not that of slice {k} of {source_folder}.")
        sop_class, replaced_by = sop_class_uid(dataset)
        if replaced_by and not replacements:
            print(
                f"advseg: {path}: SOPClassUID is empty; written as {replaced_by} ({sop_class}).",
                file=sys.stderr,
            )
        replacements += bool(replaced_by)
        source_sop = (sop_class, str(dataset.get("SOPInstanceUID", "")))
        for keyword in STALE_PIXEL_ATTRIBUTES:
            if keyword in dataset:
                delattr(dataset, keyword)
        if phi == "remove":
            remove_phi(dataset, new_uid, patient_id)
        else:
            reference = pydicom.Dataset()
            reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source_sop
            dataset.SourceImageSequence = [reference]
        dataset.SOPClassUID = sop_class
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.SOPInstanceUID = generate_uid()
        image_type = list(dataset.get("ImageType", []) or [])
        dataset.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
        dataset.SeriesDescription = description.short
        dataset.DerivationDescription = description.full
        dataset.ImageComments = MANIPULATED_NOTE
        dataset.SamplesPerPixel = 1
        if dataset.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
            dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.PixelRepresentation = 1 if encoding.signed else 0
        dataset.RescaleSlope = _ds_text(encoding.slope)
        dataset.RescaleIntercept = _ds_text(encoding.intercept)
        dataset.add_new(
            0x7FE00010, "OW", encoding.stored[k].astype(encoding.stored.dtype.newbyteorder("<")).tobytes()
        )
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        dataset.file_meta = meta
        target = out_folder / f"IM{k + 1:05d}.dcm"
        if pydicom_3:
            pydicom.dcmwrite(target, dataset, enforce_file_format=True)
        else:  # pydicom 2 (as in older Slicer releases) takes the encoding from the dataset
            dataset.is_little_endian, dataset.is_implicit_VR = True, False
            pydicom.dcmwrite(target, dataset, write_like_original=False)
        if on_slice:
            on_slice(k + 1, depth)
    return {
        "folder": DICOM_FOLDER,
        "slices": depth,
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "series_description": description.short,
        "sop_class_uid": sop_class,
        "sop_class_replaced_in_slices": replacements,
        "stored_as": "int16" if encoding.signed else "uint16",
        "rescale_slope": encoding.slope,
        "rescale_intercept": encoding.intercept,
        "exact": encoding.max_error_hu == 0.0,
        "max_abs_error_hu": encoding.max_error_hu,
    }


# --- the bundle -------------------------------------------------------------------------------------------


def _resolve(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _default_dicom_source(case: CaseFolder, provenance: dict) -> Path:
    recorded = (provenance.get("input") or {}).get("path")
    source = Path(recorded) if recorded else None
    if source is None or source.is_file() or (not source.exists() and full_suffix(source) in IMAGE_SUFFIXES):
        raise InputError(
            f"--format dicom needs a DICOM source: the input of {case.root} ({recorded}) was not a DICOM "
            "folder, so give the series it was made from with --dicom-source DIR."
        )
    if not source.exists():
        raise InputError(
            f"--format dicom: the DICOM folder {source} recorded in {case.provenance} no longer exists; "
            "give it with --dicom-source DIR."
        )
    if sha256_file(source) != (provenance.get("input") or {}).get("sha256"):
        raise InputError(
            f"--format dicom: the DICOM folder {source} changed since the attack (SHA-256 differs from "
            f"{case.provenance}); give the original series with --dicom-source DIR."
        )
    return source


def _read_case_files(case: CaseFolder, phi: str) -> tuple[dict, dict, sitk.Image]:
    """(provenance, metrics, adversarial volume) after reading every file the bundle will hold.

    Each label map (NIfTI and .seg.nrrd, through the engine's readers) must be one on the adversarial
    volume's grid, the JSON files objects, and the preview (copied with --phi keep) a readable PNG; anything
    else is an InputError naming the file, before anything is written.
    """
    documents = []
    for path in (case.provenance, case.metrics):
        try:
            documents.append(json.loads(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, ValueError) as error:
            raise InputError(f"{path} is not valid JSON ({error}).") from None
        if not isinstance(documents[-1], dict):
            raise InputError(f"{path} is not a JSON object.")
    adversarial = read_image(case.adversarial)
    for path in (case.pred_clean_nifti, case.pred_clean_seg, case.pred_adv_nifti, case.pred_adv_seg):
        if not same_grid(read_label(path, allow_empty=True), adversarial, GRID_TOLERANCE_MM):
            raise InputError(
                f"{path} is not on the grid of {case.adversarial} (size, spacing, origin, direction)."
            )
    if phi == "keep" and case.preview.is_file():
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(case.preview) as png:
                png.verify()
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as error:
            raise InputError(f"{case.preview} is not a readable PNG image ({error}).") from None
    return documents[0], documents[1], adversarial


def _check_same_grid(adversarial: sitk.Image, source: sitk.Image, folder: Path) -> None:
    same = (
        adversarial.GetSize() == source.GetSize()
        and np.allclose(adversarial.GetSpacing(), source.GetSpacing(), rtol=0, atol=GRID_TOLERANCE_MM)
        and np.allclose(adversarial.GetOrigin(), source.GetOrigin(), rtol=0, atol=GRID_TOLERANCE_MM)
        and np.allclose(adversarial.GetDirection(), source.GetDirection(), rtol=0, atol=1e-5)
    )
    if not same:
        raise InputError(
            f"--dicom-source {folder} is not on the attacked volume's grid (size {source.GetSize()} vs "
            f"{adversarial.GetSize()}, or other origin/spacing/direction); give the series the case was made from."
        )


def without_local_paths(document: dict) -> dict:
    """A copy of a case's provenance or metrics without the command line and local paths (folder names often
    name the patient): every text holding a path separator or starting with "~" becomes REMOVED, except
    units ("k/255", "on/off"); hashes, parameters and numbers stay."""

    def clean(value, key: str | None = None):
        if isinstance(value, dict):
            return {name: clean(item, name) for name, item in value.items()}
        if isinstance(value, list):
            return [clean(item, key) for item in value]
        if isinstance(value, str) and key != "unit":
            if key == "command_line" or "/" in value or "\\" in value or value.startswith("~"):
                return REMOVED
        return value

    return clean(document)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _readme(provenance: dict, metrics: dict, files: list[str], phi: str, dicom: dict | None) -> str:
    attack = provenance.get("attack") or {}
    parameters = attack.get("parameters") or {}
    description = describe_attack(provenance)
    model = provenance.get("model") or {}
    perturbation = metrics.get("perturbation") or {}
    lines = [
        "AdvSegAttack case bundle",
        "========================",
        "",
        "This folder holds a CT volume that was deliberately manipulated by an adversarial attack on an organ",
        "segmentation model, together with the model's segmentations of the clean and of the attacked volume.",
        "It is research material about model robustness: NOT FOR CLINICAL USE.",
        "",
        f"Made by:    AdvSegAttack {provenance.get('version')} (bundle written by AdvSegAttack {__version__})",
        f"Attack:     {attack.get('name')} (preset {attack.get('preset') or 'none'}), "
        f"{'targeted' if provenance.get('targeted') else 'untargeted'}, organs: "
        f"{', '.join(provenance.get('organs') or {}) or 'all'}, region {(provenance.get('region') or {}).get('mode')}",
        f"Summary:    {description.full}",
        "Parameters:",
        *[
            f"  {name} = {_parameter_text(entry.get('value'))}"
            + (f"  [{entry['unit']}]" if entry.get("unit") else "")
            for name, entry in parameters.items()
        ],
        f"Model:      {model.get('name')} (weights SHA-256 {model.get('weights_sha256')})",
        f"Target:     {provenance.get('target')}; seed {provenance.get('seed')}; device {provenance.get('device')}",
        f"Time:       {provenance.get('start_time')} to {provenance.get('end_time')}",
        f"Source:     SHA-256 {(provenance.get('input') or {}).get('sha256')} (of the attack's input file, or of every file of its DICOM folder)",
        "",
        f"Effect (Dice against {metrics.get('reference')}, background excluded):",
        f"  mean Dice clean {_fmt(metrics.get('mean_dice_clean'))} -> attacked {_fmt(metrics.get('mean_dice_adv'))}"
        f" (over {metrics.get('mean_dice_clean_organs', '?')} organs of the reference)",
        f"  SSIM 3-D {_fmt(perturbation.get('ssim_3d'), 4)}, PSNR {_fmt(perturbation.get('psnr_db'), 1)} dB, "
        f"L-inf {_fmt(perturbation.get('linf_hu'), 1)} HU",
        "",
        "Files (manifest.json lists the SHA-256 of each):",
    ]
    meaning = {
        "adversarial.nii.gz": "attacked CT in HU; grid, geometry and pixel type of the source",
        "adversarial.nrrd": "the same volume as NRRD",
        "pred_clean.nii.gz": "model labels of the clean CT (label map)",
        "pred_clean.nrrd": "the same labels as NRRD",
        "pred_clean.seg.nrrd": "the same labels as a Slicer segmentation (names, colours)",
        "pred_adv.nii.gz": "model labels of the attacked CT (label map)",
        "pred_adv.nrrd": "the same labels as NRRD",
        "pred_adv.seg.nrrd": "the same labels as a Slicer segmentation (names, colours)",
        "region.nii.gz": "where the attack could change voxels (1; 0 elsewhere: bit-identical to the source)",
        "region.nrrd": "the same mask as NRRD",
        "metrics.json": "per-organ Dice/HD95 clean vs attacked, perturbation (SSIM, PSNR, L-inf HU)",
        "provenance.json": "how the case was made: tool, model, attack, every parameter with its unit",
        "preview.png": "axial/coronal preview of clean vs attacked with both segmentations",
    }
    lines += [f"  {name:<22} {meaning[name]}" for name in files if name in meaning]
    if dicom:
        lines += [
            f"  {DICOM_FOLDER + '/':<22} one DICOM series of the attacked CT ({dicom['slices']} slices)",
            "",
            "DICOM series: each slice copies the tags of the matching source slice (so its position and",
            "orientation are the source's) with new Study, Series and SOP Instance UIDs, ImageType",
            "DERIVED\\SECONDARY, SeriesDescription and DerivationDescription naming the attack, and",
            f"{dicom['stored_as']} pixels with RescaleSlope {dicom['rescale_slope']:g} and RescaleIntercept "
            f"{dicom['rescale_intercept']:g}: "
            + (
                "re-reading gives back exactly the HU of adversarial.*."
                if dicom["exact"]
                else f"HU rounded to the source's rescale step (at most {dicom['max_abs_error_hu']:g} HU)."
            ),
        ]
    lines += ["", "Patient information (--phi " + phi + "):"]
    if phi == "remove":
        lines += [
            "  DICOM: PatientName is ANONYMIZED, PatientID a random ADVSEG-... value; names, dates, institution,",
            "  accession/study IDs, descriptions, private tags, sequences and overlays are removed or emptied",
            "  (DICOM PS3.15 basic-profile actions for those attributes), all UIDs are new, PatientIdentityRemoved",
            "  is YES. provenance.json has no local paths or command line; preview.png is left out.",
            "  Not checked: text burned into the pixels, and faces or other features recognisable in the voxels.",
        ]
    else:
        lines += [
            "  Kept: the DICOM series carries the source's patient, study and institution attributes and private",
            "  tags, and provenance.json the local paths. Share this bundle only where that is allowed.",
        ]
    lines += [
        "",
        "Open: in 3D Slicer drag the .nii.gz/.nrrd/.seg.nrrd files into the window; import the dicom folder",
        "with the DICOM module. Check a file: its `sha256sum` must equal the value in manifest.json.",
        "",
    ]
    return "\n".join(lines)


def export_case(
    case_dir: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = ("nifti",),
    dicom_source: str | Path | None = None,
    phi: str = "remove",
    reporter: Reporter | None = None,
) -> dict:
    """Write a bundle (new folder, staged then renamed atomically; refuses an existing non-empty out_dir and any
    path that is a source file) and return its manifest dict (files with sha256).

    `formats`: any of "nifti", "nrrd" (volume and label maps) and "dicom" (the attacked volume as a DICOM series
    from `dicom_source`, by default the case's input when that was a DICOM folder). `phi`: "remove" or "keep"
    (see `remove_phi` and the module docstring for what is removed).
    """
    formats = tuple(dict.fromkeys(formats))
    if not formats or any(f not in EXPORT_FORMATS for f in formats):
        raise InputError(
            f"--format {' '.join(formats) or '(none)'}: give one or more of {', '.join(EXPORT_FORMATS)}."
        )
    if phi not in PHI_OPTIONS:
        raise InputError(f"--phi {phi!r} is not one of {', '.join(PHI_OPTIONS)}.")
    if dicom_source is not None and "dicom" not in formats:
        raise InputError(
            "--dicom-source is only used with --format dicom; add dicom to --format or leave it out."
        )
    case = read_case(case_dir)
    provenance, metrics, adversarial = _read_case_files(case, phi)
    out = Path(out_dir)
    protected = {_resolve(case.root): "the case folder"}
    for key, what in (("input", "the attack's input"), ("reference_label", "the reference label")):
        recorded = (provenance.get(key) or {}).get("path") if isinstance(provenance.get(key), dict) else None
        if recorded:
            protected.setdefault(_resolve(recorded), what)
    if dicom_source is not None:
        if not Path(dicom_source).is_dir():
            raise InputError(f"--dicom-source {dicom_source} is not a folder.")
        protected.setdefault(_resolve(dicom_source), "the DICOM source")
    inputs = [(path, what) for path, what in protected.items()]
    with claim_output_folder(out, inputs, writes=None, must_be_new=True):
        return _write_bundle(
            case, provenance, metrics, adversarial, out, formats, dicom_source, phi, reporter
        )


def _write_bundle(
    case: CaseFolder,
    provenance: dict,
    metrics: dict,
    adversarial: sitk.Image,
    out: Path,
    formats: Sequence[str],
    dicom_source: str | Path | None,
    phi: str,
    reporter: Reporter | None,
) -> dict:
    """The body of `export_case` once its output folder is checked and locked."""
    source_folder = None
    if "dicom" in formats:
        source_folder = (
            Path(dicom_source) if dicom_source is not None else _default_dicom_source(case, provenance)
        )
    source_image = read_image(source_folder) if source_folder is not None else None
    if source_folder is not None:
        _check_same_grid(adversarial, source_image, source_folder)

    volume_suffixes = [s for f, s in (("nifti", ".nii.gz"), ("nrrd", ".nrrd")) if f in formats]
    copies = [case.metrics, case.provenance] if phi == "keep" else []
    if phi == "remove":  # what the bundle says about the case, here and in README.txt and the DICOM series
        provenance, metrics = without_local_paths(provenance), without_local_paths(metrics)
    if phi == "keep" and case.preview.is_file():
        copies.append(case.preview)
    volumes = [
        (ADVERSARIAL.removesuffix(".nii.gz"), case.adversarial),
        (PRED_CLEAN, case.pred_clean_nifti),
        (PRED_ADV, case.pred_adv_nifti),
    ]
    if case.region in case.optional():
        volumes.append((REGION.removesuffix(".nii.gz"), case.region))
    total = 1 + len(volumes) * len(volume_suffixes) + 2 + (adversarial.GetDepth() if source_folder else 0)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if reporter:
            reporter.progress("export", done, total)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(out, "export")
    try:
        for path in copies:
            shutil.copyfile(path, staging / path.name)
        if phi == "remove":
            write_json_atomic(staging / case.provenance.name, provenance)
            write_json_atomic(staging / case.metrics.name, metrics)
        step()
        for stem, nifti in volumes:
            for suffix in volume_suffixes:
                if suffix == ".nii.gz":
                    shutil.copyfile(nifti, staging / f"{stem}.nii.gz")
                else:
                    write_image(
                        adversarial if nifti == case.adversarial else sitk.ReadImage(str(nifti)),
                        staging / f"{stem}{suffix}",
                    )
                step()
        for seg in (case.pred_clean_seg, case.pred_adv_seg):
            shutil.copyfile(seg, staging / seg.name)
            step()
        dicom = None
        if source_folder is not None:
            dicom = write_dicom_series(
                adversarial,
                source_folder,
                staging / DICOM_FOLDER,
                describe_attack(provenance),
                phi,
                on_slice=lambda k, n: step(),
                source_image=source_image,
            )
            dicom["source_sha256"] = sha256_file(source_folder)
            dicom["source_matches_provenance"] = dicom["source_sha256"] == (
                provenance.get("input") or {}
            ).get("sha256")
            if phi == "keep":
                dicom["source_folder"] = str(_resolve(source_folder))
        names = sorted(p.name for p in staging.iterdir() if p.is_file())
        write_text_atomic(staging / README, _readme(provenance, metrics, names, phi, dicom))
        files = {
            path.relative_to(staging).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        manifest = {
            "tool": "AdvSegAttack",
            "version": __version__,
            "kind": "case bundle",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "case": str(_resolve(case.root)) if phi == "keep" else REMOVED,
            "formats": list(formats),
            "phi": phi,
            "attack": describe_attack(provenance).full,
            "dicom": dicom,
            "algorithm": "sha256",
            "files": files,
        }
        write_json_atomic(staging / MANIFEST, manifest)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
