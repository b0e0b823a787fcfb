"""The cases of a dataset: a MONAI decathlon-style datalist JSON or plain `imagesTr`/`labelsTr` folders.

A datalist (as MSD's `dataset.json` or the SAA code's `dataset_synapse_18_12.json`) holds split lists
(`training`, `validation`, `test`, or any other name) of `{"image": ..., "label": ...}` paths relative
to a data folder; it is read with MONAI's `load_decathlon_datalist`. A plain folder holds `imagesTr`
(+ `labelsTr`) for the `training` split and `imagesTs` (+ `labelsTs`) for `test`; a label has the
image's file name, or the nnU-Net name without the `_0000` channel suffix.

A case whose files are missing is still listed, with `problem` set to one sentence: the dataset run
marks it failed and goes on. A datalist that cannot be read at all is an `InputError`, and so is one with an
item that is empty, names the data folder itself or a path outside it (after `..` and absolute paths are
resolved), or gives two cases the same name (also when they differ only in upper/lower case). Case names
are never empty, hidden (leading ".") or more than one path component: a dataset run deletes only
`cases/<name>` folders (see `safe_case_name`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..volumes.io import IMAGE_SUFFIXES, full_suffix

FOLDER_SPLITS = {"training": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}


@dataclass(frozen=True)
class Case:
    """One case of a dataset: its name (unique in the split), image, optional label, and what is wrong."""

    name: str
    image: Path
    label: Path | None
    problem: str | None = None


def case_name(image: Path) -> str:
    """The case name of an image path: its file name without the image suffix (a DICOM folder: its name)."""
    suffix = full_suffix(image)
    return image.name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else image.name


def safe_case_name(name: str) -> bool:
    """True for a name that is one visible path component: not empty, no separator, no leading "."."""
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")


def _missing(case_name_: str, image: Path, label: Path | None) -> str | None:
    if not image.exists():
        return f"case {case_name_}: image {image} does not exist."
    if label is not None and not label.exists():
        return f"case {case_name_}: label {label} does not exist."
    return None


def _check_names(cases: list[Case], source: str) -> list[Case]:
    """InputError unless every case name is safe and unique (ignoring case: some file systems do)."""
    seen: dict[str, Path] = {}
    for case in cases:
        if not safe_case_name(case.name):
            raise InputError(
                f"{source}: the image {case.image} gives the case name {case.name!r}; a case name must be a"
                " file name that is not empty and does not start with '.'."
            )
        if case.name.casefold() in seen:
            raise InputError(
                f"{source} names two cases {case.name!r} ({seen[case.name.casefold()]} and {case.image});"
                " case names (image file names without suffix) must be unique."
            )
        seen[case.name.casefold()] = case.image
    return cases


def _inside(path: str, base: Path) -> bool:
    """True when `path` lies strictly inside `base` (lexically, after `..` and absolute paths are resolved)."""
    path, base_text = os.path.abspath(path), os.path.abspath(base)
    return os.path.commonpath([path, base_text]) == base_text and path != base_text


def read_datalist(datalist: str | Path, data_dir: str | Path | None, split: str) -> list[Case]:
    """The cases of `split` in a decathlon-style datalist; paths relative to `data_dir` (default: its folder)."""
    from monai.data import load_decathlon_datalist

    datalist = Path(datalist)
    if not datalist.is_file():
        raise InputError(f"--datalist {datalist} does not exist.")
    try:
        content = json.loads(datalist.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"--datalist {datalist} is not valid JSON ({error}).") from None
    if not isinstance(content, dict):
        raise InputError(f"--datalist {datalist} is not a JSON object of split lists.")
    if split not in content:
        splits = [k for k, v in content.items() if isinstance(v, list)]
        raise InputError(
            f"--datalist {datalist} has no split {split!r} (it has: {', '.join(splits) or 'none'})."
        )
    if not isinstance(content[split], list) or not content[split]:
        raise InputError(f"--datalist {datalist}: split {split!r} is not a non-empty list of cases.")
    base = Path(data_dir) if data_dir is not None else datalist.parent
    if not base.is_dir():
        raise InputError(f"--data-dir {base} is not a folder.")
    try:
        items = load_decathlon_datalist(datalist, is_segmentation=True, data_list_key=split, base_dir=base)
    except (TypeError, ValueError) as error:
        raise InputError(f"--datalist {datalist}, split {split!r}: {error}") from None
    cases = []
    for index, (item, raw) in enumerate(zip(items, content[split], strict=True)):
        where = f"--datalist {datalist}, split {split!r}, item {index}"
        image, label = item.get("image"), item.get("label")
        if not isinstance(image, str):
            raise InputError(f"{where}: 'image' must be one path, got {image!r}.")
        if label is not None and not isinstance(label, str):
            raise InputError(f"{where}: 'label' must be one path, got {label!r}.")
        for key, path in (("image", image), ("label", label)):
            if path is not None and not _inside(path, base):
                given = raw.get(key) if isinstance(raw, dict) else raw
                raise InputError(
                    f"{where}: {key} {given!r} is not a path inside the data folder {base} (--data-dir)."
                )
        image_path, label_path = Path(image), Path(label) if label is not None else None
        name = case_name(image_path)
        cases.append(Case(name, image_path, label_path, _missing(name, image_path, label_path)))
    return _check_names(cases, f"--datalist {datalist} split {split!r}")


def _label_for(image: Path, labels_dir: Path) -> Path:
    same = labels_dir / image.name
    name = case_name(image)
    if same.exists() or not name.endswith("_0000"):
        return same
    return labels_dir / (name[: -len("_0000")] + full_suffix(image))


def read_folder(data_dir: str | Path, split: str = "training") -> list[Case]:
    """The cases of a plain dataset folder: `imagesTr`/`labelsTr` (split `training`) or `imagesTs`/`labelsTs`.

    Without a labels folder the cases have no label (the attack targets the clean prediction); with one,
    a missing label makes that case fail.
    """
    data_dir = Path(data_dir)
    if split not in FOLDER_SPLITS:
        raise InputError(
            f"--split {split!r} needs a --datalist; a plain folder has the splits {', '.join(FOLDER_SPLITS)}."
        )
    images_name, labels_name = FOLDER_SPLITS[split]
    images_dir, labels_dir = data_dir / images_name, data_dir / labels_name
    if not images_dir.is_dir():
        raise InputError(f"--data-dir {data_dir} has no {images_name} folder (and no --datalist was given).")
    images = sorted(
        p for p in images_dir.iterdir() if not p.name.startswith(".") and full_suffix(p) in IMAGE_SUFFIXES
    )
    if not images:
        raise InputError(f"{images_dir} holds no image (.nii.gz, .nii, .nrrd, .mha).")
    cases = []
    for image in images:
        label = _label_for(image, labels_dir) if labels_dir.is_dir() else None
        name = case_name(image)
        cases.append(Case(name, image, label, _missing(name, image, label)))
    return _check_names(cases, str(images_dir))


def load_cases(data_dir: str | Path | None, datalist: str | Path | None, split: str | None) -> list[Case]:
    """Cases from `--datalist` (split default `validation`) or else the plain folder `--data-dir`."""
    if datalist is not None:
        return read_datalist(datalist, data_dir, split or "validation")
    if data_dir is None:
        raise InputError("give --data-dir (a folder with imagesTr/labelsTr) or --datalist.")
    return read_folder(data_dir, split or "training")


def single_case(image: str | Path, label: str | Path | None) -> Case:
    """`--image` (and `--label`) as the one case of a run (`sweep`, `transfer`): named after the image file;
    a missing file is an InputError naming the option (not a failed case)."""
    image = Path(image)
    label = Path(label) if label is not None else None
    for path, option in ((image, "--image"), (label, "--label")):
        if path is not None and not path.exists():
            raise InputError(f"{option} {path} does not exist.")
    name = case_name(image)
    return Case(name if safe_case_name(name) else "image", image, label)
