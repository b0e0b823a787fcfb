"""One attack, end to end: read → model space → attack → write in HU on the source grid → segment the
*written* file → metrics → case folder (see `casefolder`) with provenance.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..attacks.base import make_attack
from ..errors import InputError
from ..evaluation.casefolder import ADVERSARIAL, METRICS, PRED_ADV, PRED_CLEAN, PREVIEW, PROVENANCE, REGION
from ..evaluation.metrics import (
    PERTURBATION_PARTS,
    bounding_box,
    metrics_document,
    organ_metrics,
    perturbation_report,
)
from ..models.cards import ModelCard, weights_path
from ..models.labels import organ_index
from ..models.networks import load_model
from ..models.segment import predict_labels
from ..progress import Reporter, StageCounter
from ..volumes.io import (
    read_image,
    read_label,
    sha256_file,
    staged_output_dir,
    write_image,
    write_json_atomic,
    write_segmentation,
)
from ..volumes.preprocess import to_model_space

REGIONS = ("whole", "organ", "bbox")


@dataclass
class AttackRequest:
    """Everything one `advseg attack` needs; parameters use attack config names (None = default)."""

    image: Path
    model: str
    out: Path
    attack: str
    params: dict = field(default_factory=dict)
    preset: str | None = None
    label: Path | None = None
    card: str | None = None
    organs: Sequence[str] = ()
    region: str = "whole"
    dilation_mm: float = 10.0
    targeted: bool = False
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sw_batch_size: int = 4
    preview: bool = True
    command_line: str = ""
    trust_torchscript: bool = False  # load a TorchScript --model (it is code; see cards.load_model)


def source_region(
    labels: sitk.Image, organs: Sequence[int], mode: str, dilation_mm: float
) -> np.ndarray | None:
    """The attack region on the source grid, as a bool SimpleITK (z, y, x) array; None for the whole volume.

    `labels` is the target on the source grid (the reference label, or the clean prediction mapped to the
    source). "organ": the organs grown by `dilation_mm` (mm, Euclidean, on the source voxels); "bbox": the
    source-index box of that.
    """
    from scipy.ndimage import distance_transform_edt

    if mode == "whole":
        return None
    if mode not in REGIONS:
        raise InputError(f"--region {mode!r} is not one of {', '.join(REGIONS)}.")
    if not organs:
        raise InputError(f"--region {mode} needs --organ.")
    if not dilation_mm >= 0:
        raise InputError(f"--dilation-mm must be >= 0, got {dilation_mm}.")
    mask = np.isin(sitk.GetArrayFromImage(labels), list(organs))
    box = bounding_box(mask)
    if box is None:
        raise InputError(f"--region {mode}: the --organ has no voxel on the source grid; nothing to attack.")
    if dilation_mm > 0:  # the distance transform on the organ's box grown by the dilation, not the volume
        spacing = np.array(labels.GetSpacing()[::-1])
        margin = np.ceil(dilation_mm / spacing).astype(int) + 1
        box = tuple(
            slice(max(s.start - m, 0), min(s.stop + m, n))
            for s, m, n in zip(box, margin, mask.shape, strict=True)
        )
        grown = distance_transform_edt(~mask[box], sampling=spacing) <= dilation_mm
        mask = np.zeros_like(mask)
        mask[box] = grown
        box = bounding_box(mask)
    if mode == "bbox":
        mask = np.zeros_like(mask)
        mask[box] = True
    return mask


def _organ_values(
    names: Sequence[str], label_names: Sequence[str], target: torch.Tensor, source: str
) -> list[int]:
    values = [organ_index(name, label_names) for name in names]
    present = set(torch.unique(target).tolist())
    for name, value in zip(names, values, strict=True):
        if value not in present:
            raise InputError(f"--organ {name} is not present in the target ({source}); nothing to attack.")
    return values


def _check_source_space_request(request: AttackRequest) -> None:
    """A source-grid attack changes one organ: it needs exactly one --organ and no --region/--targeted."""
    if len(request.organs) != 1:
        raise InputError(
            f"--attack {request.attack} needs exactly one --organ (the organ whose texture changes), "
            f"got {len(request.organs)}."
        )
    if request.region != "whole" or request.targeted:
        raise InputError(
            f"--region and --targeted do not apply to --attack {request.attack}: it always changes only "
            "the --organ (feathered by --feather-mm)."
        )


def _run_source_attack(
    attack, request: AttackRequest, source, labels_source, organ: int, card, network, space, target, reporter
) -> tuple[sitk.Image, dict]:
    """Run a `source_space` attack on `organ`; its search scores candidates with the model's organ Dice."""
    from ..evaluation.metrics import dice_per_label

    def organ_dice(adversarial_hu: np.ndarray) -> float:
        image = sitk.GetImageFromArray(adversarial_hu)
        image.CopyInformation(source)
        predicted = predict_labels(
            network,
            to_model_space(image, **card.preprocessing).tensor,
            card,
            request.device,
            request.sw_batch_size,
        )
        return dice_per_label(predicted.numpy(), target.numpy(), [organ])[organ]

    return attack.run_source(
        source,
        labels_source,
        organ,
        request.organs[0],
        organ_dice=organ_dice,
        window_hu=space.window,
        device=request.device,
        progress=lambda step, total: reporter.progress("attack", step, total),
    )


