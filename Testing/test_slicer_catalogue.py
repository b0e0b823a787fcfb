"""The module's attack panel and command line come from the engine's attack catalogue (Qt-free part).

`AdvSegAttackSceneLib.catalogue` turns the catalogue into widget specifications, keeps the user's choices
as one JSON string (the parameter node's ``attackSettings``) and turns them into ``--preset`` plus the
changed flags. Tested here on the engine's catalogue (`conftest.attack_catalogue`), on an
attack the module has never seen, and against the real engine: its catalogue and its command line.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AdvSegAttack"
for _path in (REPO, MODULE_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from AdvSegAttackSceneLib import catalogue as lib  # noqa: E402
from AdvSegAttackSceneLib.engine import AttackRequest  # noqa: E402

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)


@pytest.fixture
def catalogue(catalogue_dict) -> lib.AttackCatalogue:
    return lib.AttackCatalogue.fromDict(catalogue_dict)


def inRange(parameter: dict, value) -> bool:
    """Whether `value` lies in a catalogue parameter's range, with its open or closed ends."""
    low, high = parameter["minimum"], parameter["maximum"]
    if low is not None and (value < low or (value == low and not parameter["minimum_inclusive"])):
        return False
    return not (high is not None and (value > high or (value == high and not parameter["maximum_inclusive"])))


def request(attack, choice=None, **values) -> AttackRequest:
    return AttackRequest(
        image="in.nrrd",
        out="out",
        model="abdomen-unet",
        attack=attack,
        choice=choice or lib.AttackChoice(),
        **values,
    )


# ------------------------------------------------------------------------------------------------
# Widget specifications


def test_widgets_of_an_attack_follow_its_catalogue_entry(catalogue):
    saa = catalogue.attack("saa")
    assert [p.name for p in saa.editableParameters(advanced=False)] == ["rho", "steps"]
    assert [p.name for p in saa.editableParameters(advanced=True)] == [
        "block_size",
        "lambda_dice",
        "use_ssim_loss",
        "lambda_ssim",
        "step_size",
        "band",
        "published_return",
    ]
    kinds = {p.name: p.widgetKind for p in saa.editableParameters()}
    assert kinds == {
        "rho": "double",
        "steps": "int",
        "block_size": "int",
        "lambda_dice": "double",
        "use_ssim_loss": "check",
        "lambda_ssim": "double",
        "step_size": "double",
        "band": "combo",
        "published_return": "check",
    }
    rho = saa.parameter("rho")
    assert (rho.decimals, rho.widgetRange, rho.singleStep) == (
        2,
        (0.01, 0.99),
        0.01,
    )  # (0, 1), both ends open
    assert saa.parameter("steps").widgetRange == (1, lib.UNBOUNDED_LIMIT)
    lambdaDice = saa.parameter("lambda_dice")  # (0, ∞), 0.01 default, 0.2 in a preset
    assert (lambdaDice.decimals, lambdaDice.widgetRange) == (3, (0.001, float(lib.UNBOUNDED_LIMIT)))
    assert saa.parameter("band").choices == ("all", "low", "middle", "high")
    assert [(p.name, p.label) for p in saa.presets] == [
        ("specified", "Specified (ρ 0.2, 20 steps, 32³)"),
        ("authors-final", "Authors' final (ρ 0.4, 10 steps, 16³)"),
    ]
    assert saa.defaultPreset == "authors-final"
    assert catalogue.names == (
        "saa",
        "saa-2d",
        "vafa",
        "vafa-2d",
        "pgd",
        "segpgd",
        "cospgd",
        "bim",
        "fgsm",
        "gn",
        "texture",
    )


