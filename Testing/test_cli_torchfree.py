"""`advseg` without torch: parsing any command line, `--help`, `--version`, `attacks`, `info` on a card, a
volume or a label map, every `session` command and `export` import neither torch nor MONAI (a reader
workstation and the Slicer application must not need them). Each command runs in a fresh Python."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, write_case_folder

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.volumes.io import read_image

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

PROBE = """
import json, sys
from AdvSegAttackLib.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
print(json.dumps({"status": status, "heavy": sorted({"torch", "monai"} & set(sys.modules))}), file=sys.stderr)
"""


def advseg(*arguments: str | Path) -> tuple[int, str, list[str]]:
    """(exit status, stdout, heavy packages imported) of `advseg ARGUMENTS` in a fresh Python."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, arguments)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=REPO,
        timeout=120,
    )
    outcome = json.loads(result.stderr.strip().splitlines()[-1])
    return outcome["status"] or 0, result.stdout, outcome["heavy"]


def test_parsing_help_and_version_import_no_torch():
    """Every sub-command's full parser (attack flags come from the catalogue), every --help and --version."""
    code = (
        "import sys\n"
        "from AdvSegAttackLib.cli import COMMANDS, build_parser, main\n"
        "build_parser().parse_args(['attack', '--image', 'ct.nii.gz', '--attack', 'saa', '--preset',\n"
        "    'authors-final', '--rho', '0.3', '--no-use-ssim-loss', '--out', 'case'])\n"
        "for argv in [['--help'], ['--version'], *([name, '--help'] for name in COMMANDS),\n"
        "             ['session', 'build', '--help'], ['session', 'analyze', '--help']]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, (argv, stop.code)\n"
        "heavy = sorted({'torch', 'monai'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


def test_catalogue_card_volume_and_label_commands_import_no_torch(tmp_path):
    status, out, heavy = advseg("attacks", "--json")
    assert (status, heavy) == (0, []) and json.loads(out)["attacks"][0]["name"] == "saa"
    assert advseg("attacks")[::2] == (0, [])
    status, out, heavy = advseg("info", REPO / "Resources" / "Models" / "abdomen-unet" / "card.json")
    assert (status, heavy) == (0, []) and json.loads(out)["kind"] == "model card"
    labels = np.zeros((6, 8, 10), np.uint8)
    labels[1:4, 2:6, 2:8] = 6
    for name, array in (("ct.nii.gz", labels.astype(np.int16) * 40 - 1000), ("label.nii.gz", labels)):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
    status, out, heavy = advseg("info", tmp_path / "ct.nii.gz")
    assert (status, heavy) == (0, []) and json.loads(out)["kind"] == "image"
    status, out, heavy = advseg("info", tmp_path / "label.nii.gz")
    assert (status, heavy) == (0, []) and json.loads(out)["labels"]["6"]["name"] == "liver"


def test_info_on_an_nnunet_dataset_folder_imports_no_torch(tmp_path):
    """A dataset folder of two configurations (plans.json, dataset.json; the checkpoints are not read)."""
    from nnunet_folders import write_plans_folder

    dataset = tmp_path / "Dataset999_AdvSegTest"
    dataset.mkdir()
    for configuration, spacing in (("3d_fullres", 3.0), ("3d_lowres", 6.0)):
        folder = write_plans_folder(
            tmp_path / configuration, [spacing] * 3, [32] * 3, configuration=configuration
        )
        (folder / "fold_0").mkdir()
        (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
        folder.rename(dataset / folder.name)
    status, out, heavy = advseg("info", dataset)
    assert (status, heavy) == (0, [])
    assert [c["spacing_mm"] for c in json.loads(out)["configurations"]] == [[3.0] * 3, [6.0] * 3]
    status, out, heavy = advseg("info", dataset, "--configuration", "3d_lowres")
    assert (status, heavy) == (0, []) and json.loads(out)["default_configuration"] == "3d_lowres"


def test_session_and_export_commands_import_no_torch(tmp_path):
    cases = []
    for index in range(2):
        source = tmp_path / f"source{index}.nii.gz"
        volume = np.random.default_rng(index).integers(-200, 300, (6, 8, 7)).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(source))
        cases.append(write_case_folder(source, tmp_path / f"case{index}", seed=index))
    session = tmp_path / "session"
    commands = [
        ("session", "build", "--cases", *cases, "--readers", "2", "--out", session),
        ("session", "verify", session),
        ("session", "handout", session, "--reader", "reader1", "--out", tmp_path / "handout"),
        ("session", "analyze", session),
        ("export", cases[0], "--out", tmp_path / "bundle", "--format", "nifti", "nrrd"),
    ]
    for command in commands:
        status, _, heavy = advseg(*command)
        assert (status, heavy) == (0, []), command
    assert (session / "report" / "report.html").is_file() and (
        tmp_path / "bundle" / "manifest.json"
    ).is_file()


def test_info_describes_image_label_and_card(real_ct, real_ct_labels, capsys):
    assert main(["info", str(real_ct)]) == 0
    image = json.loads(capsys.readouterr().out)
    assert image["kind"] == "image" and image["size"] == [122, 101, 112] and image["orientation"] == "RAS"
    assert main(["info", str(real_ct_labels)]) == 0
    label = json.loads(capsys.readouterr().out)
    assert label["labels"]["6"]["name"] == "liver" and "5" not in label["labels"]
    assert main(["info", str(REPO / "Resources" / "Models" / "abdomen-unet")]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "unet"


def test_info_refuses_a_nifti_with_nan(tmp_path, capsys):
    array = np.zeros((6, 7, 8), np.float32)
    array[2, 3, 4] = np.nan
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert main(["info", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"advseg: error: {path} contains 1 NaN or infinite voxels."


def test_phantom_command_writes_image_and_label(tmp_path):
    assert (
        main(
            [
                "phantom",
                "--seed",
                "3",
                "--out",
                str(tmp_path),
                "--shape",
                "48",
                "40",
                "32",
                "--spacing",
                "8",
                "8",
                "9",
            ]
        )
        == 0
    )
    image = read_image(tmp_path / "phantom_seed3_image.nii.gz")
    assert image.GetSize() == (48, 40, 32) and image.GetSpacing() == (8.0, 8.0, 9.0)


def test_attacks_prints_the_catalogue(capsys):
    from AdvSegAttackLib.attacks.catalogue import catalogue

    assert main(["attacks", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == catalogue()
    assert main(["attacks"]) == 0
    table = capsys.readouterr().out
    assert (
        "saa: SA² – 3D frequency attack" in table and "--preset specified, authors-final (default)" in table
    )
    assert re.search(r"\n--rho +0\.4 +\(0, 1\) ", table) and re.search(r"\n--q-init +max +max \| one ", table)
