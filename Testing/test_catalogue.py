"""The attack catalogue: the contract the Slicer module builds its panel from (torch-free, JSON), and the only
place parameter ranges and presets are enforced."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from AdvSegAttackLib.attacks.catalogue import ATTACKS, PARAMETER_TYPES, attack_config, catalogue
from AdvSegAttackLib.errors import InputError

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

ATTACK_KEYS = {
    "name",
    "label",
    "description",
    "source_grid",
    "needs_organ",
    "supports_region",
    "supports_targeted",
    "parameters",
    "presets",
    "default_preset",
}
PARAMETER_KEYS = {
    "name",
    "flag",
    "label",
    "type",
    "default",
    "minimum",
    "maximum",
    "minimum_inclusive",
    "maximum_inclusive",
    "choices",
    "unit",
    "doc",
    "advanced",
}


def test_catalogue_imports_nothing_heavy():
    code = (
        "import sys; import AdvSegAttackLib.attacks.catalogue, AdvSegAttackLib.models.labels; "
        "print(sorted({'torch', 'monai', 'SimpleITK', 'numpy'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_catalogue_is_strict_json_with_the_contract_fields():
    listing = json.loads(json.dumps(catalogue(), allow_nan=False, ensure_ascii=False))
    assert [a["name"] for a in listing["attacks"]] == [
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
    ]
    for attack in listing["attacks"]:
        assert set(attack) == ATTACK_KEYS
        assert attack["label"] and attack["description"].endswith(".")
        for parameter in attack["parameters"]:
            assert set(parameter) == PARAMETER_KEYS
            assert parameter["type"] in PARAMETER_TYPES
            assert parameter["flag"] == "--" + parameter["name"].replace("_", "-")
            assert parameter["unit"] and parameter["doc"].endswith(".") and parameter["label"]
            assert (parameter["choices"] is not None) == (parameter["type"] == "choice")
            for bound in ("minimum", "maximum"):
                if parameter[bound] is None:
                    assert parameter[f"{bound}_inclusive"] is False
        names = [p["name"] for p in attack["parameters"]]
        for preset in attack["presets"]:
            assert set(preset) == {"name", "label", "values"} and set(preset["values"]) <= set(names)
        assert attack["default_preset"] in [None, *(p["name"] for p in attack["presets"])]


def test_default_presets_and_defaults_are_what_an_attack_runs_with():
    listed = {a["name"]: a for a in catalogue()["attacks"]}
    for name in ("saa", "saa-2d"):  # the setting that shows the published effect (issue 15)
        assert listed[name]["default_preset"] == "authors-final"
        assert [p["name"] for p in listed[name]["presets"]] == ["specified", "authors-final"]
        defaults = {p["name"]: p["default"] for p in listed[name]["parameters"]}
        assert (defaults["rho"], defaults["steps"], defaults["block_size"]) == (0.4, 10, 16)
        assert (defaults["lambda_dice"], defaults["lambda_ssim"]) == (0.2, 0.75)
    for name in ("saa", "saa-2d", "vafa", "vafa-2d"):
        published = next(p for p in listed[name]["parameters"] if p["name"] == "published_return")
        assert (published["type"], published["default"], published["flag"]) == (
            "bool",
            False,
            "--published-return",
        )
    for entry in ATTACKS.values():
        listed = {p["name"]: p["default"] for p in entry.to_json()["parameters"]}
        assert attack_config(entry.name).values() == {
            **listed,
            **({"q_min": 5.0} if entry.name.startswith("vafa") else {}),  # derived from q_init
        }
        for preset in entry.presets:  # every preset is valid, and a given flag overrides it
            values = attack_config(entry.name, preset.name).values()
            assert {k: values[k] for k in preset.values} == dict(preset.values)
            changed = attack_config(entry.name, preset.name, steps=3).values()
            assert changed == {**values, "steps": 3}


def _just(value: float, direction: int, integer: bool) -> float:
    return value + direction if integer else math.nextafter(value, direction * math.inf)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_validation_enforces_exactly_the_listed_ranges(name):
    """At each bound the value passes exactly when the bound is inclusive; just outside it never passes, and
    the sentence names the flag."""
    entry = ATTACKS[name]
    others = {"q_init": "one", "q_max": 255.0} if name.startswith("vafa") else {}
    if name == "vafa":  # the blockwise SSIM needs blocks of 3 voxels or more
        others["use_ssim_loss"] = False
    for parameter in entry.to_json()["parameters"]:
        integer = parameter["type"] == "int"
        for bound, outward in (("minimum", -1), ("maximum", 1)):
            value = parameter[bound]
            if value is None:
                continue
            given = {**others, parameter["name"]: int(value) if integer else value}
            if parameter["name"] == "q_min":  # q_min <= 1 with --q-init one
                given["q_init"] = "max"
            if parameter["name"] == "working_size":  # also a multiple of 16
                given[parameter["name"]] = 32
            if parameter[f"{bound}_inclusive"]:
                assert attack_config(name, **given).values()[parameter["name"]] == given[parameter["name"]]
            else:
                with pytest.raises(InputError, match=parameter["flag"]):
                    attack_config(name, **given)
            given[parameter["name"]] = _just(value, outward, integer)
            with pytest.raises(InputError, match=parameter["flag"]):
                attack_config(name, **given)
        wrong = "x" if parameter["type"] != "text" else ""
        with pytest.raises(InputError, match=parameter["flag"]):
            attack_config(name, **{parameter["name"]: wrong})


def test_choices_bools_and_unknown_names_are_refused_in_one_sentence():
    assert attack_config("saa", band="mid").band == "middle"  # the published spelling
    with pytest.raises(InputError, match="--band must be one of all, low, middle, high, got 'ultra'"):
        attack_config("saa", band="ultra")
    with pytest.raises(InputError, match="--use-ssim-loss must be true or false"):
        attack_config("saa", use_ssim_loss=1)
    with pytest.raises(InputError, match="--steps must be an integer >= 1"):
        attack_config("pgd", steps=2.0)
    with pytest.raises(InputError, match="--rho does not apply to --attack pgd"):
        attack_config("pgd", rho=0.1)
    with pytest.raises(InputError, match="--preset 'authors-final' is not a preset of --attack pgd"):
        attack_config("pgd", "authors-final")
    with pytest.raises(InputError, match="--preset 'fast' is not a preset of --attack saa"):
        attack_config("saa", "fast")
    with pytest.raises(InputError, match="--attack 'nope' is not known"):
        attack_config("nope")


def test_cross_parameter_rules():
    assert attack_config("vafa").q_min == 5.0 and attack_config("vafa", q_init="one").q_min == 1.0
    with pytest.raises(InputError, match="--q-min"):
        attack_config("vafa", q_min=30.0, q_max=20.0)
    with pytest.raises(InputError, match="--q-min must be <= 1 with --q-init one"):
        attack_config("vafa", q_init="one", q_min=2.0)
    with pytest.raises(InputError, match="--block-size must be >= 3 with --use-ssim-loss"):
        attack_config("vafa", block_size=2)
    assert attack_config("vafa", block_size=2, use_ssim_loss=False).block_size == 2
    assert attack_config("vafa-2d", block_size=2).block_size == 2  # no SSIM term in 2-D
    with pytest.raises(InputError, match="--working-size must be a multiple of 16"):
        attack_config("texture", working_size=100)
    with pytest.raises(InputError, match="--window-low 300.0 must be below --window-high"):
        attack_config("texture", window_low=300.0)


def test_provenance_lists_every_parameter_with_unit_and_flag():
    described = attack_config("saa", "authors-final").to_dict()
    assert described["rho"] == {
        "value": 0.4,
        "unit": "relative DCT-coefficient change (ξ ∈ [1−ρ, 1+ρ])",
        "flag": "--rho",
    }
    assert list(described) == [p.name for p in ATTACKS["saa"].parameters]