def test_tooltips_give_doc_unit_range_default_and_presets(catalogue, catalogue_dict):
    saa = catalogue.attack("saa")
    raw = {p["name"]: p for p in catalogue_dict["attacks"][0]["parameters"]}
    presets = "; ".join(
        f"{preset['label']} {preset['values']['rho']}" for preset in catalogue_dict["attacks"][0]["presets"]
    )
    assert saa.parameter("rho").toolTip() == (
        f"{raw['rho']['doc']} Unit: {raw['rho']['unit']}. Range: (0, 1). Default: {raw['rho']['default']}. "
        f"Presets: {presets}."
    )
    assert "Range: > 0." in saa.parameter("lambda_dice").toolTip()
    assert "One of: all, low, middle, high. " in saa.parameter("band").toolTip()
    assert "Default: on." in saa.parameter("use_ssim_loss").toolTip()
    eps = next(p for p in catalogue_dict["attacks"] if p["name"] == "pgd")["parameters"][0]
    assert eps["name"] == "eps"
    assert "Default: off." in saa.parameter("published_return").toolTip()
    assert (
        catalogue.attack("pgd")
        .parameter("eps")
        .toolTip()
        .startswith(f"{eps['doc']} Unit: {eps['unit']}. Range: (0, 255]. Default: {eps['default']:g}.")
    )
    lines = saa.presetToolTip().splitlines()
    entry = catalogue_dict["attacks"][0]
    labels = {p["name"]: p["label"] for p in entry["parameters"]}
    for line, preset in zip(lines, entry["presets"], strict=False):
        default = " (default)" if preset["name"] == entry["default_preset"] else ""
        assert line.startswith(f"{preset['label']}{default}: {labels['rho']} {preset['values']['rho']:g}, ")
        ssim = "on" if preset["values"]["use_ssim_loss"] else "off"
        assert f"{labels['use_ssim_loss']} {ssim}," in line
    assert sum("(default)" in line for line in lines) == 1


def test_every_widget_value_lies_in_the_engine_range(catalogue_dict):
    """The widget range (open ends moved in by the widget's smallest step) never leaves the engine's range,
    and holds the default and every preset value, for every parameter the panel shows."""
    catalogue = lib.AttackCatalogue.fromDict(catalogue_dict)
    checked = set()
    for entry in catalogue_dict["attacks"]:
        attack = catalogue.attack(entry["name"])
        for raw in entry["parameters"]:
            if raw["type"] not in ("float", "int") or raw["default"] is None:
                continue
            parameter = attack.parameter(raw["name"])
            low, high = parameter.widgetRange
            assert low < high and inRange(raw, low) and inRange(raw, high), (attack.name, parameter.name)
            values = [
                raw["default"],
                *(p["values"][raw["name"]] for p in entry["presets"] if raw["name"] in p["values"]),
            ]
            assert all(low <= value <= high for value in values), (attack.name, parameter.name)
            assert all(
                round(value, parameter.decimals) == value for value in values if parameter.type == "float"
            )
            checked.add(attack.name)
    assert checked == {entry["name"] for entry in catalogue_dict["attacks"]}  # every attack has numbers


def test_integer_parameters_with_open_ends_step_inside():
    parameter = lib.ParameterSpec(
        "size", "--size", "Size", "int", 4, minimum=2, maximum=8, minimumInclusive=False
    )
    assert parameter.widgetRange == (3, 8)
    parameter = lib.ParameterSpec(
        "size", "--size", "Size", "int", 4, minimum=None, maximum=8, maximumInclusive=False
    )
    assert parameter.widgetRange == (-lib.UNBOUNDED_LIMIT, 7)


def test_parameters_the_panel_cannot_show_stay_at_the_engine_default(catalogue_dict):
    """No default (VAFA's q_min follows q_init) or a type the panel does not know: no widget, never a flag."""
    texture = catalogue_dict["attacks"][-1]
    texture["parameters"].append(
        {
            **texture["parameters"][0],
            "name": "weights",
            "flag": "--weights",
            "type": "path",
            "default": "bundled",
        }
    )
    catalogue = lib.AttackCatalogue.fromDict(catalogue_dict)
    vafa = catalogue.attack("vafa")
    assert vafa.parameter("q_min").widgetKind is None
    assert "q_min" not in [p.name for p in vafa.editableParameters()]
    assert "weights" not in [p.name for p in catalogue.attack("texture").editableParameters()]
    stored = json.dumps(
        {"vafa": {"values": {"q_min": 5.0, "q_max": 30}}, "texture": {"values": {"weights": "/x"}}}
    )
    assert lib.storedChoice(vafa, stored).changed == {"q_max": 30.0}
    assert lib.storedChoice(catalogue.attack("texture"), stored).changed == {}


# ------------------------------------------------------------------------------------------------
# The user's choices and the command line


