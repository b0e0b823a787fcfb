"""Feature-statistics (AdaIN) texture attack (Lee et al., Appl. Sci. 2024) as a registry entry.

Unlike the model-space attacks it is not gradient based and runs on the source grid in HU (`source_space`):
`run_source` changes the texture of one organ slice by slice and leaves every other voxel bit-identical.
The method, and the three ways it differs from the published script, are in `texture/attack.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .base import Attack, AttackConfig, AttackContext, is_number, option, register, require

OUTPUT_MAPPINGS = ("window", "fit")


@dataclass
class TextureConfig(AttackConfig):
    """Published options (defaults of the published script) and the project's CT-volume options."""

    coarse_alpha: float = option(1.0, "--coarse-alpha", "blend weight in [0, 1]", "level-5 reformation blend")
    fine_alpha: float = option(1.0, "--fine-alpha", "blend weight in [0, 1]", "level-4 reformation blend")
    concat_weight: float = option(
        50.0, "--concat-weight", "dimensionless weight", "weight of the semantic (label map) features"
    )
    coarse_psize: int = option(0, "--coarse-psize", "feature pixels (0 = global view)", "level-5 patch size")
    fine_psize: int = option(3, "--fine-psize", "feature pixels (0 = global view)", "level-4 patch size")
    enhance_alpha: float = option(
        1.0, "--enhance-alpha", "blend weight in [0, 1]", "blend of the modified AdaIN at levels 3-1"
    )
    noise_mu: float = option(
        0.3, "--noise-mu", "multiplier of the organ's feature mean", "modified AdaIN target mean factor"
    )
    noise_sigma: float = option(
        0.3, "--noise-sigma", "multiplier of the organ's feature std", "modified AdaIN target std factor"
    )
    reformation: bool = option(
        True, "--reformation", "on/off", "run levels 5 and 4 (semantic-guided texture reformation)"
    )
    weights: str = option(
        "bundled",
        "--weights",
        "'bundled' or a folder of weights",
        "texture auto-encoders: bundled CT ones, distilled 16x folder or Texture-Reformer E1..D5 folder",
    )
    feather_mm: float = option(4.0, "--feather-mm", "mm", "inward feathering of the organ mask")
    window_low_hu: float = option(-135.0, "--window-low", "HU", "low end of the network input window")
    window_high_hu: float = option(215.0, "--window-high", "HU", "high end of the network input window")
    working_size: int = option(
        256, "--working-size", "pixels (multiple of 16)", "slices are resized to this square size"
    )
    output_mapping: str = option(
        "window",
        "--output-mapping",
        "'window' or 'fit'",
        "back to HU: inverse window, or with a gain/offset fitted outside the organ",
    )
    blend: float = option(1.0, "--blend", "fraction in [0, 1]", "strength of the compositing into the CT")
    search: bool = option(
        False, "--search", "on/off", "black-box search of noise_mu, noise_sigma, blend (lowest organ Dice)"
    )
    ssim_floor: float = option(
        0.90, "--ssim-floor", "SSIM (data range 1)", "search: minimum 3-D SSIM in the organ bounding box"
    )

    def __post_init__(self) -> None:
        for name in ("coarse_alpha", "fine_alpha", "enhance_alpha", "blend"):
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            require(is_number(value) and 0 <= value <= 1, f"{flag} must be in [0, 1], got {value!r}.")
        for name in ("noise_mu", "noise_sigma", "concat_weight", "feather_mm"):
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            require(is_number(value) and value >= 0, f"{flag} must be a number >= 0, got {value!r}.")
        for name in ("coarse_psize", "fine_psize"):
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            require(
                ok, f"--{name.replace('_', '-')} must be an integer >= 0 (0 = global view), got {value!r}."
            )
        size = self.working_size
        ok = isinstance(size, int) and not isinstance(size, bool) and size >= 32 and size % 16 == 0
        require(ok, f"--working-size must be a multiple of 16 of at least 32 pixels, got {size!r}.")
        low, high = self.window_low_hu, self.window_high_hu
        require(
            is_number(low) and is_number(high) and low < high,
            f"--window-low {low!r} must be below --window-high {high!r} (HU).",
        )
        require(
            self.output_mapping in OUTPUT_MAPPINGS,
            f"--output-mapping must be one of {', '.join(OUTPUT_MAPPINGS)}, got {self.output_mapping!r}.",
        )
        require(
            is_number(self.ssim_floor) and 0 < self.ssim_floor <= 1,
            f"--ssim-floor must be in (0, 1], got {self.ssim_floor!r}.",
        )
        require(
            isinstance(self.weights, str) and bool(self.weights),
            "--weights must be 'bundled' or a folder.",
        )


def axial_array_axis(image: sitk.Image) -> int:
    """Axis of SimpleITK's (z, y, x) array along which the slices are axial (closest to head-foot)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    index_axis = int(np.argmax(np.abs(direction[2])))  # column k: world direction of index axis k
    return 2 - index_axis


@register
class TextureAttack(Attack):
    """Texture of one organ changed through feature statistics (levels 5/4 reformation, 3-1 modified AdaIN)."""

    name = "texture"
    Config = TextureConfig
    needs_gradient = False
    source_space = True

    def _run(self, ctx: AttackContext) -> tuple[torch.Tensor, dict[str, Any]]:
        raise TypeError("the texture attack runs on the source grid: call run_source (the pipeline does).")

    def run_source(
        self,
        source: sitk.Image,
        labels: sitk.Image,
        organ: int,
        organ_name: str | None = None,
        *,
        organ_dice: Callable[[np.ndarray], float] | None = None,
        window_hu: tuple[float, float] | None = None,
        device: torch.device | str = "cpu",
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[sitk.Image, dict[str, Any]]:
        """(adversarial image on the source grid, diagnostics) for the organ of label value `organ`.

        `labels` is a label map on the source grid (reference or clean prediction). With `search`,
        `organ_dice(adversarial HU array)` scores a candidate and `window_hu` is the window of its SSIM.
        """
        from ..texture.attack import TextureCascade, composite_hu
        from ..texture.search import search_texture
        from ..texture.weights import load_texture_autoencoders

        config = self.config
        networks = load_texture_autoencoders(config.weights, device)
        hu = sitk.GetArrayFromImage(source)
        label_array = sitk.GetArrayFromImage(labels)
        spacing = tuple(reversed(source.GetSpacing()))
        cascade = TextureCascade(
            hu,
            spacing,
            label_array,
            organ,
            config,
            networks,
            device,
            axial_array_axis(source),
            organ_name,
            None if config.search else progress,
        )
        diagnostics: dict[str, Any] = {"attack": self.name, "weights": networks.source}
        if config.search:
            if organ_dice is None or window_hu is None:
                raise ValueError("the search needs organ_dice and window_hu")
            result = search_texture(cascade, organ_dice, window_hu, config.ssim_floor, progress=progress)
            adversarial = result.adversarial_hu
            diagnostics["search"] = {"best": result.best, "path": result.path, **result.diagnostics}
        else:
            change = cascade.perturbation(config.noise_mu, config.noise_sigma)
            adversarial = composite_hu(hu, change.delta_hu, config.blend)
            diagnostics.update(change.diagnostics)
        image = sitk.GetImageFromArray(adversarial)
        image.CopyInformation(source)
        return image, diagnostics
