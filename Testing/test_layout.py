"""The engine's layout (docs/architecture.md): which part may import which, and which modules import no torch.

An AST scan of every module of `AdvSegAttackLib` checks the import directions (also imports inside
functions); a fresh Python imports each torch-free module and checks that neither torch nor MONAI came along.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torchfree  # also run with Slicer 5.10's Python and packages (make test)

PACKAGE = Path(__file__).resolve().parent.parent / "AdvSegAttackLib"
CORE = ("errors", "progress", "watchdog")
"""Top-level modules every part may import (with the package itself: `__version__`, `resources_dir`)."""
SHARED = "models.labels"
"""Organ names and colours (no dependencies but `errors`): every part may import them."""
LAZY_API = ("AdvSegAttackLib/__init__.py", "AdvSegAttackLib.api")
"""The one import upward: the package's `__getattr__` loads the Python API on first use of its names."""
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "volumes": set(),
    "models": {"volumes"},
    "evaluation": {"volumes"},
    "attacks": {"volumes", "models", "evaluation"},
    "pipeline": {"volumes", "models", "evaluation", "attacks"},
    "studies": {"volumes", "evaluation"},
    "datasets": {"volumes", "models", "evaluation", "attacks", "pipeline"},
    "training": {"volumes", "models", "evaluation", "attacks", "datasets"},
    "api": {"volumes", "models", "evaluation", "attacks", "pipeline", "datasets"},
    "cli": {
        "volumes",
        "models",
        "evaluation",
        "attacks",
        "pipeline",
        "studies",
        "datasets",
        "training",
        "api",
    },
}
"""Part -> the parts it may import besides itself and the core: lower layers only."""
TORCH_FREE = (
    "AdvSegAttackLib",
    *(f"AdvSegAttackLib.{name}" for name in CORE),
    "AdvSegAttackLib.volumes",
    "AdvSegAttackLib.volumes.io",
    "AdvSegAttackLib.volumes.staging",
    "AdvSegAttackLib.volumes.nofollow",
    "AdvSegAttackLib.volumes.outputs",
    "AdvSegAttackLib.volumes.phantom",
    "AdvSegAttackLib.models",
    "AdvSegAttackLib.models.labels",
    "AdvSegAttackLib.models.cards",
    "AdvSegAttackLib.models.bundles",
    "AdvSegAttackLib.models.nnunet",
    "AdvSegAttackLib.evaluation",
    "AdvSegAttackLib.evaluation.casefolder",
    "AdvSegAttackLib.evaluation.preview",
    "AdvSegAttackLib.evaluation.robustness_report",
    "AdvSegAttackLib.attacks",
    "AdvSegAttackLib.attacks.catalogue",
    "AdvSegAttackLib.attacks.texture",
    "AdvSegAttackLib.pipeline",
    "AdvSegAttackLib.studies",
    "AdvSegAttackLib.studies.session",
    "AdvSegAttackLib.studies.reader_session",
    "AdvSegAttackLib.studies.reader_stats",
    "AdvSegAttackLib.studies.export",
    "AdvSegAttackLib.datasets",
    "AdvSegAttackLib.datasets.datalist",
    "AdvSegAttackLib.training",
    "AdvSegAttackLib.cli",
    "AdvSegAttackLib.cli.__main__",
    "AdvSegAttackLib.cli.robustness",
)
"""What a reader workstation, the Slicer application and `advseg` before it runs an attack import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The part (layer) of a module of the package: its sub-package, or "core"."""
    inner = module.split(".")[1:]
    if not inner or inner[0] in CORE:
        return "core"
    if (PACKAGE / inner[0]).is_dir():
        return inner[0]
    if (PACKAGE / f"{inner[0]}.py").is_file():
        return f"<top-level module {inner[0]}>"
    return "core"  # a name of the package itself (`from .. import __version__`)


def engine_imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package in a file, outside `if TYPE_CHECKING:`."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = (
                [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
            )
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found += [
            (node.lineno, t) for t in targets if t == "AdvSegAttackLib" or t.startswith("AdvSegAttackLib.")
        ]
    return found


def test_every_module_belongs_to_a_part():
    modules = [module_name(p) for p in PACKAGE.rglob("*.py")]
    assert {part_of(m) for m in modules} <= set(MAY_IMPORT), sorted({part_of(m) for m in modules})


def test_no_part_imports_a_higher_one():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(module_name(path))
        for line, target in engine_imports(path):
            inner = target.removeprefix("AdvSegAttackLib").lstrip(".")
            to = "core" if target == "AdvSegAttackLib" else part_of(target)
            allowed = to in ("core", part) or to in MAY_IMPORT[part] or inner.startswith(SHARED)
            allowed |= (str(path.relative_to(PACKAGE.parent)), target) == LAZY_API
            if not allowed:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {part} imports {target} ({to})")
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_lazy_and_relative_imports(tmp_path):
    """The scan is not blind to imports inside functions (where the engine keeps its heavy ones)."""
    path = PACKAGE / "volumes" / "io.py"
    targets = {target for _, target in engine_imports(path)}
    assert {
        "AdvSegAttackLib.errors",
        "AdvSegAttackLib.models.labels",
        "AdvSegAttackLib.volumes.staging",
    } <= targets
    cli = {target for _, target in engine_imports(PACKAGE / "cli" / "attacks.py")}
    assert any(t.startswith("AdvSegAttackLib.pipeline") for t in cli)  # imported inside a command


def test_torch_free_modules_import_neither_torch_nor_monai():
    code = (
        "import importlib, sys\n"
        f"for name in {list(TORCH_FREE)!r}:\n"
        "    if name.endswith('__main__'):\n"
        "        continue\n"
        "    importlib.import_module(name)\n"
        "    heavy = sorted({'torch', 'monai'} & set(sys.modules))\n"
        "    if heavy:\n"
        "        sys.exit(f'{name} imports {heavy}')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout
    listed = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert set(TORCH_FREE) <= listed
