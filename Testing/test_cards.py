"""Model cards, presets and the foreign checkpoint formats; nothing is ever unpickled."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.cli.common import TRUST_TORCHSCRIPT_HELP
from AdvSegAttackLib.errors import InputError
from AdvSegAttackLib.models.cards import PRESETS, ModelCard, load_card
from AdvSegAttackLib.models.networks import build_network, load_model, load_weights_only, save_model
from AdvSegAttackLib.volumes.io import write_image


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
    network = build_network(card)
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
    network = build_network(card)
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
    network = build_network(card)
    state = OrderedDict((f"module.{k}", v) for k, v in network.state_dict().items())
    path = tmp_path / "model_best.pt"
    torch.save({"epoch": 12, "best_acc": 0.81, "state_dict": state}, path)
    _, loaded = load_model(path, card=card)
    assert torch.equal(outputs(network), outputs(loaded))


def test_checkpoint_without_a_card_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build_network(small_card()).state_dict(), path)
    with pytest.raises(InputError, match="give --card"):
        load_model(path)


class Payload:
    """Any object that needs unpickling."""


def test_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(InputError, match="needs unpickling"):
        load_model(path, card=small_card())


def test_pickle_based_files_are_refused_on_torch_with_a_flawed_weights_only_loader(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build_network(small_card()).state_dict(), path)
    assert isinstance(load_weights_only(path), dict)
    with pytest.raises(InputError, match=r"model.pt is a pickle-based PyTorch file.*torch 2.5.1.*2.10"):
        load_weights_only(path, torch_version="2.5.1")
    path.write_text("version https://git-lfs.github.com/spec/v1\n", encoding="utf-8")  # an LFS pointer
    with pytest.raises(InputError, match=r"model.pt is not a readable weights-only PyTorch file"):
        load_weights_only(path)


@pytest.mark.parametrize("command", ["segment", "attack", "demo", "train", "attack-dataset", "evaluate"])
def test_every_command_that_takes_a_model_offers_the_trust_flag_and_says_the_risk(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--trust-torchscript" in capsys.readouterr().out.replace("\n", " ")
    assert "runs with your rights" in TRUST_TORCHSCRIPT_HELP


def test_checkpoint_keys_that_do_not_fit_are_named(tmp_path):
    other = build_network(
        small_card(arguments={"channels": [4, 8, 32], "strides": [2, 2], "num_res_units": 1})
    )
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
    network = build_network(card)
    state = {k: v for k, v in network.state_dict().items() if ".norm_cross_attn." not in k}
    assert len(state) < len(network.state_dict())
    path = tmp_path / "unetr.pt"
    torch.save({"state_dict": state}, path)
    _, loaded = load_model(path, card=card)
    assert torch.equal(outputs(network), outputs(loaded))


class SelfRunning(torch.nn.Module):
    """A TorchScript module whose `__setstate__` (run by torch.jit.load) prints: a TorchScript file is code."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.ones(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.scale, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("code in the TorchScript file ran")
        self.scale = state[0]
        self.training = state[1]


