"""Organ names: the BTCV / Synapse 13-organ label map (14 classes with background), its display colours
(RGB 0-255), and the one way organ names are compared (`normalise_organ_name`). No torch, no numpy."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from ..errors import InputError

BTCV_LABEL_NAMES: tuple[str, ...] = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal and splenic veins",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)

# Colours after Slicer's GenericAnatomyColors, so segments look familiar to Slicer users.
BTCV_LABEL_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (157, 108, 162),
    (185, 102, 83),
    (212, 126, 151),
    (139, 150, 98),
    (211, 171, 143),
    (221, 130, 101),
    (216, 132, 105),
    (224, 97, 76),
    (0, 151, 206),
    (0, 112, 165),
    (249, 180, 111),
    (244, 217, 154),
    (220, 200, 120),
)


# TotalSegmentator's (and other nnU-Net datasets') names for BTCV organs, in normalised form.
_SYNONYMS = {
    "portal vein and splenic vein": "portal and splenic veins",
    "gall bladder": "gallbladder",
}


def normalise_organ_name(name: str) -> str:
    """The form organ names are compared in: case-insensitive, with '_', '-' and runs of spaces as one
    space (`Right_Kidney`, `right-kidney` and `right  kidney` are all `right kidney`); a side at the end moves
    to the front (TotalSegmentator's `kidney_left`, `adrenal_gland_right` are `left kidney`, `right adrenal
    gland`); TotalSegmentator's `portal_vein_and_splenic_vein` is `portal and splenic veins`."""
    words = str(name).replace("_", " ").replace("-", " ").lower().split()
    if len(words) > 1 and words[-1] in ("left", "right"):
        words = [words[-1], *words[:-1]]
    joined = " ".join(words)
    return _SYNONYMS.get(joined, joined)


def find_organ(name: str, label_names: Sequence[str]) -> int | None:
    """Label value of the organ called `name` (compared by `normalise_organ_name`); None when no organ of
    `label_names` (index = label value) has that name. Background (value 0) never matches."""
    wanted = normalise_organ_name(name)
    for value, label_name in enumerate(label_names):
        if value and normalise_organ_name(label_name) == wanted:
            return value
    return None


def organ_index(name_or_value: str | int, label_names: Sequence[str]) -> int:
    """Label value of an organ given by name (see `normalise_organ_name`) or by its integer value (1 and up);
    InputError naming --organ when the model has no such organ."""
    if isinstance(name_or_value, int) or str(name_or_value).strip().isdigit():
        value = int(name_or_value)
        if 0 < value < len(label_names):
            return value
        raise InputError(
            f"--organ {name_or_value} is not a label value of this model (1..{len(label_names) - 1})."
        )
    value = find_organ(name_or_value, label_names)
    if value is None:
        known = ", ".join(n.replace(" ", "_") for n in label_names[1:])
        raise InputError(f"--organ {name_or_value!r} is not an organ of this model; known organs: {known}.")
    return value


def require_organs_present(organs: Mapping[str, int], present: Collection[int], where: str) -> None:
    """InputError for the first organ (name as the user gave it -> label value) whose value `present` (the
    label values of a label map) lacks: an attack on an organ that is not there has nothing to attack."""
    for name, value in organs.items():
        if value not in present:
            raise InputError(f"--organ {name} is not present in {where}; nothing to attack.")
