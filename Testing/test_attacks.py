"""Attacks of AdvSegAttackLib.attacks: objective exactness, bounds, regions, seeds, validation, registry."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss
from monai.networks.nets import UNet

from AdvSegAttackLib.attacks import objective as objective_module
from AdvSegAttackLib.attacks.base import ModelSpaceAttack, SourceGridAttack, attack_class, make_attack
from AdvSegAttackLib.attacks.catalogue import ATTACKS
from AdvSegAttackLib.attacks.cospgd import cosine_to_one_hot
from AdvSegAttackLib.attacks.objective import SegmentationObjective, dice_ce
from AdvSegAttackLib.attacks.saa import SpectralNoise
from AdvSegAttackLib.attacks.segpgd import SegPGD, segpgd_lambda
from AdvSegAttackLib.attacks.vafa import Quantiser, alpha_at, soft_round
from AdvSegAttackLib.errors import InputError

ROI = (16, 16, 16)
SHAPE = (1, 1, 22, 24, 18)
ALL = ("saa", "saa-2d", "vafa", "vafa-2d", "fgsm", "bim", "pgd", "segpgd", "cospgd", "gn")
FAST = {
    "saa": {"steps": 3, "block_size": 8},
    "saa-2d": {"steps": 3, "block_size": 8},
    "vafa": {"steps": 3, "block_size": 8},
    "vafa-2d": {"steps": 3, "block_size": 8},
    "fgsm": {},
    "bim": {"steps": 3},
    "pgd": {"steps": 3},
    "segpgd": {"steps": 3},
    "cospgd": {"steps": 3},
    "gn": {},
}
REFERENCE_LOSS = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)


def tiny_model(classes: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(3, 1, classes, channels=(4, 8), strides=(2,))


def blob_case(shape=SHAPE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image in [0, 1] with two ellipsoids (labels 1, 2) and a box (label 3) on textured background."""
    generator = torch.Generator().manual_seed(seed)
    X, Y, Z = shape[2:]
    gx, gy, gz = torch.meshgrid(torch.arange(X), torch.arange(Y), torch.arange(Z), indexing="ij")
    label = torch.zeros(shape[2:], dtype=torch.long)
    label[((gx - 7) ** 2 + (gy - 8) ** 2 + (gz - 9) ** 2) < 25] = 1
    label[((gx - 16) ** 2 + (gy - 19) ** 2 + (gz - 8) ** 2) < 30] = 2
    label[18:22, 3:7, 2:6] = 3
    image = 0.3 + 0.2 * label.float() + 0.05 * torch.randn(shape[2:], generator=generator)
    return image.clamp(0, 1)[None, None], label[None, None]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine threads cost 10-50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def case():
    image, label = blob_case()
    return tiny_model(), image, label


def run(name, model, image, label, published_return=None, **kwargs):
    params = {**FAST[name], "published_return": published_return}
    options = {"roi_size": ROI, "overlap": 0.5, "sw_batch_size": 2, **kwargs}
    return make_attack(name, **params).run(model, image, label, **options)


# --- objective ------------------------------------------------------------------------------------------


def test_windows_are_those_of_sliding_window_inference():
    model = tiny_model()
    for shape in [(1, 1, 32, 40, 24), (1, 1, 12, 20, 16)]:  # the second is padded (smaller than the ROI)
        x = torch.rand(shape)
        seen = []

        def spy(windows, seen=seen):
            seen.append(windows.clone())
            return model(windows)

        sliding_window_inference(x, ROI, 3, spy, overlap=0.5, mode="gaussian")
        objective = SegmentationObjective(model, torch.zeros(shape, dtype=torch.long), ROI, 0.5, 3)
        padded = objective._pad(x)
        ours = [objective._windows_input(padded, batch) for batch in objective._batches(objective._windows)]
        assert objective.n_windows == sum(len(w) for w in seen)
        assert all(torch.equal(a, b) for a, b in zip(seen, ours, strict=True))


