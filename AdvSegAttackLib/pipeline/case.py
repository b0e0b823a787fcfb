"""One case end to end, in steps that `attack`, `demo`, `segment`, dataset runs and `evaluate` share:

    model = LoadedModel.load(...)                  the model, once per run
    target = clean_target(space, reference, ...)   the clean prediction, and the target on both grids
    outcome = attack_case(attack, ...)             the attack (model space or source grid), on the source grid
    write_adversarial(...)                         adversarial.nii.gz (and region.nii.gz), written first
    model.segment(read_image(written))             the model segments the *written* file (with a region:
                                                   model.segment_changed, only the windows it changed)
    case_metrics(...)                              metrics.json (organs clean vs attacked, the perturbation)
    write_predictions(...), write_case_preview(...), case_provenance(...)

`attack_volume` runs the first steps in memory (the Python API's `attack` and `run_attack` share it);
`run_attack` runs them for one request and writes the case folder (see `evaluation.casefolder`);
`evaluate_case` scores a saved adversarial volume; `run_segment` is `advseg segment`.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .. import __version__
from ..attacks.base import Attack, ModelSpaceAttack, SourceGridAttack, attack_class
from ..errors import InputError
from ..evaluation.casefolder import ADVERSARIAL, METRICS, PRED_ADV, PRED_CLEAN, PREVIEW, PROVENANCE, REGION
from ..evaluation.metrics import (
    PERTURBATION_PARTS,
    bounding_box,
    dice_per_label,
    metrics_document,
    organ_metrics,
    perturbation_report,
)
from ..models.cards import ModelCard, weights_path
from ..models.labels import require_organs_present
from ..models.networks import load_model
from ..models.segment import (
    model_space,
    pad_for_windows,
    predict_logits,
    predict_logits_changed,
    segment_image,
    window_slices,
    window_start,
)
from ..progress import Reporter, StageCounter
from ..volumes.io import (
    read_image,
    read_label,
    same_grid,
    sha256_file,
    staged_output_dir,
    write_image,
    write_json_atomic,
    write_segmentation,
)
from ..volumes.preprocess import ModelSpaceImage
from .request import AttackRequest, validate_request

SEGMENT_FILES = ("pred.nii.gz", "pred.seg.nrrd", "metrics.json")


# --- the model ----------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model loaded once for a run: its card, its network on `device`, `sw_batch_size` windows per pass."""

    card: ModelCard
    network: torch.nn.Module
    device: torch.device | str = "cpu"
    sw_batch_size: int = 4

    @classmethod
    def load(
        cls,
        model: str | Path,
        card: str | None = None,
        device: torch.device | str = "cpu",
        sw_batch_size: int = 4,
        trust_torchscript: bool = False,
        nnunet: dict | None = None,
    ) -> LoadedModel:
        """From a card, bundled name, checkpoint (with `card`), MONAI bundle, TorchScript file (trusted) or
        nnU-Net v2 results folder (`nnunet`: its configuration, folds, checkpoint and tta)."""
        loaded_card, network = load_model(
            model, card=card, device=device, trust_torchscript=trust_torchscript, nnunet=nnunet
        )
        return cls(loaded_card, network, device, sw_batch_size)

    @classmethod
    def for_request(cls, request: AttackRequest) -> LoadedModel:
        """The model of an attack request (its model, card, device, window batch, trust and nnU-Net choices)."""
        return cls.load(
            request.model,
            request.card,
            request.device,
            request.sw_batch_size,
            request.trust_torchscript,
            request.nnunet,
        )

    def labels(
        self, space: ModelSpaceImage, progress: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Model-space labels [1, 1, X, Y, Z] of a volume in this model's space (sliding windows)."""
        return self.logits(space, progress).argmax(dim=1, keepdim=True)

    def logits(
        self,
        space: ModelSpaceImage,
        progress: Callable[[int, int], None] | None = None,
        kept: dict | None = None,
    ) -> torch.Tensor:
        """Blended logits [1, C, X, Y, Z] (CPU) of a volume in this model's space (sliding windows); `kept`:
        {window start: None}, filled with those windows' raw logits (`models.segment.predict_logits`)."""
        return predict_logits(
            self.network, space.tensor, self.card, self.device, self.sw_batch_size, progress, kept
        )

    def segment(
        self, image: sitk.Image, progress: Callable[[int, int], None] | None = None
    ) -> tuple[ModelSpaceImage, torch.Tensor, sitk.Image]:
        """(the volume in model space, its model-space labels, the label map on the volume's grid)."""
        labels_source, space, labels = segment_image(
            image, self.card, self.network, self.device, self.sw_batch_size, progress
        )
        return space, labels, labels_source

    def segment_changed(
        self,
        image: sitk.Image,
        clean: ModelSpaceImage,
        clean_logits: torch.Tensor,
        progress: Callable[[int, int], None] | None = None,
        clean_windows: dict | None = None,
        clean_labels: torch.Tensor | None = None,
    ) -> tuple[sitk.Image, int]:
        """(the label map of `image` on its grid, windows run): `image` is a changed copy of the volume of
        `clean` (same grid), so only the windows whose model-space input changed are run and the clean logits
        of the others are reused (`models.segment.predict_logits_changed`, with the raw clean logits of
        `clean_windows`; labels equal a full run). With `clean_labels` (the argmax of `clean_logits`) only
        the box the changed windows cover takes a new argmax."""
        space = model_space(image, self.card)
        logits, run, box = predict_logits_changed(
            self.network,
            space.tensor,
            clean.tensor,
            clean_logits,
            self.card,
            self.device,
            self.sw_batch_size,
            progress,
            clean_windows,
        )
        if clean_labels is None:
            return space.prediction_to_source(logits), run
        labels = clean_labels.clone()
        if box is not None:
            labels[(0, 0, *box)] = logits[(0, slice(None), *box)].max(dim=0).indices  # argmax, 4x faster
        return space.labels_to_source(labels), run


def _windows(reporter: Reporter, stage: str) -> Callable[[int, int], None]:
    return lambda done, total: reporter.progress(stage, done, total)


class _StageClock:
    """Seconds per stage (`lap(stage)` ends a stage), for metrics.json's `seconds`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now


# --- the target and the attack ------------------------------------------------------------------------------


@dataclass
class CaseTarget:
    """What the attack drives, on both grids, and the model's prediction of the clean volume."""

    model_grid: torch.Tensor  # [1, 1, X, Y, Z] label map on the model grid
    source_grid: sitk.Image  # the same on the source grid
    clean_prediction: sitk.Image  # the model's labels of the clean volume, on the source grid
    description: str  # "the reference label" or "the model's clean prediction"
    clean_logits: torch.Tensor | None = None  # [1, C, X, Y, Z] blended logits of the clean volume, if kept
    clean_windows: dict | None = None  # {window start: raw logits} of the windows kept (`predict_logits`)
    clean_labels: torch.Tensor | None = None  # [1, 1, X, Y, Z] argmax of clean_logits, if kept


def clean_target(
    space: ModelSpaceImage,
    reference: sitk.Image | None,
    model: LoadedModel,
    organs: Mapping[str, int],
    reporter: Reporter,
    keep_logits: bool = False,
    keep_windows: set[tuple[int, ...]] | None = None,
) -> CaseTarget:
    """The clean prediction and the target: the reference label when there is one (an --organ it lacks fails
    before any model work), else the clean prediction. Every --organ must be in the target. `keep_logits`:
    keep the clean logits, and the raw logits of the windows `keep_windows` (window starts), for
    `LoadedModel.segment_changed` of a volume the attack changed in a region."""
    target = space.label_to_model(reference) if reference is not None else None
    description = "the reference label" if reference is not None else "the model's clean prediction"
    if target is not None:
        require_organs_present(organs, set(torch.unique(target).tolist()), f"the target ({description})")
    kept = dict.fromkeys(keep_windows or ()) if keep_logits else None
    logits = model.logits(space, _windows(reporter, "segment-clean"), kept)
    clean = logits.max(dim=1, keepdim=True).indices  # argmax (first maximum), 4x faster on the CPU
    if target is None:
        target = clean
        require_organs_present(organs, set(torch.unique(target).tolist()), f"the target ({description})")
    prediction = space.prediction_to_source(logits)
    source_target = reference if reference is not None else prediction
    if not keep_logits:
        return CaseTarget(target, source_target, prediction, description)
    return CaseTarget(target, source_target, prediction, description, logits, kept, clean)


def source_region(labels: sitk.Image, organs: list[int], mode: str, dilation_mm: float) -> np.ndarray | None:
    """The attack region on the source grid, as a bool SimpleITK (z, y, x) array; None for the whole volume.

    `labels` is the target on the source grid (the reference label, or the clean prediction mapped to the
    source). "organ": the organs grown by `dilation_mm` (mm, Euclidean, on the source voxels); "bbox": the
    source-index box of that. The request is validated (`request.validate_request`).
    """
    from scipy.ndimage import distance_transform_edt

    if mode == "whole":
        return None
    mask = np.isin(sitk.GetArrayFromImage(labels), organs)
    box = bounding_box(mask)
    if box is None:
        raise InputError(f"--region {mode}: the --organ has no voxel on the source grid; nothing to attack.")
    if dilation_mm > 0:  # the distance transform on the organ's box grown by the dilation, not the volume
        spacing = np.array(labels.GetSpacing()[::-1])
        box = bounding_box(mask, margin=[int(m) for m in np.ceil(dilation_mm / spacing) + 1])
        grown = distance_transform_edt(~mask[box], sampling=spacing) <= dilation_mm
        mask = np.zeros_like(mask)
        mask[box] = grown
        box = bounding_box(mask)
    if mode == "bbox":
        mask = np.zeros_like(mask)
        mask[box] = True
    return mask


def windows_reached(space: ModelSpaceImage, region: np.ndarray, card: ModelCard) -> set[tuple[int, ...]]:
    """Starts of the sliding windows whose model-space input a change inside `region` (bool (z, y, x) on the
    source grid) can reach once written and read back: those that meet the model voxels of the region
    (`region_to_model`) grown by one voxel, since the resampling of the written file to the model grid
    interpolates from neighbouring voxels. A window it misses is still segmented correctly, at the cost of
    running it on the clean input again (`predict_logits_changed`)."""
    grown = F.max_pool3d(space.region_to_model(region).float(), 3, stride=1, padding=1)
    slices, pads = window_slices(tuple(grown.shape[2:]), card.roi_size, card.overlap)
    grown = pad_for_windows(grown, pads)
    return {window_start(window) for window in slices if grown[(0, 0, *window)].any()}


@dataclass
class AttackOutcome:
    """An attack's result on the source grid: the adversarial volume (source geometry and pixel type), the
    region it could change (bool (z, y, x); None: the whole volume), its diagnostics and its region as
    provenance records it."""

    adversarial: sitk.Image
    region: np.ndarray | None
    diagnostics: dict
    region_provenance: dict = field(default_factory=dict)


def attack_case(
    attack: Attack,
    request: AttackRequest,
    space: ModelSpaceImage,
    target: CaseTarget,
    organs: Mapping[str, int],
    model: LoadedModel,
    reporter: Reporter,
) -> AttackOutcome:
    """Run the attack on a case: the one place where the two attack interfaces part."""
    if isinstance(attack, SourceGridAttack):
        return _attack_on_source_grid(attack, request, space, target, organs, model, reporter)
    return _attack_in_model_space(attack, request, space, target, organs, model, reporter)


def _attack_in_model_space(
    attack: ModelSpaceAttack, request, space, target: CaseTarget, organs, model: LoadedModel, reporter
) -> AttackOutcome:
    """Attack the model-space image and map the change back to the source grid. Only voxels inside the HU
    window can be written back (see preprocess), so only they are attacked; with a region, the model voxels
    whose perturbation reaches it on the source grid."""
    region_source = source_region(
        target.source_grid, list(organs.values()), request.region, request.dilation_mm
    )
    region = space.attackable_mask()
    if region_source is not None:
        region &= space.region_to_model(region_source)
    reporter.progress("attack", 0, attack.steps())
    result = attack.run(
        model.network,
        space.tensor,
        target.model_grid,
        roi_size=model.card.roi_size,
        overlap=model.card.overlap,
        window_rule=model.card.window_rule,
        pad_value=model.card.pad_value,
        sw_batch_size=model.sw_batch_size,
        region=region,
        organs=list(organs.values()) or None,
        targeted=request.targeted,
        seed=request.seed,
        device=model.device,
        progress=lambda step, total, loss: reporter.progress("attack", step, total, loss=loss),
    )
    dilation = request.dilation_mm if request.region != "whole" else None
    return AttackOutcome(
        space.adversarial_to_source(result.adversarial, region_source),
        region_source,
        result.diagnostics,
        {"mode": request.region, "dilation_mm": dilation},
    )


def _attack_on_source_grid(
    attack: SourceGridAttack, request, space, target: CaseTarget, organs, model: LoadedModel, reporter
) -> AttackOutcome:
    """Attack the one --organ on the source grid; a search scores candidates with the model's organ Dice."""
    ((name, organ),) = organs.items()

    def organ_dice(adversarial_hu: np.ndarray) -> float:
        image = sitk.GetImageFromArray(adversarial_hu)
        image.CopyInformation(space.source)
        predicted = model.labels(model_space(image, model.card))
        return dice_per_label(predicted.numpy(), target.model_grid.numpy(), [organ])[organ]

    result = attack.run(
        space.source,
        target.source_grid,
        organ,
        name,
        organ_dice=organ_dice,
        window_hu=space.window,
        device=model.device,
        progress=lambda step, total: reporter.progress("attack", step, total),
    )
    region = sitk.GetArrayFromImage(target.source_grid) == organ
    return AttackOutcome(result.adversarial, region, result.diagnostics, attack.region_provenance())


# --- writing and scoring ------------------------------------------------------------------------------------


def write_adversarial(staging: Path, outcome: AttackOutcome, source: sitk.Image, reporter: Reporter) -> Path:
    """adversarial.nii.gz and, with a region, region.nii.gz (uint8 1 inside); returns the adversarial file."""
    volumes = StageCounter(reporter, "write", 1 if outcome.region is None else 2)
    path = write_image(outcome.adversarial, staging / ADVERSARIAL)
    volumes.step()
    if outcome.region is not None:
        region = sitk.GetImageFromArray(outcome.region.astype(np.uint8))
        region.CopyInformation(source)
        write_image(region, staging / REGION)
        volumes.step()
    return path


def case_metrics(
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


def write_predictions(
    staging: Path,
    predictions: Mapping[str, sitk.Image],
    card: ModelCard,
    segmentations: bool = True,
    counter: StageCounter | None = None,
) -> None:
    """`<stem>.nii.gz` of every prediction ({stem: label map}), and `<stem>.seg.nrrd` with the card's segment
    names and colours when `segmentations`; `counter` steps once per file."""
    for stem, labels in predictions.items():
        write_image(labels, staging / f"{stem}.nii.gz")
        if counter is not None:
            counter.step()
        if segmentations:
            write_segmentation(labels, staging / f"{stem}.seg.nrrd", card.label_names, card.label_colors)
            if counter is not None:
                counter.step()


def write_case_preview(
    path: Path,
    title: str,
    source: sitk.Image,
    adversarial: sitk.Image,
    pred_clean: sitk.Image,
    pred_adv: sitk.Image,
    card: ModelCard,
    window_hu: tuple[float, float],
    metrics: dict,
    organs: list[int],
) -> None:
    """preview.png: the slice the attack changed most, with the organs' Dice clean -> attacked in the title
    and the legend (see `evaluation.preview`)."""
    from ..evaluation.preview import write_preview

    clean, adv = (metrics[key] for key in ("mean_dice_clean", "mean_dice_adv"))  # None without organs
    dice = "-" if clean is None or adv is None else f"{clean:.3f} → {adv:.3f}"
    write_preview(
        path,
        source,
        adversarial,
        pred_clean,
        pred_adv,
        card.label_names,
        card.label_colors,
        window_hu,
        organs=organs,
        title=f"{title}: mean organ Dice {dice} (against the {metrics['reference']})",
        organ_dice={o["label"]: (o["dice_clean"], o["dice_adv"]) for o in metrics["organs"].values()},
    )


def _file_record(path: Path | None) -> dict | None:
    """{"path": absolute path, "sha256"} of an input file (None for none)."""
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)} if path else None


