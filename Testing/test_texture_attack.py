"""The feature-statistics texture attack: reformation and modified AdaIN on small tensors, the volume attack on
the real CT (distilled 16x weights of ../shared), the pipeline end to end and the black-box search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import save_tiny_model, shared_path

from AdvSegAttackLib.attacks.base import make_attack
from AdvSegAttackLib.attacks.texture.cascade import (
    TextureCascade,
    composite_hu,
    feathered_weight,
    texture_attack_volume,
)
from AdvSegAttackLib.attacks.texture.reformation import (
    FeatureStatistics,
    channel_mean_std,
    global_view_patch_size,
    modified_adain,
    texture_reformation,
)
from AdvSegAttackLib.attacks.texture.search import organ_box_ssim, search_texture
from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.evaluation.casefolder import read_case

SPLEEN, LIVER, ESOPHAGUS = 1, 6, 5
FAST = {"working_size": 64}  # 4x4 maps at level 5: the whole cascade in about a second per organ


def features(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 3


# -- reformation (levels 5/4) --------------------------------------------------------------------------------


@pytest.mark.parametrize("patch_size", [0, 1, 3])
def test_reformation_of_features_onto_themselves_is_the_identity(patch_size):
    content = features(2, 8, 9, 7)
    semantic = features(2, 8, 9, 7, seed=1)
    out = texture_reformation(content, content, semantic, semantic, patch_size, 1.0, 50.0)
    # Every patch correlates best with itself (Cauchy-Schwarz), so the raw patches come back in place.
    assert torch.allclose(out, content, rtol=1e-5, atol=1e-6)
    assert global_view_patch_size(content, content) == 6


def test_reformation_blend_and_patch_source():
    content, style = features(1, 4, 6, 6), features(1, 4, 6, 6, seed=2)
    semantic = torch.zeros(1, 1, 6, 6)
    assert torch.equal(texture_reformation(content, style, semantic, semantic, 3, 0.0, 50.0), content)
    reformed = texture_reformation(content, style, semantic, semantic, 1, 1.0, 0.0)
    # 1x1 patches: every output vector is one of the style's feature vectors.
    style_vectors = style[0].flatten(1).t()
    for vector in reformed[0].flatten(1).t():
        assert torch.isclose(style_vectors, vector).all(dim=1).any()


def test_semantic_guidance_takes_patches_from_the_same_label():
    content, style = features(1, 8, 10, 10), features(1, 8, 10, 10, seed=3)
    content_labels = torch.zeros(10, 10, dtype=torch.long)
    content_labels[:, :5] = 1
    style_labels = torch.zeros(10, 10, dtype=torch.long)
    style_labels[3:, :] = 1
    content_semantic = torch.nn.functional.one_hot(content_labels, 2).permute(2, 0, 1)[None].float()
    style_semantic = torch.nn.functional.one_hot(style_labels, 2).permute(2, 0, 1)[None].float()

    def source_labels(weight: float) -> torch.Tensor:
        out = texture_reformation(content, style, content_semantic, style_semantic, 1, 1.0, weight)
        style_vectors = style[0].flatten(1).t()  # [100, C]
        source = torch.cdist(out[0].flatten(1).t(), style_vectors).argmin(dim=1)
        return style_labels.flatten()[source]

    assert torch.equal(source_labels(50.0), content_labels.flatten())  # guided: label to label
    assert not torch.equal(source_labels(0.0), content_labels.flatten())  # unguided: crosses labels


# -- modified AdaIN (levels 3-1) -----------------------------------------------------------------------------


def test_feature_statistics_over_masked_positions_of_several_maps():
    a, b = features(1, 3, 5, 5), features(2, 3, 5, 5, seed=4)
    mask_a = (features(1, 1, 5, 5, seed=5) > 1.5).float()
    mask_b = (features(2, 1, 5, 5, seed=6) > 1.5).float()
    statistics = FeatureStatistics()
    statistics.add(a, mask_a)
    statistics.add(b, mask_b)
    mean, std = statistics.mean_std()
    selected = torch.cat(
        [a.permute(1, 0, 2, 3)[:, mask_a[:, 0] > 0], b.permute(1, 0, 2, 3)[:, mask_b[:, 0] > 0]], dim=1
    )
    assert torch.allclose(mean.flatten(), selected.double().mean(dim=1).float(), atol=1e-6)
    assert torch.allclose(std.flatten(), (selected.double().var(dim=1) + 1e-5).sqrt().float(), atol=1e-6)
    whole_mean, whole_std = channel_mean_std(a)  # unmasked: the published calc_mean_std
    assert torch.allclose(whole_std.flatten(), (a.flatten(2).var(dim=2) + 1e-5).sqrt().flatten(), atol=1e-6)
    assert torch.allclose(whole_mean.flatten(), a.mean(dim=(0, 2, 3)), atol=1e-6)


@pytest.mark.parametrize("k", [1.0, 0.3, 1.7])
def test_modified_adain_sets_the_organ_statistics_to_k_times_the_style(k):
    content, style = features(3, 6, 8, 8), features(3, 6, 8, 8, seed=7) + 2
    organ = (features(3, 1, 8, 8, seed=8) > 1.0).float()
    content_stats, style_stats = channel_mean_std(content, organ), channel_mean_std(style, organ)
    out = modified_adain(content, content_stats, style_stats, k, k)
    mean, std = channel_mean_std(out, organ)
    assert torch.allclose(mean, k * style_stats[0], rtol=1e-4)
    assert torch.allclose(std, k * style_stats[1], rtol=1e-3)
    unchanged = modified_adain(style, style_stats, style_stats, 1.0, 1.0)
    assert torch.allclose(unchanged, style, rtol=1e-5, atol=1e-5)  # (1, 1) on its own statistics: identity
    half = modified_adain(content, content_stats, style_stats, k, k, alpha=0.5)
    assert torch.allclose(half, 0.5 * out + 0.5 * content, atol=1e-5)


# -- the volume attack on the real CT ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilled_weights() -> Path:
    return shared_path("weights/collaborative_distillation_16x")


@pytest.fixture(scope="module")
def networks(distilled_weights):
    from AdvSegAttackLib.attacks.texture.weights import load_texture_autoencoders

    return load_texture_autoencoders(distilled_weights, "cpu")


@pytest.fixture(scope="module")
def small_ct(real_ct_small, real_ct_small_labels):
    from AdvSegAttackLib.volumes.io import read_image, read_label

    image = read_image(real_ct_small)
    labels = read_label(real_ct_small_labels, image)
    return image, sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)


def texture_config(**changes):
    return make_attack("texture", **{**FAST, **changes}).config


def test_defaults_are_the_published_ones():
    config = make_attack("texture").config
    published = {
        "coarse_alpha": 1.0,
        "fine_alpha": 1.0,
        "concat_weight": 50.0,
        "coarse_psize": 0,
        "fine_psize": 3,
        "enhance_alpha": 1.0,
        "noise_mu": 0.3,
        "noise_sigma": 0.3,
        "window_low": -135.0,
        "window_high": 215.0,
        "working_size": 256,
        "weights": "bundled",
        "ssim_floor": 0.9,
    }
    assert {name: getattr(config, name) for name in published} == published
    for bad, message in (
        ({"working_size": 100}, "--working-size"),
        ({"noise_mu": -1.0}, "--noise-mu"),
        ({"window_low": 300.0}, "--window-low"),
        ({"output_mapping": "corner"}, "--output-mapping"),
        ({"coarse_alpha": 2.0}, "--coarse-alpha"),
    ):
        with pytest.raises(InputError, match=message):
            make_attack("texture", **bad)


def test_only_the_feathered_organ_changes_and_runs_are_deterministic(small_ct, networks):
    image, hu, labels = small_ct
    spacing = tuple(reversed(image.GetSpacing()))
    config = texture_config()
    adversarial, diagnostics = texture_attack_volume(hu, spacing, labels, LIVER, config, networks)
    again, _ = texture_attack_volume(hu, spacing, labels, LIVER, config, networks)
    assert np.array_equal(adversarial, again) and adversarial.dtype == hu.dtype
    weight = feathered_weight(labels == LIVER, spacing, config.feather_mm)
    assert np.array_equal(adversarial[weight == 0], hu[weight == 0])  # bit-identical outside
    changed = adversarial != hu
    assert changed.sum() > 0.5 * np.count_nonzero(labels == LIVER)
    assert np.all((hu[changed] > -135) & (hu[changed] < 215))  # only in-window voxels move
    assert diagnostics["slices"] == int((labels == LIVER).any(axis=(1, 2)).sum())
    # Defaults (0.3, 0.3): the organ's level-3 features end at 0.3 x the organ's statistics.
    level3 = diagnostics["levels"]["3"]
    assert level3["organ_output_mean"] == pytest.approx(0.3 * level3["organ_style_mean"], rel=1e-3)


def test_unit_multipliers_without_reformation_leave_feature_statistics_unchanged(small_ct, networks):
    image, hu, labels = small_ct
    config = texture_config(noise_mu=1.0, noise_sigma=1.0, reformation=False)
    cascade = TextureCascade(hu, tuple(reversed(image.GetSpacing())), labels, SPLEEN, config, networks)
    levels = cascade.perturbation(1.0, 1.0).diagnostics["levels"]
    # Level 3 sees the original slices (levels 5/4 off): content = style, the transform is the identity.
    assert levels["3"]["organ_content_mean"] == pytest.approx(levels["3"]["organ_style_mean"], rel=1e-5)
    for level in ("3", "2", "1"):
        assert levels[level]["organ_output_mean"] == pytest.approx(
            levels[level]["organ_style_mean"], rel=1e-4
        )
        assert levels[level]["organ_output_std"] == pytest.approx(levels[level]["organ_style_std"], rel=1e-3)


def test_absent_organ_or_empty_mask_is_one_sentence(small_ct, networks):
    image, hu, labels = small_ct
    with pytest.raises(
        InputError,
        match=r"--organ esophagus \(label 5\) is not present in the label map; nothing to attack\.",
    ):
        TextureCascade(hu, (3, 3, 3), labels, ESOPHAGUS, texture_config(), networks, organ_name="esophagus")
    with pytest.raises(InputError, match="must be 3-D arrays of one shape"):
        TextureCascade(hu, (3, 3, 3), labels[:-1], SPLEEN, texture_config(), networks)


def test_semantic_map_is_the_published_encoding():
    from AdvSegAttackLib.attacks.texture.cascade import semantic_map

    labels = np.array([[0, 1], [6, 0]])
    grey = semantic_map(labels, np.array([[False, False], [False, True]]))
    assert np.allclose(grey, [[1.0, 1 / 14], [6 / 14, 0.0]])  # body 14/14, organs v/14, air 0


def test_compositing_keeps_the_source_dtype_and_voxels():
    source = np.array([[[-1000, 40, 60]]], dtype=np.int16)
    delta = np.array([[[0.0, -10.4, 0.0]]], dtype=np.float32)
    out = composite_hu(source, delta, 0.5)
    assert out.dtype == np.int16 and out.tolist() == [[[-1000, 35, 60]]]


# -- the pipeline and the search -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), spacing_mm=3.0, roi=32)


def attack_args(image, label, model, out, *extra) -> list[str]:
    args = ["attack", "--image", str(image), "--model", str(model), "--attack", "texture"]
    args += ["--label", str(label)] if label else []
    return [*args, *extra, "--out", str(out), "--device", "cpu", "--progress", "jsonl"]


def test_pipeline_writes_a_complete_case_folder(
    tmp_path, real_ct_small, real_ct_small_labels, tiny_model, distilled_weights, capsys
):
    out = tmp_path / "case"
    extra = ["--organ", "spleen", "--weights", str(distilled_weights), "--working-size", "64", "--no-preview"]
    assert main(attack_args(real_ct_small, real_ct_small_labels, tiny_model, out, *extra)) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1] == {"event": "done", "out": str(out)}
    steps = [(e["step"], e["total"]) for e in events if e.get("stage") == "attack"]
    assert [step for step, _ in steps] == sorted(step for step, _ in steps)
    assert len({t for _, t in steps}) == 1 and steps[-1][0] == steps[-1][1]  # one bar that ends full
    case = read_case(out)
    source = sitk.ReadImage(str(real_ct_small))
    adversarial = sitk.ReadImage(str(case.adversarial))
    assert adversarial.GetPixelID() == source.GetPixelID() and adversarial.GetOrigin() == source.GetOrigin()
    metrics, provenance = case.load_metrics(), case.load_provenance()
    assert {"dice_clean", "dice_adv", "hd95_clean_mm", "hd95_adv_mm"} <= set(metrics["organs"]["spleen"])
    perturbation = metrics["perturbation"]
    assert perturbation["linf_hu"] > 0 and perturbation["region"]["mask_voxels"] == int(
        (sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_small_labels))) == SPLEEN).sum()
    )
    assert {"ssim_3d", "psnr_db", "linf_hu"} <= set(perturbation["region"])
    assert metrics["attack"]["name"] == "texture" and metrics["attack"]["diagnostics"]["slices"] > 0
    parameters = provenance["attack"]["parameters"]
    assert parameters["noise_mu"] == {
        "value": 0.3,
        "unit": "multiplier of the organ's feature mean",
        "flag": "--noise-mu",
    }
    assert parameters["weights"]["value"] == str(distilled_weights)
    assert provenance["organs"] == {"spleen": 1} and provenance["region"] == {
        "mode": "organ",
        "feather_mm": 4.0,
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs exactly one --organ"),
        (["--organ", "esophagus"], "--organ esophagus is not present in the target"),
        (["--organ", "liver", "--region", "bbox"], "--region and --targeted do not apply"),
    ],
)
def test_pipeline_refuses_bad_organs(
    tmp_path, real_ct_small, real_ct_small_labels, tiny_model, extra, message, capsys
):
    out = tmp_path / "case"
    assert main(attack_args(real_ct_small, real_ct_small_labels, tiny_model, out, *extra)) == 2
    error = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert error["event"] == "error" and message in error["message"]
    assert not out.exists()


def test_search_respects_the_ssim_floor_and_reports_its_path(small_ct, networks, tiny_model):
    from AdvSegAttackLib.evaluation.metrics import dice_per_label
    from AdvSegAttackLib.models.networks import load_model
    from AdvSegAttackLib.models.segment import predict_labels
    from AdvSegAttackLib.volumes.preprocess import to_model_space

    image, hu, labels = small_ct
    card, network = load_model(str(tiny_model), device="cpu")
    target = predict_labels(network, to_model_space(image, **card.preprocessing).tensor, card).numpy()

    def organ_dice(adversarial_hu: np.ndarray) -> float:
        candidate = sitk.GetImageFromArray(adversarial_hu)
        candidate.CopyInformation(image)
        predicted = predict_labels(
            network, to_model_space(candidate, **card.preprocessing).tensor, card
        ).numpy()
        return dice_per_label(predicted, target, [LIVER])[LIVER]

    cascade = TextureCascade(
        hu, tuple(reversed(image.GetSpacing())), labels, LIVER, texture_config(), networks
    )
    organ = labels == LIVER
    floor = 0.97
    result = search_texture(cascade, organ_dice, (-175, 250), floor, (0.3, 1.4), (0.3,), (1.0, 0.6, 0.3))
    assert [(e["noise_mu"], e["noise_sigma"]) for e in result.path] == [(0.3, 0.3), (1.4, 0.3)]
    for entry in result.path:
        ssims = [t["ssim"] for t in entry["ssim_by_blend"]]
        assert all(s < floor for s in ssims[:-1])  # stronger blends were tried and rejected first
        if entry["dice"] is not None:
            assert entry["ssim"] == ssims[-1] >= floor
    chosen = [e for e in result.path if e["dice"] is not None]
    assert chosen and result.best["dice"] == min(e["dice"] for e in chosen)
    assert organ_box_ssim(hu, result.adversarial_hu, organ, (-175, 250)) >= floor
    assert result.best["dice"] == organ_dice(result.adversarial_hu)
    impossible = search_texture(cascade, organ_dice, (-175, 250), 1.0, (0.3,), (0.3,), (1.0, 0.5))
    assert not impossible.diagnostics["feasible"] and impossible.best["blend"] == 0.0
    assert np.array_equal(impossible.adversarial_hu, hu)


@pytest.mark.slow
def test_cli_search_writes_its_path_into_metrics_and_provenance(
    tmp_path, real_ct_small, real_ct_small_labels, tiny_model, distilled_weights
):
    out = tmp_path / "case"
    extra = ["--organ", "spleen", "--search", "--ssim-floor", "0.95", "--weights", str(distilled_weights)]
    extra += ["--working-size", "64", "--no-reformation", "--no-preview"]
    assert main(attack_args(real_ct_small, real_ct_small_labels, tiny_model, out, *extra)) == 0
    case = read_case(out)
    metrics, provenance = case.load_metrics(), case.load_provenance()
    search = metrics["attack"]["diagnostics"]["search"]
    assert provenance["search"] == search and search["ssim_floor"] == 0.95
    assert len(search["path"]) == len(search["noise_mu_grid"]) * len(search["noise_sigma_grid"])
    best = search["best"]
    assert best["ssim"] >= 0.95 and best["dice"] == min(
        e["dice"] for e in search["path"] if e["dice"] is not None
    )
    # The reported region SSIM is the one the search held above the floor (same box, window and SSIM).
    assert metrics["perturbation"]["region"]["ssim_3d"] == pytest.approx(best["ssim"], abs=1e-9)


def test_default_bundled_weights_run_the_attack(small_ct):
    from AdvSegAttackLib.attacks.texture.weights import BUNDLED_NAME, OWN_WEIGHTS_FILE, texture_models_dir

    if not (texture_models_dir() / BUNDLED_NAME / OWN_WEIGHTS_FILE).is_file():
        pytest.skip("the bundled CT texture auto-encoders are not in Resources/TextureModels yet")
    from AdvSegAttackLib.attacks.texture.weights import load_texture_autoencoders

    image, hu, labels = small_ct
    config = texture_config()
    assert config.weights == "bundled"
    adversarial, _ = texture_attack_volume(
        hu, tuple(reversed(image.GetSpacing())), labels, SPLEEN, config, load_texture_autoencoders("bundled")
    )
    assert (adversarial != hu).any() and np.array_equal(adversarial[labels != SPLEEN], hu[labels != SPLEEN])


def test_compositing_keeps_a_float_source_of_integer_hu_on_integers():
    source = np.array([[[-1000, 40, 60]]], dtype=np.float32)
    delta = np.array([[[0.0, -10.4, 3.3]]], dtype=np.float32)
    out = composite_hu(source, delta, 0.5)
    assert out.dtype == np.float32 and out.tolist() == [[[-1000, 35, 62]]]