def test_dice_ce_equals_monai_per_item():
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 6, 7, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (3, 1, 6, 7, 4))
    ours = dice_ce(logits, target)
    reference = torch.stack([REFERENCE_LOSS(logits[i : i + 1], target[i : i + 1]) for i in range(3)])
    assert torch.allclose(ours, reference, atol=1e-7)
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(reference.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-9)
    small = torch.randn(2, 3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    small_target = torch.randint(0, 3, (2, 1, 3, 3, 2))
    assert torch.autograd.gradcheck(lambda z: dice_ce(z, small_target), (small,))
    assert torch.autograd.gradcheck(lambda z: dice_ce(z, small_target, [0, 2], small_target == 2), (small,))


def test_dice_ce_in_several_chunks_equals_monai(monkeypatch):
    monkeypatch.setattr(objective_module, "CHUNK_ELEMENTS", 1)  # the minimum chunk: 256 voxels
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 9, 8, 7, dtype=torch.float64, requires_grad=True)  # 504 voxels: 2 chunks
    target = torch.randint(0, 4, (2, 1, 9, 8, 7))
    ours = dice_ce(logits, target)
    reference = torch.stack([REFERENCE_LOSS(logits[i : i + 1], target[i : i + 1]) for i in range(2)])
    assert torch.allclose(ours, reference, atol=1e-7)
    (g1,) = torch.autograd.grad((ours * torch.tensor([1.0, 3.0], dtype=torch.float64)).sum(), logits)
    (g2,) = torch.autograd.grad((reference * torch.tensor([1.0, 3.0], dtype=torch.float64)).sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-9)
    assert torch.autograd.gradcheck(lambda z: dice_ce(z, target, [1, 3], target == 3), (logits,))


def test_dice_ce_gradient_has_no_denormals_and_equals_monai_elsewhere():
    """Far from an organ its softmax probability is denormal (< 1.2e-38 in float32); the gradient of the
    organ-focused loss there made every backward pass through the network ~1.6x slower on the CPU. The loss
    flushes those gradient entries to zero and leaves every other entry as MONAI's."""
    torch.manual_seed(4)
    logits = torch.randn(1, 3, 8, 8, 8) * 0.5
    logits[:, 1, :4] -= (
        45.0  # class 1: p ~ e^-45 ~ 3e-20 in half of the voxels, its Dice gradient ~ p² denormal
    )
    logits.requires_grad_(True)
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    target[:, :, 5:, 2:6, 2:6] = 1
    tiny = torch.finfo(torch.float32).tiny
    in_organ = target == 1
    organ_dice = DiceLoss(
        to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6, reduction="none"
    )(logits, target)[0, 1]
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0], reduction="none")[:, None]
    (reference,) = torch.autograd.grad(organ_dice.sum() + ce[in_organ].mean(), logits)
    reference_denormal = (reference != 0) & (reference.abs() < tiny)
    assert reference_denormal.any()  # MONAI's gradient has denormals here
    (ours,) = torch.autograd.grad(dice_ce(logits, target, [1], in_organ).sum(), logits)
    assert not ((ours != 0) & (ours.abs() < tiny)).any()
    assert torch.equal(ours[reference_denormal], torch.zeros_like(ours[reference_denormal]))
    assert torch.allclose(ours[~reference_denormal], reference[~reference_denormal], rtol=1e-4, atol=1e-12)


