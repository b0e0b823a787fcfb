"""Which Slicer the module supports, told in one sentence on an older one.

This file runs before the module knows whether it is in a supported Slicer, so it must import and run on
the Python of older Slicer releases (3.9 in Slicer 5.6 and 5.8): `make lint` checks it with vermin and
with a real Python 3.9. Everything else in the module and the engine may need Python 3.10.
"""

from __future__ import annotations

MINIMUM_SLICER_VERSION = (5, 10)  # ships Python 3.12, numpy 2.0, pydicom 2.4
MINIMUM_PYTHON_VERSION = (3, 10)  # the engine's floor (pyproject.toml)


def _dotted(version) -> str:
    return ".".join(str(number) for number in version)


def unsupportedReason(slicerVersion, pythonVersion):  # no "str | None": vermin checks this file for 3.9
    """One sentence (str) saying which Slicer is needed, or None if this one is supported.

    :param slicerVersion: (major, minor) of the running Slicer (``slicer.app.majorVersion``, ``minorVersion``).
    :param pythonVersion: ``sys.version_info`` (or its first two numbers).
    """
    slicerVersion = tuple(int(number) for number in tuple(slicerVersion)[:2])
    pythonVersion = tuple(int(number) for number in tuple(pythonVersion)[:2])
    if slicerVersion >= MINIMUM_SLICER_VERSION and pythonVersion >= MINIMUM_PYTHON_VERSION:
        return None
    return (
        f"AdvSegAttack needs 3D Slicer {_dotted(MINIMUM_SLICER_VERSION)} or newer (with Python "
        f"{_dotted(MINIMUM_PYTHON_VERSION)} or newer); this is Slicer {_dotted(slicerVersion)} with Python "
        f"{_dotted(pythonVersion)}, so please install a current Slicer."
    )