def test_torchscript_is_refused_unless_trusted_and_then_loads(tmp_path, capfd):
    path = tmp_path / "model.pt"
    torch.jit.script(SelfRunning()).save(str(path))
    with pytest.raises(InputError, match="TorchScript file.*--trust-torchscript"):
        load_model(path, card=small_card())
    image = write_image(sitk.Image([24, 24, 24], sitk.sitkInt16), tmp_path / "ct.nii.gz")
    args = ["segment", "--image", str(image), "--model", str(path), "--card", "btcv-unet", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    captured = capfd.readouterr()
    assert "--trust-torchscript" in captured.err and "ran" not in captured.out
    assert not (tmp_path / "out").exists()
    load_model(path, card=small_card(), trust_torchscript=True)
    assert "code in the TorchScript file ran" in capfd.readouterr().out  # what the refusal protects from

    card = small_card()
    network = build_network(card).eval()
    traced = torch.jit.trace(network, torch.zeros(1, 1, 16, 16, 16))
    traced.save(str(tmp_path / "model.ts"))
    _, loaded = load_model(tmp_path / "model.ts", card=card, trust_torchscript=True)
    assert torch.allclose(outputs(network), outputs(loaded), atol=1e-6)


# --- MONAI bundles are data, never code ---------------------------------------------------------------------


def spleen_shaped_config(marker: Path) -> dict:
    """A bundle config laid out as the model zoo's spleen_ct_segmentation inference.json (smaller UNet).

    Its `$`-entries (imports, device, datalist, network, initialize, run) are real-bundle shaped and would
    write `marker` if anything evaluated them; the loader reads only network_def, preprocessing and inferer.
    """
    touch = f"$__import__('pathlib').Path(r'{marker}').write_text('ran')"
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": touch,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "channels": [4, 8, 16],
            "strides": [2, 2],
            "num_res_units": 2,
            "norm": "batch",
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [{"_target_": "Invertd", "transform": "@preprocessing"}]},
        "initialize": [touch],
        "run": ["$@evaluator.run()", touch],
    }  # fmt: skip


def write_bundle(folder: Path, config: dict) -> Path:
    """A bundle folder with `config` as configs/inference.json, its metadata and weights of a fitting UNet."""
    from monai.networks.nets import UNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    metadata = {
        "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen"}}}}
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    network = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=2, norm="batch")
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def test_model_zoo_shaped_bundle_loads_without_running_its_expressions(tmp_path):
    marker = tmp_path / "ran"
    bundle = write_bundle(tmp_path / "spleen_ct_segmentation", spleen_shaped_config(marker))
    card, network = load_model(bundle)
    assert not marker.exists()
    assert card.architecture == "unet" and card.label_names == ["background", "spleen"]
    assert card.arguments == {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 2, "norm": "batch"}
    assert card.spacing_mm == [1.5, 1.5, 2.0] and card.orientation == "RAS"
    assert card.intensity_window_hu == [-57.0, 164.0]
    assert card.roi_size == [96, 96, 96] and card.overlap == 0.5
    from monai.networks.nets import UNet

    reference = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=2, norm="batch")
    reference.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    assert torch.equal(outputs(reference), outputs(network))


def test_bundle_references_to_literal_entries_are_resolved(tmp_path):
    """As in wholeBody_ct_segmentation: `@name` and `@group#key` references to plain literal entries."""
    config = spleen_shaped_config(tmp_path / "ran")
    config["displayable_configs"] = {"sw_overlap": 0.25}
    config["image_key"] = "image"
    config["spacing"] = [3.0, 3.0, 3.0]
    config["network_def"]["channels"] = "@network_channels"
    config["network_channels"] = [4, 8, 16]
    config["inferer"]["overlap"] = "@displayable_configs#sw_overlap"
    config["preprocessing"]["transforms"][3]["pixdim"] = "@spacing"
    config["preprocessing"]["transforms"][3]["keys"] = "@image_key"
    card, _ = load_model(write_bundle(tmp_path / "bundle", config))
    assert card.arguments["channels"] == [4, 8, 16] and card.overlap == 0.25 and card.spacing_mm == [3.0] * 3


def test_swin_unetr_btcv_shaped_bundle_is_read_as_data(tmp_path):
    config = spleen_shaped_config(tmp_path / "ran")
    config["network_def"] = {
        "_target_": "SwinUNETR",
        "spatial_dims": 3,
        "img_size": 96,
        "in_channels": 1,
        "out_channels": 14,
        "feature_size": 48,
        "use_checkpoint": False,
    }
    folder = tmp_path / "swin_unetr_btcv_segmentation"
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    from AdvSegAttackLib.models.bundles import bundle_card as read_bundle

    card, weights = read_bundle(folder)
    assert card.architecture == "swin-unetr" and card.num_classes == 14
    assert card.arguments == {"feature_size": 48, "use_checkpoint": False}
    assert weights == folder / "models" / "model.pt"


