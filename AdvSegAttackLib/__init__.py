"""AdvSegAttackLib: the Slicer-free engine of AdvSegAttack.

Adversarial attacks on CT organ-segmentation models with real volume geometry. Heavy imports (torch,
MONAI) happen inside the sub-modules that need them, so `import AdvSegAttackLib` stays cheap.
"""

from pathlib import Path

__version__ = "0.1.0"


def resources_dir() -> Path:
    """`Resources` beside the package: the repository root's in a checkout, `qt-scripted-modules/Resources` in
    Slicer (bundled models and texture auto-encoders)."""
    return Path(__file__).resolve().parent.parent / "Resources"