def test_voxel_weights_scale_each_voxels_cross_entropy():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 5, 6, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 1, 5, 6, 3))
    weights = torch.rand(2, 1, 5, 6, 3, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0], reduction="none")[:, None]
    reference = torch.stack([REFERENCE_LOSS.dice(logits[i : i + 1], target[i : i + 1]) for i in range(2)]) + (
        ce * weights
    ).mean(dim=(1, 2, 3, 4))
    ours = dice_ce(logits, target, voxel_weights=weights)
    assert torch.allclose(ours, reference, atol=1e-9)
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(reference.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-9)
    assert torch.equal(
        dice_ce(logits, target, voxel_weights=torch.ones_like(weights)), dice_ce(logits, target)
    )
    in_organ = target == 2  # with a CE mask: weighted CE still divided by the number of masked voxels
    masked = dice_ce(logits, target, [2], in_organ, weights)
    plain = dice_ce(logits, target, [2], in_organ)
    expected_ce = (ce * weights * in_organ).sum(dim=(1, 2, 3, 4)) / in_organ.sum(dim=(1, 2, 3, 4))
    plain_ce = (ce * in_organ).sum(dim=(1, 2, 3, 4)) / in_organ.sum(dim=(1, 2, 3, 4))
    assert torch.allclose(masked - plain, expected_ce - plain_ce, atol=1e-9)


def test_segpgd_schedule_and_weights():
    assert [segpgd_lambda(t, 4) for t in (1, 2, 3, 4)] == [0.0, 0.125, 0.25, 0.375]
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]]).permute(0, 2, 1)[
        ..., None, None
    ]  # [1, 3, 2, 1, 1]
    target = torch.tensor([0, 0]).view(1, 1, 2, 1, 1)  # voxel 0 correct, voxel 1 wrong
    attack = SegPGD(steps=4)
    untargeted = attack._voxel_weights(2, targeted=False)(logits, target).flatten().tolist()
    targeted = attack._voxel_weights(2, targeted=True)(logits, target).flatten().tolist()
    assert untargeted == [0.875, 0.125] and targeted == [0.125, 0.875]


def test_cospgd_weight_is_the_cosine_to_the_one_hot_target():
    torch.manual_seed(4)
    logits = torch.randn(2, 5, 4, 3, 2)
    target = torch.randint(0, 5, (2, 1, 4, 3, 2))
    one_hot = torch.nn.functional.one_hot(target[:, 0], 5).permute(0, 4, 1, 2, 3).float()
    expected = torch.nn.functional.cosine_similarity(torch.softmax(logits, 1), one_hot, dim=1)[:, None]
    assert torch.allclose(cosine_to_one_hot(logits, target), expected, atol=1e-6)
    targeted = make_attack("cospgd")._voxel_weights(1, targeted=True)(logits, target)
    assert torch.allclose(targeted, 1 - expected, atol=1e-6)


def test_single_window_gradient_is_exact():
    model = tiny_model()
    image, label = blob_case((1, 1, 16, 16, 16))
    value, grad = SegmentationObjective(model, label, ROI, 0.5, 1).value_and_grad(image)
    x = image.clone().requires_grad_(True)
    loss = REFERENCE_LOSS(model.eval()(x), label)
    loss.backward()
    assert value == pytest.approx(loss.item(), abs=1e-6)
    assert torch.allclose(grad, x.grad, atol=1e-6 * float(x.grad.abs().max()) + 1e-12)


def test_gradient_accumulates_over_window_batches(case):
    model, image, label = case
    one = SegmentationObjective(model, label, ROI, 0.5, 1)
    value1, grad1 = one.value_and_grad(image)
    big = SegmentationObjective(model, label, ROI, 0.5, one.n_windows)
    value2, grad2 = big.value_and_grad(image)
    assert one.n_windows > 1
    assert value1 == pytest.approx(value2, rel=1e-6)
    assert torch.allclose(grad1, grad2, atol=1e-6 * float(grad2.abs().max()))


