"""Adversarial training: the frequency regulariser, adversarial crops, `advseg train --adv-training`, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO, save_tiny_model
from safetensors.torch import load_file
from scipy.fft import dctn

from AdvSegAttackLib.attacks.base import make_attack
from AdvSegAttackLib.attacks.objective import dice_ce
from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.models.networks import load_model
from AdvSegAttackLib.training.adversarial import (
    AdversarialTraining,
    CropAttacker,
    frequency_regularisation,
    training_attacks,
)
from AdvSegAttackLib.training.supervised import STATE_FILE, TrainConfig, TrainingCase, train
from AdvSegAttackLib.volumes.io import read_image, read_label, sha256_file
from AdvSegAttackLib.volumes.phantom import make_phantom
from AdvSegAttackLib.volumes.preprocess import to_model_space


def test_frequency_regulariser_is_its_formula_and_zero_without_change():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, generator=generator)
    attacked = clean + 0.3 * torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, generator=generator)
    c = dctn(clean.numpy(), axes=(2, 3, 4), norm="ortho")
    a = dctn(attacked.numpy(), axes=(2, 3, 4), norm="ortho")
    expected = np.abs(c - a).sum() / np.abs(c).sum()
    assert float(frequency_regularisation(clean, attacked)) == pytest.approx(expected, rel=1e-12)
    assert float(frequency_regularisation(clean, clean.clone())) == 0.0
    # Gradients flow through both logits (numerator and denominator) and match finite differences.
    assert torch.autograd.gradcheck(
        frequency_regularisation, (clean.requires_grad_(), attacked.requires_grad_())
    )


@pytest.fixture(scope="module")
def real_crops(tmp_path_factory, real_ct_small, real_ct_small_labels):
    """A tiny 3 mm card and two 16³ crops of the real CT (model space) with their reference labels."""
    card, network = load_model(save_tiny_model(tmp_path_factory.mktemp("tiny"), 3.0, 16))
    image = read_image(real_ct_small)
    space = to_model_space(image, **card.preprocessing)
    label = space.label_to_model(read_label(real_ct_small_labels, image, card.label_names))
    centre = [n // 2 for n in space.tensor.shape[2:]]
    crops = []
    for shift in (-12, 12):
        x0, y0, z0 = centre[0] + shift - 8, centre[1] - 8, centre[2] - 8
        box = (slice(None), slice(None), slice(x0, x0 + 16), slice(y0, y0 + 16), slice(z0, z0 + 16))
        crops.append((space.tensor[box], label[box]))
    images = torch.cat([c[0] for c in crops]).float()
    labels = torch.cat([c[1] for c in crops])
    assert ((images > 0) & (images < 1)).float().mean() > 0.3 and (labels > 0).any()
    return card, network, images, labels


def test_pgd_crops_stay_in_budget_and_raise_the_loss(real_crops):
    card, network, images, labels = real_crops
    network.train()
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    attacker = CropAttacker(network, make_attack("pgd", eps=4.0, steps=3), "cpu")
    adversarial = attacker(network, images, labels, seed=7)

    change = (adversarial - images).abs()
    assert 0 < float(change.max()) <= 4 / 255 + 1e-6
    outside_window = (images <= 0) | (images >= 1)
    assert outside_window.any() and torch.equal(adversarial[outside_window], images[outside_window])
    # The live network is untouched (weights, train mode, trainable); the frozen copy is in eval mode.
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert network.training and all(p.requires_grad for p in network.parameters())
    assert not attacker.frozen.training
    with torch.no_grad():
        clean_loss = dice_ce(attacker.frozen(images), labels)
        adversarial_loss = dice_ce(attacker.frozen(adversarial), labels)
    assert (adversarial_loss > clean_loss).all()
    # Every crop is attacked on its own: the second crop alone (seed 7 + 1) gives the same result.
    alone = attacker(network, images[1:], labels[1:], seed=8)
    assert torch.equal(alone, adversarial[1:])


@pytest.mark.parametrize("name", training_attacks())
def test_every_training_attack_changes_crops_only_inside_the_window(name, real_crops):
    card, network, images, labels = real_crops
    fields = make_attack(name).config.values()
    attack = make_attack(name, **({"steps": 2} if "steps" in fields else {}))
    adversarial = CropAttacker(network, attack, "cpu")(network, images, labels, seed=0)
    inside = (images > 0) & (images < 1)
    assert (adversarial[inside] != images[inside]).float().mean() > 0.2
    assert torch.equal(adversarial[~inside], images[~inside])
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1


def test_source_grid_attacks_are_refused_for_training():
    assert "texture" not in training_attacks() and {"pgd", "saa", "vafa"} <= set(training_attacks())
    with pytest.raises(InputError, match="cannot attack training crops"):
        AdversarialTraining.from_options("texture")


TINY_DATA = ["--phantoms", "1", "--phantom-spacing", "8", "8", "8", "--device", "cpu"]


def test_cli_adversarial_fine_tuning_writes_a_card_and_resumes(tmp_path, capsys):
    init = save_tiny_model(tmp_path, 8.0, 32)
    out = tmp_path / "robust"
    args = ["train", "--out", str(out), "--init", str(init.parent), "--name", "tiny-robust", *TINY_DATA]
    adversarial = ["--adv-training", "--freq-reg", "--train-attack", "pgd", "--train-attack-param", "steps=1"]
    assert main([*args, *adversarial, "--steps", "2", "--validate-every", "1"]) == 0

    card, network = load_model(out)
    assert card.name == "tiny-robust"
    training = card.provenance["training"]
    attack = training["adversarial_training"]
    assert attack["attack"] == "pgd" and attack["frequency_regularisation"] is True
    assert attack["parameters"]["steps"]["value"] == 1 and attack["parameters"]["eps"]["value"] == 4.0
    assert "--adv-training --freq-reg" in training["command"]
    origin = card.provenance["initialised_from"]
    assert origin["name"] == "tiny" and origin["weights_sha256"] == sha256_file(
        init.parent / "model.safetensors"
    )
    initial = load_file(str(init.parent / "model.safetensors"))
    assert any(not torch.equal(initial[k], v) for k, v in network.state_dict().items())

    assert main([*args, *adversarial, "--steps", "3", "--validate-every", "1"]) == 0  # resumes at step 2
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 3 and [h["step"] for h in state["history"]] == [1, 2, 3]

    capsys.readouterr()
    other = ["--adv-training", "--train-attack", "fgsm"]
    assert main([*args, *other, "--steps", "4"]) == 2  # resuming with another attack is refused
    assert "other adversarial-training settings" in capsys.readouterr().err
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--freq-reg"], "need --adv-training"),
        (["--adv-training", "--train-attack-param", "radius=3"], "not a parameter of --train-attack pgd"),
        (["--adv-training", "--train-attack-param", "eps=big"], "is not a float value"),
        (["--adv-training", "--train-attack-param", "eps=900"], "--eps must be in (0, 255]"),
        (
            ["--adv-training", "--train-attack", "pgd", "--train-attack-preset", "authors-final"],
            "not a preset",
        ),
    ],
)
def test_cli_refuses_bad_adversarial_options(options, message, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "m"), *TINY_DATA, *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


DDP_DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    from AdvSegAttackLib.training.adversarial import AdversarialTraining
    from AdvSegAttackLib.models.networks import load_model
    from AdvSegAttackLib.datasets.distributed import init_distributed, shutdown
    from AdvSegAttackLib.volumes.phantom import make_phantom
    from AdvSegAttackLib.training.supervised import TrainConfig, TrainingCase, train

    torch.set_num_threads(1)
    init, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    context, device = init_distributed("cpu")
    card, network = load_model(init, device=device)
    image, label = make_phantom(0, spacing=(8.0, 8.0, 8.0))
    train(
        card,
        [TrainingCase("phantom seed 0", image, label, synthetic=True)],
        [],
        out,
        TrainConfig(steps=steps, crops_per_volume=1, volumes_per_step=1, validate_every=1),
        device,
        initial=network,  # trained in place: every rank saves what it ends with
        adversarial=AdversarialTraining.from_options("fgsm", freq_reg=True),
        distributed=context,
    )
    state = {k: v.contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(out / f"rank{context.rank}.safetensors"))
    shutdown(context)
    """
)


