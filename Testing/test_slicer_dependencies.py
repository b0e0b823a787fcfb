"""The module's package install (`AdvSegAttackSceneLib.dependencies`): it must never replace the torch that
PyTorch Utils installed, nor a package Slicer ships.

The pip command line the module runs is built by a Qt-free function and run here with the real pip, offline
(``--no-index`` and a folder of wheels made by the test): a MONAI-like package whose newest release needs a
newer torch than the installed one. Without the constraints pip would replace torch (what issue 13 found with
MONAI 1.6, which needs torch ≥ 2.8); with them it picks the older release that accepts the installed torch, and
when no release does, it refuses with its own error, which the module shows.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AdvSegAttack"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from AdvSegAttackSceneLib import dependencies  # noqa: E402

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

CONSTRAINTS = MODULE_DIR / "Resources" / dependencies.SLICER_CONSTRAINTS_FILE
TORCH = importlib.metadata.version("torch") if importlib.util.find_spec("torch") else None


def test_the_install_command_line():
    constraints = "/tmp/my dir/constraints.txt"  # a path with a space stays one argument
    assert dependencies.pipInstallArguments(["monai>=1.4", "einops>=0.6"], constraints) == [
        "--constraint",
        constraints,
        "--only-binary",
        ":all:",
        "--upgrade-strategy",
        "only-if-needed",
        "monai>=1.4",
        "einops>=0.6",
    ]
    assert dependencies.pipDryRunArguments(["monai>=1.4"], constraints, "/r/report.json") == [
        "--dry-run",
        "--quiet",
        "--report",
        "/r/report.json",
        *dependencies.pipInstallArguments(["monai>=1.4"], constraints),
    ]


def test_slicer_pins_file_lists_what_slicer_510_ships():
    pins = dependencies.readPins(CONSTRAINTS)
    assert {
        "numpy": "2.0.2",
        "scipy": "1.13.1",
        "pydicom": "2.4.4",
        "SimpleITK": "2.5.2",
    }.items() <= pins.items()
    assert not {"torch", "monai"} & {dependencies.canonicalName(name) for name in pins}


def test_pins_are_the_installed_versions_read_without_importing_torch():
    """In a fresh interpreter, as in Slicer before the install: metadata only, torch stays unimported."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from AdvSegAttackSceneLib import dependencies as d;"
        "pins = d.installedPins(d.readPins(sys.argv[2]));"
        "print(json.dumps([pins, 'torch' in sys.modules]))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, str(MODULE_DIR), str(CONSTRAINTS)],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    pins, torchImported = json.loads(completed.stdout)
    assert not torchImported
    expected = {
        name: importlib.metadata.version(name)
        for name in ("numpy", "scipy", "pydicom", "SimpleITK", "packaging")
    }
    if TORCH:
        expected["torch"] = TORCH
    for name, version in expected.items():
        assert f"{name}=={version}" in pins
    assert not [pin for pin in pins if pin.lower().startswith("couchdb==")]  # shipped by Slicer, not here


def test_missing_requirements(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\nnumpy>=1.0  # inline\n\ndefinitely-not-a-real-package-xyz>=1\nnumpy>=999\n",
        encoding="utf-8",
    )
    lines = dependencies.readRequirements(requirements)
    assert lines == ["numpy>=1.0", "definitely-not-a-real-package-xyz>=1", "numpy>=999"]
    assert dependencies.missingRequirements(lines) == ["definitely-not-a-real-package-xyz>=1", "numpy>=999"]
    with pytest.raises(ValueError, match="is not a 'name==version' pin"):
        dependencies.readPins(requirements)


def wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel (metadata only): enough for pip to resolve it, never installed."""
    stem = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{stem}-py3-none-any.whl"
    info = f"{stem}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {requirement}\n" for requirement in requires
    )
    files = {
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: AdvSegAttack tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    """An offline package index: a newer torch, and a MONAI-like package in two releases."""
    folder = tmp_path_factory.mktemp("wheels")
    wheel(folder, "torch", "99.0.0")
    wheel(folder, "advseg-test-monai-like", "1.5.0", ("torch>=1.0",))
    wheel(folder, "advseg-test-monai-like", "1.6.0", ("torch>=99",))
    wheel(folder, "advseg-test-needs-new-torch", "1.0.0", ("torch>=99",))
    return folder


def resolve(requirements, constraints: Path, index: Path, workDir: Path):
    """The module's dry run, with this interpreter's pip, offline and free of this machine's pip config."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull
    return dependencies.resolveInstall(
        requirements,
        constraints,
        [sys.executable],
        workDir,
        extraArguments=("--no-index", "--find-links", str(index)),
        environment=environment,
    )


@pytest.mark.skipif(TORCH is None, reason="needs an installed torch to pin")
def test_installed_torch_is_never_replaced(index, tmp_path):
    unpinned = dependencies.writeConstraints(tmp_path / "none.txt", [])
    plan = resolve(["advseg-test-monai-like"], unpinned, index, tmp_path)
    assert ("torch", "99.0.0") in plan  # what pip does without constraints: replace torch

    pins = dependencies.installedPins(dependencies.readPins(CONSTRAINTS))
    constraints = dependencies.writeConstraints(tmp_path / "pinned constraints.txt", pins)
    plan = resolve(["advseg-test-monai-like"], constraints, index, tmp_path)
    assert plan == [("advseg-test-monai-like", "1.5.0")]  # the release that accepts the installed torch
    assert not list(tmp_path.glob("*report*"))

    with pytest.raises(
        RuntimeError, match=r"^Cannot install advseg-test-needs-new-torch==1.0.0 because .* conflicting"
    ):
        resolve(["advseg-test-needs-new-torch"], constraints, index, tmp_path)
    assert resolve(["numpy"], constraints, index, tmp_path) == []  # already there: nothing to install


def test_consent_text_lists_everything():
    text = dependencies.consentText(["monai 1.5.2", "einops 0.8.1"], ["torch==2.5.1", "numpy==2.0.2"])
    assert "  monai 1.5.2\n  einops 0.8.1" in text
    assert "torch 2.5.1, numpy 2.0.2" in text
    withTorch = dependencies.consentText(
        [dependencies.TORCH_FROM_PYTORCH_UTILS, "monai>=1.4"], ["numpy==2.0.2"]
    )
    assert "  torch: the build PyTorch Utils picks" in withTorch and "  monai>=1.4" in withTorch
    assert (
        dependencies.pipError("Collecting x\nERROR: Cannot install x\nERROR: ResolutionImpossible")
        == "Cannot install x"
    )
    assert dependencies.pipError("Traceback …\nOSError: disk full\n") == "OSError: disk full"