def test_region_caching_and_targeted_sign(case):
    model, image, label = case
    plain = SegmentationObjective(model, label, ROI, 0.5, 2)
    region = torch.zeros_like(label, dtype=torch.bool)
    region[..., :6, :6, :6] = True
    cached = SegmentationObjective(model, label, ROI, 0.5, 2, region=region)
    assert cached.n_active_windows < cached.n_windows
    v1, g1 = plain.value_and_grad(image)
    v2, g2 = cached.value_and_grad(image)
    assert v1 == pytest.approx(v2, rel=1e-6)
    assert torch.allclose(g1[region], g2[region], atol=1e-9)
    targeted = SegmentationObjective(model, label, ROI, 0.5, 2, organs=[1], targeted=True)
    value, _ = targeted.value_and_grad(image)
    assert value == pytest.approx(-targeted.last_loss)
    focused = SegmentationObjective(model, label, ROI, 0.5, 2, organs=[3])
    assert focused.n_windows < plain.n_windows  # windows without organ 3 are dropped


def test_model_is_left_untouched(case):
    model, image, label = case
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run("pgd", model, image, label)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    first.requires_grad_(True)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()


# --- identity, bounds, regions, seeds -------------------------------------------------------------------


@pytest.mark.parametrize("dims", [3, 2])
def test_xi_one_is_the_identity(case, dims):
    _, image, label = case
    for region in (None, label > 0):
        noise = SpectralNoise(image, region, 8, dims, "all")
        assert torch.equal(noise.adversarial(torch.ones(noise.shape)), image)


def test_soft_rounding_schedule():
    x = torch.arange(-3.0, 3.0).repeat_interleave(6) + torch.tensor([0.0, 0.1, 0.3, 0.7, 0.9, 0.95]).repeat(6)
    assert torch.allclose(soft_round(x, 1e-20), torch.round(x), atol=1e-3)
    assert torch.allclose(soft_round(torch.arange(-3.0, 4.0), 0.1), torch.arange(-3.0, 4.0), atol=1e-6)
    assert alpha_at(0, 20) == pytest.approx(0.1)
    assert alpha_at(19, 20) == pytest.approx(0.1 / 20)


def test_saa_bounds_every_step(case):
    model, image, label = case
    rho = 0.3
    seen = []

    def check(step, state):
        seen.append(step)
        assert float((state["xi"] - 1).abs().max()) <= rho + 1e-6

    attack = make_attack("saa", rho=rho, steps=3, block_size=8)
    result = attack.run(model, image, label, roi_size=ROI, overlap=0.5, sw_batch_size=2, on_step=check)
    assert seen == [1, 2, 3]
    assert 0 <= float(result.adversarial.min()) and float(result.adversarial.max()) <= 1
    assert result.diagnostics["xi_max"] <= 1 + rho + 1e-6 and result.diagnostics["xi_min"] >= 1 - rho - 1e-6
    assert len(result.diagnostics["loss"]) == 3 and len(result.diagnostics["ssim"]) == 3


@pytest.mark.parametrize(
    ("name", "params", "q_range"),
    [
        ("vafa", {}, (5.0, 20.0)),
        ("vafa-2d", {}, (5.0, 20.0)),
        ("vafa", {"q_init": "one", "q_max": 10}, (1.0, 10.0)),
    ],
)
def test_vafa_bounds_every_step(case, name, params, q_range):
    model, image, label = case
    seen = []

    def check(step, state):
        seen.append(step)
        assert q_range[0] <= float(state["q"].min()) and float(state["q"].max()) <= q_range[1]

    attack = make_attack(name, **{**FAST[name], **params})
    assert attack.config.q_min == q_range[0]
    result = attack.run(model, image, label, roi_size=ROI, overlap=0.5, sw_batch_size=2, on_step=check)
    assert seen == [1, 2, 3]
    assert 0 <= float(result.adversarial.min()) and float(result.adversarial.max()) <= 1


