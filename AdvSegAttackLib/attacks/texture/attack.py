"""The feature-statistics (AdaIN) texture attack (Lee et al., Appl. Sci. 2024): the catalogue's `texture`.

Unlike the model-space attacks it is not gradient based and runs on the source grid in HU (a
`SourceGridAttack`): it changes the texture of one organ slice by slice and leaves every other voxel
bit-identical. The method, and the three ways it differs from the published script, are in `cascade`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..base import SourceGridAttack, SourceGridResult, SourceProgress
from .cascade import TextureCascade, composite_hu
from .search import search_texture
from .weights import load_texture_autoencoders


def axial_array_axis(image: sitk.Image) -> int:
    """Axis of SimpleITK's (z, y, x) array along which the slices are axial (closest to head-foot)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    index_axis = int(np.argmax(np.abs(direction[2])))  # column k: world direction of index axis k
    return 2 - index_axis


class TextureAttack(SourceGridAttack):
    """Texture of one organ changed through feature statistics (levels 5/4 reformation, 3-1 modified AdaIN)."""

    name = "texture"

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
        """The organ of label value `organ` with a new texture. With `search`, `organ_dice(adversarial HU
        array)` scores a candidate and `window_hu` is the window of its SSIM (both required then)."""
        config = self.config
        networks = load_texture_autoencoders(config.weights, device)
        hu = sitk.GetArrayFromImage(source)
        cascade = TextureCascade(
            hu,
            tuple(reversed(source.GetSpacing())),
            sitk.GetArrayFromImage(labels),
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
        return SourceGridResult(image, diagnostics)

    def region_provenance(self) -> dict[str, Any]:
        """The organ, feathered inwards over `feather_mm`."""
        return {"mode": "organ", "feather_mm": self.config.feather_mm}
