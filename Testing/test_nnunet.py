"""nnU-Net v2 results folders: equality with nnUNetPredictor on the real CT, the checkpoint's safe globals, label
names, --folds/--configuration/--checkpoint, and every attack against an nnU-Net model on a real-CT crop.

The models are small PlainConvUNets with seeded random weights in nnU-Net's results-folder and checkpoint format
(`nnunet_folders.py`); nnUNetPredictor (the reference) loads them with its own code.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).parent))
from nnunet_folders import LABELS, write_results_folder  # noqa: E402

from AdvSegAttackLib.errors import InputError  # noqa: E402
from AdvSegAttackLib.models.cards import load_card  # noqa: E402
from AdvSegAttackLib.models.labels import organ_index  # noqa: E402
from AdvSegAttackLib.models.nnunet import nnunet_card  # noqa: E402

nnunetv2 = pytest.importorskip("nnunetv2")
REPO_CARD = Path(__file__).parents[1] / "Resources" / "Models" / "abdomen-unet" / "card.json"

# nnUNetPredictor keeps the blended logits in float16, and so does the engine for an nnU-Net model; the network's
# input differs by float32 rounding (the z-score is the network's first layer), which moves a logit by one float16
# step at most here and there.
LOGITS_MEAN_ABS = 1e-4
LABELS_EQUAL = 0.9999  # the issue asks for 0.999


def reference_prediction(folder: Path, image: Path, tta: bool) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """(nnU-Net's preprocessed input, its model-space logits, its labels on the source grid (z, y, x))."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=tta,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), None, "checkpoint_final.pth")
    data, properties = SimpleITKIO().read_images([str(image)])
    preprocessed, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        data.copy(),
        None,
        dict(properties),
        predictor.plans_manager,
        predictor.configuration_manager,
        predictor.dataset_json,
    )
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(preprocessed)).float()
    labels = predictor.predict_single_npy_array(data, {"spacing": properties["spacing"]})
    return preprocessed, logits, labels


@pytest.mark.parametrize(
    ("which", "spacing", "patch", "transpose", "tta"),
    [
        # example_ct_sm (3 mm) to 4 × 3.5 × 3.5 mm with a transpose; with mirroring TTA (8 flips) to 6 × 5 × 5 mm
        ("small", [4.0, 3.5, 3.5], [32, 48, 48], [0, 2, 1], False),
        ("small", [6.0, 5.0, 5.0], [16, 48, 48], [0, 2, 1], True),
        # the MSD spleen crop (0.79 × 0.79 × 5 mm, anisotropic: in-plane spline, nearest across slices)
        ("spleen", [5.0, 1.6, 1.6], [24, 64, 64], [0, 1, 2], False),
    ],
)
def test_segmentation_equals_nnunet_predictor(
    tmp_path, real_ct_small, msd_spleen, which, spacing, patch, transpose, tta
):
    image = real_ct_small if which == "small" else msd_spleen[0]
    folder = write_results_folder(tmp_path, spacing, patch, transpose)
    assert_equals_nnunet_predictor(folder, image, tta)


def assert_equals_nnunet_predictor(folder: Path, image: Path, tta: bool) -> np.ndarray:
    """The engine's input, logits and labels against nnUNetPredictor's; returns the engine's labels (z, y, x)."""
    from AdvSegAttackLib.pipeline.case import LoadedModel

    preprocessed, reference_logits, reference_labels = reference_prediction(folder, image, tta)
    model = LoadedModel.load(folder, nnunet={"tta": True} if tta else None)
    space, _, labels = model.segment(sitk.ReadImage(str(image)))
    z_scored = space.tensor * model.network.scale + model.network.shift  # the network's first layer
    assert tuple(z_scored.shape[1:]) == preprocessed.shape
    assert float((z_scored[0] - torch.from_numpy(preprocessed)).abs().max()) < 1e-4

    logits = model.logits(space)
    difference = (logits[0] - reference_logits).abs()
    float16_step = 2.0 ** (np.floor(np.log2(float(reference_logits.abs().max()))) - 10)
    assert float(difference.max()) <= 2 * float16_step
    assert float(difference.mean()) <= LOGITS_MEAN_ABS
    ours = sitk.GetArrayFromImage(labels)
    assert ours.shape == reference_labels.shape
    assert len(np.unique(reference_labels)) >= 4  # a model that predicts several classes, not one
    assert (ours == reference_labels).mean() >= LABELS_EQUAL
    return ours