def versions() -> dict:
    """The versions of the tool and what it runs on, for provenance."""
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


def model_record(card: ModelCard, source: str | Path) -> dict:
    """A model as provenance records it: name, card path and SHA-256, weights SHA-256, how it was given."""
    weights = weights_path(card)
    return {
        "name": card.name,
        "card": str(card.path) if card.path else None,
        "card_sha256": sha256_file(card.path) if card.path else None,
        "weights_sha256": sha256_file(weights) if weights else None,
        "source": str(source),
        **({"nnunet": _nnunet_provenance(card)} if card.nnunet else {}),
    }


def run_provenance(request: AttackRequest, models: Mapping[str, ModelCard]) -> dict:
    """The provenance of a run over several attacks (a sweep, a transfer matrix): the tool, the command line,
    the models ({how given: card}), the device, the versions and the time (each case folder has its own)."""
    return {
        "tool": "AdvSegAttack",
        "version": __version__,
        "command_line": request.command_line or " ".join(sys.argv),
        "models": [model_record(card, source) for source, card in models.items()],
        "device": str(request.device),
        "versions": versions(),
        "written_at": datetime.now(timezone.utc).isoformat(),
    }


def case_provenance(
    request: AttackRequest,
    card: ModelCard,
    attack: Attack,
    organs: Mapping[str, int],
    target: CaseTarget,
    outcome: AttackOutcome,
    started: datetime,
) -> dict:
    """provenance.json of a case: the tool, the command line, the input and reference (path, SHA-256), the
    model (card, weights SHA-256), the attack with every parameter and its unit, the organs, the region, the
    seed, the device, the versions, start and end time."""
    return {
        "tool": "AdvSegAttack",
        "version": __version__,
        "command_line": request.command_line or " ".join(sys.argv),
        "input": _file_record(request.image),
        "reference_label": _file_record(request.label),
        "target": target.description,
        "model": model_record(card, request.model),
        "attack": {"name": attack.name, "preset": request.preset, "parameters": attack.config.to_dict()},
        "organs": dict(organs),
        "region": outcome.region_provenance,
        **({"search": outcome.diagnostics["search"]} if "search" in outcome.diagnostics else {}),
        "targeted": request.targeted,
        "seed": request.seed,
        "device": str(request.device),
        "versions": versions(),
        "start_time": started.isoformat(),
        "end_time": datetime.now(timezone.utc).isoformat(),
    }


