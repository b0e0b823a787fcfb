"""The positions of the sliding windows: `models.segment.window_slices` (what the attacks' objective and the
window count use) against the windows MONAI's `sliding_window_inference` really feeds the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from AdvSegAttackLib.models.segment import count_windows, window_slices


def monai_window_starts(shape, roi, overlap) -> set[tuple[int, ...]]:
    """Start (voxel index in the volume; negative in MONAI's zero padding) of every window
    sliding_window_inference gives the model: each voxel holds 1 + its linear index, so the first non-zero
    voxel of a window says where the window lies."""
    image = torch.arange(1, int(np.prod(shape)) + 1, dtype=torch.float64).reshape(1, 1, *shape)
    starts = set()

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        for window in windows[:, 0]:
            inside = torch.nonzero(window)[0]
            voxel = np.unravel_index(int(window[tuple(inside)]) - 1, shape)
            starts.add(tuple(int(v - i) for v, i in zip(voxel, inside.tolist(), strict=True)))
        return windows

    sliding_window_inference(image, roi, 3, predictor, overlap=overlap, mode="constant")
    return starts


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [
        ((20, 20, 20), (8, 8, 8), 0.5),
        ((30, 10, 17), (12, 12, 12), 0.25),  # padded along one axis
        ((7, 9, 12), (8, 8, 8), 0.5),  # padded by one voxel
        ((5, 20, 13), (8, 8, 16), 0.5),  # padded by 3 voxels: one before, two after
        ((16, 16, 16), (16, 16, 16), 0.5),  # one window
        ((33, 21, 40), (16, 8, 12), 0.0),
        ((25, 25, 25), (10, 10, 10), 0.7),
    ],
)
def test_window_slices_are_the_windows_monai_uses(shape, roi, overlap):
    slices, pads = window_slices(shape, roi, overlap)
    ours = {tuple(s.start - low for s, (low, _) in zip(window, pads, strict=True)) for window in slices}
    assert ours == monai_window_starts(shape, roi, overlap)
    assert count_windows(shape, roi, overlap) == len(ours)


def test_changed_windows_only_give_the_logits_and_labels_of_a_full_run():
    """Segmenting an attacked tensor by running only the windows whose input changed (on both tensors) and
    blending their difference into the clean logits gives a full sliding-window run's logits (to float
    rounding) and labels (exactly); where no changed window reaches, the clean logits bit for bit."""
    from monai.networks.nets import UNet

    from AdvSegAttackLib.models.cards import ModelCard
    from AdvSegAttackLib.models.segment import predict_logits, predict_logits_changed, window_start

    torch.manual_seed(0)
    model = UNet(3, 1, 5, channels=(4, 8), strides=(2,)).eval()
    card = ModelCard(name="t", architecture="unet", arguments={}, roi_size=[16, 16, 16], overlap=0.5)
    clean = torch.rand(1, 1, 40, 36, 30)
    clean_logits = predict_logits(model, clean, card, sw_batch_size=3)
    attacked = clean.clone()
    attacked[..., 2:7, 3:9, 20:25] += 0.3 * torch.rand(5, 6, 5)  # a small region near one corner
    full = predict_logits(model, attacked, card, sw_batch_size=3)
    reused, run, box = predict_logits_changed(model, attacked, clean, clean_logits, card, sw_batch_size=3)
    slices, _ = window_slices(attacked.shape[2:], card.roi_size, card.overlap)
    assert 0 < run < len(slices) / 4
    assert torch.allclose(reused, full, atol=1e-5, rtol=0)
    assert torch.equal(reused.argmax(1), full.argmax(1))
    assert not torch.equal(full.argmax(1), clean_logits.argmax(1))  # the change does change labels
    reach = torch.zeros(attacked.shape[2:], dtype=torch.bool)
    for window in slices:
        if (attacked != clean)[(0, 0, *window)].any():
            reach[window] = True
    assert torch.equal(reused[..., ~reach], clean_logits[..., ~reach])
    inside = torch.zeros_like(reach)
    inside[box] = True
    assert torch.equal(inside, reach)  # the box is that of the changed windows (here one box of them)
    assert predict_logits_changed(model, clean, clean, clean_logits, card)[1:] == (0, None)

    # With the clean logits of some windows kept by the clean run, only the others run on the clean tensor.
    kept = {window_start(w): None for w in slices[::2]}
    assert torch.equal(predict_logits(model, clean, card, sw_batch_size=3, kept=kept), clean_logits)
    assert all(logits is not None and logits.shape == (5, 16, 16, 16) for logits in kept.values())
    forwarded = []
    hook = model.register_forward_hook(lambda module, args, output: forwarded.append(args[0].shape[0]))
    reused_kept, run_kept, box_kept = predict_logits_changed(
        model, attacked, clean, clean_logits, card, sw_batch_size=3, clean_windows=kept
    )
    hook.remove()
    changed = {window_start(w) for w in slices if (attacked != clean)[(0, 0, *w)].any()}
    assert changed & kept.keys() and changed - kept.keys()  # both paths: kept and run again
    assert run_kept == run == len(changed) and sum(forwarded) == run + len(changed - kept.keys())
    assert torch.allclose(reused_kept, full, atol=1e-5, rtol=0)
    assert torch.equal(reused_kept.argmax(1), full.argmax(1)) and box_kept == box