def test_checkpoint_needs_exactly_the_numpy_scalar_types(tmp_path):
    from AdvSegAttackLib.models.networks import load_weights_only
    from AdvSegAttackLib.models.nnunet_networks import checkpoint_globals, read_checkpoint

    folder = write_results_folder(tmp_path, [3.0, 3.0, 3.0], [32, 32, 32], folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(InputError, match="needs unpickling"):
        load_weights_only(path)  # numpy float64 in the training log: not plain data for torch
    assert isinstance(load_weights_only(path, allowed_globals=checkpoint_globals())["_best_ema"], float)
    weights, axes = read_checkpoint(path, "3d_fullres")
    assert axes == [0, 1, 2] and all(isinstance(v, torch.Tensor) for v in weights.values())

    # Anything else a checkpoint might hold is still refused, numpy scalars allowed or not.
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["init_args"]["callback"] = pickle.loads  # a function: would be imported by the unpickler
    torch.save(checkpoint, path)
    with pytest.raises(InputError, match="needs unpickling"):
        read_checkpoint(path, "3d_fullres")


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    from AdvSegAttackLib.models.nnunet_networks import read_checkpoint

    folder = write_results_folder(tmp_path, [3.0, 3.0, 3.0], [32, 32, 32], folds=(0,))
    with pytest.raises(InputError, match="trained for configuration 3d_fullres, not 3d_lowres"):
        read_checkpoint(folder / "fold_0" / "checkpoint_final.pth", "3d_lowres")


def test_label_names_through_the_organ_name_normaliser(tmp_path, capsys):
    from AdvSegAttackLib.cli import main

    folder = write_results_folder(tmp_path, [3.0, 3.0, 3.0], [32, 32, 32], folds=(0,))
    card = load_card(folder.parent)  # the dataset folder with one configuration
    assert card.label_names == LABELS
    names = card.label_names
    assert organ_index("liver", names) == LABELS.index("liver")
    assert (
        organ_index("left_kidney", names) == organ_index("kidney_left", names) == LABELS.index("kidney_left")
    )
    assert organ_index("Right adrenal gland", names) == LABELS.index("adrenal_gland_right")
    assert organ_index("portal and splenic veins", names) == LABELS.index("portal_vein_and_splenic_vein")
    with pytest.raises(InputError, match="not an organ of this model"):
        organ_index("brain", names)

    assert main(["info", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "kidney_left" in printed and "portal_vein_and_splenic_vein" in printed
    assert "3d_fullres" in printed


def two_configurations(root: Path) -> Path:
    """A dataset folder holding 3d_fullres (3 mm, folds 0 and 1) and 3d_lowres (6 mm, fold 0), as nnU-Net
    and TotalSegmentator lay them out."""
    write_results_folder(root, [3.0, 3.0, 3.0], [32, 32, 32], configuration="3d_fullres")
    write_results_folder(root / "other", [6.0, 6.0, 6.0], [32, 32, 32], configuration="3d_lowres", folds=(0,))
    dataset = root / "Dataset999_AdvSegTest"
    low = root / "other" / "Dataset999_AdvSegTest" / "nnUNetTrainer__nnUNetPlans__3d_lowres"
    low.rename(dataset / low.name)
    return dataset


def test_info_lists_every_configuration_of_a_dataset_folder(tmp_path, capsys):
    """`advseg info` on a dataset folder of two configurations lists both (folds, checkpoints, patch, spacing,
    label names) and says that the other commands need --configuration; --configuration selects one."""
    from AdvSegAttackLib.cli import main

    dataset = two_configurations(tmp_path)
    best = dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_1" / "checkpoint_best.pth"
    best.write_bytes((best.parent / "checkpoint_final.pth").read_bytes())
    assert main(["info", str(dataset)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "nnU-Net v2 results folder" and info["default_configuration"] is None
    full, low = info["configurations"]
    assert full["configuration"] == "3d_fullres" and low["configuration"] == "3d_lowres"
    assert full["folder"] == "nnUNetTrainer__nnUNetPlans__3d_fullres" and full["trainer"] == "nnUNetTrainer"
    assert full["folds"] == ["0", "1"] and low["folds"] == ["0"]
    assert full["checkpoints"] == [
        "fold_0/checkpoint_final.pth",
        "fold_1/checkpoint_best.pth",
        "fold_1/checkpoint_final.pth",
    ]
    assert full["spacing_mm"] == [3.0, 3.0, 3.0] and low["spacing_mm"] == [6.0, 6.0, 6.0]
    assert full["patch_size"] == low["patch_size"] == [32, 32, 32]
    assert full["label_names"] == low["label_names"] == LABELS
    assert full["supported"] and low["supported"] and "refused" not in full

    assert main(["info", str(dataset), "--configuration", "3d_lowres"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [c["configuration"] for c in info["configurations"]] == ["3d_lowres"]
    assert info["default_configuration"] == "3d_lowres"
    assert main(["info", str(dataset), "--configuration", "2d"]) == 2
    assert "--configuration 2d" in capsys.readouterr().err

    # one configuration: it is the default; one the engine cannot run is listed with its sentence
    single = dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert main(["info", str(single)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default_configuration"] == "3d_fullres" and len(info["configurations"]) == 1
    plans = json.loads((single / "plans.json").read_text(encoding="utf-8"))
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["ZScoreNormalization"]
    (single / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    assert main(["info", str(dataset)]) == 0
    full, low = json.loads(capsys.readouterr().out)["configurations"]
    assert not full["supported"] and "ZScoreNormalization" in full["refused"] and low["supported"]
    assert main(["info", str(REPO_CARD), "--configuration", "3d_fullres"]) == 2
    assert "--configuration is for nnU-Net" in capsys.readouterr().err


def test_folds_configuration_and_checkpoint_choices(tmp_path):
    dataset = two_configurations(tmp_path)

    with pytest.raises(
        InputError, match="several nnU-Net configurations .*3d_fullres.*3d_lowres.*--configuration"
    ):
        nnunet_card(dataset)
    card = nnunet_card(dataset, configuration="3d_lowres")
    assert card.spacing_mm == [6.0, 6.0, 6.0] and card.nnunet["folds"] == ["0"]
    assert nnunet_card(dataset, configuration="3d_fullres").nnunet["folds"] == ["0", "1"]  # all present
    assert nnunet_card(dataset, configuration="3d_fullres", folds=["1"]).nnunet["checkpoints"] == [
        "fold_1/checkpoint_final.pth"
    ]
    with pytest.raises(InputError, match="--folds 4: .*fold_4"):
        nnunet_card(dataset, configuration="3d_fullres", folds=["4"])
    with pytest.raises(InputError, match="has no fold_<k>/checkpoint_best.pth"):
        nnunet_card(dataset, configuration="3d_fullres", checkpoint="best")
    with pytest.raises(InputError, match="--configuration 2d"):
        nnunet_card(dataset, configuration="2d")


def test_folds_average_logits_and_tta_needs_mirroring_axes(tmp_path):
    from AdvSegAttackLib.models.networks import load_model

    folder = write_results_folder(tmp_path, [6.0, 6.0, 6.0], [32, 32, 32])
    _, both = load_model(folder)
    _, first = load_model(folder, nnunet={"folds": ["0"]})
    _, second = load_model(folder, nnunet={"folds": ["1"]})
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(both(x), (first(x) + second(x)) / 2, atol=1e-4)

    flipped = write_results_folder(tmp_path / "nomirror", [6.0, 6.0, 6.0], [32, 32, 32], mirror_axes=None)
    with pytest.raises(InputError, match="--tta: .*allows no mirroring"):
        load_model(flipped, nnunet={"tta": True})
    with pytest.raises(InputError, match="--folds is for nnU-Net results folders"):
        load_model("abdomen-unet", nnunet={"folds": ["0"]})


def _attacks() -> list[str]:
    from AdvSegAttackLib.attacks.catalogue import ATTACKS

    return list(ATTACKS)


@pytest.fixture(scope="module")
def attack_folder(tmp_path_factory) -> Path:
    return write_results_folder(tmp_path_factory.mktemp("nnunet"), [4.0, 4.0, 4.0], [32, 32, 32], folds=(0,))


@pytest.mark.parametrize("attack", _attacks())
def test_every_attack_runs_against_an_nnunet_model_on_the_real_ct(
    tmp_path, attack_folder, real_ct_small, attack
):
    from AdvSegAttackLib.attacks.catalogue import ATTACKS
    from AdvSegAttackLib.pipeline.case import run_attack
    from AdvSegAttackLib.pipeline.request import AttackRequest
    from AdvSegAttackLib.progress import make_reporter
    from AdvSegAttackLib.volumes.io import write_image

    crop = sitk.ReadImage(str(real_ct_small))[20:84, 20:84, :]  # a 64 × 64 × 30 crop (3 mm) of the real CT
    image = write_image(crop, tmp_path / "crop.nii.gz")
    entry = ATTACKS[attack]
    params = {"steps": 2} if any(p.name == "steps" for p in entry.parameters) else {}
    card = nnunet_card(attack_folder)
    organs = ()
    if entry.needs_organ:  # the organ the clean prediction holds most of
        from AdvSegAttackLib.pipeline.case import LoadedModel

        _, _, clean = LoadedModel.load(attack_folder).segment(crop)
        counts = np.bincount(sitk.GetArrayFromImage(clean).ravel(), minlength=len(LABELS))
        organs = (card.label_names[int(np.argmax(counts[1:])) + 1],)
    request = AttackRequest(
        image=image,
        model=str(attack_folder),
        out=tmp_path / "case",
        attack=attack,
        params=params,
        organs=organs,
    )
    metrics = run_attack(request, make_reporter("log", io.StringIO()))
    perturbation = metrics["perturbation"]
    assert perturbation["window_hu"] == [-950.0, 1180.0]  # the plans' foreground percentiles
    assert perturbation["voxels_changed"] > 0
    if attack in ("pgd", "bim", "fgsm"):  # ε = 4/255 of the model's window: 33.4 HU here
        assert 4 / 255 * 425 < perturbation["linf_hu"] <= 4 / 255 * (1180 + 950) + 0.5
    provenance = json.loads((tmp_path / "case" / "provenance.json").read_text(encoding="utf-8"))
    nnunet = provenance["model"]["nnunet"]
    assert nnunet["tta"] is False and nnunet["configuration"] == "3d_fullres"
    assert list(nnunet["checkpoints"]) == ["fold_0/checkpoint_final.pth"]


def test_slicer_module_lists_the_organs_of_a_results_folder(tmp_path):
    """The Slicer module's "From file…" with an nnU-Net folder: its organ list comes from dataset.json."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "AdvSegAttack"))
    from AdvSegAttackSceneLib import engine

    folder = write_results_folder(tmp_path, [3.0, 3.0, 3.0], [32, 32, 32], folds=(0,))
    names, colors = engine.cardLabels(str(folder))
    assert names == LABELS and len(colors) == len(LABELS)
    assert colors[LABELS.index("liver")] == (221, 130, 101)  # BTCV's liver colour, found by name
    assert engine.cardLabels(str(folder.parent))[0] == LABELS  # the dataset folder, one configuration
    assert engine.cardLabels(str(tmp_path)) == ([], [])  # a folder above it is no model


def test_train_writes_a_results_folder_that_nnunet_predictor_loads(tmp_path, real_ct_small):
    """`advseg train --nnunet-plans`: the plans' network trained by the engine, written in nnU-Net's format."""
    from AdvSegAttackLib.cli import main
    from AdvSegAttackLib.pipeline.case import LoadedModel

    plans_folder = write_results_folder(tmp_path / "plans", [6.0, 6.0, 6.0], [32, 32, 32], folds=())
    out = tmp_path / "trained"
    argv = ["train", "--out", str(out), "--nnunet-plans", str(plans_folder), "--phantoms", "1"]
    argv += ["--phantom-spacing", "6", "6", "6", "--steps", "2", "--validate-every", "2", "--device", "cpu"]
    assert main([*argv, "--progress", "log"]) == 0
    assert (out / "fold_0" / "checkpoint_final.pth").is_file()
    record = json.loads((out / "advseg_training.json").read_text(encoding="utf-8"))
    assert "--nnunet-plans" in record["training"]["command"]

    _, _, reference = reference_prediction(out, real_ct_small, tta=False)
    _, _, labels = LoadedModel.load(out).segment(sitk.ReadImage(str(real_ct_small)))
    assert (sitk.GetArrayFromImage(labels) == reference).mean() >= LABELS_EQUAL


def test_old_format_plans_give_the_network_nnunet_reconstructs(tmp_path):
    """Plans of nnU-Net < 2.4 (TotalSegmentator's) name the network; the engine rebuilds its arguments as nnU-Net's
    ConfigurationManager does, and the network loads the same weights."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from AdvSegAttackLib.models.nnunet_networks import build_nnunet_network

    folder = write_results_folder(tmp_path, [3.0, 3.0, 3.0], [32, 32, 32], folds=(0,))
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    configuration = plans["configurations"]["3d_fullres"]
    del configuration["architecture"]
    configuration.update(
        UNet_class_name="PlainConvUNet",
        UNet_base_num_features=8,
        unet_max_num_features=32,
        n_conv_per_stage_encoder=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
        num_pool_per_axis=[2, 2, 2],
        pool_op_kernel_sizes=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        conv_kernel_sizes=[[3, 3, 3]] * 3,
    )
    (folder / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    card = nnunet_card(folder)
    expected = ConfigurationManager(json.loads(json.dumps(configuration))).configuration["architecture"]
    assert card.arguments["network_class_name"] == expected["network_class_name"]
    assert card.arguments["arch_kwargs"] == expected["arch_kwargs"]
    weights = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    build_nnunet_network(card).load_state_dict(weights, strict=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, d: c.update(normalization_schemes=["ZScoreNormalization"]), "CTNormalization only"),
        (lambda c, d: c.update(patch_size=[32, 32], spacing=[3.0, 3.0]), "a 2-D configuration"),
        (lambda c, d: c.update(previous_stage="3d_lowres"), "a cascade stage"),
        (lambda c, d: c.update(resampling_fn_data="resample_torch_fornnunet"), "resampling_fn_data"),
        (lambda c, d: d.update(channel_names={"0": "CT", "1": "PET"}), "2 input channels"),
        (lambda c, d: d["labels"].update(liver=[6, 7]), "regions"),
        (lambda c, d: c["architecture"].update(network_class_name="os.system"), "not one the engine builds"),
        (
            lambda c, d: c["architecture"]["arch_kwargs"].update(nonlin="builtins.eval"),
            "nonlin 'builtins.eval'",
        ),
    ],
)
def test_what_the_engine_cannot_reproduce_is_refused(tmp_path, change, message):
    from AdvSegAttackLib.models.networks import load_model

    folder = write_results_folder(tmp_path, [3.0, 3.0, 3.0], [32, 32, 32], folds=(0,))
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    change(plans["configurations"]["3d_fullres"], dataset)
    (folder / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset), encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_model(folder)


def test_segment_command_with_nnunet_options(tmp_path, real_ct_small, capsys):
    from AdvSegAttackLib.cli import main

    folder = write_results_folder(tmp_path, [6.0, 6.0, 6.0], [32, 32, 32], mirror_axes=None)
    argv = ["segment", "--model", str(folder.parent), "--image", str(real_ct_small), "--device", "cpu"]
    assert main([*argv, "--configuration", "3d_fullres", "--folds", "1", "--out", str(tmp_path / "seg")]) == 0
    assert (tmp_path / "seg" / "pred.seg.nrrd").is_file()
    assert main([*argv, "--tta", "--out", str(tmp_path / "tta")]) == 2
    assert "allows no mirroring" in capsys.readouterr().err
    assert not (tmp_path / "tta").exists()
    assert main([*argv, "--out", str(folder / "inside")]) == 2  # never writes into the model's folder


def test_python_api_loads_an_nnunet_folder_with_its_choices(tmp_path):
    """`AdvSegAttackLib.load_model(folder, nnunet=...)` takes the command line's nnU-Net choices."""
    from AdvSegAttackLib import load_model as api_load_model

    folder = write_results_folder(tmp_path, [3.0, 3.0, 3.0], [32, 32, 32], folds=(0, 1))
    assert api_load_model(folder).card.nnunet["folds"] == ["0", "1"]  # every fold present
    chosen = api_load_model(folder, nnunet={"folds": ["1"], "checkpoint": "final"})
    assert chosen.card.nnunet["folds"] == ["1"]
    assert chosen.card.nnunet["checkpoints"] == ["fold_1/checkpoint_final.pth"]
    with pytest.raises(InputError, match="--folds 4: .*fold_4"):
        api_load_model(folder, nnunet={"folds": ["4"]})


def read_rows(path: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(path.open(encoding="utf-8")))


def manifest_records(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["case"]: record for record in map(json.loads, lines)}


@pytest.mark.slow
def test_dataset_commands_honour_the_nnunet_choices(tmp_path, real_ct_small, real_ct_small_labels, capsys):
    """`attack-dataset`, `evaluate` and `sweep` with an nnU-Net dataset folder of two configurations, on two
    crops of the real CT: --configuration, --folds and --tta reach the model, the provenance and the run's
    settings, and a rerun with other folds is refused as a rerun with other attack settings is."""
    from AdvSegAttackLib.cli import main

    dataset = two_configurations(tmp_path / "model")
    image, label = sitk.ReadImage(str(real_ct_small)), sitk.ReadImage(str(real_ct_small_labels))
    items = []
    for name, (x, y) in {"upper": (20, 20), "lower": (50, 30)}.items():  # 64 × 64 × 30 voxels of 3 mm
        for kind, volume in (("image", image), ("label", label)):
            sitk.WriteImage(volume[x : x + 64, y : y + 64, :], str(tmp_path / f"{name}_{kind}.nii.gz"))
        items.append({"image": f"{name}_image.nii.gz", "label": f"{name}_label.nii.gz"})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"validation": items}), encoding="utf-8")
    common = ["--device", "cpu", "--progress", "log"]
    attack = ["--datalist", str(datalist), "--attack", "pgd", "--steps", "1", "--no-preview", *common]
    full = ["--model", str(dataset), "--configuration", "3d_fullres"]

    # without --configuration: one sentence, before any output
    assert main(["attack-dataset", *attack, "--model", str(dataset), "--out", str(tmp_path / "none")]) == 2
    assert "choose one with --configuration" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()

    out = tmp_path / "attacked"
    assert main(["attack-dataset", *attack, *full, "--folds", "1", "--out", str(out)]) == 0
    records = manifest_records(out)
    assert list(records) == ["upper_image", "lower_image"]
    chosen = {
        "configuration": "3d_fullres",
        "folds": ["1"],
        "checkpoints": ["fold_1/checkpoint_final.pth"],
        "tta": False,
    }
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["nnunet"] == chosen
    for name, record in records.items():
        assert record["status"] == "ok"
        provenance = json.loads((out / "cases" / name / "provenance.json").read_text(encoding="utf-8"))
        nnunet = provenance["model"]["nnunet"]
        assert (nnunet["configuration"], nnunet["folds"], nnunet["tta"]) == ("3d_fullres", ["1"], False)
        assert list(nnunet["checkpoints"]) == ["fold_1/checkpoint_final.pth"]
        metrics = json.loads((out / "cases" / name / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["perturbation"]["window_hu"] == [-950.0, 1180.0] and metrics["organs"]
    rows = read_rows(out / "cases.csv")
    assert {r["case"] for r in rows} == set(records) and {r["attack"] for r in rows} == {"pgd"}
    upper = json.loads((out / "cases" / "upper_image" / "metrics.json").read_text(encoding="utf-8"))
    assert [r["organ"] for r in rows if r["case"] == "upper_image"] == list(upper["organs"])
    assert {r["model"] for r in rows} == {
        "nnunet:Dataset999_AdvSegTest/nnUNetTrainer__nnUNetPlans__3d_fullres"
    }

    # a rerun with other folds (or the default folds, 0 and 1), another checkpoint or TTA is another run
    fold = dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_1"
    (fold / "checkpoint_best.pth").write_bytes((fold / "checkpoint_final.pth").read_bytes())
    for other in (["--folds", "0"], [], ["--folds", "1", "--checkpoint", "best"], ["--folds", "1", "--tta"]):
        assert main(["attack-dataset", *attack, *full, *other, "--out", str(out)]) == 2
        assert "holds a run with other settings" in capsys.readouterr().err
    assert main(["attack-dataset", *attack, *full, "--folds", "1", "--out", str(out)]) == 0  # resumed
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["skipped_now"] == 2

    # evaluate with the attack's model reproduces its Dice; with other folds it is another model
    evaluated = tmp_path / "evaluated"
    assert (
        main(["evaluate", "--adv-dir", str(out), *full, "--folds", "1", *common, "--out", str(evaluated)])
        == 0
    )
    assert json.loads((evaluated / "run.json").read_text(encoding="utf-8"))["nnunet"] == chosen
    for name, record in manifest_records(evaluated).items():
        assert record["metrics"]["mean_dice_adv"] == pytest.approx(records[name]["metrics"]["mean_dice_adv"])
        assert record["metrics"]["mean_dice_clean"] == pytest.approx(
            records[name]["metrics"]["mean_dice_clean"]
        )
    assert len(read_rows(evaluated / "cases.csv")) == len(rows)
    assert (
        main(["evaluate", "--adv-dir", str(out), *full, "--folds", "0", *common, "--out", str(evaluated)])
        == 2
    )
    assert "holds a run with other settings" in capsys.readouterr().err

    # sweep: the other configuration with mirroring TTA, on one volume
    swept = tmp_path / "sweep"
    sweep = [
        "sweep",
        "--image",
        str(tmp_path / "upper_image.nii.gz"),
        "--label",
        str(tmp_path / "upper_label.nii.gz"),
    ]
    sweep += [
        "--model",
        str(dataset),
        "--configuration",
        "3d_lowres",
        "--tta",
        "--attack",
        "pgd",
        "--steps",
        "1",
    ]
    assert main([*sweep, "--param", "eps=2,8", "--no-preview", *common, "--out", str(swept)]) == 0
    settings = json.loads((swept / "sweep.json").read_text(encoding="utf-8"))
    (model,) = settings["provenance"]["models"]
    assert (model["nnunet"]["configuration"], model["nnunet"]["tta"]) == ("3d_lowres", True)
    assert settings["nnunet"]["tta"] is True and settings["nnunet"]["configuration"] == "3d_lowres"
    for value in ("eps-2", "eps-8"):
        case = swept / "runs" / value / "cases" / "upper_image"
        nnunet = json.loads((case / "provenance.json").read_text(encoding="utf-8"))["model"]["nnunet"]
        assert (nnunet["configuration"], nnunet["tta"], nnunet["folds"]) == ("3d_lowres", True, ["0"])
    assert {float(r["value"]) for r in read_rows(swept / "cases.csv")} == {2.0, 8.0}


@pytest.mark.slow
def test_transfer_passes_the_nnunet_choices_to_each_nnunet_folder(
    tmp_path, real_ct_small, real_ct_small_labels, capsys
):
    """`transfer` between two nnU-Net dataset folders of two configurations each: without --configuration one
    sentence and no output; with it (and --folds) each folder is loaded with those choices, and the transfer's
    settings and every case's provenance record them."""
    import shutil

    from AdvSegAttackLib.cli import main

    first = two_configurations(tmp_path / "first")
    second = tmp_path / "second" / "Dataset998_AdvSegOther"
    shutil.copytree(first, second)
    image, label = sitk.ReadImage(str(real_ct_small)), sitk.ReadImage(str(real_ct_small_labels))
    for kind, volume in (("image", image), ("label", label)):
        sitk.WriteImage(volume[20:84, 20:84, :], str(tmp_path / f"crop_{kind}.nii.gz"))
    command = [
        "transfer",
        "--image",
        str(tmp_path / "crop_image.nii.gz"),
        "--label",
        str(tmp_path / "crop_label.nii.gz"),
    ]
    command += ["--source-models", str(first), "--target-models", str(first), str(second)]
    command += ["--attack", "pgd", "--steps", "1", "--no-preview", "--device", "cpu", "--progress", "log"]

    assert main([*command, "--out", str(tmp_path / "none")]) == 2
    assert "choose one with --configuration" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()

    out = tmp_path / "transfer"
    assert main([*command, "--configuration", "3d_fullres", "--folds", "1", "--out", str(out)]) == 0
    settings = json.loads((out / "transfer.json").read_text(encoding="utf-8"))
    assert {name: (n["configuration"], n["folds"]) for name, n in settings["nnunet"].items()} == {
        "nnunet:Dataset999_AdvSegTest/nnUNetTrainer__nnUNetPlans__3d_fullres": ("3d_fullres", ["1"]),
        "nnunet:Dataset998_AdvSegOther/nnUNetTrainer__nnUNetPlans__3d_fullres": ("3d_fullres", ["1"]),
    }
    (folder,) = [p for p in (out / "attacks").iterdir() if p.is_dir()]  # one folder, not "nnunet:…/…"
    assert folder.name == "nnunet_Dataset999_AdvSegTest_nnUNetTrainer__nnUNetPlans__3d_fullres"
    provenance = next(folder.glob("cases/*/provenance.json"))
    nnunet = json.loads(provenance.read_text(encoding="utf-8"))["model"]["nnunet"]
    assert (nnunet["configuration"], nnunet["folds"]) == ("3d_fullres", ["1"])
    assert len(read_rows(out / "transfer.csv")) == 2
