"""Texture auto-encoders: architecture, the three weight sources, reconstruction on real CT, training command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from conftest import shared_path

from AdvSegAttackLib.attacks.texture.networks import LEVELS, TextureAutoencoders
from AdvSegAttackLib.attacks.texture.weights import load_texture_autoencoders, texture_models_dir
from AdvSegAttackLib.cli import main
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.training.texture_autoencoders import (
    axial_slices,
    parse_volume_spec,
    reconstruction_psnr,
    slices_tensor,
)

# Held-out reconstruction PSNR floors (dB, levels 1..5) on three 256² slices of example_ct_sm, which is
# example_ct[:, :, 82:112], the slab the bundled weights were NOT trained on. Measured on these slices:
# distilled 55.1 / 36.7 / 31.5 / 25.8 / 22.0, bundled 50.2 / 35.8 / 28.2 / 23.5 / 20.5; floors 2-5 dB lower.
DISTILLED_FLOORS_DB = (50.0, 33.0, 28.0, 23.0, 19.0)
BUNDLED_FLOORS_DB = (46.0, 33.0, 26.0, 21.0, 18.5)


@pytest.fixture(scope="module")
def distilled_folder() -> Path:
    return shared_path("weights/collaborative_distillation_16x")


@pytest.fixture(scope="module")
def distilled(distilled_folder) -> TextureAutoencoders:
    return load_texture_autoencoders(distilled_folder)


@pytest.fixture(scope="module")
def held_out_slices(real_ct_small) -> torch.Tensor:
    slices = axial_slices(sitk.ReadImage(str(real_ct_small)), (-135.0, 215.0))
    return slices_tensor(slices[[5, 15, 25]], 256)


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in data["model"].items() if "_aux." not in k}


def test_all_ten_distilled_files_load_strictly(distilled, distilled_folder):
    assert distilled.source == f"distilled-16x:{distilled_folder}"
    assert not distilled.training
    for level in LEVELS:
        for module, name in (
            (distilled.encoder(level), f"SE{level}.pth"),
            (distilled.decoder(level), f"SD{level}.pth"),
        ):
            expected = _file_state(distilled_folder / name)
            loaded = module.state_dict()
            assert set(loaded) == set(expected), name
            for key, tensor in expected.items():
                assert torch.equal(loaded[key], tensor.float()), f"{name} {key}"
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in distilled.parameters())


@pytest.mark.parametrize(
    ("size", "channels"), [("16x", (24, 32, 64, 128, 128)), ("full", (64, 128, 256, 512, 512))]
)
def test_feature_channels_and_spatial_factors(size, channels):
    networks = TextureAutoencoders(size=size).freeze()
    image = torch.rand(1, 3, 32, 48)
    for level, expected_channels in zip(LEVELS, channels, strict=True):
        factor = networks.downsampling(level)
        assert factor == 2 ** (level - 1)
        assert networks.feature_channels(level) == expected_channels
        with torch.no_grad():
            features = networks.encode(image, level)
            assert features.shape == (1, expected_channels, 32 // factor, 48 // factor)
            assert networks.decode(features, level).shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="level"):
        networks.encode(image, 6)


def _copy_distilled(source: Path, target: Path) -> Path:
    target.mkdir()
    for level in LEVELS:
        for name in (f"SE{level}.pth", f"SD{level}.pth"):
            shutil.copyfile(source / name, target / name)
    return target


def _rewrite(path: Path, change) -> None:
    data = torch.load(path, map_location="cpu", weights_only=True)
    change(data["model"])
    torch.save(data, path)


def test_bad_distilled_files_name_the_file(distilled_folder, tmp_path):
    folder = _copy_distilled(distilled_folder, tmp_path / "w")
    _rewrite(folder / "SD3.pth", lambda state: state.pop("conv22.weight"))
    with pytest.raises(InputError, match=r"SD3\.pth lacks .*conv22\.weight"):
        load_texture_autoencoders(folder)
    shutil.copyfile(distilled_folder / "SD3.pth", folder / "SD3.pth")

    _rewrite(folder / "SE2.pth", lambda state: state.__setitem__("conv99.weight", torch.zeros(1)))
    with pytest.raises(InputError, match=r"SE2\.pth has 1 tensor.*conv99\.weight"):
        load_texture_autoencoders(folder)
    shutil.copyfile(distilled_folder / "SE2.pth", folder / "SE2.pth")

    _rewrite(folder / "SE4.pth", lambda state: state.__setitem__("conv41.bias", torch.zeros(7)))
    with pytest.raises(InputError, match=r"SE4\.pth: 'conv41\.bias' has shape \(7,\)"):
        load_texture_autoencoders(folder)
    shutil.copyfile(distilled_folder / "SE4.pth", folder / "SE4.pth")

    (folder / "SD5.pth").write_text(
        "../20191109-211322_E20.pth", encoding="utf-8"
    )  # a git symlink checked out as text
    with pytest.raises(InputError, match=r"SD5\.pth is not a readable weights-only PyTorch file"):
        load_texture_autoencoders(folder)
    (folder / "SD5.pth").unlink()
    with pytest.raises(InputError, match=r"SD5\.pth is missing"):
        load_texture_autoencoders(folder)
    with pytest.raises(InputError, match="holds no texture auto-encoder weights"):
        load_texture_autoencoders(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        load_texture_autoencoders(tmp_path / "nowhere")


def test_full_size_texture_reformer_layout_loads_strictly(tmp_path):
    torch.manual_seed(0)
    original = TextureAutoencoders(size="full")
    for level in LEVELS:
        torch.save(original.encoder(level).state_dict(), tmp_path / f"E{level}.pth")
        torch.save(original.decoder(level).state_dict(), tmp_path / f"D{level}.pth")
    loaded = load_texture_autoencoders(tmp_path)
    assert loaded.source == f"texture-reformer:{tmp_path}"
    assert loaded.parameter_count() == 34_239_371  # the published full-size count, all ten networks
    reference = original.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())

    state = original.encoder(3).state_dict()
    state["conv31.weight"] = state["conv31.weight"][:128]
    torch.save(state, tmp_path / "E3.pth")
    with pytest.raises(InputError, match=r"E3\.pth: 'conv31\.weight' has shape \(128, 128, 3, 3\)"):
        load_texture_autoencoders(tmp_path)


@pytest.mark.parametrize("weights", ["distilled", "bundled"])
def test_reconstruction_psnr_on_held_out_real_ct(weights, distilled, held_out_slices):
    networks = distilled if weights == "distilled" else load_texture_autoencoders()
    floors = DISTILLED_FLOORS_DB if weights == "distilled" else BUNDLED_FLOORS_DB
    for level, floor in zip(LEVELS, floors, strict=True):
        psnr = reconstruction_psnr(networks, held_out_slices, level)
        assert psnr > floor, f"{weights} level {level}: {psnr:.2f} dB <= {floor} dB"
    # A network that ignores its input cannot pass: a constant image scores far below every floor.
    constant = held_out_slices.mean()
    mse = ((held_out_slices - constant) ** 2).mean()
    assert 10 * torch.log10(1 / mse) < min(floors) - 5


def test_bundled_weights_are_the_default():
    networks = load_texture_autoencoders()
    assert networks.source == "bundled:ct-16x"
    assert networks.size == "16x"
    assert [networks.feature_channels(k) for k in LEVELS] == [24, 32, 64, 128, 128]
    folder = texture_models_dir() / "ct-16x"
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    assert card["training"]["command"].startswith("advseg train-texture-ae")
    assert set(card["validation"]["psnr_db"]) and all(
        len(values) == 5 for values in card["validation"]["psnr_db"].values()
    )
    assert sum(f.stat().st_size for f in folder.iterdir()) < 10 * 2**20


def test_volume_spec_selects_a_slab(tmp_path):
    assert parse_volume_spec("ct.nii.gz:3:9") == (Path("ct.nii.gz"), 3, 9)
    assert parse_volume_spec("ct.nii.gz:82:") == (Path("ct.nii.gz"), 82, None)
    assert parse_volume_spec("ct.nii.gz") == (Path("ct.nii.gz"), 0, None)
    with pytest.raises(InputError, match="empty"):
        parse_volume_spec("ct.nii.gz:9:3")


def test_train_texture_ae_writes_loadable_weights(tmp_path):
    from AdvSegAttackLib.volumes.phantom import make_phantom

    image, _ = make_phantom(0, shape=(48, 40, 6), spacing=(8.0, 8.0, 8.0))
    phantom = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(image, str(phantom))
    out = tmp_path / "ae"
    argv = ["train-texture-ae", "--out", str(out), "--image", f"{phantom}:0:4", "--val-image", f"{phantom}:4:6",
            "--steps", "2", "--size", "32", "--crop", "32", "--batch", "1", "--device", "cpu",
            "--progress", "jsonl"]  # fmt: skip
    assert main(argv) == 0
    networks = load_texture_autoencoders(out)
    assert networks.source == f"ct-16x:{out}"
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["training"]["train_slices"] >= 1
    assert sorted(card["training"]["levels"]) == ["1", "2", "3", "4", "5"]
    assert list(card["validation"]["psnr_db"].values())[0].keys() == {"1", "2", "3", "4", "5"}
    # The card's held-out PSNR is that of the weights written (recomputed from the loaded files).
    held_out = slices_tensor(axial_slices(image, (-135.0, 215.0), 4, 6), 32)
    recorded = list(card["validation"]["psnr_db"].values())[0]
    for level in LEVELS:
        assert reconstruction_psnr(networks, held_out, level) == pytest.approx(
            recorded[str(level)], abs=0.006
        )

    # Fine-tuning one level from --init keeps the other levels bit-identical and the card keeps its history.
    tuned = tmp_path / "tuned"
    assert main([*argv[:2], str(tuned), *argv[3:], "--init", str(out), "--levels", "1", "--steps", "1"]) == 0
    tuned_networks = load_texture_autoencoders(tuned)
    before, after = networks.state_dict(), tuned_networks.state_dict()
    assert all(
        torch.equal(before[k], after[k]) for k in before if not k.startswith(("encoders.E1.", "decoders.D1."))
    )
    assert not torch.equal(before["decoders.D1.conv11.weight"], after["decoders.D1.conv11.weight"])
    tuned_card = json.loads((tuned / "card.json").read_text(encoding="utf-8"))
    assert tuned_card["training"]["init_training"]["command"] == card["training"]["command"]

    # Bad options: exit status 2 and nothing written.
    assert main([*argv[:2], str(tmp_path / "bad1"), *argv[3:], "--levels", "2"]) == 2
    assert main([*argv[:2], str(tmp_path / "bad2"), *argv[3:], "--crop", "40"]) == 2
    assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2").exists()
