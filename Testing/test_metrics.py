"""Tests of AdvSegAttackLib.evaluation.metrics: Dice, HD95, segmentation and perturbation reports (skimage as reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.evaluation import metrics
from AdvSegAttackLib.evaluation.metrics import (
    dice_per_label,
    hd95_per_label,
    perturbation_report,
    segmentation_report,
)
from AdvSegAttackLib.evaluation.ssim import ssim_map_uniform

skm = pytest.importorskip("skimage.metrics")


# ---------------------------------------------------------------------------------------------- Dice


def test_dice_hand_computed():
    ref = np.array([[1, 1, 0, 2], [2, 2, 0, 0]])
    pred = np.array([[1, 0, 0, 2], [2, 0, 3, 0]])
    d = dice_per_label(pred, ref, [1, 2, 3, 4])
    assert d[1] == pytest.approx(2 * 1 / (1 + 2))  # pred {0,0}, ref {0,0},{0,1}
    assert d[2] == pytest.approx(2 * 2 / (2 + 3))  # pred 2 voxels, ref 3, overlap 2
    assert d[3] == 0.0  # in pred only
    assert math.isnan(d[4])  # in neither
    assert list(d) == [1, 2, 3, 4]


def test_dice_absent_from_pred_is_zero_and_shape_mismatch_is_input_error():
    ref = np.zeros((3, 3), int)
    ref[1, 1] = 5
    assert dice_per_label(np.zeros_like(ref), ref, [5]) == {5: 0.0}
    with pytest.raises(InputError):
        dice_per_label(np.zeros((3, 4), int), ref, [5])


# ---------------------------------------------------------------------------------------------- HD95


def _cube(shape=(12, 12, 12), lo=2, hi=6):
    m = np.zeros(shape, np.uint8)
    m[lo:hi, lo:hi, lo:hi] = 1
    return m


def test_hd95_shifted_cubes_anisotropic_spacing():
    # 4^3 cubes. Shifting by s voxels along an axis: each cube's leading face (16 of 56 surface voxels) is
    # s voxels from the other's surface, every other surface voxel is closer, so the 95th percentile is
    # s * spacing of that axis (spacing in array order z, y, x).
    spacing = (3.0, 0.5, 0.8)
    a = _cube()
    shifted_z = np.roll(a, 1, axis=0)
    shifted_x = np.roll(a, 2, axis=2)
    assert hd95_per_label(shifted_z, a, [1], spacing)[1] == pytest.approx(3.0, rel=1e-6)
    assert hd95_per_label(shifted_x, a, [1], spacing)[1] == pytest.approx(1.6, rel=1e-6)
    assert hd95_per_label(a, a, [1], spacing)[1] == 0.0


def test_hd95_absent_cases():
    a = _cube()
    empty = np.zeros_like(a)
    hd = hd95_per_label(a, empty, [1, 2], (1.0, 1.0, 1.0))
    assert hd[1] == math.inf  # present in one only
    assert math.isnan(hd[2])  # present in neither
    assert hd95_per_label(empty, a, [1], (1.0, 1.0, 1.0))[1] == math.inf
    with pytest.raises(InputError):
        hd95_per_label(a, a, [1], (1.0, 1.0))


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_hd95_cropping_matches_monai_on_full_arrays():
    """Our crop to the union box must not change MONAI's answer, also for masks touching the border."""
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(3)
    ref = gaussian_filter(rng.random((20, 24, 22)), 2) > 0.5
    pred = gaussian_filter(rng.random((20, 24, 22)), 2) > 0.52
    assert ref[0].any() or ref[-1].any() or ref[:, 0].any()  # the blobs do reach the border
    spacing = (2.5, 0.7, 0.9)
    expected = compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(ref)[None, None],
        include_background=True,
        percentile=95,
        spacing=list(spacing),
    )
    got = hd95_per_label(pred.astype(np.int16), ref.astype(np.int16), [1], spacing)[1]
    assert got > 0
    assert got == pytest.approx(float(expected), rel=1e-6)


# ---------------------------------------------------------------------------------------------- report


def test_segmentation_report_keys_means_and_background_exclusion():
    names = ("background", "liver", "spleen", "kidney", "tumour")
    ref = np.zeros((12, 12, 12), np.int16)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1  # liver shifted by one voxel along z
    ref[8:10, 8:10, 8:10] = 2  # spleen missed entirely
    pred[0:2, 9:11, 0:2] = 4  # tumour only in pred
    rep = segmentation_report(pred, ref, names, (3.0, 1.0, 1.0))

    assert rep["background_excluded"] is True
    assert set(rep["organs"]) == {"liver", "spleen", "kidney", "tumour"}
    for organ in rep["organs"].values():
        assert set(organ) == {"label", "dice", "hd95_mm", "voxels_ref", "voxels_pred"}
    liver = rep["organs"]["liver"]
    assert liver["label"] == 1 and liver["voxels_ref"] == 64 and liver["voxels_pred"] == 64
    assert liver["dice"] == pytest.approx(2 * 48 / 128)
    assert liver["hd95_mm"] == pytest.approx(3.0, rel=1e-6)
    assert rep["organs"]["spleen"]["dice"] == 0.0 and rep["organs"]["spleen"]["hd95_mm"] == math.inf
    assert math.isnan(rep["organs"]["kidney"]["dice"]) and math.isnan(rep["organs"]["kidney"]["hd95_mm"])
    assert rep["organs"]["tumour"]["dice"] == 0.0 and rep["organs"]["tumour"]["voxels_ref"] == 0

    # Means over organs present in ref (liver, spleen); the spurious tumour and absent kidney are skipped,
    # the infinite HD95 of the missed spleen is left out of the finite mean. Background (Dice ~0.97 here)
    # would raise the mean Dice if it were included.
    assert rep["n_organs_ref"] == 2
    assert rep["mean_dice"] == pytest.approx((0.75 + 0.0) / 2)
    assert rep["mean_hd95_mm"] == pytest.approx(3.0, rel=1e-6)
    assert rep["organs_missed"] == ["spleen"]
    assert rep["organs_spurious"] == ["tumour"]


