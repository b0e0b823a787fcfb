"""AdvSegAttackLib: the Slicer-free engine of AdvSegAttack.

Adversarial attacks on CT organ-segmentation models with real volume geometry. Heavy imports (torch,
MONAI) happen inside the sub-modules that need them, so `import AdvSegAttackLib` stays cheap.
"""

__version__ = "0.1.0"
