"""Image-quality metrics validated against the original implementations' values.

All metrics take torch tensors of shape (B, 3, H, W) or (3, H, W), RGB, float in [0, 1], and
return one value per image, shape (B,). Conventions (colour space, range, window, scales) are in
each function's docstring; ``tests/test_metrics.py`` checks them against
``../shared/data/metric_vectors``.

- :func:`psnr` — dB on uint8 RGB, peak 255 (higher is better).
- :func:`ssim` — MATLAB grey, 11x11 Gaussian, no down-sampling (higher is better).
- :func:`fsim` — FSIMc by default, ``chromatic=False`` for FSIM (higher is better).
- :func:`lpips` — v0.1 AlexNet; needs ``crmef setup lpips`` once (lower is better).
- :func:`mef_ssim` — no-reference MEF-SSIM of a fusion given its sources (higher is better).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from crmef.metrics.fsim import FSIM, fsim
from crmef.metrics.lpips import lpips, weights_installed as lpips_installed
from crmef.metrics.mef_ssim import MEFSSIM, mef_ssim
from crmef.metrics.psnr import PSNR, psnr
from crmef.metrics.ssim import SSIM, ssim

#: Full-reference metrics by name: ``fn(img, ref) -> (B,)``.
REFERENCE_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "psnr": psnr,
    "ssim": ssim,
    "lpips": lpips,
    "fsim": fsim,
}
#: True where a larger value is better.
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fsim": True, "mef_ssim": True}

__all__ = [
    "FSIM",
    "HIGHER_IS_BETTER",
    "MEFSSIM",
    "PSNR",
    "REFERENCE_METRICS",
    "SSIM",
    "fsim",
    "lpips",
    "lpips_installed",
    "mef_ssim",
    "psnr",
    "ssim",
]
