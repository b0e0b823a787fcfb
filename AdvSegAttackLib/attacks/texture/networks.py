"""Encoder/decoder pairs of the feature-statistics texture attack (levels 1-5, VGG-19 layout).

Level k has its own encoder E_k (RGB in [0,1] -> relu{k}_1 features) and its own decoder D_k (mirror image,
features -> RGB), as in Texture Reformer and the Collaborative-Distillation 16x models: the published code
loads ten separate networks and never shares a trunk between levels, and so does this module.

Layer names and layout follow the published classes (`Encoder{k}`/`Decoder{k}` of Texture Reformer's
`model.py`, `SmallEncoder{k}_16x_aux`/`SmallDecoder{k}_16x` of its `small_model_16x.py`):

- encoder: 1x1 `conv0` (3->3), then reflection pad 1 -> 3x3 conv -> ReLU per layer, 2x2 max-pool before
  every `conv{b}1` with b >= 2; level k ends at `conv{k}1` (relu{k}_1);
- decoder: the same convs in reverse order (in/out channels swapped), ReLU after every conv (also the last,
  so the output is >= 0 but not bounded above), nearest-neighbour x2 upsampling after every `conv{b}1`
  with b >= 2.

Only the channel widths differ between the two published sizes (`FULL_WIDTHS`, `SMALL_16X_WIDTHS`); the
distilled encoders also hold `*_aux` 1x1 convolutions used only in distillation training, which are not
part of these networks (the loader in `weights.py` drops them).
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = (1, 2, 3, 4, 5)

# VGG-19 conv layers up to conv5_1, in forward order, grouped by block.
_BLOCKS: tuple[tuple[str, ...], ...] = (
    ("conv11", "conv12"),
    ("conv21", "conv22"),
    ("conv31", "conv32", "conv33", "conv34"),
    ("conv41", "conv42", "conv43", "conv44"),
    ("conv51",),
)

# Output channels of every conv layer.
FULL_WIDTHS = {
    "conv11": 64, "conv12": 64, "conv21": 128, "conv22": 128,
    "conv31": 256, "conv32": 256, "conv33": 256, "conv34": 256,
    "conv41": 512, "conv42": 512, "conv43": 512, "conv44": 512, "conv51": 512,
}  # fmt: skip
SMALL_16X_WIDTHS = {
    "conv11": 16, "conv12": 16, "conv21": 32, "conv22": 32,
    "conv31": 64, "conv32": 64, "conv33": 64, "conv34": 64,
    "conv41": 128, "conv42": 128, "conv43": 128, "conv44": 128, "conv51": 128,
}  # fmt: skip
# The distilled level-1 encoder is wider than the first layer of the deeper ones.
SMALL_16X_LEVEL1_CONV11 = 24


def encoder_layers(level: int) -> list[str]:
    """Conv names of the level-`level` encoder after `conv0`, in forward order (ends at conv{level}1)."""
    _check_level(level)
    names = [name for block in _BLOCKS[: level - 1] for name in block]
    return [*names, _BLOCKS[level - 1][0]]


def _check_level(level: int) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def level_widths(size: str, level: int) -> dict[str, int]:
    """Output channels of every encoder conv of `level` for `size` ("full" or "16x")."""
    if size == "full":
        return dict(FULL_WIDTHS)
    if size == "16x":
        widths = dict(SMALL_16X_WIDTHS)
        if level == 1:
            widths["conv11"] = SMALL_16X_LEVEL1_CONV11
        return widths
    raise ValueError(f"size must be 'full' or '16x', got {size!r}")


class Encoder(nn.Module):
    """E_k: RGB [N,3,H,W] in [0,1] -> relu{k}_1 features [N,C,H/2^(k-1),W/2^(k-1)] (H, W multiples of 2^(k-1))."""

    def __init__(self, level: int, widths: dict[str, int]) -> None:
        super().__init__()
        self.level = level
        self.layers = encoder_layers(level)
        self.conv0 = nn.Conv2d(3, 3, 1, 1, 0)
        channels = 3
        for name in self.layers:
            self.add_module(name, nn.Conv2d(channels, widths[name], 3, 1, 0))
            channels = widths[name]
        self.out_channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = self.conv0(image)
        for name in self.layers:
            if name.endswith("1") and name != "conv11":
                y = nn.functional.max_pool2d(y, 2, 2)
            y = torch.relu(getattr(self, name)(nn.functional.pad(y, (1, 1, 1, 1), mode="reflect")))
        return y


class Decoder(nn.Module):
    """D_k: relu{k}_1 features -> RGB [N,3,H,W] (>= 0; ReLU on the last conv as published)."""

    def __init__(self, level: int, widths: dict[str, int]) -> None:
        super().__init__()
        self.level = level
        forward_layers = encoder_layers(level)
        inputs = {name: widths[prev] for prev, name in zip(forward_layers, forward_layers[1:], strict=False)}
        inputs[forward_layers[0]] = 3
        self.layers = list(reversed(forward_layers))
        for name in self.layers:
            self.add_module(name, nn.Conv2d(widths[name], inputs[name], 3, 1, 0))
        self.in_channels = widths[forward_layers[-1]]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y = features
        for name in self.layers:
            y = torch.relu(getattr(self, name)(nn.functional.pad(y, (1, 1, 1, 1), mode="reflect")))
            if name.endswith("1") and name != "conv11":
                y = nn.functional.interpolate(y, scale_factor=2, mode="nearest")
        return y


class TextureAutoencoders(nn.Module):
    """Encoders E1..E5 (RGB [N,3,H,W] in [0,1] -> relu{k}_1 features) and decoders D1..D5 (features -> RGB).

    `size` is "16x" (distilled and the project's own CT models) or "full" (Texture Reformer's VGG-19).
    `source` says where the weights came from: "bundled:ct-16x", "ct-16x:<folder>",
    "distilled-16x:<folder>", "texture-reformer:<folder>" or "random" (freshly initialised).
    Images need H and W divisible by 16 for a lossless round trip at level 5 (2^(k-1) at level k).
    """

    def __init__(self, size: str = "16x", source: str = "random") -> None:
        super().__init__()
        self.size = size
        self.source = source
        self.encoders = nn.ModuleDict({f"E{k}": Encoder(k, level_widths(size, k)) for k in LEVELS})
        self.decoders = nn.ModuleDict({f"D{k}": Decoder(k, level_widths(size, k)) for k in LEVELS})

    def encoder(self, level: int) -> Encoder:
        _check_level(level)
        return self.encoders[f"E{level}"]

    def decoder(self, level: int) -> Decoder:
        _check_level(level)
        return self.decoders[f"D{level}"]

    def encode(self, image: torch.Tensor, level: int) -> torch.Tensor:
        """relu{level}_1 features of `image` ([N,3,H,W], values in [0,1])."""
        return self.encoder(level)(image)

    def decode(self, features: torch.Tensor, level: int) -> torch.Tensor:
        """RGB image [N,3,H,W] (about [0,1], >= 0) from level-`level` features."""
        return self.decoder(level)(features)

    def feature_channels(self, level: int) -> int:
        """Channels of the level-`level` features (16x: 24/32/64/128/128; full: 64/128/256/512/512)."""
        return self.encoder(level).out_channels

    def downsampling(self, level: int) -> int:
        """Spatial factor between the image and the level-`level` features (1, 2, 4, 8, 16)."""
        _check_level(level)
        return 2 ** (level - 1)

    def freeze(self) -> TextureAutoencoders:
        """Eval mode, no gradients, float32 (how every loader returns the networks)."""
        self.float().eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
