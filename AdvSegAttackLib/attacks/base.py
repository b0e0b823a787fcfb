"""The two attack interfaces and `make_attack` (parameters, presets and the registry are in `catalogue`).

`ModelSpaceAttack` (SA², VAFA, the pixel baselines): works on a model-space image [1, 1, X, Y, Z] in [0, 1]
(Z axial) against a model and returns the adversarial image of the same shape; outside `region` it is
bit-identical to the input, also in every step. The pipeline maps it back to the source grid.

`SourceGridAttack` (texture): works on the source volume in HU and one organ of a label map on the same
grid, and returns the adversarial volume on that grid; every voxel outside the organ is bit-identical.

Both take their validated parameters (`catalogue.AttackConfig`); the catalogue's `source_grid` says which
interface an attack has.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError
from .catalogue import AttackConfig, attack_config, attack_entry
from .objective import SegmentationObjective

ProgressCallback = Callable[[int, int, float], None]
"""progress(step, total, loss): called after every step with the mean DiceCE; may raise to cancel."""

StepHook = Callable[[int, dict[str, torch.Tensor]], None]
"""on_step(step, state): state holds the attack's current tensors (read-only views, e.g. "xi", "adversarial")."""


@dataclass
class AttackResult:
    """adversarial: [1, 1, X, Y, Z] float32 in [0, 1] on the run's device; diagnostics: JSON-friendly dict
    ("loss": mean DiceCE of the image each step fed to the model (to target' when targeted), "seconds",
    "n_windows", "n_active_windows", "max_abs_change"/"mean_abs_change" ([0, 1] model units), per-attack
    stats such as "ssim", "xi_min"/"xi_max", "q_min"/"q_max")."""

    adversarial: torch.Tensor
    diagnostics: dict[str, Any]


@dataclass
class SourceGridResult:
    """adversarial: the volume on the source grid (source geometry and pixel type); diagnostics: JSON-friendly."""

    adversarial: sitk.Image
    diagnostics: dict[str, Any]


@dataclass
class AttackContext:
    """What `Attack._run` gets: inputs on the device, the objective, the seeded generator, callbacks."""

    image: torch.Tensor
    target: torch.Tensor
    region: torch.Tensor | None
    objective: SegmentationObjective | None
    generator: torch.Generator
    device: torch.device
    steps: int
    progress: ProgressCallback | None = None
    on_step: StepHook | None = None
    losses: list[float] = field(default_factory=list)

    def report(self, step: int, loss: float, **state: torch.Tensor) -> None:
        """Record one finished step and call the callbacks (progress may raise to cancel)."""
        self.losses.append(float(loss))
        if self.on_step is not None:
            self.on_step(step, state)
        if self.progress is not None:
            self.progress(step, self.steps, float(loss))

    def restrict(self, adversarial: torch.Tensor) -> torch.Tensor:
        """The input image outside the region (bit-identical), `adversarial` inside."""
        return adversarial if self.region is None else torch.where(self.region, adversarial, self.image)

    def uniform(self, shape: Sequence[int], low: float, high: float) -> torch.Tensor:
        """U[low, high] samples (float32) from the seeded CPU generator, moved to the device."""
        sample = torch.rand(tuple(shape), generator=self.generator, dtype=torch.float32)
        return (low + (high - low) * sample).to(self.device)

    def normal(self, shape: Sequence[int]) -> torch.Tensor:
        """N(0, 1) samples (float32) from the seeded CPU generator, moved to the device."""
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32).to(self.device)


class Attack(ABC):
    """An attack with its validated parameters (`config`; or its parameters as keywords)."""

    name: ClassVar[str]

    def __init__(self, config: AttackConfig | None = None, **params: Any):
        if config is not None and params:
            raise TypeError("give either a config or keyword parameters, not both.")
        self.config = config if config is not None else attack_config(self.name, **params)

    def steps(self) -> int:
        """How many progress steps `run` reports."""
        return int(getattr(self.config, "steps", 1))