def test_an_untouched_attack_sends_only_its_preset(catalogue):
    saa, pgd = catalogue.attack("saa"), catalogue.attack("pgd")
    assert lib.storedChoice(saa, "") == lib.AttackChoice("authors-final", {})
    assert saa.arguments(lib.storedChoice(saa, "")) == ["--preset", "authors-final"]
    assert pgd.arguments(lib.storedChoice(pgd, "")) == []
    assert saa.values(lib.storedChoice(saa, ""))["rho"] == 0.4


def test_changed_values_and_only_those_become_flags(catalogue):
    saa = catalogue.attack("saa")
    text = ""
    for name, value in (
        ("band", "low"),
        ("rho", 0.35),
        ("use_ssim_loss", False),
        ("steps", 10),
        ("lambda_ssim", 0.75),
    ):
        text = lib.withValue(text, saa, name, value)
    choice = lib.storedChoice(saa, text)
    assert choice.changed == {
        "band": "low",
        "rho": 0.35,
        "use_ssim_loss": False,
    }  # 10 steps, λ 0.75: the preset's
    assert saa.arguments(choice) == [
        "--preset",
        "authors-final",
        "--rho",
        "0.35",
        "--no-use-ssim-loss",
        "--band",
        "low",
    ]
    text = lib.withValue(text, saa, "rho", 0.4)  # back to the preset's value: no longer a change
    assert "--rho" not in saa.arguments(lib.storedChoice(saa, text))
    with pytest.raises(ValueError, match="not a valid value"):
        lib.withValue(text, saa, "band", "ultra")
    with pytest.raises(ValueError, match="has no parameter eps"):
        saa.arguments(lib.AttackChoice("authors-final", {"eps": 4.0}))


def test_a_preset_replaces_the_changes_of_its_parameters_and_keeps_the_others(catalogue):
    saa = catalogue.attack("saa")
    text = lib.withValue(lib.withValue("", saa, "rho", 0.3), saa, "band", "high")
    text = lib.withPreset(text, saa, "specified")
    choice = lib.storedChoice(saa, text)
    assert choice == lib.AttackChoice("specified", {"band": "high"})
    values = saa.values(choice)
    assert (values["rho"], values["steps"], values["block_size"], values["band"]) == (0.2, 20, 32, "high")
    assert saa.arguments(choice) == ["--preset", "specified", "--band", "high"]
    # A value equal to the new preset's is no change; the old preset's value now is one.
    text = lib.withValue(text, saa, "steps", 10)
    assert lib.storedChoice(saa, text).changed == {"band": "high", "steps": 10}


def test_each_attack_keeps_its_own_choices_in_one_json_string(catalogue):
    saa, saa2d, pgd = (catalogue.attack(n) for n in ("saa", "saa-2d", "pgd"))
    text = lib.withPreset("", saa2d, "specified")
    text = lib.withValue(text, saa, "rho", 0.5)
    text = lib.withValue(text, pgd, "eps", 8)
    assert json.loads(text) == {
        "pgd": {"values": {"eps": 8.0}},
        "saa": {"preset": "authors-final", "values": {"rho": 0.5}},
        "saa-2d": {"preset": "specified", "values": {}},
    }
    assert text == lib.writeSettings(json.loads(text))  # sorted keys: the same choices, the same string
    assert pgd.arguments(lib.storedChoice(pgd, text)) == ["--eps", "8"]
    assert saa2d.arguments(lib.storedChoice(saa2d, text)) == ["--preset", "specified"]


@pytest.mark.parametrize(
    "stored",
    [
        "not json",
        "[1, 2]",
        '{"saa": "specified"}',
        '{"saa": {"preset": "fast", "values": {"rho": "high", "eps": 4, "steps": 2.5, "use_ssim_loss": 1}}}',
        '{"saa": {"preset": 3, "values": [0.3]}}',
        '{"saa": {"values": {"rho": NaN}}}',
    ],
)
def test_stored_choices_that_no_longer_fit_the_catalogue_are_left_out(catalogue, stored):
    """A scene saved with another engine version, or edited by hand, never sends a flag the attack lacks or
    a value of the wrong type; an unknown preset falls back to the default."""
    assert lib.storedChoice(catalogue.attack("saa"), stored) == lib.AttackChoice("authors-final", {})


