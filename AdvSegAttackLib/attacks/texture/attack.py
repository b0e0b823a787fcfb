"""Feature-statistics (AdaIN) texture attack (Lee et al., Appl. Sci. 2024) as a registry entry.

Unlike the model-space attacks it is not gradient based and runs on the source grid in HU (`source_space`):
`run_source` changes the texture of one organ slice by slice and leaves every other voxel bit-identical.
The method, and the three ways it differs from the published script, are in `texture/attack.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..base import Attack, AttackContext


def axial_array_axis(image: sitk.Image) -> int:
    """Axis of SimpleITK's (z, y, x) array along which the slices are axial (closest to head-foot)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    index_axis = int(np.argmax(np.abs(direction[2])))  # column k: world direction of index axis k
    return 2 - index_axis


class TextureAttack(Attack):
    """Texture of one organ changed through feature statistics (levels 5/4 reformation, 3-1 modified AdaIN)."""

    name = "texture"
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
        from .cascade import TextureCascade, composite_hu
        from .search import search_texture
        from .weights import load_texture_autoencoders

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
