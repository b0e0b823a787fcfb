"""The Python API, for notebooks and scripts: volumes in, volumes and numbers out, no files and no CLI.

    import SimpleITK as sitk
    from AdvSegAttackLib import attack, load_model, segment, sweep

    model = load_model("abdomen-unet")                     # once; every call below reuses it
    ct = sitk.ReadImage("ct.nii.gz")                        # or a NumPy array with spacing= (origin=, direction=)
    labels = segment(model, ct)                             # label map on the grid of `ct`
    result = attack(model, ct, "pgd", eps=4, steps=5)       # result.adversarial, .pred_clean, .pred_adv, .metrics
    rows = sweep(model, ct, "pgd", "eps", [1, 2, 4, 8], steps=5)   # one dict per value × organ

Images are SimpleITK images (HU, any grid: the model card's preprocessing maps them to the model and back) or
NumPy arrays in SimpleITK's (z, y, x) order with `spacing` (mm, x y z) and optionally `origin` (mm) and
`direction` (9 numbers); a label given as an array takes the image's geometry. Every returned image has the
geometry of the input. The steps are the command line's (`pipeline.case`): `advseg attack` runs the same
`attack_volume` and then writes a case folder; `metrics` is what it writes as metrics.json. Bad input raises
`errors.InputError` with one sentence, as the command line does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..datasets.runs import case_numbers, case_rows
from ..datasets.sweep import sweep_values
from ..errors import InputError
from ..pipeline.case import LoadedModel, attack_volume, case_metrics
from ..pipeline.request import AttackRequest
from ..progress import Reporter, SilentReporter
from ..volumes.io import check_image, check_label

Volume = sitk.Image | np.ndarray
"""A SimpleITK image, or a NumPy array in SimpleITK's (z, y, x) order (with geometry given beside it)."""

Progress = Callable[[str, int, int], None]
"""progress(stage, step, total), e.g. ("attack", 3, 20); may raise to cancel."""


def load_model(
    model: str | Path = "abdomen-unet",
    card: str | Path | None = None,
    device: str = "cpu",
    sw_batch_size: int = 4,
    trust_torchscript: bool = False,
    nnunet: dict | None = None,
) -> LoadedModel:
    """A model to segment and attack with: a bundled name, a model card, a checkpoint (with `card`), a MONAI
    bundle, a trusted TorchScript file or an nnU-Net v2 results folder, as `--model`/`--card` of the command
    line. `sw_batch_size`: sliding windows per forward pass. `nnunet`: an nnU-Net folder's choices, as the
    command line's options (e.g. {"configuration": "3d_fullres", "folds": ["0"], "checkpoint": "best",
    "tta": True}); every fold present, the final checkpoint and no mirroring when not given."""
    return LoadedModel.load(model, card, device, sw_batch_size, trust_torchscript, nnunet)


def as_image(
    volume: Volume,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    name: str = "the image",
) -> sitk.Image:
    """`volume` as a validated SimpleITK image (3-D, scalar, finite): an image as it is, an array (z, y, x)
    with `spacing` (mm, x y z; required), `origin` (mm, default 0) and `direction` (default identity)."""
    if isinstance(volume, sitk.Image):
        if spacing is not None or origin is not None or direction is not None:
            raise InputError(f"{name} is a SimpleITK image: it has its own geometry; give no spacing/origin.")
        return check_image(volume, name)
    array = np.asarray(volume)
    if array.ndim != 3:
        raise InputError(f"{name} is a {array.ndim}-D array; a 3-D (z, y, x) volume is needed.")
    if spacing is None:
        raise InputError(f"{name} is a NumPy array: give its spacing (mm, x y z) as spacing=.")
    image = sitk.GetImageFromArray(array)
    try:
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([float(o) for o in origin] if origin is not None else [0.0, 0.0, 0.0])
        if direction is not None:
            image.SetDirection([float(d) for d in direction])
    except (RuntimeError, TypeError, ValueError) as error:
        raise InputError(f"the geometry of {name} is not valid ({str(error).strip()[:120]}).") from None
    return check_image(image, name)


def _label_image(label: Volume, image: sitk.Image) -> sitk.Image:
    """A label map (image or array of the image's shape) on the image's grid, validated."""
    if not isinstance(label, sitk.Image):
        array = np.asarray(label)
        if array.shape != sitk.GetArrayViewFromImage(image).shape:
            raise InputError(
                f"the label has shape {array.shape}, the image {sitk.GetArrayViewFromImage(image).shape}."
            )
        label = sitk.GetImageFromArray(array)
        label.CopyInformation(image)
    return check_label(label, "the label", image)