class ModelSpaceAttack(Attack):
    """An attack on a model-space image against a model: `run`, which calls the method's `_run`."""

    def run(
        self,
        model: torch.nn.Module,
        image: torch.Tensor,
        target: torch.Tensor,
        *,
        roi_size: Sequence[int],
        overlap: float,
        sw_batch_size: int,
        window_rule: str = "monai",
        pad_value: float = 0.0,
        region: torch.Tensor | None = None,
        organs: Sequence[int] | None = None,
        targeted: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        progress: ProgressCallback | None = None,
        on_step: StepHook | None = None,
    ) -> AttackResult:
        """Attack `image` [1, 1, X, Y, Z] (in [0, 1]) against `target` (label map of the same shape), over the
        sliding windows of `roi_size`, `overlap` and `window_rule` (`models.segment.window_slices`; the volume
        padded with `pad_value` where it is smaller than the ROI).

        The model must already be on `device`; it is used in eval mode and never modified.
        """
        device = torch.device(device)
        if image.ndim != 5 or image.shape[:2] != (1, 1):
            raise ValueError(f"image must be [1, 1, X, Y, Z], got {tuple(image.shape)}.")
        if tuple(target.shape) != tuple(image.shape):
            raise ValueError(
                f"target shape {tuple(target.shape)} differs from image shape {tuple(image.shape)}."
            )
        image = image.detach().to(device, torch.float32)
        if region is not None:
            if tuple(region.shape) != tuple(image.shape):
                raise ValueError(
                    f"region shape {tuple(region.shape)} differs from image shape {tuple(image.shape)}."
                )
            region = region.detach().to(device, torch.bool)
            if not region.any():
                raise InputError("the attack region (--region) contains no voxel.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"--seed must be an integer, got {seed!r}.")
        objective = SegmentationObjective(
            model,
            target,
            roi_size,
            overlap,
            sw_batch_size,
            organs,
            targeted,
            device,
            region,
            window_rule=window_rule,
            pad_value=pad_value,
        )
        context = AttackContext(
            image=image,
            target=objective.target,
            region=region,
            objective=objective,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            device=device,
            steps=self.steps(),
            progress=progress,
            on_step=on_step,
        )
        start = time.perf_counter()
        adversarial, extra = self._run(context)
        adversarial = context.restrict(adversarial.detach().to(torch.float32))
        change = (adversarial - image).abs()
        diagnostics: dict[str, Any] = {
            "attack": self.name,
            "loss": context.losses,
            "seconds": time.perf_counter() - start,
            "n_windows": objective.n_windows,
            "n_active_windows": objective.n_active_windows,
            "max_abs_change": float(change.max()),
            "mean_abs_change": float(change.mean()),
            **extra,
        }
        return AttackResult(adversarial, diagnostics)

    @abstractmethod
    def _run(self, ctx: AttackContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """Return (adversarial image, attack-specific diagnostics)."""


SourceProgress = Callable[[int, int], None]
"""progress(done, total) of a source-grid attack; may raise to cancel."""


class SourceGridAttack(Attack):
    """An attack on the source volume in HU that changes one organ of a label map on the same grid."""

    @abstractmethod
    def run(
        self,
        source: sitk.Image,
        labels: sitk.Image,
        organ: int,
        organ_name: str | None = None,
        *,
        organ_dice: Callable[[np.ndarray], float] | None = None,
        window_hu: tuple[float, float] | None = None,
        device: torch.device | str = "cpu",
        progress: SourceProgress | None = None,
    ) -> SourceGridResult:
        """Attack the organ of label value `organ` of `labels` (a label map on the grid of `source`).

        `organ_dice(adversarial HU array)` scores a candidate with the model (an attack that searches its
        settings uses it), `window_hu` is the model's HU window (for its SSIM).
        """

    def region_provenance(self) -> dict[str, Any]:
        """How provenance.json describes the region this attack changes: the organ."""
        return {"mode": "organ"}


def attack_class(name: str) -> type[Attack]:
    """The class that implements attack `name` (imported on first use; see `catalogue.AttackEntry`)."""
    module, _, cls = attack_entry(name).implementation.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def make_attack(name: str, preset: str | None = None, **params: Any) -> Attack:
    """Build an attack by name; params (config field names; None = not given) override the preset (None:
    the attack's default preset). Every value is validated by the catalogue (InputError naming the flag)."""
    return attack_class(name)(attack_config(name, preset, **params))
