"""Feature transforms of the texture attack: patch-based texture reformation and the modified AdaIN.

Pure tensor functions on feature maps [N, C, h, w] (any device, float32), written from the published
descriptions (Texture Reformer, Wang et al. 2022; Lee et al., Appl. Sci. 2024):

- `texture_reformation` (levels 5 and 4): "view-specific texture reformation" with semantic guidance by
  concatenation. Content and style features are standardised per channel, the (unstandardised) features of
  the semantic maps are appended with weight `concat_weight`, the style map is cut into p x p patches
  (stride 1), every content patch takes the style patch of highest normalised cross-correlation, and the
  raw style patches are pasted back with overlaps averaged; the result is blended with the content by
  `alpha`. Patch size 0 is the "global view": p = min(h, w) - 1.
- `modified_adain` (levels 3-1): target std = `noise_sigma` x style std, target mean = `noise_mu` x style
  mean, blended with the content by `alpha`; with (1, 1) it is plain AdaIN, with (k, k) it is k x AdaIN.
- `FeatureStatistics`: per-channel mean and std (unbiased variance + 1e-5, as published) accumulated over
  the masked positions of any number of feature maps, so that one organ's statistics can be shared by all
  of its slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VARIANCE_EPS = 1e-5  # added to the variance before the square root (published value)


class FeatureStatistics:
    """Per-channel mean and std over the (weighted) positions of several feature maps [N, C, h, w].

    `add(features, weight)` accumulates sums in float64; `weight` [N, 1, h, w] (>= 0; None = all ones)
    selects the positions. std = sqrt(unbiased variance + 1e-5), as `calc_mean_std` of the published code,
    which it equals when one whole map is added without weights.
    """

    def __init__(self) -> None:
        self.count = 0.0
        self.sum: torch.Tensor | None = None
        self.sum_sq: torch.Tensor | None = None

    def add(self, features: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        values = features.detach().double()
        w = (
            torch.ones_like(values[:, :1])
            if weight is None
            else weight.detach().double().expand_as(values[:, :1])
        )
        total = w.sum()
        if float(total) <= 0.0:
            return
        weighted = values * w
        s = weighted.sum(dim=(0, 2, 3))
        s2 = (weighted * values).sum(dim=(0, 2, 3))
        self.count += float(total)
        self.sum = s if self.sum is None else self.sum + s
        self.sum_sq = s2 if self.sum_sq is None else self.sum_sq + s2

    @property
    def empty(self) -> bool:
        return self.sum is None

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), each [1, C, 1, 1] float32 on the device of the added features."""
        if self.sum is None or self.sum_sq is None:
            raise ValueError("no position was added to the statistics")
        mean = self.sum / self.count
        variance = (self.sum_sq - self.count * mean * mean).clamp_min(0.0) / max(self.count - 1.0, 1.0)
        std = (variance + VARIANCE_EPS).sqrt()
        return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def channel_mean_std(
    features: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) [1, C, 1, 1] of `features` over the positions selected by `weight`."""
    statistics = FeatureStatistics()
    statistics.add(features, weight)
    return statistics.mean_std()


def standardise(features: torch.Tensor) -> torch.Tensor:
    """Each map's channels minus their mean, divided by their std (per map of the batch)."""
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = (features.flatten(2).var(dim=2, unbiased=True).unsqueeze(-1).unsqueeze(-1) + VARIANCE_EPS).sqrt()
    return (features - mean) / std


def modified_adain(
    content: torch.Tensor,
    content_stats: tuple[torch.Tensor, torch.Tensor],
    style_stats: tuple[torch.Tensor, torch.Tensor],
    noise_mu: float,
    noise_sigma: float,
    alpha: float = 1.0,
) -> torch.Tensor:
    """alpha * (noise_sigma * std_s * (F_c - mean_c) / std_c + noise_mu * mean_s) + (1 - alpha) * F_c.

    The statistics are given (e.g. of one organ over all its slices), so the same per-channel affine map is
    applied to every position and every slice.
    """
    content_mean, content_std = content_stats
    style_mean, style_std = style_stats
    transformed = (noise_sigma * style_std) * (content - content_mean) / content_std + noise_mu * style_mean
    return alpha * transformed + (1.0 - alpha) * content


def global_view_patch_size(content: torch.Tensor, style: torch.Tensor) -> int:
    """Patch size of the "global view" (psize 0): the smallest side of the two maps minus one (at least 1)."""
    return max(1, min(content.shape[-2], content.shape[-1], style.shape[-2], style.shape[-1]) - 1)


def _reform_one(
    content_fused: torch.Tensor, style_fused: torch.Tensor, style_raw: torch.Tensor, patch: int
) -> torch.Tensor:
    """One map: every content patch takes the best-correlated style patch; raw style patches pasted, averaged."""
    h, w = content_fused.shape[-2:]
    style_columns = F.unfold(style_fused, patch)[0]  # [C' p p, L_style]
    style_columns = style_columns / (style_columns.norm(dim=0, keepdim=True) + 1e-7)
    content_columns = F.unfold(content_fused, patch)[0]  # [C' p p, L_content]
    best = (style_columns.t() @ content_columns).argmax(dim=0)  # [L_content]
    chosen = F.unfold(style_raw, patch)[0][:, best]  # [C p p, L_content]
    pasted = F.fold(chosen[None], (h, w), patch)
    overlaps = F.fold(torch.ones_like(chosen[:1]).expand(patch * patch, -1)[None], (h, w), patch)
    return pasted / overlaps


def texture_reformation(
    content: torch.Tensor,
    style: torch.Tensor,
    content_semantic: torch.Tensor,
    style_semantic: torch.Tensor,
    patch_size: int,
    alpha: float,
    concat_weight: float,
) -> torch.Tensor:
    """Semantic-guided patch-based texture reformation of `content` [N, C, h, w] with patches of `style`.

    `content_semantic`/`style_semantic` are the encoder features of the semantic maps (same size as the
    features). `patch_size` 0 = global view. The output is `alpha * reformed + (1 - alpha) * content`.
    """
    if content.shape[:2] != style.shape[:2]:
        raise ValueError(f"content {tuple(content.shape)} and style {tuple(style.shape)} differ in N or C")
    patch = global_view_patch_size(content, style) if patch_size == 0 else int(patch_size)
    patch = min(patch, content.shape[-2], content.shape[-1], style.shape[-2], style.shape[-1])
    content_fused = torch.cat((standardise(content), concat_weight * content_semantic), dim=1)
    style_fused = torch.cat((standardise(style), concat_weight * style_semantic), dim=1)
    reformed = torch.cat(
        [
            _reform_one(content_fused[i : i + 1], style_fused[i : i + 1], style[i : i + 1], patch)
            for i in range(content.shape[0])
        ]
    )
    return alpha * reformed + (1.0 - alpha) * content