def _nnunet_provenance(card: ModelCard) -> dict:
    """An nnU-Net model's choices (configuration, folds, checkpoint, tta: mirroring test-time augmentation,
    off unless --tta) and the SHA-256 of every fold's checkpoint."""
    checkpoints = {c: sha256_file(card.path.parent / c) for c in card.nnunet["checkpoints"]}
    return {**card.nnunet, "checkpoints": checkpoints}


# --- whole cases --------------------------------------------------------------------------------------------


def prepare_attack(request: AttackRequest, card: ModelCard) -> tuple[Attack, dict[str, int]]:
    """(the attack, {--organ name: label value}) of a validated request (see `request.validate_request`)."""
    config, organs = validate_request(request, card.label_names)
    return attack_class(request.attack)(config), organs


@dataclass
class AttackedVolume:
    """One volume attacked in memory: the attack, the organs, the volume in model space, the target and the
    outcome on the source grid (what `run_attack` writes, and what the Python API returns)."""

    attack: Attack
    organs: dict[str, int]
    space: ModelSpaceImage
    target: CaseTarget
    outcome: AttackOutcome


def attack_volume(
    request: AttackRequest,
    source: sitk.Image,
    reference: sitk.Image | None,
    model: LoadedModel,
    reporter: Reporter,
    on_stage: Callable[[str], None] | None = None,
    prepared: tuple[Attack, dict[str, int]] | None = None,
) -> AttackedVolume:
    """The clean prediction, the target and the attack of one volume in memory (steps 2-4: `source` is the
    volume, `reference` its label map or None; the request's image, label and out are not read).
    `on_stage(stage)` is called when "load", "segment_clean" and "attack" end. `prepared`: what
    `prepare_attack(request, model.card)` returned, when the caller has validated the request already."""
    stage = on_stage or (lambda name: None)
    attack, organs = prepared or prepare_attack(request, model.card)
    space = model_space(source, model.card)
    reporter.progress("load", 1, 1)
    stage("load")
    # With a region, the attack changes the windows around it only: segment-adv reuses the clean logits, and
    # with a reference label (the region known before segment-clean) the raw logits of the windows it reaches
    # (MONAI's sliding windows; an nnU-Net model is segmented whole again).
    reuse = (
        request.region != "whole"
        and isinstance(attack, ModelSpaceAttack)
        and model.card.window_rule == "monai"
    )
    reached = None
    if reuse and reference is not None:
        region = source_region(reference, list(organs.values()), request.region, request.dilation_mm)
        reached = windows_reached(space, region, model.card)
    target = clean_target(space, reference, model, organs, reporter, reuse, reached)
    stage("segment_clean")
    outcome = attack_case(attack, request, space, target, organs, model, reporter)
    stage("attack")
    return AttackedVolume(attack, organs, space, target, outcome)