def _loaded(model: LoadedModel | str | Path) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


class _CallbackReporter(Reporter):
    """Progress to a callback (stage, step, total)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def progress(self, stage: str, step: int, total: int, **values: float) -> None:
        self._progress(stage, step, total)

    def done(self, out: str) -> None:
        pass

    def error(self, message: str) -> None:
        pass


def _reporter(progress: Progress | None) -> Reporter:
    return SilentReporter() if progress is None else _CallbackReporter(progress)


def segment(
    model: LoadedModel | str | Path,
    image: Volume,
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> sitk.Image:
    """The model's label map of `image`, on the image's grid (uint8 label values of the model card)."""
    loaded = _loaded(model)
    source = as_image(image, spacing, origin, direction)
    reporter = _reporter(progress)
    _, _, labels = loaded.segment(source, lambda done, total: reporter.progress("segment", done, total))
    return labels


@dataclass
class AttackResult:
    """What `attack` returns: the adversarial volume (the input's grid and pixel type, HU), the model's
    labels of the clean and of the adversarial volume (the input's grid), the metrics as `advseg attack`
    writes them (metrics.json: per organ Dice and HD95 clean and attacked, the perturbation: SSIM, PSNR,
    L∞ in HU ...) and the attack's diagnostics (loss per step, seconds, ...)."""

    adversarial: sitk.Image
    pred_clean: sitk.Image
    pred_adv: sitk.Image
    metrics: dict[str, Any]

    @property
    def diagnostics(self) -> dict[str, Any]:
        return self.metrics["attack"]["diagnostics"]


def attack(
    model: LoadedModel | str | Path,
    image: Volume,
    name: str = "pgd",
    *,
    label: Volume | None = None,
    preset: str | None = None,
    organs: Sequence[str] = (),
    region: str = "whole",
    dilation_mm: float = 10.0,
    targeted: bool = False,
    seed: int = 0,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    progress: Progress | None = None,
    **params: Any,
) -> AttackResult:
    """Attack `image` with attack `name` (see `advseg attacks`); `params` are its parameters by catalogue
    name (eps=4, steps=5, rho=0.3 ...), `preset` a named set of them. The target is `label` (a reference label
    map) when given, else the model's clean prediction; `organs`, `region`, `dilation_mm`, `targeted` and
    `seed` are the command line's --organ, --region, --dilation-mm, --targeted and --seed."""
    loaded = _loaded(model)
    source = as_image(image, spacing, origin, direction)
    reference = None if label is None else _label_image(label, source)
    request = AttackRequest(
        image=Path(),
        model=loaded.card.name,
        out=Path(),
        attack=name,
        params=params,
        preset=preset,
        organs=tuple(organs),
        region=region,
        dilation_mm=dilation_mm,
        targeted=targeted,
        seed=seed,
        device=loaded.device,
        sw_batch_size=loaded.sw_batch_size,
    )
    reporter = _reporter(progress)
    attacked = attack_volume(request, source, reference, loaded, reporter)
    outcome = attacked.outcome
    _, _, pred_adv = loaded.segment(
        outcome.adversarial, lambda done, total: reporter.progress("segment-adv", done, total)
    )
    clean = attacked.target.clean_prediction
    metrics = case_metrics(
        loaded.card,
        attacked.space.window,
        source,
        outcome.adversarial,
        clean,
        pred_adv,
        reference,
        outcome.region,
    )
    metrics["attack"] = {"name": attacked.attack.name, "diagnostics": outcome.diagnostics}
    return AttackResult(outcome.adversarial, clean, pred_adv, metrics)


def sweep(
    model: LoadedModel | str | Path,
    image: Volume,
    name: str,
    parameter: str,
    values: Sequence[float],
    *,
    label: Volume | None = None,
    case: str = "image",
    **options: Any,
) -> list[dict[str, Any]]:
    """Attack `image` once per value of one numeric parameter (e.g. "eps", [1, 2, 4, 8]) with the other
    `options` of `attack` fixed; one dict per value × organ, the rows of `advseg sweep`'s cases.csv (case,
    model, attack, parameter, value, organ, label, dice_clean, dice_adv, dice_drop, hd95_clean_mm,
    hd95_adv_mm, ssim_3d, ssim_axial_mean, psnr_db, linf_hu)."""
    loaded = _loaded(model)
    checked = sweep_values(name, parameter, values, options.get("preset"))
    rows: list[dict[str, Any]] = []
    for value in checked:
        result = attack(loaded, image, name, label=label, **{**options, parameter: value})
        record = {"case": case, "metrics": case_numbers(result.metrics)}
        rows += case_rows([record], parameter=parameter, value=value)
    return rows
