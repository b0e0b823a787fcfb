"""Training the project's own CT texture auto-encoders (`advseg train-texture-ae`).

Each level k = 1..5 is a separate encoder/decoder pair with the architecture of the distilled 16x models
(`networks.py`, widths 24/32/64/128/128 at relu1_1..relu5_1), trained for reconstruction of axial CT
slices: loss = MSE(D(E(x)), x) + `feature_weight` * MSE(E(D(E(x))), E(x)) / mean(E(x)^2), the second term
being the feature (perceptual) reconstruction of the published recipe, measured with the level's own
encoder (no VGG is available offline) and normalised by the feature energy so it cannot be lowered by
shrinking the features. These networks are CT auto-encoders with multi-level features learned from CT,
not distilled VGG-19 features.

Slices: HU clipped to `window` (default -135..215 HU, the published one) and scaled to [0,1], resized to
`size` x `size`, grey replicated to 3 channels. Training draws random crops (`crop` pixels) at a random
scale (0.7-1.4) with random horizontal flips. Each level's pair is trained on its own from a fresh
initialisation (or from `init` weights), as the published networks are separate per level.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..attacks.texture.networks import LEVELS, TextureAutoencoders
from ..attacks.texture.weights import OWN_CARD_FILE, OWN_WEIGHTS_FILE
from ..errors import InputError

DEFAULT_WINDOW_HU = (-135.0, 215.0)
SCALE_RANGE = (0.7, 1.4)

# progress(level, step, total, loss)
TextureTrainProgress = Callable[[int, int, int, float], None]


@dataclass
class TextureTrainConfig:
    """Hyper-parameters of `train_texture_autoencoders` (steps are optimiser updates per level)."""

    steps: tuple[int, ...] = (600,)  # one value for every level, or one per level in `levels`
    levels: tuple[int, ...] = LEVELS
    size: int = 256  # slices are resized to size x size pixels (the attack's working size)
    crop: int = 128  # training crop, pixels (multiple of 16)
    batch: int = 4
    learning_rate: float = 5e-4  # Adam, warm-up then cosine decay to 5 %, gradient norm clipped to 1
    feature_weight: float = 0.1
    window_hu: tuple[float, float] = DEFAULT_WINDOW_HU
    seed: int = 0

    def __post_init__(self) -> None:
        self.levels = tuple(sorted(set(self.levels)))
        if not self.levels or any(k not in LEVELS for k in self.levels):
            raise InputError(f"--levels must be among {LEVELS}, got {list(self.levels)}.")
        self.steps = tuple(
            int(n) for n in (self.steps if isinstance(self.steps, Sequence) else (self.steps,))
        )
        if len(self.steps) not in (1, len(self.levels)) or min(self.steps) < 1:
            raise InputError(
                f"--steps needs one positive count or one per level ({len(self.levels)}), got {list(self.steps)}."
            )
        if self.batch < 1:
            raise InputError(f"--batch must be at least 1, got {self.batch}.")
        if self.size < 16 or self.size % 16:
            raise InputError(f"--size must be a positive multiple of 16, got {self.size}.")
        if self.crop < 16 or self.crop % 16 or self.crop > self.size:
            raise InputError(f"--crop must be a multiple of 16 and at most --size, got {self.crop}.")
        if self.learning_rate <= 0:
            raise InputError(f"--learning-rate must be positive, got {self.learning_rate}.")
        if self.feature_weight < 0:
            raise InputError(f"--feature-weight must be >= 0, got {self.feature_weight}.")
        if not self.window_hu[1] > self.window_hu[0]:
            raise InputError(f"--window must be LOW HIGH with HIGH > LOW, got {list(self.window_hu)}.")

    def steps_of(self, level: int) -> int:
        """Optimiser steps of `level`."""
        return self.steps[0] if len(self.steps) == 1 else self.steps[self.levels.index(level)]


@dataclass
class SliceSource:
    """Axial slices of one CT volume used for training or validation (`stop` exclusive, None = to the end)."""

    name: str
    image: sitk.Image
    start: int = 0
    stop: int | None = None
    description: dict = field(default_factory=dict)


_SLAB = re.compile(r"^(?P<path>.+):(?P<start>\d*):(?P<stop>\d*)$")


def parse_volume_spec(spec: str) -> tuple[Path, int, int | None]:
    """`FILE` or `FILE:Z0:Z1` (axial slices Z0..Z1-1 of the volume in LPS order, ends optional)."""
    match = _SLAB.match(spec)
    if match and not Path(spec).exists():
        start = int(match["start"]) if match["start"] else 0
        stop = int(match["stop"]) if match["stop"] else None
        if stop is not None and stop <= start:
            raise InputError(f"{spec}: the slice range {start}:{stop} is empty.")
        return Path(match["path"]), start, stop
    return Path(spec), 0, None


def axial_slices(
    image: sitk.Image, window_hu: Sequence[float], start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Axial slices [Z, Y, X] (LPS order) windowed to [0,1] as float32; `start:stop` selects slices."""
    oriented = sitk.DICOMOrient(image, "LPS")
    hu = sitk.GetArrayFromImage(oriented).astype(np.float32)
    if hu.ndim != 3:
        raise InputError("texture auto-encoders are trained on 3D volumes.")
    low, high = float(window_hu[0]), float(window_hu[1])
    chosen = hu[start:stop]
    if chosen.shape[0] == 0:
        raise InputError(f"slices {start}:{stop} are outside the volume's {hu.shape[0]} axial slices.")
    return np.clip((chosen - low) / (high - low), 0.0, 1.0)


