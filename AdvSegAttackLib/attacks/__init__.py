"""Adversarial attacks on volumetric segmentation: SA², VAFA (3-D and 2-D), FGSM, BIM, PGD, SegPGD, CosPGD,
Gaussian noise, and the feature-statistics texture attack (source grid).

`catalogue` (no torch) lists every attack with its parameters, ranges and presets and validates them;
`base.make_attack` builds one:

    attack = make_attack("saa", preset="authors-final", steps=5)
    result = attack.run(model, image, target, roi_size=(96, 96, 96), overlap=0.5, sw_batch_size=4)

Importing this package imports nothing heavy; the attack modules import torch.
"""
