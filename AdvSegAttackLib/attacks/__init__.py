"""Adversarial attacks on volumetric segmentation: SAA, VAFA (3-D and 2-D), FGSM, BIM, PGD, Gaussian noise,
and the feature-statistics texture attack (source grid, `source_space`).

attack = make_attack("saa", preset="authors-final", steps=5)
result = attack.run(model, image, target, roi_size=(96, 96, 96), overlap=0.5, sw_batch_size=4)
"""

from . import gradient, noise, saa, texture, vafa
from .base import ATTACKS, PRESETS, Attack, AttackConfig, AttackResult, make_attack
from .gradient import BIM, FGSM, PGD
from .noise import GaussianNoise
from .objective import SegmentationObjective
from .saa import SAA2D, SAA3D
from .texture import TextureAttack, TextureConfig
from .vafa import VAFA2D, VAFA3D

__all__ = [
    "ATTACKS",
    "BIM",
    "FGSM",
    "PGD",
    "PRESETS",
    "SAA2D",
    "SAA3D",
    "VAFA2D",
    "VAFA3D",
    "Attack",
    "AttackConfig",
    "AttackResult",
    "GaussianNoise",
    "SegmentationObjective",
    "TextureAttack",
    "TextureConfig",
    "gradient",
    "make_attack",
    "noise",
    "saa",
    "texture",
    "vafa",
]
