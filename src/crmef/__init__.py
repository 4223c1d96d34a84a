"""crmef: compact, robust multi-exposure image fusion (Liu et al., searched architecture).

Public API (imported lazily so that ``import crmef`` stays fast):

- :func:`fuse` — fuse a bracket of photos into one image (numpy in, numpy out).
- :func:`load_model` — the paper's network from a ``.safetensors`` / ``.json`` path (``crmef train``).
- :class:`Genotype` — the searched architecture as plain data.
- :class:`FusionNet` — the paper's network (super-net while searching, compact once derived).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Genotype": ("crmef.space", "Genotype"),
    "FusionNet": ("crmef.nets.fusion", "FusionNet"),
    "NetConfig": ("crmef.nets.fusion", "NetConfig"),
    "fuse": ("crmef.inference", "fuse"),
    "load_model": ("crmef.models", "load_model"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'crmef' has no attribute {name!r}")