def test_a_stored_attack_the_engine_dropped_falls_back_to_the_first(catalogue):
    assert catalogue.storedAttack("").name == catalogue.storedAttack("warp-9000").name == "saa"
    assert catalogue.storedAttack("gn").name == "gn"
    with pytest.raises(ValueError, match="Unknown attack 'warp-9000'; the engine has saa, saa-2d,"):
        catalogue.attack("warp-9000")


def test_attack_command_line_is_an_argument_list(catalogue):
    saa = catalogue.attack("saa")
    choice = lib.storedChoice(saa, lib.withValue("", saa, "use_ssim_loss", False))
    arguments = AttackRequest(
        image="/data/my CT/in put.nrrd",
        out="/tmp/out dir",
        model="abdomen-unet",
        attack=saa,
        choice=choice,
        label="/data/ref.nii.gz",
        organs=("liver", "right kidney"),
        region="organ",
        dilationMm=5.0,
        seed=7,
        device="CUDA:0",
    ).arguments()
    assert arguments == [
        "-m", "AdvSegAttackLib.cli", "attack",
        "--image", "/data/my CT/in put.nrrd",  # one argument, spaces and all
        "--label", "/data/ref.nii.gz",
        "--model", "abdomen-unet",
        "--attack", "saa", "--preset", "authors-final", "--no-use-ssim-loss",
        "--organ", "liver", "right kidney",  # one --organ with nargs="+"
        "--region", "organ", "--dilation-mm", "5",
        "--seed", "7",
        "--device", "cuda:0", "--out", "/tmp/out dir", "--progress", "jsonl",
    ]  # fmt: skip
    pgd = catalogue.attack("pgd")
    arguments = request(
        pgd, lib.storedChoice(pgd, ""), targeted=True, preview=False, dilationMm=5.0
    ).arguments()
    assert "--preset" not in arguments and "--dilation-mm" not in arguments and "--label" not in arguments
    assert arguments[arguments.index("--region") + 1] == "whole"
    assert "--targeted" in arguments and "--no-preview" in arguments


def test_apply_waits_only_for_what_the_panel_must_give(catalogue):
    """The organ an attack or a region needs; everything else the engine checks (one sentence, status 2)."""
    saa, texture = catalogue.attack("saa"), catalogue.attack("texture")
    assert saa.whyNotReady(organ="", region="whole") is None
    assert "regions need an organ" in saa.whyNotReady(organ="", region="bbox")
    assert saa.whyNotReady(organ="liver", region="organ") is None
    assert "attack needs an organ" in texture.whyNotReady(organ="", region="whole")
    assert texture.whyNotReady(organ="spleen", region="bbox") is None  # no region for texture: not sent
    arguments = request(texture, organs=("spleen",), region="bbox", targeted=True).arguments()
    assert "--region" not in arguments and "--targeted" not in arguments
    assert arguments[arguments.index("--organ") + 1] == "spleen"


# ------------------------------------------------------------------------------------------------
# A new attack in the engine: no module change