def _torchrun(driver, init, out, steps: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*command, str(driver), str(init), str(out), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_adversarial_training_on_two_processes(tmp_path):
    init = save_tiny_model(tmp_path, 8.0, 32).parent
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER, encoding="utf-8")
    out = tmp_path / "ddp"
    _torchrun(driver, init, out, 2)
    rank0 = load_file(str(out / "rank0.safetensors"))
    rank1 = load_file(str(out / "rank1.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP kept the ranks in step
    card, network = load_model(out)
    assert card.provenance["training"]["processes"] == {"world_size": 2, "backend": "gloo"}
    assert card.provenance["training"]["adversarial_training"]["attack"] == "fgsm"
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and all(torch.equal(state["model"][k], rank0[k]) for k in rank0)

    # One process (rank 0's crops alone) ends elsewhere: rank 1's gradients entered the DDP update.
    card_single, network_single = load_model(init)
    image, label = make_phantom(0, spacing=(8.0, 8.0, 8.0))
    train(
        card_single,
        [TrainingCase("phantom seed 0", image, label, synthetic=True)],
        [],
        tmp_path / "single",
        TrainConfig(steps=2, crops_per_volume=1, volumes_per_step=1, validate_every=1),
        "cpu",
        initial=network_single,
        adversarial=AdversarialTraining.from_options("fgsm", freq_reg=True),
    )
    single = network_single.state_dict()
    assert any(not torch.allclose(single[k], rank0[k]) for k in rank0)

    _torchrun(driver, init, out, 3)  # both ranks resume from rank 0's train_state.pt at step 2
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 3 and [h["step"] for h in state["history"]] == [1, 2, 3]
    rank0 = load_file(str(out / "rank0.safetensors"))
    rank1 = load_file(str(out / "rank1.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert all(torch.equal(state["model"][k], rank0[k]) for k in rank0)
