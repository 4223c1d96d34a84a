"""Image-quality metrics validated against the original implementations' values.

The torch metrics take tensors of shape (B, 3, H, W) or (3, H, W), RGB, float in [0, 1], and
return one value per image, shape (B,). Conventions (colour space, range, window, scales) are in
each function's docstring; ``tests/test_metrics.py`` checks them against
``../shared/data/metric_vectors``.

- :func:`psnr` — dB on uint8 RGB, peak 255 (higher is better).
- :func:`ssim` — MATLAB grey, 11x11 Gaussian, no down-sampling (higher is better).
- :func:`fsim` — FSIMc by default, ``chromatic=False`` for FSIM (higher is better).
- :func:`lpips` — v0.1 AlexNet; needs ``crmef setup lpips`` once (lower is better).
- :func:`mef_ssim` — no-reference MEF-SSIM of a fusion given its N >= 2 sources (higher is better).
- :func:`chroma_hull` — no-reference colour fidelity of a fusion given its N >= 1 sources: u'v'
  distance to the hull of the sources' chromaticities (lower is better). Numpy arrays in
  (uint8, uint16 or float), a float out; :mod:`crmef.metrics.chroma` imports no torch.

Every name is loaded on first use, so ``from crmef.metrics.chroma import chroma_hull`` (or
``from crmef.metrics import chroma_hull``) does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: Name -> (module, attribute), loaded on first access.
_LAZY = {
    "FSIM": ("crmef.metrics.fsim", "FSIM"),
    "fsim": ("crmef.metrics.fsim", "fsim"),
    "lpips": ("crmef.metrics.lpips", "lpips"),
    "lpips_installed": ("crmef.metrics.lpips", "weights_installed"),
    "MEFSSIM": ("crmef.metrics.mef_ssim", "MEFSSIM"),
    "mef_ssim": ("crmef.metrics.mef_ssim", "mef_ssim"),
    "PSNR": ("crmef.metrics.psnr", "PSNR"),
    "psnr": ("crmef.metrics.psnr", "psnr"),
    "SSIM": ("crmef.metrics.ssim", "SSIM"),
    "ssim": ("crmef.metrics.ssim", "ssim"),
    "chroma_hull": ("crmef.metrics.chroma", "chroma_hull"),
    "chroma_hull_map": ("crmef.metrics.chroma", "chroma_hull_map"),
    "chroma_kept": ("crmef.metrics.chroma", "chroma_kept"),
}
#: Full-reference metric names (``REFERENCE_METRICS`` maps them to ``fn(img, ref) -> (B,)``).
REFERENCE_METRIC_NAMES = ("psnr", "ssim", "lpips", "fsim")
#: True where a larger value is better.
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fsim": True, "mef_ssim": True,
                    "chroma_hull": False, "chroma_kept": True}

__all__ = ["HIGHER_IS_BETTER", "REFERENCE_METRICS", "REFERENCE_METRIC_NAMES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    elif name == "REFERENCE_METRICS":
        value = {n: __getattr__(n) for n in REFERENCE_METRIC_NAMES}
    else:
        raise AttributeError(f"module 'crmef.metrics' has no attribute {name!r}")
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps a function the owner of its name when its submodule of the same name is imported.

    Importing ``crmef.metrics.fsim`` (directly, or to load ``FSIM``) makes the import system set
    ``crmef.metrics.fsim = <module>``; that would hide the function ``fsim`` from
    ``from crmef.metrics import fsim``. The package attribute stays the function, as it was when
    this package imported everything eagerly; the module stays in ``sys.modules``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _LAZY and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