def slices_tensor(slices: np.ndarray, size: int, min_body_fraction: float = 0.05) -> torch.Tensor:
    """[N,1,size,size] tensor of the slices resized (bilinear) to size x size, keeping slices with body."""
    keep = [s for s in slices if float((s > 0).mean()) >= min_body_fraction]
    if not keep:
        return torch.zeros((0, 1, size, size))
    tensor = torch.from_numpy(np.stack(keep))[:, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def gather_slices(sources: Sequence[SliceSource], config: TextureTrainConfig) -> torch.Tensor:
    parts = [
        slices_tensor(axial_slices(s.image, config.window_hu, s.start, s.stop), config.size) for s in sources
    ]
    return torch.cat(parts) if parts else torch.zeros((0, 1, config.size, config.size))


def to_rgb(grey: torch.Tensor) -> torch.Tensor:
    """[N,1,H,W] grey in [0,1] -> [N,3,H,W] (replicated), the networks' input."""
    return grey.expand(-1, 3, -1, -1)


def reconstruct(networks: TextureAutoencoders, grey: torch.Tensor, level: int) -> torch.Tensor:
    """D_k(E_k(x)) as grey [N,1,H,W]: mean of the RGB output, clipped to [0,1]."""
    return networks.decode(networks.encode(to_rgb(grey), level), level).mean(1, keepdim=True).clamp(0, 1)


@torch.no_grad()
def reconstruction_psnr(
    networks: TextureAutoencoders, slices: torch.Tensor, level: int, batch: int = 4
) -> float:
    """Mean per-slice PSNR (dB, data range 1) of the level-`level` round trip on [N,1,H,W] slices in [0,1]."""
    device = next(networks.parameters()).device
    values = []
    for chunk in slices.split(batch):
        chunk = chunk.to(device)
        mse = ((reconstruct(networks, chunk, level) - chunk) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
        values.extend((10 * torch.log10(1.0 / mse)).tolist())
    return float(np.mean(values)) if values else float("nan")


def _random_crops(slices: torch.Tensor, count: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random crops [count,1,crop,crop] at a random scale, randomly flipped left-right."""
    size = slices.shape[-1]
    out = []
    for _ in range(count):
        index = int(torch.randint(len(slices), (1,), generator=generator))
        scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * float(torch.rand(1, generator=generator))
        side = min(size, max(16, round(crop / scale)))
        y0 = int(torch.randint(size - side + 1, (1,), generator=generator))
        x0 = int(torch.randint(size - side + 1, (1,), generator=generator))
        patch = slices[index : index + 1, :, y0 : y0 + side, x0 : x0 + side]
        patch = F.interpolate(patch, size=(crop, crop), mode="bilinear", align_corners=False)
        if float(torch.rand(1, generator=generator)) < 0.5:
            patch = patch.flip(-1)
        out.append(patch)
    return torch.cat(out).clamp(0, 1)


def _initialise(networks: TextureAutoencoders, level: int) -> None:
    """He-normal convs with zero bias, identity `conv0`, and a last decoder conv that starts near grey 0.3.

    (PyTorch's default init shrinks activations through the deep ReLU stacks, so the last ReLU of the
    decoder can start dead and never recover.)
    """
    with torch.no_grad():
        for module in (networks.encoder(level), networks.decoder(level)):
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                    torch.nn.init.zeros_(conv.bias)
        conv0 = networks.encoder(level).conv0
        conv0.weight.copy_(torch.eye(3)[:, :, None, None])
        last = networks.decoder(level).conv11
        last.weight.mul_(0.1)
        last.bias.fill_(0.3)


def _learning_rate_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 10 % of the steps (at most 50), then cosine decay to 5 %.

    (Without the warm-up, Adam's first steps move every weight by the full learning rate, which can kill
    the decoder's last ReLU when fine-tuning trained weights.)
    """
    warm_up = max(1, min(50, steps // 10))
    return min(1.0, (step + 1) / warm_up) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def train_texture_autoencoders(
    train_slices: torch.Tensor,
    config: TextureTrainConfig,
    initial: TextureAutoencoders | None = None,
    device: torch.device | str = "cpu",
    progress: TextureTrainProgress | None = None,
) -> tuple[TextureAutoencoders, dict]:
    """Train the levels in `config.levels` on [N,1,size,size] slices; returns (networks, per-level log).

    Levels not trained are copied from `initial` (required when `config.levels` is not all five levels).
    """
    if len(train_slices) == 0:
        raise InputError("no training slices: give --image volumes with body in them, or --phantoms N.")
    if initial is None and set(config.levels) != set(LEVELS):
        raise InputError("training only some --levels needs --init weights for the other levels.")
    if initial is not None and initial.size != "16x":
        raise InputError(f"--init {initial.source}: only 16x-sized weights can be trained here.")
    torch.manual_seed(config.seed)
    networks = TextureAutoencoders(size="16x", source="training")
    if initial is not None:
        networks.load_state_dict(initial.state_dict())
    networks.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    log: dict[int, dict] = {}
    for level in config.levels:
        steps = config.steps_of(level)
        if initial is None:
            _initialise(networks, level)
        encoder, decoder = networks.encoder(level), networks.decoder(level)
        parameters = [*encoder.parameters(), *decoder.parameters()]
        for parameter in parameters:
            parameter.requires_grad_(True)
        encoder.train()
        decoder.train()
        optimiser = torch.optim.Adam(parameters, lr=config.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, partial(_learning_rate_factor, steps=steps))
        started = time.monotonic()
        recent: list[float] = []
        for step in range(1, steps + 1):
            grey = _random_crops(train_slices, config.batch, config.crop, generator).to(device)
            image = to_rgb(grey)
            features = encoder(image)
            output = decoder(features)
            loss = F.mse_loss(output, image)
            if config.feature_weight > 0:
                target = features.detach()
                loss = loss + config.feature_weight * F.mse_loss(encoder(output), target) / (
                    target.pow(2).mean() + 1e-8
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimiser.step()
            schedule.step()
            recent = (recent + [loss.item()])[-50:]
            if progress is not None:
                progress(level, step, steps, float(np.mean(recent)))
        for parameter in parameters:
            parameter.requires_grad_(False)
        log[level] = {"steps": steps, "final_loss": float(np.mean(recent)),
                      "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    networks.freeze()
    return networks, log


def save_texture_autoencoders(networks: TextureAutoencoders, card: dict, folder: Path) -> Path:
    """Write `autoencoders.safetensors` and `card.json` into `folder` (all or nothing); returns the folder."""
    from safetensors.torch import save_file

    from ..volumes.io import staged_output_dir, write_json_atomic

    state = {k: v.detach().cpu().contiguous() for k, v in networks.state_dict().items()}
    with staged_output_dir(folder) as staging:
        save_file(state, str(staging / OWN_WEIGHTS_FILE), metadata={"format": "pt", "size": networks.size})
        write_json_atomic(staging / OWN_CARD_FILE, {**card, "size": networks.size})
    return Path(folder)


def config_dict(config: TextureTrainConfig) -> dict:
    data = asdict(config)
    data["levels"] = list(config.levels)
    data["steps"] = list(config.steps)
    data["window_hu"] = list(config.window_hu)
    return data
