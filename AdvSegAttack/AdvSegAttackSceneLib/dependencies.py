"""Installing the engine's Python packages into Slicer without moving what Slicer or torch stand on.

Qt-free and torch-free (versions are read with `importlib.metadata`, torch is never imported here). The
module installs ``Resources/requirements.txt`` with ``pip install --constraint FILE``, where FILE pins the
torch that PyTorch Utils installed and every package Slicer ships (the names listed in
``Resources/slicer-5.10-constraints.txt``) at the version installed in the running Slicer. pip then picks,
for example, the newest MONAI whose own torch requirement accepts that torch (MONAI 1.6 needs torch ≥ 2.8,
so an older torch gets MONAI 1.5), or fails instead of replacing torch or numpy. A dry run
(``--dry-run --report``) tells beforehand exactly what would be installed, for the one consent dialog.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
from pathlib import Path

TORCH_REQUIREMENT = ">=2.1"
TORCH_DISTRIBUTIONS = ("torch", "torchvision", "torchaudio")  # whatever PyTorch Utils installed
SLICER_CONSTRAINTS_FILE = "slicer-5.10-constraints.txt"  # in the module's Resources folder
# Only wheels: a source build inside Slicer needs a compiler most users do not have.
PIP_INSTALL_OPTIONS = ("--only-binary", ":all:", "--upgrade-strategy", "only-if-needed")

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*$")


def canonicalName(name: str) -> str:
    """A distribution name as pip compares them (PEP 503: case-insensitive, runs of -_. are one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def readRequirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements.txt (comments and blank lines dropped)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def requirementName(requirement: str) -> str:
    """The distribution name a requirement line starts with ("" if none)."""
    match = _REQUIREMENT_NAME.match(requirement)
    return match.group(1) if match else ""


def readPins(path: str | os.PathLike) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by name as written.

    :raises ValueError: for a line that is not an exact pin.
    """
    pins = {}
    for line in readRequirements(path):
        match = _PIN.match(line)
        if not match:
            raise ValueError(f"{path}: {line!r} is not a 'name==version' pin.")
        pins[match.group(1)] = match.group(2)
    return pins


def installedVersion(name: str, version=importlib.metadata.version) -> str | None:
    """The installed version of a distribution, or None (read from metadata: nothing is imported)."""
    try:
        return version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missingRequirements(requirements: list[str], version=importlib.metadata.version) -> list[str]:
    """The requirements that are not installed, or installed in a version that does not satisfy them."""
    from packaging.requirements import Requirement  # ships with pip, and with Slicer

    importlib.invalidate_caches()  # see packages pip has just installed
    missing = []
    for requirement in requirements:
        if not requirementName(requirement):
            continue
        parsed = Requirement(requirement)
        installed = installedVersion(parsed.name, version)
        if installed is None or (
            parsed.specifier and not parsed.specifier.contains(installed, prereleases=True)
        ):
            missing.append(requirement)
    return missing


def installedPins(names, version=importlib.metadata.version) -> list[str]:
    """``name==installed version`` for every distribution of `names` and of torch that is installed.

    :param names: the packages Slicer ships (`readPins` of the constraints file gives them).
    """
    importlib.invalidate_caches()  # see what was installed since this process started (torch, just now)
    pins, seen = [], set()
    for name in [*names, *TORCH_DISTRIBUTIONS]:
        key = canonicalName(name)
        installed = installedVersion(name, version)
        if key in seen or installed is None:
            continue
        seen.add(key)
        pins.append(f"{name}=={installed}")
    return pins


def writeConstraints(path: str | os.PathLike, pins: list[str]) -> Path:
    """Write a pip constraints file (one pin a line)."""
    path = Path(path)
    path.write_text(
        "# Written by AdvSegAttack: what Slicer and PyTorch Utils installed, kept as it is.\n"
        + "".join(f"{pin}\n" for pin in pins),
        encoding="utf-8",
    )
    return path


def pipInstallArguments(requirements: list[str], constraintsPath: str | os.PathLike) -> list[str]:
    """Arguments after ``pip install`` (for `slicer.util.pip_install`, which takes a list): only wheels,
    nothing upgraded that does not have to be, and every pin of `constraintsPath` held."""
    return ["--constraint", os.fspath(constraintsPath), *PIP_INSTALL_OPTIONS, *requirements]


def pipDryRunArguments(
    requirements: list[str], constraintsPath: str | os.PathLike, reportPath: str | os.PathLike
) -> list[str]:
    """Arguments after ``pip install`` that resolve the same install without doing it, writing pip's
    JSON installation report (pip ≥ 22.2; Slicer 5.10 ships pip 25.1.1) to `reportPath`."""
    return ["--dry-run", "--quiet", "--report", os.fspath(reportPath)] + pipInstallArguments(
        requirements, constraintsPath
    )


def installPlan(reportText: str) -> list[tuple[str, str]]:
    """(name, version) of every distribution a pip installation report says would be installed."""
    report = json.loads(reportText)
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in report.get("install", [])]


TORCH_FROM_PYTORCH_UTILS = "torch: the build PyTorch Utils picks for your GPU driver (several GB with CUDA)"


def consentText(installing: list[str], pins: list[str]) -> str:
    """The one consent dialog: everything that will be installed, and what is kept as it is.

    :param installing: one line per package, e.g. "monai 1.5.2" (from `installPlan`), or a requirement when
      the exact version is not known yet (before torch is installed).
    :param pins: the constraints (``name==version``) that stay as they are.
    """
    lines = "\n".join(f"  {line}" for line in installing)
    kept = ", ".join(pin.replace("==", " ") for pin in pins)
    return (
        "AdvSegAttack needs these Python packages, which will now be downloaded and installed "
        f"(a few minutes):\n\n{lines}\n\n"
        f"Kept exactly as they are (torch and Slicer's own packages): {kept}."
    )


def pipError(output: str) -> str:
    """The most telling line of pip's output after a failed run: its first ``ERROR:`` line (pip's last one
    is a generic "ResolutionImpossible"), without the prefix; else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return (errors or lines[-1:] or ["pip gave no message"])[0]


def resolveInstall(
    requirements: list[str],
    constraintsPath: str | os.PathLike,
    python: list[str],
    workDir: str | os.PathLike,
    extraArguments: tuple[str, ...] = (),
    environment: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Ask pip what installing `requirements` under `constraintsPath` would install, without installing.

    :param python: the interpreter command, e.g. ``[PythonSlicer]`` in Slicer.
    :return: (name, version) of each distribution pip would install (empty if everything is there).
    :raises RuntimeError: with pip's own error line when no set of versions fits the pins (or pip cannot
      reach the package index).
    """
    import subprocess

    reportPath = Path(workDir) / "pip-install-report.json"
    command = [
        *python,
        "-m",
        "pip",
        "install",
        *pipDryRunArguments(requirements, constraintsPath, reportPath),
    ]
    completed = subprocess.run(
        [*command, *extraArguments],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=environment,
        cwd=os.fspath(workDir),
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
    )
    try:
        if completed.returncode != 0:
            raise RuntimeError(pipError(completed.stderr + "\n" + completed.stdout))
        return installPlan(reportPath.read_text(encoding="utf-8"))
    finally:
        reportPath.unlink(missing_ok=True)
