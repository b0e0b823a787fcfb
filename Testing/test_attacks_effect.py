"""The attacks actually hurt: a tiny UNet trained here on synthetic two-blob volumes (a few seconds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from AdvSegAttackLib.attacks.base import make_attack

SIZE = 24
ROI = (16, 16, 16)


def two_blob_volume(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, 1, 24, 24, 24] image in [0, 1] with blobs labelled 1 and 2 (+0.1, +0.2) on a textured background."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.meshgrid(*[torch.arange(SIZE).float()] * 3, indexing="ij")
    label = torch.zeros((SIZE,) * 3, dtype=torch.long)
    for value in (1, 2):
        centre = 4 + torch.rand(3, generator=generator) * (SIZE - 8)
        radius = 3 + 2.5 * torch.rand(1, generator=generator)
        label[sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < radius**2] = value
    texture = F.avg_pool3d(torch.randn(1, 1, SIZE, SIZE, SIZE, generator=generator), 3, 1, 1)[0, 0]
    noise = torch.randn((SIZE,) * 3, generator=generator)
    image = 0.4 + 0.1 * label.float() + 0.04 * noise + 0.1 * texture
    return image.clamp(0, 1)[None, None], label[None, None]


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only cost on a busy machine
    torch.manual_seed(0)
    model = UNet(3, 1, 3, channels=(8, 16), strides=(2,), num_res_units=1)
    optimiser = torch.optim.Adam(model.parameters(), 5e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    for step in range(300):  # random 16³ crops of fresh volumes, ~5 s on one core
        pairs = [two_blob_volume(1000 + 2 * step + k) for k in range(2)]
        image, label = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        o = torch.randint(0, SIZE - 16 + 1, (3,)).tolist()
        crop = (..., slice(o[0], o[0] + 16), slice(o[1], o[1] + 16), slice(o[2], o[2] + 16))
        loss = loss_fn(model(image[crop]), label[crop])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    yield model
    torch.set_num_threads(threads)


def organ_dice(model, image, label) -> float:
    with torch.no_grad():
        logits = sliding_window_inference(image, ROI, 4, model, overlap=0.5, mode="gaussian")
    prediction = logits.argmax(1, keepdim=True)
    scores = []
    for c in (1, 2):
        p, t = prediction == c, label == c
        scores.append(2 * float((p & t).sum()) / max(float(p.sum() + t.sum()), 1.0))
    return sum(scores) / len(scores)


def test_attacks_lower_dice_more_than_gaussian_noise(trained):
    image, label = two_blob_volume(7)
    clean = organ_dice(trained, image, label)
    assert clean > 0.75  # the model segments the blobs

    def attacked(name, preset=None, **params):
        result = make_attack(name, preset, **params).run(
            trained, image, label, roi_size=ROI, overlap=0.5, sw_batch_size=4
        )
        return organ_dice(trained, result.adversarial, label)

    noise = attacked("gn", std=4)
    assert abs(noise - clean) < 0.05
    budgets = {
        "fgsm": {"eps": 4},
        "bim": {"eps": 4, "steps": 10},
        "pgd": {"eps": 4, "steps": 10},
        "segpgd": {"eps": 4, "steps": 10},
        "cospgd": {"eps": 4, "steps": 10},
        "saa": {"preset": "authors-final", "steps": 10, "block_size": 8},
        "vafa": {"steps": 10, "block_size": 8},
    }
    for name, params in budgets.items():
        dice = attacked(name, **params)
        assert dice < noise - 0.1, (
            f"{name}: Dice {dice:.3f} vs Gaussian noise {noise:.3f} (clean {clean:.3f})"
        )
