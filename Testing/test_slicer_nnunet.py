"""The Slicer module's nnU-Net group (Qt-free part): what an nnU-Net v2 results folder offers (configurations,
the folds of each checkpoint), the stored choices checked against it, and the flags they become.

The folders are real nnU-Net layouts: plans.json and dataset.json as `nnunet_folders` writes them, and
`fold_<k>/checkpoint_*.pth` files that nothing here opens (the reader lists directory entries only), so these
tests need no torch and also run on Slicer 5.10's Python and packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AdvSegAttack"
for _path in (REPO, MODULE_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from AdvSegAttackSceneLib import engine  # noqa: E402
from AdvSegAttackSceneLib.catalogue import AttackCatalogue  # noqa: E402
from nnunet_folders import LABELS, write_plans_folder  # noqa: E402

from AdvSegAttackLib.cli import build_parser  # noqa: E402
from AdvSegAttackLib.cli.common import nnunet_options  # noqa: E402
from AdvSegAttackLib.models.nnunet import nnunet_card, trained_models  # noqa: E402

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

FULLRES_LABELS = LABELS  # background + the 13 BTCV organs under TotalSegmentator's names
LOWRES_LABELS = ["background", "liver", "spleen"]


def addCheckpoints(folder: Path, checkpoints: dict[str, list[str]]) -> None:
    """`fold_<k>/checkpoint_<name>.pth` for each fold of each checkpoint (empty files: nothing opens them)."""
    for name, folds in checkpoints.items():
        for fold in folds:
            (folder / f"fold_{fold}").mkdir(exist_ok=True)
            (folder / f"fold_{fold}" / f"checkpoint_{name}.pth").write_bytes(b"")


@pytest.fixture
def datasetFolder(tmp_path) -> Path:
    """A dataset folder with two trained models, as nnU-Net (and TotalSegmentator) lay them out:
    3d_fullres with folds 0-4 final (fold 10 too, sorted after 4), fold_all final, best in folds 1 and 3 only,
    and a stray fold_2 without checkpoint; 3d_lowres with fold 0 best only and other labels."""
    fullres = write_plans_folder(tmp_path, [1.5, 1.5, 1.5], [64, 64, 64], configuration="3d_fullres")
    addCheckpoints(fullres, {"final": ["0", "1", "10", "3", "4", "all"], "best": ["1", "3"]})
    (fullres / "fold_2").mkdir()
    lowres = write_plans_folder(
        tmp_path, [3.0, 3.0, 3.0], [32, 32, 32], configuration="3d_lowres", labels=LOWRES_LABELS
    )
    addCheckpoints(lowres, {"best": ["0"]})
    (tmp_path / "Dataset999_AdvSegTest" / "readme.txt").write_text("not a model", encoding="utf-8")
    return tmp_path / "Dataset999_AdvSegTest"


# ------------------------------------------------------------------------------------------------
# What the folder offers


def test_the_engine_lists_trained_models_and_the_folds_of_each_checkpoint(datasetFolder):
    models = trained_models(datasetFolder)
    assert [(m.configuration, m.folder.name) for m in models] == [
        ("3d_fullres", "nnUNetTrainer__nnUNetPlans__3d_fullres"),
        ("3d_lowres", "nnUNetTrainer__nnUNetPlans__3d_lowres"),
    ]
    fullres, lowres = models
    assert fullres.folds == {"final": ["0", "1", "3", "4", "10", "all"], "best": ["1", "3"]}
    assert fullres.checkpoints == ["final", "best"]
    assert lowres.folds == {"final": [], "best": ["0"]} and lowres.checkpoints == ["best"]
    assert trained_models(fullres.folder) == [fullres]  # the trained model folder itself
    assert trained_models(datasetFolder / "readme.txt") == []
    assert trained_models(datasetFolder.parent / "absent") == []


def test_options_follow_the_chosen_configuration_and_checkpoint(datasetFolder):
    unchosen = engine.nnunetOptions(datasetFolder, "", "final")
    assert unchosen.configurations == ("3d_fullres", "3d_lowres")
    assert (unchosen.checkpoints, unchosen.folds, unchosen.folder) == ((), (), None)
    assert engine.nnunetOptions(datasetFolder, "2d", "final").folder is None  # a configuration it lacks

    final = engine.nnunetOptions(datasetFolder, "3d_fullres", "final")
    assert final.checkpoints == ("final", "best")
    assert final.folds == ("0", "1", "3", "4", "10", "all")
    assert final.defaultFolds == ("0", "1", "3", "4", "10")  # nnUNetPredictor's: fold_all only when alone
    assert engine.nnunetOptions(datasetFolder, "3d_fullres", "best").folds == ("1", "3")

    lowres = engine.nnunetOptions(datasetFolder, "3d_lowres", "best")
    assert (lowres.checkpoints, lowres.folds, lowres.defaultFolds) == (("best",), ("0",), ("0",))

    # The trained model folder itself: nothing to choose as configuration.
    single = engine.nnunetOptions(final.folder, "", "final")
    assert single.configurations == () and single.folder == final.folder and single.folds == final.folds
    only_all = datasetFolder.parent / "only-all" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    only_all.parent.mkdir()
    (datasetFolder / "nnUNetTrainer__nnUNetPlans__3d_lowres").rename(only_all)
    addCheckpoints(only_all, {"final": ["all"]})
    assert engine.nnunetOptions(only_all.parent, "", "final").defaultFolds == ("all",)


def test_other_models_have_no_nnunet_options(tmp_path):
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    (tmp_path / "card.json").write_text("{}", encoding="utf-8")
    for model in ("abdomen-unet", tmp_path / "card.json", tmp_path / "bundle", tmp_path / "absent", tmp_path):
        assert engine.nnunetOptions(model, "3d_fullres", "final") is None
        assert engine.nnunetProblem(None, "0", "final") is None
        assert engine.nnunetChoice(None, "3d_fullres", "0 1", "best", True) == engine.NnunetChoice()


# ------------------------------------------------------------------------------------------------
# The stored choices against the folder


def test_stored_choices_that_do_not_fit_the_folder_say_what_to_choose(datasetFolder):
    def problem(configuration, folds, checkpoint):
        options = engine.nnunetOptions(datasetFolder, configuration, checkpoint)
        return engine.nnunetProblem(options, folds, checkpoint)

    assert problem("", "", "final") == "Choose the nnU-Net configuration (3d_fullres, 3d_lowres)."
    assert problem("3d_fullres", "", "final") is None
    assert problem("3d_fullres", " 0, fold_1 all ", "final") is None
    fullres = datasetFolder / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert problem("3d_fullres", "0 1", "best") == (
        f"{fullres / 'fold_0' / 'checkpoint_best.pth'} does not exist (folds with checkpoint_best.pth: 1, 3)."
    )
    assert problem("3d_fullres", "2", "final").startswith(
        f"{fullres / 'fold_2' / 'checkpoint_final.pth'} does"
    )
    lowres = datasetFolder / "nnUNetTrainer__nnUNetPlans__3d_lowres"
    assert problem("3d_lowres", "", "final") == (
        f"No fold of {lowres} holds checkpoint_final.pth (it has checkpoint_best.pth); choose another checkpoint."
    )
    assert problem("3d_lowres", "", "best") is None


@pytest.mark.parametrize(
    ("configuration", "folds", "checkpoint", "tta", "flags"),
    [
        ("3d_fullres", "", "final", False, ["--configuration", "3d_fullres"]),
        ("3d_fullres", "10 4 3 1 0", "final", False, ["--configuration", "3d_fullres"]),  # the default folds
        ("3d_fullres", "0,3", "final", False, ["--configuration", "3d_fullres", "--folds", "0", "3"]),
        ("3d_fullres", "all", "final", False, ["--configuration", "3d_fullres", "--folds", "all"]),
        ("3d_fullres", "3 1", "best", False, ["--configuration", "3d_fullres", "--checkpoint", "best"]),
        (
            "3d_fullres",
            "3",
            "best",
            True,
            ["--configuration", "3d_fullres", "--folds", "3", "--checkpoint", "best", "--tta"],
        ),
        ("3d_lowres", "", "best", True, ["--configuration", "3d_lowres", "--checkpoint", "best", "--tta"]),
    ],
)
def test_each_choice_becomes_its_flags_and_the_engine_parses_them(
    datasetFolder, catalogue_dict, configuration, folds, checkpoint, tta, flags
):
    options = engine.nnunetOptions(datasetFolder, configuration, checkpoint)
    assert engine.nnunetProblem(options, folds, checkpoint) is None
    choice = engine.nnunetChoice(options, configuration, folds, checkpoint, tta)
    assert choice.arguments() == flags
    # In the attack's command line right after --model, read by the engine's own (torch-free) parser, and the
    # engine's card of what it read: the folds nnU-Net averages, the checkpoint files, the mirroring.
    saa = AttackCatalogue.fromDict(catalogue_dict).attack("saa")
    request = engine.AttackRequest(
        image="in.nrrd", out="out", model=str(datasetFolder), attack=saa, nnunet=choice
    )
    arguments = request.arguments()
    start = arguments.index("--model") + 2
    assert arguments[start : start + len(flags)] == flags
    parsed = build_parser().parse_args(arguments[2:])
    card = nnunet_card(parsed.model, **nnunet_options(parsed))
    assert card.nnunet["configuration"] == configuration
    assert card.nnunet["folds"] == list(choice.folds or options.defaultFolds)
    assert card.nnunet["checkpoints"] == [
        f"fold_{f}/checkpoint_{checkpoint}.pth" for f in card.nnunet["folds"]
    ]
    assert card.nnunet["tta"] is tta


def test_a_single_trained_model_sends_no_configuration_and_the_defaults_send_nothing(datasetFolder):
    folder = datasetFolder / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    options = engine.nnunetOptions(folder, "3d_lowres", "final")  # a stale configuration is not sent
    assert engine.nnunetChoice(options, "3d_lowres", "", "final", False).arguments() == []
    assert engine.NnunetChoice().arguments() == []


def test_the_organ_list_follows_the_chosen_configuration(datasetFolder):
    assert engine.cardLabels(str(datasetFolder)) == ([], [])  # several configurations: none chosen yet
    fullres = engine.cardLabels(str(datasetFolder), nnunet=engine.NnunetChoice(configuration="3d_fullres"))
    assert fullres[0] == FULLRES_LABELS
    lowres = engine.NnunetChoice(configuration="3d_lowres", checkpoint="best")
    assert engine.cardLabels(str(datasetFolder), nnunet=lowres)[0] == LOWRES_LABELS
    # 3d_lowres has no checkpoint_final.pth: its labels are not offered for a choice the engine refuses.
    assert engine.cardLabels(str(datasetFolder), nnunet=engine.NnunetChoice(configuration="3d_lowres")) == (
        [],
        [],
    )
    single = datasetFolder / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert engine.cardLabels(str(single))[0] == FULLRES_LABELS


def test_choices_survive_saving_and_reopening_the_scene(tmp_path, datasetFolder):
    """The parameter node's nnU-Net fields (strings in a `vtkMRMLScriptedModuleNode`, as the parameter-node
    wrapper stores str fields) written to a .mrml file and read back, then sent as the same flags."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    stored = {"nnunetConfiguration": "3d_fullres", "nnunetFolds": "3, 1", "nnunetCheckpoint": "best"}
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AdvSegAttack")
    for name, value in stored.items():
        node.SetParameter(name, value)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(tmp_path / "scene.mrml"))
    assert reopened.Connect()
    loaded = reopened.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")
    values = {name: loaded.GetParameter(name) for name in stored}
    assert values == stored
    options = engine.nnunetOptions(datasetFolder, values["nnunetConfiguration"], values["nnunetCheckpoint"])
    choice = engine.nnunetChoice(
        options, values["nnunetConfiguration"], values["nnunetFolds"], values["nnunetCheckpoint"], False
    )
    assert choice.arguments() == ["--configuration", "3d_fullres", "--checkpoint", "best"]