def run_attack(request: AttackRequest, reporter: Reporter, model: LoadedModel | None = None) -> dict:
    """Run one attack and write its case folder into `request.out`; returns the metrics. `model`: the model
    of the request, when a run has loaded it already."""
    started = datetime.now(timezone.utc)
    clock = _StageClock()
    reporter.progress("load", 0, 1)
    if model is None:
        model = LoadedModel.for_request(request)
    card = model.card
    prepared = prepare_attack(request, card)  # the one validation: bad parameters or organs read no volume
    source = read_image(request.image)
    reference = read_label(request.label, source, card.label_names) if request.label else None
    attacked = attack_volume(request, source, reference, model, reporter, clock.lap, prepared)
    attack, organs = attacked.attack, attacked.organs
    space, target, outcome = attacked.space, attacked.target, attacked.outcome

    with staged_output_dir(request.out) as staging:
        adversarial_path = write_adversarial(staging, outcome, source, reporter)
        clock.lap("write")
        written = read_image(adversarial_path)  # the model segments the file, not the tensor
        if target.clean_logits is not None:
            pred_adv, outcome.diagnostics["segment_adv_windows"] = model.segment_changed(
                written,
                space,
                target.clean_logits,
                _windows(reporter, "segment-adv"),
                target.clean_windows,
                target.clean_labels,
            )
        else:
            _, _, pred_adv = model.segment(written, _windows(reporter, "segment-adv"))
        clock.lap("segment_adv")
        clean = target.clean_prediction
        metrics = case_metrics(
            card, space.window, source, written, clean, pred_adv, reference, outcome.region, reporter=reporter
        )
        clock.lap("metrics")
        metrics["attack"] = {"name": attack.name, "diagnostics": outcome.diagnostics}
        metrics["seconds"] = clock.seconds
        # the rest of the case folder: 2 label maps x 2 formats, metrics.json, the preview, provenance.json
        files = StageCounter(reporter, "write", 6 + bool(request.preview))
        write_predictions(staging, {PRED_CLEAN: clean, PRED_ADV: pred_adv}, card, counter=files)
        write_json_atomic(staging / METRICS, metrics)
        files.step()
        if request.preview:
            write_case_preview(
                staging / PREVIEW,
                f"{attack.name} on {Path(request.image).name}",
                source,
                written,
                clean,
                pred_adv,
                card,
                space.window,
                metrics,
                list(organs.values()),
            )
            files.step()
        write_json_atomic(
            staging / PROVENANCE, case_provenance(request, card, attack, organs, target, outcome, started)
        )
        files.step()
    return metrics


