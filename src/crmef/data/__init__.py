"""Data layer: scenes and exposure order, layouts, references, synthesis, misalignment, loaders.

Modules (each documents its public API):

- :mod:`crmef.data.exposure` — ``FrameInfo``, ``order_frames``, ``select_pair``, ``select_pairs``.
- :mod:`crmef.data.layouts` — bracket folders, SICE, paired folders, HDR folders; ``Scene``.
- :mod:`crmef.data.reference` — Mertens references of full brackets and the decoded-array cache.
- :mod:`crmef.data.synth` — ``SynthConfig``, ``synthesize``, ``load_radiance``.
- :mod:`crmef.data.misalign` — ``MisalignConfig``, ``random_homography``, ``misalign_triple``.
- :mod:`crmef.data.transforms` — joint crops, flips, rotations.
- :mod:`crmef.data.splitting` — scene-level splits and the committed ``splits/shared.json``.
- :mod:`crmef.data.datasets` — ``DataConfig``, ``SourceSpec``, ``build_dataset``, ``build_loader``.

The names below are re-exported lazily so that ``import crmef.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DataConfig": "crmef.data.datasets",
    "SourceSpec": "crmef.data.datasets",
    "build_dataset": "crmef.data.datasets",
    "build_loader": "crmef.data.datasets",
    "FrameInfo": "crmef.data.exposure",
    "order_frames": "crmef.data.exposure",
    "select_pair": "crmef.data.exposure",
    "select_pairs": "crmef.data.exposure",
    "MisalignConfig": "crmef.data.misalign",
    "SynthConfig": "crmef.data.synth",
    "synthesize": "crmef.data.synth",
    "load_radiance": "crmef.data.synth",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crmef.data' has no attribute {name!r}")
