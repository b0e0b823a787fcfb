"""What one attack is asked to do (`AttackRequest`), and the one place a request is validated (no torch).

`validate_request` checks everything that does not depend on the volume, before any file is read (a dataset
run calls it once, before any case): the attack's parameters against the catalogue (types, ranges, presets),
--organ names against the model's labels, what the attack needs (the texture attack: exactly one --organ,
no --region, no --targeted), --region and --targeted need --organ, --dilation-mm. Whether the organs are in
the target is checked per volume (`models.labels.require_organs_present`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..attacks.catalogue import AttackConfig, attack_config, attack_entry
from ..errors import InputError
from ..models.labels import organ_index

REGIONS = ("whole", "organ", "bbox")


@dataclass
class AttackRequest:
    """Everything one `advseg attack` needs; parameters use catalogue names (None = not given)."""

    image: Path
    model: str
    out: Path
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    label: Path | None = None
    card: str | None = None
    organs: Sequence[str] = ()
    region: str = "whole"
    dilation_mm: float = 10.0
    targeted: bool = False
    seed: int = 0
    device: Any = "cpu"  # a torch.device or its name
    sw_batch_size: int = 4
    preview: bool = True
    command_line: str = ""
    trust_torchscript: bool = False  # load a TorchScript --model (it is code; see networks.load_model)
    # an nnU-Net results folder's choices: configuration, folds, checkpoint ("final"/"best"), tta (bool)
    nnunet: dict | None = None


def validate_request(
    request: AttackRequest, label_names: Sequence[str]
) -> tuple[AttackConfig, dict[str, int]]:
    """(the attack's validated parameters, {--organ name: label value}) of a request for a model with
    `label_names`; InputError (one sentence naming the option) for anything that does not fit."""
    config = attack_config(request.attack, request.preset, **request.params)
    entry = attack_entry(request.attack)
    organs = {name: organ_index(name, label_names) for name in request.organs}
    if request.region not in REGIONS:
        raise InputError(f"--region {request.region!r} is not one of {', '.join(REGIONS)}.")
    if entry.needs_organ and len(organs) != 1:
        raise InputError(
            f"--attack {entry.name} needs exactly one --organ (the organ whose texture changes), "
            f"got {len(organs)}."
        )
    if (request.region != "whole" and not entry.supports_region) or (
        request.targeted and not entry.supports_targeted
    ):
        raise InputError(
            f"--region and --targeted do not apply to --attack {entry.name}: it always changes only the "
            "--organ (feathered by --feather-mm)."
        )
    if request.region != "whole" and not organs:
        raise InputError(f"--region {request.region} needs --organ.")
    if request.targeted and not organs:
        raise InputError("--targeted needs --organ: it removes the chosen organs (sets them to background).")
    if not (math.isfinite(request.dilation_mm) and request.dilation_mm >= 0):
        raise InputError(f"--dilation-mm must be >= 0, got {request.dilation_mm}.")
    return config, organs