@pytest.mark.parametrize("name", ["saa", "saa-2d", "vafa", "vafa-2d"])
def test_published_return_is_the_image_of_the_last_forward_pass(case, name):
    """--published-return: the output is the image the last step fed to the model (made before the last
    update, clamped to [0, 1]); without it, the image of the final update, which differs from it."""
    model, image, label = case
    fed = []

    def keep(step, state):
        fed.append(state["adversarial"].clone())

    published = run(name, model, image, label, published_return=True, on_step=keep)
    assert len(fed) == FAST[name]["steps"] and len(published.diagnostics["loss"]) == FAST[name]["steps"]
    assert torch.equal(published.adversarial, fed[-1].clamp(0, 1))
    final = run(name, model, image, label, on_step=keep)
    assert torch.equal(fed[-1], fed[-1 - FAST[name]["steps"]])  # the same trajectory up to the last update
    assert not torch.equal(final.adversarial, fed[-1].clamp(0, 1))


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "segpgd", "cospgd"])
def test_linf_bounds_every_step(case, name):
    model, image, label = case
    eps = 4 / 255

    def check(step, state):
        adversarial = state["adversarial"]
        assert float((adversarial - image).abs().max()) <= eps + 1e-7
        assert 0 <= float(adversarial.min()) and float(adversarial.max()) <= 1

    result = run(name, model, image, label, on_step=check)
    assert float((result.adversarial - image).abs().max()) <= eps + 1e-7
    assert float((result.adversarial - image).abs().max()) > eps / 2


@pytest.mark.parametrize("name", ALL)
def test_region_is_respected_bit_for_bit(case, name):
    model, image, label = case
    region = torch.zeros_like(label, dtype=torch.bool)
    region[..., 4:13, 3:14, 4:15] = True  # around organ 1, not block-aligned

    def check(step, state):
        assert torch.equal(state["adversarial"][~region], image[~region])

    result = run(name, model, image, label, region=region, organs=[1], on_step=check)
    assert torch.equal(result.adversarial[~region], image[~region])
    assert not torch.equal(result.adversarial[region], image[region])
    assert result.adversarial.dtype == torch.float32 and result.adversarial.shape == image.shape


@pytest.mark.parametrize("name", ["saa", "vafa-2d", "pgd", "segpgd", "cospgd", "gn"])
def test_same_seed_same_output(case, name):
    model, image, label = case
    a = run(name, model, image, label, seed=7).adversarial
    b = run(name, model, image, label, seed=7).adversarial
    assert torch.equal(a, b)
    if name in ("saa", "pgd", "segpgd", "cospgd", "gn"):  # VAFA has no randomness
        assert not torch.equal(a, run(name, model, image, label, seed=8).adversarial)


def test_progress_reports_every_step_and_can_cancel(case):
    model, image, label = case
    calls = []
    run("bim", model, image, label, progress=lambda step, total, loss: calls.append((step, total, loss)))
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)] and all(c[2] > 0 for c in calls)

    class Cancelled(Exception):
        pass

    def cancel(step, total, loss):
        raise Cancelled

    with pytest.raises(Cancelled):
        run("saa", model, image, label, progress=cancel)


@pytest.mark.parametrize("name", ["pgd", "segpgd", "cospgd"])
def test_targeted_removal_lowers_the_loss_to_the_removed_target(case, name):
    model, image, label = case
    result = make_attack(name, steps=4, eps=16).run(
        model, image, label, roi_size=ROI, overlap=0.5, sw_batch_size=2, organs=[2], targeted=True
    )
    removal = SegmentationObjective(model, label, ROI, 0.5, 2, organs=[2], targeted=True)
    removal.value(image)
    before = removal.last_loss
    removal.value(result.adversarial)
    assert removal.last_loss < before  # plain DiceCE to the target without organ 2