def test_an_attack_added_to_the_engine_gets_a_panel_and_a_command_line_without_module_changes(catalogue_dict):
    catalogue_dict["attacks"].append(
        {
            "name": "warp",
            "label": "Warp – elastic deformation",
            "description": "Moves voxels along a smooth displacement field.",
            "source_grid": True,
            "needs_organ": True,
            "supports_region": False,
            "supports_targeted": False,
            "parameters": [
                {
                    "name": "max_displacement_mm",
                    "flag": "--max-displacement-mm",
                    "label": "Largest displacement",
                    "type": "float",
                    "default": 1.5,
                    "minimum": 0.0,
                    "maximum": 5.0,
                    "minimum_inclusive": False,
                    "maximum_inclusive": False,
                    "choices": None,
                    "unit": "mm",
                    "doc": "largest displacement of any voxel",
                    "advanced": False,
                },
                {
                    "name": "control_points",
                    "flag": "--control-points",
                    "label": "Control points",
                    "type": "int",
                    "default": 6,
                    "minimum": 2,
                    "maximum": None,
                    "minimum_inclusive": True,
                    "maximum_inclusive": True,
                    "choices": None,
                    "unit": "per axis",
                    "doc": "B-spline grid size",
                    "advanced": True,
                },
                {
                    "name": "fold_check",
                    "flag": "--fold-check",
                    "label": "Refuse folds",
                    "type": "bool",
                    "default": True,
                    "minimum": None,
                    "maximum": None,
                    "minimum_inclusive": True,
                    "maximum_inclusive": True,
                    "choices": None,
                    "unit": "on/off",
                    "doc": "keep the Jacobian positive",
                    "advanced": True,
                },
                {
                    "name": "interpolation",
                    "flag": "--interpolation",
                    "label": "Interpolation",
                    "type": "choice",
                    "default": "linear",
                    "minimum": None,
                    "maximum": None,
                    "minimum_inclusive": True,
                    "maximum_inclusive": True,
                    "choices": ["linear", "bspline"],
                    "unit": "",
                    "doc": "resampling of the moved voxels",
                    "advanced": False,
                },
            ],
            "presets": [
                {"name": "gentle", "label": "Gentle (0.5 mm)", "values": {"max_displacement_mm": 0.5}},
                {
                    "name": "strong",
                    "label": "Strong (3 mm)",
                    "values": {"max_displacement_mm": 3.0, "control_points": 4},
                },
            ],
            "default_preset": "gentle",
        }
    )
    warp = lib.AttackCatalogue.fromDict(catalogue_dict).attack("warp")
    assert [(p.name, p.widgetKind, p.advanced) for p in warp.editableParameters()] == [
        ("max_displacement_mm", "double", False),
        ("control_points", "int", True),
        ("fold_check", "check", True),
        ("interpolation", "combo", False),
    ]
    displacement = warp.parameter("max_displacement_mm")
    assert (displacement.decimals, displacement.widgetRange, displacement.singleStep) == (
        2,
        (0.01, 4.99),
        0.1,
    )
    assert displacement.toolTip() == (
        "Largest displacement of any voxel. Unit: mm. Range: (0, 5). Default: 1.5. "
        "Presets: Gentle (0.5 mm) 0.5; Strong (3 mm) 3."
    )
    assert warp.parameter("control_points").widgetRange == (2, lib.UNBOUNDED_LIMIT)
    assert warp.values(lib.storedChoice(warp, ""))["max_displacement_mm"] == 0.5  # the default preset's
    text = lib.withPreset("", warp, "strong")
    text = lib.withValue(text, warp, "fold_check", False)
    text = lib.withValue(text, warp, "interpolation", "bspline")
    choice = lib.storedChoice(warp, text)
    assert (
        warp.whyNotReady(organ="", region="whole")
        == "The Warp – elastic deformation attack needs an organ; pick one in the Organ list."
    )
    arguments = request(warp, choice, organs=("liver",), region="organ", targeted=True).arguments()
    assert arguments[arguments.index("--attack") : arguments.index("--device")] == [
        "--attack", "warp", "--preset", "strong", "--no-fold-check", "--interpolation", "bspline",
        "--organ", "liver",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(attacks=[]), "lists no attacks"),
        (lambda c: c["attacks"][0]["parameters"][0].pop("flag"), "malformed.*flag"),
        (lambda c: c["attacks"][0].pop("name"), "malformed.*name"),
        (
            lambda c: c["attacks"][0]["presets"][0]["values"].update(eps=4),
            "Preset 'specified' of attack 'saa' sets eps",
        ),
        (lambda c: c["attacks"][0].update(default_preset="fast"), "default preset 'fast' of attack 'saa'"),
    ],
)
def test_a_malformed_catalogue_is_one_sentence(catalogue_dict, change, message):
    change(catalogue_dict)
    with pytest.raises(ValueError, match=message):
        lib.AttackCatalogue.fromDict(catalogue_dict)


# ------------------------------------------------------------------------------------------------
# The scene keeps the choices


def test_choices_survive_saving_and_reopening_the_scene(tmp_path, catalogue):
    """The parameter node's attackSettings string (a `vtkMRMLScriptedModuleNode` parameter, which is how the
    parameter-node wrapper stores a str field) written to a .mrml file and read back in a new scene."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    saa = catalogue.attack("saa")
    text = lib.withValue(lib.withPreset("", saa, "authors-final"), saa, "band", "middle")
    text = lib.withValue(text, catalogue.attack("texture"), "feather_mm", 2.5)
    text = lib.withValue(text, saa, "rho", 0.45)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AdvSegAttack")
    node.SetAttribute("ModuleName", "AdvSegAttack")
    node.SetParameter("attackSettings", text)
    scene.SetURL(str(tmp_path / "scene with spaces.mrml"))
    assert scene.Commit()
    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(tmp_path / "scene with spaces.mrml"))
    assert reopened.Connect()
    loaded = reopened.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")
    assert loaded.GetParameter("attackSettings") == text
    choice = lib.storedChoice(saa, loaded.GetParameter("attackSettings"))
    assert saa.arguments(choice) == ["--preset", "authors-final", "--rho", "0.45", "--band", "middle"]


# ------------------------------------------------------------------------------------------------
# The real engine


def engineCatalogue() -> dict:
    """The engine's own catalogue (the torch-free module of the contract)."""
    return importlib.import_module(lib.CATALOGUE_MODULE).catalogue()