MALICIOUS = {
    "dollar expression in an argument": (
        lambda m: {"network_def": {"channels": f"$__import__('pathlib').Path(r'{m}').write_text('x') or [4, 8, 16]"}},
        "network_def#channels",
    ),
    "reference to a dollar expression": (
        lambda m: {"evil": f"$__import__('pathlib').Path(r'{m}').write_text('x') or 2", "network_def": {"out_channels": "@evil"}},
        "network_def#out_channels",
    ),
    "object with a _target_ as an argument": (
        lambda m: {"network_def": {"norm": {"_target_": "builtins.exec", "source": f"open(r'{m}', 'w').write('x')"}}},
        "network_def#norm",
    ),
    "network class outside the allow-list": (
        lambda m: {"network_def": {"_target_": "subprocess.run", "args": ["touch", str(m)]}},
        "network_def#_target_",
    ),
    "macro reading another file": (
        lambda m: {"network_def": {"channels": "%configs/evil.json#payload"}},
        "network_def#channels",
    ),
    "dollar expression in the spacing": (
        lambda m: {"preprocessing#pixdim": f"$__import__('pathlib').Path(r'{m}').write_text('x') or [1, 1, 1]"},
        "pixdim",
    ),
    "instantiation directive": (
        lambda m: {"network_def": {"_requires_": f"$__import__('pathlib').Path(r'{m}').write_text('x')"}},
        "network_def#_requires_",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_bundle_is_refused_and_runs_nothing(case, tmp_path, capsys):
    marker = tmp_path / "pwned"
    change, key = MALICIOUS[case]
    config = spleen_shaped_config(tmp_path / "ran")
    for name, value in change(marker).items():
        if name == "preprocessing#pixdim":
            config["preprocessing"]["transforms"][3]["pixdim"] = value
        elif name == "network_def":
            config["network_def"].update(value)
        else:
            config[name] = value
    bundle = write_bundle(tmp_path / "bundle", config)
    payload = {"payload": f"$__import__('pathlib').Path(r'{marker}').write_text('x') or [4, 8, 16]"}
    (bundle / "configs" / "evil.json").write_text(json.dumps(payload), encoding="utf-8")
    image = write_image(sitk.Image([24, 24, 24], sitk.sitkInt16), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    code = main(
        ["segment", "--image", str(image), "--model", str(bundle), "--out", str(out), "--device", "cpu"]
    )
    message = capsys.readouterr().err
    assert code == 2, message
    assert not marker.exists() and not (tmp_path / "ran").exists() and not out.exists()
    assert str(bundle / "configs" / "inference.json") in message and key in message
    assert message.count(". ") == 0  # one sentence


def test_bundle_preprocessing_that_cannot_be_reproduced_is_refused(tmp_path):
    """wholeBody_ct_segmentation normalises each volume (NormalizeIntensityd), not with an HU window."""
    config = spleen_shaped_config(tmp_path / "ran")
    config["preprocessing"]["transforms"][4] = {
        "_target_": "NormalizeIntensityd",
        "keys": "image",
        "nonzero": True,
    }
    with pytest.raises(
        InputError, match=r"inference.json: preprocessing#transforms#4 is NormalizeIntensityd"
    ):
        load_model(write_bundle(tmp_path / "bundle", config))
    config["preprocessing"]["transforms"][4] = {
        "_target_": "ScaleIntensityRanged",
        "a_min": -57,
        "a_max": 164,
    }
    with pytest.raises(InputError, match=r"preprocessing#transforms#4#clip"):
        load_model(write_bundle(tmp_path / "other", config))
    del config["preprocessing"]["transforms"][4]
    with pytest.raises(InputError, match=r"no ScaleIntensityRanged"):
        load_model(write_bundle(tmp_path / "third", config))


def test_bundle_with_only_a_yaml_config_is_refused_with_a_sentence(tmp_path):
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    (tmp_path / "bundle" / "configs" / "inference.yaml").write_text("network_def: {}\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"inference.yaml.*JSON"):
        load_model(tmp_path / "bundle")