def _versions() -> dict:
    import monai

    return {
        "advsegattack": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "simpleitk": sitk.Version_VersionString(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _case_metrics(
    card: ModelCard,
    window_hu: tuple[float, float],
    source: sitk.Image,
    adversarial: sitk.Image,
    pred_clean: sitk.Image,
    pred_adv: sitk.Image,
    reference: sitk.Image | None,
    region_source: np.ndarray | None = None,
    kind: str = "attack",
    reporter: Reporter | None = None,
) -> dict:
    """metrics.json of a case (`kind` "attack" or "evaluate"): organs clean vs attacked, the perturbation, also
    on `region_source` (bool (z, y, x) on the source grid).

    The Dice is against the reference label when there is one, else against the clean prediction. With a
    `reporter`, the "metrics" stage counts the organs of each Dice/HD95 report and the parts of the
    perturbation report.
    """
    spacing = tuple(reversed(source.GetSpacing()))  # SimpleITK arrays are (z, y, x)
    clean_array, adv_array = sitk.GetArrayFromImage(pred_clean), sitk.GetArrayFromImage(pred_adv)
    reference_array = sitk.GetArrayFromImage(reference) if reference is not None else clean_array
    reports = 3 if reference is not None else 2
    organ_count = len(card.label_names) - 1
    units = reports * organ_count + PERTURBATION_PARTS * (2 if region_source is not None else 1)
    counter = StageCounter(reporter, "metrics", units) if reporter is not None else None

    def part():
        return counter.part() if counter is not None else None

    organs = organ_metrics(card.label_names, spacing, clean_array, reference_array, adv_array, part)
    perturbation = perturbation_report(
        sitk.GetArrayFromImage(source),
        sitk.GetArrayFromImage(adversarial),
        window_hu,
        region=region_source,
        progress=part(),
    )
    if counter is not None:
        counter.finish()
    return metrics_document(
        kind,
        card.name,
        source.GetSize(),
        source.GetSpacing(),
        "reference label" if reference is not None else "clean prediction",
        organs,
        perturbation,
    )


def check_request(request: AttackRequest, card: ModelCard):
    """Validate everything of an attack request that does not depend on the volume; returns the attack.

    Attack parameters, --organ names against the model's labels, --region/--targeted/--dilation-mm: a
    dataset run calls it once, before any case runs.
    """
    attack = make_attack(request.attack, request.preset, **request.params)  # validates parameters
    if attack.source_space:
        _check_source_space_request(request)
    for name in request.organs:
        organ_index(name, card.label_names)
    if request.region not in REGIONS:
        raise InputError(f"--region {request.region!r} is not one of {', '.join(REGIONS)}.")
    if request.region != "whole" and not request.organs:
        raise InputError(f"--region {request.region} needs --organ.")
    if request.targeted and not request.organs:
        raise InputError("--targeted needs --organ: it removes the chosen organs (sets them to background).")
    if request.dilation_mm < 0:
        raise InputError(f"--dilation-mm must be >= 0, got {request.dilation_mm}.")
    return attack


def run_attack(request: AttackRequest, reporter: Reporter) -> dict:
    """Run one attack and write its case folder into `request.out`; returns the metrics."""
    started = datetime.now(timezone.utc)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 3)
        clock = now

    make_attack(request.attack, request.preset, **request.params)  # bad parameters fail before any reading
    reporter.progress("load", 0, 1)
    source = read_image(request.image)
    card, network = load_model(
        request.model, card=request.card, device=request.device, trust_torchscript=request.trust_torchscript
    )
    attack = check_request(request, card)
    reference = read_label(request.label, source, card.label_names) if request.label else None
    space = to_model_space(source, **card.preprocessing)
    reporter.progress("load", 1, 1)
    lap("load")

    def windows(stage: str):
        return lambda done, total: reporter.progress(stage, done, total)

    if reference is not None:  # the target; a bad --organ fails here, before any model work
        target_source = "the reference label"
        target = space.label_to_model(reference)
        organs = _organ_values(request.organs, card.label_names, target, target_source)
    clean_model = predict_labels(
        network, space.tensor, card, request.device, request.sw_batch_size, windows("segment-clean")
    )
    lap("segment_clean")
    if reference is None:
        target_source = "the model's clean prediction"
        target = clean_model
        organs = _organ_values(request.organs, card.label_names, target, target_source)
    pred_clean = space.labels_to_source(clean_model)
    labels_source = reference if reference is not None else pred_clean  # the target on the source grid
    if attack.source_space:  # works on the source grid in HU (texture): one organ of the target
        adversarial_source, diagnostics = _run_source_attack(
            attack, request, source, labels_source, organs[0], card, network, space, target, reporter
        )
        region_source = sitk.GetArrayFromImage(labels_source) == organs[0]
    else:
        region_source = source_region(labels_source, organs, request.region, request.dilation_mm)
        # Only voxels inside the HU window can be written back (see preprocess), so only they are attacked;
        # with a region, the model voxels whose perturbation reaches it on the source grid.
        region = space.attackable_mask()
        if region_source is not None:
            region &= space.region_to_model(region_source)
        reporter.progress("attack", 0, attack.steps())
        result = attack.run(
            network,
            space.tensor,
            target,
            roi_size=card.roi_size,
            overlap=card.overlap,
            sw_batch_size=request.sw_batch_size,
            region=region,
            organs=organs or None,
            targeted=request.targeted,
            seed=request.seed,
            device=request.device,
            progress=lambda step, total, loss: reporter.progress("attack", step, total, loss=loss),
        )
        adversarial_source = space.adversarial_to_source(result.adversarial, region_source)
        diagnostics = result.diagnostics
    lap("attack")

    with staged_output_dir(request.out) as staging:
        volumes = StageCounter(reporter, "write", 1 if region_source is None else 2)
        adversarial_path = write_image(adversarial_source, staging / ADVERSARIAL)
        volumes.step()
        if region_source is not None:
            region_image = sitk.GetImageFromArray(region_source.astype(np.uint8))
            region_image.CopyInformation(source)
            write_image(region_image, staging / REGION)
            volumes.step()
        lap("write")
        written = read_image(adversarial_path)  # the model segments the file, not the tensor
        written_space = to_model_space(written, **card.preprocessing)
        adv_model = predict_labels(
            network, written_space.tensor, card, request.device, request.sw_batch_size, windows("segment-adv")
        )
        lap("segment_adv")
        pred_adv = written_space.labels_to_source(adv_model)
        metrics = _case_metrics(
            card,
            space.window,
            source,
            written,
            pred_clean,
            pred_adv,
            reference,
            region_source,
            reporter=reporter,
        )
        lap("metrics")
        metrics["attack"] = {"name": attack.name, "diagnostics": diagnostics}
        metrics["seconds"] = seconds
        # the rest of the case folder: 2 label maps x 2 formats, metrics.json, the preview, provenance.json
        files = StageCounter(reporter, "write", 6 + bool(request.preview))
        for labels, stem in ((pred_clean, PRED_CLEAN), (pred_adv, PRED_ADV)):
            write_image(labels, staging / f"{stem}.nii.gz")
            files.step()
            write_segmentation(labels, staging / f"{stem}.seg.nrrd", card.label_names, card.label_colors)
            files.step()
        write_json_atomic(staging / METRICS, metrics)
        files.step()
        if request.preview:
            from ..evaluation.preview import write_preview

            clean, adv = (metrics[key] for key in ("mean_dice_clean", "mean_dice_adv"))  # None without organs
            dice = "-" if clean is None or adv is None else f"{clean:.3f} → {adv:.3f}"
            title = f"{attack.name} on {request.image.name}: mean organ Dice {dice} (against the {metrics['reference']})"
            write_preview(
                staging / PREVIEW,
                source,
                written,
                pred_clean,
                pred_adv,
                card.label_names,
                card.label_colors,
                space.window,
                organs=organs,
                title=title,
                organ_dice={o["label"]: (o["dice_clean"], o["dice_adv"]) for o in metrics["organs"].values()},
            )
            files.step()
        weights = weights_path(card)
        provenance = {
            "tool": "AdvSegAttack",
            "version": __version__,
            "command_line": request.command_line or " ".join(sys.argv),
            "input": {"path": str(Path(request.image).resolve()), "sha256": sha256_file(request.image)},
            "reference_label": (
                {"path": str(Path(request.label).resolve()), "sha256": sha256_file(request.label)}
                if request.label
                else None
            ),
            "target": target_source,
            "model": {
                "name": card.name,
                "card": str(card.path) if card.path else None,
                "card_sha256": sha256_file(card.path) if card.path else None,
                "weights_sha256": sha256_file(weights) if weights else None,
                "source": str(request.model),
            },
            "attack": {"name": attack.name, "preset": request.preset, "parameters": attack.config.to_dict()},
            "organs": {name: value for name, value in zip(request.organs, organs, strict=True)},
            "region": (
                {"mode": "organ", "feather_mm": attack.config.feather_mm}
                if attack.source_space
                else {
                    "mode": request.region,
                    "dilation_mm": request.dilation_mm if request.region != "whole" else None,
                }
            ),
            **({"search": diagnostics["search"]} if "search" in diagnostics else {}),
            "targeted": request.targeted,
            "seed": request.seed,
            "device": str(request.device),
            "versions": _versions(),
            "start_time": started.isoformat(),
            "end_time": datetime.now(timezone.utc).isoformat(),
        }
        write_json_atomic(staging / PROVENANCE, provenance)
        files.step()
    return metrics
