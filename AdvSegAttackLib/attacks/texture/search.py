"""Black-box search of the texture attack: the setting that lowers the organ's Dice most at a given SSIM.

The attack has no gradient, so the search tries settings. For every (noise_mu, noise_sigma) of a small grid
it runs levels 3-1 once (levels 5 and 4 do not depend on them and are run once for the whole search), then
takes the largest blend of `BLENDS` whose 3-D SSIM inside the organ's bounding box (the `region` SSIM of
metrics.json: the box grown to at least 11 voxels per axis, the model's HU window, data range 1) is at least
`ssim_floor`, and segments that volume to get the organ's Dice. The setting with the lowest Dice wins;
every evaluated setting is returned in order as the search path. When no setting reaches the floor the
search reports so and returns the unchanged volume's setting (blend 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...evaluation.metrics import SSIM3D_TAPS, region_box, ssim3d, to_model_units
from .cascade import TextureCascade, composite_hu

NOISE_MU_GRID = (0.3, 0.6, 1.0, 1.4)  # multipliers of the organ's feature mean
NOISE_SIGMA_GRID = (0.3, 1.0, 1.7)  # multipliers of the organ's feature std
BLENDS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)  # tried from the strongest down


@dataclass
class SearchResult:
    """The best setting (noise_mu, noise_sigma, blend, dice, ssim), its volume and the path of all settings."""

    best: dict[str, Any]
    adversarial_hu: np.ndarray
    path: list[dict[str, Any]]
    diagnostics: dict[str, Any]


def organ_box_ssim(
    clean_hu: np.ndarray, adversarial_hu: np.ndarray, organ: np.ndarray, window_hu: tuple[float, float]
) -> float:
    """3-D SSIM of the two volumes in the organ's bounding box (as the `region` SSIM of metrics.json)."""
    box = region_box(organ, SSIM3D_TAPS)
    return ssim3d(to_model_units(clean_hu[box], window_hu), to_model_units(adversarial_hu[box], window_hu))


def search_texture(
    cascade: TextureCascade,
    organ_dice: Callable[[np.ndarray], float],
    window_hu: tuple[float, float],
    ssim_floor: float,
    noise_mu_grid: Sequence[float] = NOISE_MU_GRID,
    noise_sigma_grid: Sequence[float] = NOISE_SIGMA_GRID,
    blends: Sequence[float] = BLENDS,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Search (noise_mu, noise_sigma, blend) for the lowest `organ_dice(adversarial HU volume)` at
    organ-box SSIM >= `ssim_floor`; `window_hu` is the model's window (for the SSIM)."""
    source = np.asarray(cascade.hu)
    organ = cascade.weight > 0
    settings = [(mu, sigma) for mu in noise_mu_grid for sigma in noise_sigma_grid]
    path: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_volume = source
    for index, (mu, sigma) in enumerate(settings):
        change = cascade.perturbation(mu, sigma)
        entry: dict[str, Any] = {"noise_mu": mu, "noise_sigma": sigma, "blend": None, "dice": None}
        tried = []
        for blend in blends:
            candidate = composite_hu(source, change.delta_hu, blend)
            ssim = organ_box_ssim(source, candidate, organ, window_hu)
            tried.append({"blend": blend, "ssim": ssim})
            if ssim >= ssim_floor:
                entry.update(blend=blend, ssim=ssim, dice=float(organ_dice(candidate)))
                if best is None or entry["dice"] < best["dice"]:
                    best, best_volume = dict(entry), candidate
                break
        entry["ssim_by_blend"] = tried
        path.append(entry)
        if progress is not None:
            progress(index + 1, len(settings))
    feasible = best is not None
    if best is None:
        best = {"noise_mu": None, "noise_sigma": None, "blend": 0.0, "ssim": 1.0, "dice": organ_dice(source)}
    diagnostics = {
        "ssim_floor": ssim_floor,
        "feasible": feasible,
        "noise_mu_grid": list(noise_mu_grid),
        "noise_sigma_grid": list(noise_sigma_grid),
        "blends": list(blends),
        "evaluations": sum(entry["dice"] is not None for entry in path),
    }
    return SearchResult(best, best_volume, path, diagnostics)
