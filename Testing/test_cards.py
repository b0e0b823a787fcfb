"""Model cards, presets and the foreign checkpoint formats; nothing is ever unpickled."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from AdvSegAttackLib.cards import PRESETS, ModelCard, load_card, load_model, save_model
from AdvSegAttackLib.errors import InputError


def small_card(**overrides) -> ModelCard:
    fields = dict(
        name="tiny",
        architecture="unet",
        arguments={"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        spacing_mm=[3.0, 3.0, 3.0],
        roi_size=[16, 16, 16],
    )
    fields.update(overrides)
    return ModelCard(**fields)


def outputs(network: torch.nn.Module) -> torch.Tensor:
    x = torch.linspace(0, 1, 16**3).reshape(1, 1, 16, 16, 16)
    with torch.no_grad():
        return network.eval()(x)


def test_card_json_round_trip_and_safetensors(tmp_path):
    card = small_card()
    network = card.build_network()
    path = save_model(card, network, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    loaded_card, loaded = load_model(path)
    assert loaded_card.to_json() == card.to_json()
    assert torch.equal(outputs(network), outputs(loaded))
    assert all(not p.requires_grad for p in loaded.parameters())
    assert load_card(tmp_path / "model").name == "tiny"  # a folder with card.json works too


def test_unknown_architecture_and_bad_fields_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown architecture 'vnet'"):
        small_card(architecture="vnet")
    bad = tmp_path / "card.json"
    bad.write_text(json.dumps({"name": "x", "architecture": "unet", "colour": 3}), encoding="utf-8")
    with pytest.raises(InputError, match="unknown fields: colour"):
        load_card(bad)
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="is not a JSON model card"):
        load_card(bad)
    with pytest.raises(InputError, match="neither a model card file nor a known model name"):
        load_card(tmp_path / "nothing.json")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_btcv_presets_build_the_published_networks(name):
    card = PRESETS[name]()
    assert card.label_names[6] == "liver" and card.num_classes == 14
    assert card.spacing_mm == [1.5, 1.5, 2.0] and card.intensity_window_hu == [-175.0, 250.0]
    network = card.build_network()
    parameters = sum(p.numel() for p in network.parameters())
    if name == "btcv-unetr":
        assert 92_000_000 < parameters < 94_000_000  # 92.8 M with MONAI 1.6 (perceptron embedding)
        assert (
            network.vit.patch_embedding.proj_type == "perceptron"
            if hasattr(network.vit.patch_embedding, "proj_type")
            else True
        )
    if name == "btcv-swin-unetr":
        assert 60_000_000 < parameters < 70_000_000  # feature size 48


def test_research_code_checkpoint_with_module_prefix_loads(tmp_path):
    card = small_card()
    network = card.build_network()
    state = OrderedDict((f"module.{k}", v) for k, v in network.state_dict().items())
    path = tmp_path / "model_best.pt"
    torch.save({"epoch": 12, "best_acc": 0.81, "state_dict": state}, path)
    _, loaded = load_model(path, card=card)
    assert torch.equal(outputs(network), outputs(loaded))


def test_checkpoint_without_a_card_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_card().build_network().state_dict(), path)
    with pytest.raises(InputError, match="give --card"):
        load_model(path)


class Payload:
    """Any object that needs unpickling."""


def test_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(InputError, match="needs unpickling"):
        load_model(path, card=small_card())


def test_checkpoint_keys_that_do_not_fit_are_named(tmp_path):
    other = small_card(
        arguments={"channels": [4, 8, 32], "strides": [2, 2], "num_res_units": 1}
    ).build_network()
    path = tmp_path / "other.pth"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(InputError, match="keys do not fit the model card: .*wrong shape"):
        load_model(path, card=small_card())
    state = other.state_dict()
    state.pop(next(iter(state)))
    torch.save(state, path)
    with pytest.raises(InputError, match="1 missing"):
        load_model(path, card=small_card())


def test_unetr_checkpoint_from_older_monai_without_norm_cross_attn_loads(tmp_path):
    card = small_card(
        architecture="unetr",
        arguments={"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
        roi_size=[16, 16, 16],
    )
    network = card.build_network()
    state = {k: v for k, v in network.state_dict().items() if ".norm_cross_attn." not in k}
    assert len(state) < len(network.state_dict())
    path = tmp_path / "unetr.pt"
    torch.save({"state_dict": state}, path)
    _, loaded = load_model(path, card=card)
    assert torch.equal(outputs(network), outputs(loaded))


def test_monai_bundle_folder_loads_with_its_preprocessing(tmp_path):
    bundle = tmp_path / "spleen_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    inference = {
        "num_channels": 2,
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": "@num_channels",
            "channels": [4, 8, 16],
            "strides": [2, 2],
            "num_res_units": 1,
            "norm": "batch",
        },
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0,
                    "b_max": 1,
                },
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "overlap": 0.25},
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference), encoding="utf-8")
    metadata = {
        "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen"}}}}
    }
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    from monai.networks.nets import UNet

    reference = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")
    torch.save(reference.state_dict(), bundle / "models" / "model.pt")
    card, loaded = load_model(bundle)
    assert card.label_names == ["background", "spleen"]
    assert card.spacing_mm == [1.5, 1.5, 2.0] and card.intensity_window_hu == [-57.0, 164.0]
    assert card.roi_size == [16, 16, 16] and card.overlap == 0.25
    assert torch.equal(outputs(reference), outputs(loaded))


def test_torchscript_file_loads_with_a_card(tmp_path):
    card = small_card()
    network = card.build_network().eval()
    traced = torch.jit.trace(network, torch.zeros(1, 1, 16, 16, 16))
    path = tmp_path / "model.ts"
    traced.save(str(path))
    _, loaded = load_model(path, card=card)
    assert torch.allclose(outputs(network), outputs(loaded), atol=1e-6)
