"""PSNR on 8-bit RGB values (peak 255), as the literature's tables compute it."""

from __future__ import annotations

import torch
from torch import nn

from crmef.metrics.color import check_pair, to_uint8_levels


def psnr(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB between an image and its reference.

    Convention: both images are quantised to uint8 levels (round half away from zero), the mean
    squared error is taken over all pixels of the three RGB channels, peak 255, float64.
    Identical images give ``inf``.

    Args:
        img: (B, 3, H, W) or (3, H, W) RGB in [0, 1].
        ref: same shape as ``img``.

    Returns:
        (B,) float64 PSNR in dB.
    """
    a, b = check_pair(img, ref)
    mse = ((to_uint8_levels(a) - to_uint8_levels(b)) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)


class PSNR(nn.Module):
    """Module wrapper of :func:`psnr`: ``forward(img, ref) -> (B,)``."""

    def forward(self, img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return psnr(img, ref)
