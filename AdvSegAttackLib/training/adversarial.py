"""Adversarial training: attacks on training crops against a frozen copy of the current weights, and VAFT's
frequency-regularised objective (Hanif et al., MICCAI 2023; published `trainer.py` of asif-hanif/vafa).

Every training step:

* the current weights are copied into a frozen network (eval mode, no parameter gradients) and every crop of
  the batch is attacked on its own by any attack of the suite (`make_attack`). A crop of exactly the ROI size
  is one sliding window, so the attack's objective is that window's DiceCE to the crop's label. As in
  `advseg attack`, only voxels strictly inside the HU window (model intensity in (0, 1)) may change;
* vanilla adversarial training (`freq_reg=False`): loss = DiceCE(f(x_adv), y);
* frequency-regularised (`freq_reg=True`): loss = DiceCE(f(x), y) + DiceCE(f(x_adv), y) + L_fr with
  L_fr = ‖DCT(z) − DCT(z_adv)‖₁ / ‖DCT(z)‖₁ on the logits z = f(x), z_adv = f(x_adv) of the network in train
  mode. As published: DCT = orthonormal 3-D DCT-II over the whole crop (the published code splits the logits
  into one block of crop size), no centring, all channels; both sums run over the whole batch; the gradient
  flows through z and z_adv (numerator and denominator); all weights are 1.

The DiceCE terms are `advseg train`'s loss (MONAI `DiceCELoss(to_onehot_y, softmax)`); the attacks drive their
own objective (the squared-prediction DiceCE of `advseg attack`).

Deliberate differences from the published code: only in-window voxels are attacked (see above); each crop is
attacked separately with its own seed (the published attacks take the batch at once; with per-crop variables
and sign updates that is the same per crop, up to the random draws); clean and adversarial crops go through
the network as one batch (equal for the instance/group norms of the architectures here); no AMP; SAA works
(the published SAA-based training fails an assertion).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..attacks.base import ModelSpaceAttack, make_attack
from ..attacks.catalogue import ATTACKS, model_space_attacks
from ..attacks.dct import dct3
from ..errors import InputError

DEFAULT_ATTACK = "pgd"


def training_attacks() -> list[str]:
    """Attacks that work on model-space crops (not those that need the source grid, like `texture`)."""
    return sorted(model_space_attacks())


def frequency_regularisation(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """‖DCT(z) − DCT(z_adv)‖₁ / ‖DCT(z)‖₁ over the batch; logits [n, C, X, Y, Z], DCT over the whole crop."""
    if clean_logits.shape != adversarial_logits.shape:
        raise ValueError(
            f"clean logits {tuple(clean_logits.shape)} and adversarial logits "
            f"{tuple(adversarial_logits.shape)} differ in shape."
        )
    clean = dct3(clean_logits)
    return (clean - dct3(adversarial_logits)).abs().sum() / clean.abs().sum()


def parse_attack_params(attack: str, items: Sequence[str]) -> dict[str, Any]:
    """`["eps=4", "steps=3", "use-ssim-loss=false"]` → parameters of `attack`, typed as the catalogue says."""
    if attack not in training_attacks():
        raise InputError(
            f"--train-attack {attack!r} cannot attack training crops; choose one of {', '.join(training_attacks())}."
        )
    parameters = {p.name: p for p in ATTACKS[attack].parameters}
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or not text.strip():
            raise InputError(f"--train-attack-param {item!r} is not of the form name=value (e.g. eps=4).")
        if name not in parameters:
            raise InputError(
                f"--train-attack-param {key.strip()!r} is not a parameter of --train-attack {attack} "
                f"({', '.join(n.replace('_', '-') for n in parameters)})."
            )
        try:
            value = parameters[name].parse(text.strip())
        except ValueError:
            raise InputError(
                f"--train-attack-param {item!r}: {text.strip()!r} is not a {parameters[name].type} value."
            ) from None
        params[name] = value
    return params


@dataclass
class AdversarialTraining:
    """What `train` needs for adversarial training: the attack (with its parameters) and the objective."""

    attack: ModelSpaceAttack
    freq_reg: bool = False
    preset: str | None = None

    @classmethod
    def from_options(
        cls, attack: str, params: Sequence[str] = (), preset: str | None = None, freq_reg: bool = False
    ) -> AdversarialTraining:
        """From CLI-style options (`--train-attack`, `--train-attack-param`, `--train-attack-preset`)."""
        return cls(make_attack(attack, preset, **parse_attack_params(attack, params)), freq_reg, preset)

    def provenance(self) -> dict[str, Any]:
        """The training attack, every parameter with its unit, and the objective, for the card."""
        objective = (
            "DiceCE(clean) + DiceCE(adv) + |DCT(z) - DCT(z_adv)|_1 / |DCT(z)|_1 on logits z "
            "(orthonormal 3-D DCT over the whole crop)"
            if self.freq_reg
            else "DiceCE(adv)"
        )
        return {
            "attack": self.attack.name,
            "preset": self.preset,
            "parameters": self.attack.config.to_dict(),
            "objective": objective,
            "frequency_regularisation": self.freq_reg,
            "generated_on": "each crop, against a frozen copy of the current weights (eval mode), "
            "label = the crop's reference, only voxels inside the HU window",
        }


class CropAttacker:
    """Attacks training crops with `attack` against a frozen copy of a network, refreshed before each batch."""

    def __init__(self, network: torch.nn.Module, attack: ModelSpaceAttack, device: torch.device | str):
        self.attack = attack
        self.device = torch.device(device)
        self.frozen = copy.deepcopy(network).to(self.device).eval()
        for parameter in self.frozen.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def refresh(self, network: torch.nn.Module) -> None:
        """Copy the current weights (and buffers) of `network` into the frozen copy."""
        self.frozen.load_state_dict(network.state_dict())

    def __call__(
        self, network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int
    ) -> torch.Tensor:
        """Adversarial crops [n, 1, X, Y, Z] for images/labels [n, 1, X, Y, Z]; crop i uses seed `seed + i`.

        A crop without any voxel inside the HU window cannot be attacked and is returned unchanged.
        """
        self.refresh(network)
        images = images.detach().as_subclass(torch.Tensor).to(self.device, torch.float32)
        labels = labels.detach().as_subclass(torch.Tensor).to(self.device).long()
        adversarial = images.clone()
        for i in range(images.shape[0]):
            image = images[i : i + 1]
            region = (image > 0) & (image < 1)
            if not region.any():
                continue
            result = self.attack.run(
                self.frozen,
                image,
                labels[i : i + 1],
                roi_size=tuple(image.shape[2:]),
                overlap=0.0,
                sw_batch_size=1,
                region=region,
                seed=int(seed) + i,
                device=self.device,
            )
            adversarial[i : i + 1] = result.adversarial
        return adversarial


def adversarial_loss(
    model: torch.nn.Module,
    loss_function: torch.nn.Module,
    images: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    freq_reg: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss to minimise, its terms) of vanilla or frequency-regularised adversarial training (module doc).

    `model` is the network in train mode (or its DistributedDataParallel wrapper): one forward pass.
    """
    if not freq_reg:
        loss = loss_function(model(adversarial), labels)
        return loss, {"dice_ce_adv": float(loss.detach())}
    logits = model(torch.cat([images, adversarial]))
    clean_logits, adversarial_logits = logits[: len(images)], logits[len(images) :]
    clean = loss_function(clean_logits, labels)
    attacked = loss_function(adversarial_logits, labels)
    regulariser = frequency_regularisation(clean_logits, adversarial_logits)
    terms = {
        "dice_ce_clean": float(clean.detach()),
        "dice_ce_adv": float(attacked.detach()),
        "freq_reg": float(regulariser.detach()),
    }
    return clean + attacked + regulariser, terms