def test_segmentation_report_perfect_and_empty():
    names = ("background", "liver")
    ref = _cube().astype(np.int16)
    perfect = segmentation_report(ref, ref, names, (1.0, 1.0, 1.0))
    assert perfect["mean_dice"] == 1.0 and perfect["mean_hd95_mm"] == 0.0
    empty = segmentation_report(np.zeros_like(ref), np.zeros_like(ref), names, (1.0, 1.0, 1.0))
    assert math.isnan(empty["mean_dice"]) and math.isnan(empty["mean_hd95_mm"])


# ---------------------------------------------------------------------------------------------- SSIM / PSNR


def _sk_ssim3d(a, b):
    return skm.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )


def _sk_ssim_axial(a, b, axis=0):
    a, b = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
    return float(
        np.mean([skm.structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)])
    )


def _random_pair(shape=(24, 30, 28), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape).astype(np.float32)
    b = np.clip(a + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return a, b


def _smooth_pair(shape=(30, 32, 34), seed=1):
    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.random(shape), 3)
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(a + 0.5 * gaussian_filter(rng.standard_normal(shape), 2), 0, 1)  # noise std ~0.03
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("pair", [_random_pair, _smooth_pair])
@pytest.mark.parametrize("slab_voxels", [2_000_000, 3000])  # one slab, and many slabs (chunk seams)
def test_ssim_and_psnr_equal_skimage(pair, slab_voxels, monkeypatch):
    monkeypatch.setattr(metrics, "_SLAB_VOXELS", slab_voxels)
    a, b = pair()
    rep = perturbation_report(a, b, (0.0, 1.0))  # window 0..1: HU values are the model values
    assert rep["ssim_3d"] < 0.99  # the pair really differs
    assert rep["ssim_3d"] == pytest.approx(_sk_ssim3d(a, b), abs=1e-5)
    assert rep["ssim_axial_mean"] == pytest.approx(_sk_ssim_axial(a, b), abs=1e-5)
    assert rep["psnr_db"] == pytest.approx(skm.peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-5)


def test_axial_axis_and_hu_window_against_skimage():
    a01, b01 = _smooth_pair((20, 26, 30))
    low, high = -175.0, 250.0
    clean = np.round(a01 * 1200 - 500).astype(np.int16)  # HU, partly outside the window
    adv = np.round(b01 * 1200 - 500).astype(np.int16)
    win = [np.clip((x.astype(np.float32) - low) / (high - low), 0, 1) for x in (clean, adv)]
    rep = perturbation_report(clean, adv, (low, high), axial_axis=2)
    assert rep["axial_axis"] == 2
    assert rep["ssim_3d"] == pytest.approx(_sk_ssim3d(*win), abs=1e-5)
    assert rep["ssim_axial_mean"] == pytest.approx(_sk_ssim_axial(*win, axis=2), abs=1e-5)
    assert rep["ssim_axial_mean"] != pytest.approx(_sk_ssim_axial(*win, axis=0), abs=1e-5)
    assert rep["psnr_db"] == pytest.approx(skm.peak_signal_noise_ratio(*win, data_range=1.0), abs=1e-5)


def test_ssim_map_uniform_3d_equals_skimage_default():
    a, b = _random_pair((14, 15, 16), seed=5)
    ours = ssim_map_uniform(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).mean()
    assert float(ours) == pytest.approx(skm.structural_similarity(a, b, data_range=1.0), abs=1e-5)


def test_identical_images():
    clean = np.random.default_rng(2).integers(-1000, 1500, (16, 20, 18)).astype(np.int16)
    rep = perturbation_report(clean, clean.copy(), (-175, 250))
    assert rep["ssim_3d"] == pytest.approx(1.0, abs=1e-6)
    assert rep["ssim_axial_mean"] == pytest.approx(1.0, abs=1e-6)
    assert rep["psnr_db"] == math.inf
    assert rep["linf_hu"] == 0.0 and rep["l2_hu"] == 0.0 and rep["linf_model"] == 0.0
    assert rep["fraction_changed"] == 0.0 and rep["voxels_changed"] == 0