def test_the_engine_catalogue_gives_every_attack_a_panel():
    raw = engineCatalogue()
    json.dumps(raw)  # what `advseg attacks --json` prints
    catalogue = lib.loadCatalogue()
    assert catalogue.names == tuple(entry["name"] for entry in raw["attacks"])
    for entry, attack in zip(raw["attacks"], catalogue.attacks, strict=True):
        assert attack.label and attack.editableParameters(), attack.name
        for parameter in attack.editableParameters():
            low, high = parameter.widgetRange if parameter.widgetKind in ("double", "int") else (None, None)
            if low is not None:
                source = next(p for p in entry["parameters"] if p["name"] == parameter.name)
                assert inRange(source, low) and inRange(source, high), (attack.name, parameter.name)
                assert low <= parameter.default <= high, (attack.name, parameter.name)
            assert parameter.unit or parameter.widgetKind in ("check", "combo"), (attack.name, parameter.name)
            assert parameter.doc, (attack.name, parameter.name)
        for preset in attack.presets:
            assert attack.values(lib.AttackChoice(preset.name, {}))  # every preset value has a parameter


def same(a, b) -> bool:
    """Equal values; floats to 1e-12 (the engine may store a float parameter given as an int)."""
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def widgetValues(parameter: lib.ParameterSpec) -> list:
    """Values a widget of `parameter` can give, other than its default: the ends of its range, the other
    choices, the other state of a check box."""
    if parameter.widgetKind == "check":
        return [not parameter.default]
    if parameter.widgetKind == "combo":
        return [c for c in parameter.choices if c != parameter.default]
    low, high = parameter.widgetRange
    return [v for v in (low, high) if not math.isclose(v, parameter.default)]


def test_every_value_the_panel_can_send_is_what_the_engine_runs():
    """For every attack and every value a widget can give (ends of its range, choices, on/off), the command
    line the module builds parses with the engine's parser, and the engine's attack gets exactly that value,
    with the preset's (or default) values everywhere else."""
    engineCatalogue()
    pytest.importorskip("torch", reason="the engine's attack classes need torch")
    from AdvSegAttackLib.attacks.base import make_attack
    from AdvSegAttackLib.cli import build_parser

    catalogue = lib.loadCatalogue()
    parser = build_parser()
    tried = 0
    for attack in catalogue.attacks:
        presets = [p.name for p in attack.presets] or [None]
        for preset in presets:
            expected = attack.baseValues(preset)
            for parameter in attack.editableParameters():
                for value in widgetValues(parameter):
                    choice = lib.storedChoice(
                        attack,
                        lib.withValue(
                            lib.withPreset("", attack, preset) if preset else "",
                            attack,
                            parameter.name,
                            value,
                        ),
                    )
                    arguments = request(attack, choice, organs=("liver",)).arguments()
                    parsed = parser.parse_args(arguments[2:])
                    params = {p.name: getattr(parsed, p.name) for p in attack.parameters}
                    try:
                        config = make_attack(attack.name, preset=parsed.preset, **params).config
                    except Exception as error:
                        # A combination the engine refuses across parameters (e.g. VAFA's q_init 'one' with
                        # q_min 5) must be refused in one sentence, not crash.
                        assert type(error).__name__ == "InputError", (
                            attack.name,
                            parameter.name,
                            value,
                            error,
                        )
                        continue
                    assert same(getattr(config, parameter.name), value), (attack.name, parameter.name)
                    for name, base in expected.items():
                        if name != parameter.name:
                            assert same(getattr(config, name), base), (attack.name, name)
                    tried += 1
    assert tried > 50
