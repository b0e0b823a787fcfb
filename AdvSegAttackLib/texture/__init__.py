"""Feature-statistics (AdaIN) texture attack: encoder/decoder networks and their weights.

The names below are imported on first use, so `advseg` can build its parser without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LEVELS": "networks",
    "TextureAutoencoders": "networks",
    "load_texture_autoencoders": "weights",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