# --- validation, registry, presets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "flag"),
    [
        ("saa", {"rho": 0}, "--rho"),
        ("saa", {"rho": 1.5}, "--rho"),
        ("saa", {"rho": -0.1}, "--rho"),
        ("saa", {"block_size": 1}, "--block-size"),
        ("saa-2d", {"steps": 0}, "--steps"),
        ("saa", {"band": "ultra"}, "--band"),
        ("saa", {"lambda_dice": 0}, "--lambda-dice"),
        ("vafa", {"block_size": 1}, "--block-size"),
        ("vafa", {"q_min": 30, "q_max": 20}, "--q-min"),
        ("vafa", {"q_init": "two"}, "--q-init"),
        ("vafa-2d", {"steps": 0}, "--steps"),
        ("pgd", {"eps": 0}, "--eps"),
        ("bim", {"eps": -4}, "--eps"),
        ("fgsm", {"eps": 0}, "--eps"),
        ("pgd", {"alpha": 0}, "--alpha"),
        ("pgd", {"steps": 0}, "--steps"),
        ("segpgd", {"eps": 300}, "--eps"),
        ("cospgd", {"alpha": 1.5}, "--alpha"),
        ("gn", {"std": 0}, "--std"),
        ("gn", {"eps": 4}, "--eps"),
    ],
)
def test_bad_parameters_name_the_flag(name, params, flag):
    with pytest.raises(InputError, match=flag):
        make_attack(name, **params)


def test_bad_run_inputs(case):
    model, image, label = case
    with pytest.raises(InputError, match="--organ 9"):
        run("pgd", model, image, label, organs=[9])
    with pytest.raises(InputError, match="--organ"):
        run("pgd", model, image, label, targeted=True)
    with pytest.raises(InputError, match="--overlap"):
        run("pgd", model, image, label, overlap=1.0)
    with pytest.raises(InputError, match="--region"):
        run("pgd", model, image, label, region=torch.zeros_like(label, dtype=torch.bool))
    with pytest.raises(InputError, match="--attack"):
        make_attack("nope")
    with pytest.raises(InputError, match="--preset"):
        make_attack("pgd", preset="authors-final")


def test_registry_and_presets():
    assert set(ALL) <= set(ATTACKS)
    for name, entry in ATTACKS.items():
        assert attack_class(name).name == name
        interface = SourceGridAttack if entry.source_grid else ModelSpaceAttack
        assert issubclass(attack_class(name), interface) and isinstance(make_attack(name), interface)
        config = make_attack(name).config
        described = config.to_dict()
        assert all(entry["unit"] and entry["flag"].startswith("--") for entry in described.values())
    for name in ("saa", "saa-2d"):  # the authors' final setting is the default (issue 15)
        default = make_attack(name).config
        assert (default.rho, default.steps, default.block_size, default.lambda_dice) == (0.4, 10, 16, 0.2)
        assert (default.use_ssim_loss, default.lambda_ssim, default.step_size) == (True, 0.75, 0.1)
        assert ATTACKS[name].preset_names() == ["specified", "authors-final"]
        for preset in ATTACKS[name].preset_names():
            make_attack(name, preset=preset)
    specified = make_attack("saa", preset="specified", steps=3).config
    assert (specified.rho, specified.steps, specified.block_size, specified.lambda_dice) == (0.2, 3, 32, 0.01)
    assert (specified.lambda_ssim, specified.published_return) == (1.0, False)
    assert make_attack("vafa").config.steps == 20 and make_attack("vafa-2d").config.steps == 10
    assert make_attack("vafa").config.q_min == 5.0
    assert make_attack("pgd", eps=None).config.eps == 4.0  # None = not given


def test_vafa_renormalises_to_the_whole_slice_with_region(case):
    _, image, label = case
    region = label == 1
    quantiser = Quantiser(image, region, 8, 3)
    assert not quantiser.box.whole and quantiser.outside_min is not None
    values = quantiser.box_values(torch.full(quantiser.shape, 1e-3), 1e-6)  # ~no quantisation
    inside = region[quantiser.box.slices]
    box = image[quantiser.box.slices]
    z = slice(quantiser.box.low[2], quantiser.box.high[2])
    low = image[..., z].amin(dim=(2, 3), keepdim=True)
    high = image[..., z].amax(dim=(2, 3), keepdim=True)
    expected = (box - low + 1e-6 / 255) / (high - low + 1e-6 / 255)
    assert torch.allclose(values[inside], expected.expand_as(box)[inside], atol=1e-4)
