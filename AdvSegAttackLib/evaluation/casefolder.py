"""The case folder: what `advseg attack` writes, what `export`, sessions and datasets read.

Every reader of a case folder goes through `read_case`; nobody globs the folder on their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..volumes.nofollow import inside

ADVERSARIAL = "adversarial.nii.gz"
PRED_CLEAN = "pred_clean"
PRED_ADV = "pred_adv"
METRICS = "metrics.json"
PROVENANCE = "provenance.json"
PREVIEW = "preview.png"
REGION = "region.nii.gz"
#: What `attack` writes into a case folder (glob patterns of names), for the output-folder check.
CASE_FILES = (ADVERSARIAL, f"{PRED_CLEAN}.*", f"{PRED_ADV}.*", METRICS, PROVENANCE, PREVIEW, REGION)


@dataclass(frozen=True)
class CaseFolder:
    """Paths of one case folder (all inside `root`)."""

    root: Path

    @property
    def adversarial(self) -> Path:
        return self.root / ADVERSARIAL

    @property
    def pred_clean_nifti(self) -> Path:
        return self.root / f"{PRED_CLEAN}.nii.gz"

    @property
    def pred_clean_seg(self) -> Path:
        return self.root / f"{PRED_CLEAN}.seg.nrrd"

    @property
    def pred_adv_nifti(self) -> Path:
        return self.root / f"{PRED_ADV}.nii.gz"

    @property
    def pred_adv_seg(self) -> Path:
        return self.root / f"{PRED_ADV}.seg.nrrd"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def provenance(self) -> Path:
        return self.root / PROVENANCE

    @property
    def preview(self) -> Path:
        return self.root / PREVIEW

    @property
    def region(self) -> Path:
        """The attack region on the source grid (uint8 0/1); written whenever the region is not `whole`
        (older case folders lack it)."""
        return self.root / REGION

    def required(self) -> list[Path]:
        """Files every complete case folder has (see `optional` for the others)."""
        return [
            self.adversarial,
            self.pred_clean_nifti,
            self.pred_clean_seg,
            self.pred_adv_nifti,
            self.pred_adv_seg,
            self.metrics,
            self.provenance,
        ]

    def optional(self) -> list[Path]:
        """Files a case folder may have, those of them that exist: the preview and the region mask."""
        return [path for path in (self.preview, self.region) if path.is_file()]

    def load_metrics(self) -> dict:
        return json.loads(self.metrics.read_text(encoding="utf-8"))

    def load_provenance(self) -> dict:
        return json.loads(self.provenance.read_text(encoding="utf-8"))


def read_case(root: str | Path) -> CaseFolder:
    """A complete case folder at `root`, or InputError naming the first missing file.

    Its files must be regular files, not symbolic links, FIFOs or devices (`nofollow.inside`); `root` itself
    may be a link.
    """
    case = CaseFolder(Path(root))
    if not case.root.is_dir():
        raise InputError(f"{case.root} is not a case folder (no such directory).")
    for path in case.required():
        if not inside(case.root, path).is_file():
            raise InputError(f"{case.root} is not a complete case folder: {path.name} is missing.")
    inside(case.root, case.preview)  # optional, but never a link either
    return case