def evaluate_case(
    model: LoadedModel,
    image_path: Path,
    adversarial_path: Path,
    label_path: Path | None,
    out: Path,
    reporter: Reporter,
    name: str,
    attack: str | None = None,
) -> dict:
    """Segment a clean volume and its saved adversarial volume (which must be on its grid), score them like
    `run_attack` does (kind "evaluate") and write `pred_clean.nii.gz`, `pred_adv.nii.gz` and metrics.json into
    `out`; returns the metrics. `name` is the case's, for the sentence of a volume on another grid; `attack`
    the name of the attack that made the volume, when known (metrics.json's `attack.name`)."""
    source = read_image(image_path)
    adversarial = read_image(adversarial_path)
    if not same_grid(source, adversarial):
        raise InputError(
            f"case {name}: the adversarial volume {adversarial_path} is not on the grid of {image_path}."
        )
    reference = read_label(label_path, source, model.card.label_names) if label_path else None
    space, _, pred_clean = model.segment(source, _windows(reporter, "segment-clean"))
    _, _, pred_adv = model.segment(adversarial, _windows(reporter, "segment-adv"))
    metrics = case_metrics(
        model.card,
        space.window,
        source,
        adversarial,
        pred_clean,
        pred_adv,
        reference,
        kind="evaluate",
        reporter=reporter,
    )
    if attack is not None:
        metrics["attack"] = {"name": attack}
    metrics["adversarial"] = _file_record(adversarial_path)
    metrics["input"] = _file_record(image_path)
    with staged_output_dir(out) as staging:
        write_predictions(
            staging, {PRED_CLEAN: pred_clean, PRED_ADV: pred_adv}, model.card, segmentations=False
        )
        write_json_atomic(staging / METRICS, metrics)
    return metrics


