"""BTCV / Synapse 13-organ label map (14 classes with background) and display colours (RGB 0-255)."""

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


def organ_index(name_or_index: str | int, label_names: tuple[str, ...] | list[str]) -> int:
    """Label value of an organ given by name (case-insensitive, '_' or ' ') or by its integer value."""
    from .errors import InputError

    if isinstance(name_or_index, int) or str(name_or_index).isdigit():
        value = int(name_or_index)
        if 0 < value < len(label_names):
            return value
        raise InputError(
            f"--organ {name_or_index} is not a label value of this model (1..{len(label_names) - 1})."
        )
    wanted = str(name_or_index).strip().lower().replace("_", " ")
    for value, name in enumerate(label_names):
        if value and name.lower() == wanted:
            return value
    known = ", ".join(n.replace(" ", "_") for n in label_names[1:])
    raise InputError(f"--organ {name_or_index!r} is not an organ of this model; known organs: {known}.")
