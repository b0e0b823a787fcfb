"""AdvSegAttackLib: the Slicer-free engine of AdvSegAttack.

Adversarial attacks on CT organ-segmentation models with real volume geometry. Heavy imports (torch,
MONAI) happen inside the sub-modules that need them, so `import AdvSegAttackLib` stays cheap.

The Python API (`api`, docs/python-api.md) is importable from here and loaded on first use:

    from AdvSegAttackLib import load_model, segment, attack, sweep
"""

from pathlib import Path

__version__ = "0.1.0"

API = ("load_model", "segment", "attack", "sweep", "as_image", "AttackResult")
"""The names of the Python API, importable from the package (loaded on first use: `import AdvSegAttackLib`
itself imports no torch)."""


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])


def resources_dir() -> Path:
    """`Resources` beside the package: the repository root's in a checkout, `qt-scripted-modules/Resources` in
    Slicer (bundled models and texture auto-encoders)."""
    return Path(__file__).resolve().parent.parent / "Resources"