def run_segment(
    model: LoadedModel, image_path: Path, label_path: Path | None, out: Path, reporter: Reporter
) -> dict:
    """`advseg segment`: segment a volume, write `pred.nii.gz` and `pred.seg.nrrd` and metrics.json (Dice and
    HD95 against the reference label when one is given); returns the metrics."""
    image = read_image(image_path)
    reference = read_label(label_path, image, model.card.label_names) if label_path else None
    with staged_output_dir(out) as staging:
        _, _, predicted = model.segment(image, _windows(reporter, "segment"))
        write_predictions(staging, {"pred": predicted}, model.card)
        organs = organ_metrics(
            model.card.label_names,
            tuple(reversed(image.GetSpacing())),  # SimpleITK arrays are (z, y, x)
            sitk.GetArrayFromImage(predicted),
            sitk.GetArrayFromImage(reference) if reference is not None else None,
        )
        result = metrics_document(
            "segment",
            model.card.name,
            image.GetSize(),
            image.GetSpacing(),
            "reference label" if reference is not None else None,
            organs,
            input={"path": str(image_path), "sha256": sha256_file(image_path)},
            reference_label=(
                {"path": str(label_path), "sha256": sha256_file(label_path)}
                if reference is not None
                else None
            ),
        )
        write_json_atomic(staging / METRICS, result)
    return result