def test_too_small_for_ssim_window_gives_nan():
    a, b = _random_pair((6, 30, 30))
    rep = perturbation_report(a, b, (0.0, 1.0))
    assert math.isnan(rep["ssim_3d"])  # 6 < 11 slices
    assert rep["ssim_axial_mean"] == pytest.approx(_sk_ssim_axial(a, b), abs=1e-5)


# ---------------------------------------------------------------------------------------------- norms


def test_norms_hand_computed_with_window_clipping():
    clean = np.zeros((12, 12, 12), np.int16)
    clean[0, 0, 0] = -1000  # air, below the window
    adv = clean.copy()
    adv[5, 5, 5] = 50  # inside the window: 0.25 in model units
    adv[6, 6, 6] = 300  # clipped at 100 HU: 0.5 in model units, 300 in HU
    adv[7, 7, 7] = -30  # 0.15 in model units
    adv[0, 0, 0] = -900  # 100 HU change entirely below the window: 0 in model units
    rep = perturbation_report(clean, adv, (-100, 100))
    n = 12**3
    assert rep["linf_hu"] == 300.0
    assert rep["l2_hu"] == pytest.approx(math.sqrt(50**2 + 300**2 + 30**2 + 100**2))
    assert rep["mean_abs_hu"] == pytest.approx((50 + 300 + 30 + 100) / n)
    assert rep["linf_model"] == pytest.approx(0.5, abs=1e-6)
    sq_model = 0.25**2 + 0.5**2 + 0.15**2
    assert rep["l2_model"] == pytest.approx(math.sqrt(sq_model), abs=1e-6)
    assert rep["voxels_changed"] == 4 and rep["voxels"] == n
    assert rep["fraction_changed"] == pytest.approx(4 / n)
    assert rep["psnr_db"] == pytest.approx(10 * math.log10(n / sq_model), abs=1e-4)
    assert rep["window_hu"] == [-100.0, 100.0]


def test_report_keys_and_region():
    a, b = _random_pair((30, 32, 34), seed=4)
    b[:] = a
    b[10:16, 12:20, 14:22] = np.clip(a[10:16, 12:20, 14:22] + 0.2, 0, 1)  # change only inside a box
    region = np.zeros(a.shape, bool)
    region[10:16, 12:20, 14:22] = True
    region[12, 15, 17] = False  # a hole does not change the bounding box
    rep = perturbation_report(a, b, (0.0, 1.0), region=region)
    keys = {
        "linf_hu",
        "l2_hu",
        "mean_abs_hu",
        "linf_model",
        "l2_model",
        "fraction_changed",
        "voxels_changed",
        "voxels",
        "ssim_3d",
        "ssim_axial_mean",
        "psnr_db",
    }
    assert keys <= set(rep)
    reg = rep["region"]
    assert keys <= set(reg)
    # The box (6 x 8 x 8) is grown symmetrically to the 11-voxel 3-D SSIM window along every axis.
    assert reg["bbox"] == [[8, 19], [11, 22], [13, 24]]
    assert reg["mask_voxels"] == 6 * 8 * 8 - 1
    box = tuple(slice(s, e) for s, e in reg["bbox"])
    assert reg["voxels"] == 11**3
    assert reg["voxels_changed"] == rep["voxels_changed"]  # all changes are inside
    assert reg["fraction_changed"] > rep["fraction_changed"]
    assert reg["l2_hu"] == pytest.approx(rep["l2_hu"])
    assert reg["ssim_3d"] == pytest.approx(_sk_ssim3d(a[box], b[box]), abs=1e-5)
    assert reg["ssim_3d"] < rep["ssim_3d"]
    assert reg["ssim_axial_mean"] == pytest.approx(_sk_ssim_axial(a[box], b[box]), abs=1e-5)
    assert reg["psnr_db"] == pytest.approx(
        skm.peak_signal_noise_ratio(a[box], b[box], data_range=1.0), abs=1e-5
    )
    assert reg["psnr_db"] < rep["psnr_db"]


def test_region_grown_at_volume_border_and_empty_region():
    a, b = _random_pair((20, 20, 20), seed=6)
    region = np.zeros(a.shape, bool)
    region[0, 19, 5] = True
    reg = perturbation_report(a, b, (0.0, 1.0), region=region)["region"]
    assert reg["bbox"] == [[0, 11], [9, 20], [0, 11]]
    box = tuple(slice(s, e) for s, e in reg["bbox"])
    assert reg["ssim_3d"] == pytest.approx(_sk_ssim3d(a[box], b[box]), abs=1e-5)
    assert perturbation_report(a, b, (0.0, 1.0), region=np.zeros(a.shape, bool))["region"] is None


def test_perturbation_input_errors():
    a, b = _random_pair((12, 12, 12))
    with pytest.raises(InputError):
        perturbation_report(a, b[:-1], (0.0, 1.0))
    with pytest.raises(InputError):
        perturbation_report(a, b, (1.0, 0.0))
    with pytest.raises(InputError):
        perturbation_report(a, b, (0.0, 1.0), region=np.ones((12, 12, 11), bool))
