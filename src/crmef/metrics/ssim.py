"""SSIM (Wang et al. 2004) with the conventions of the original MATLAB ``ssim_index.m``."""

from __future__ import annotations

import torch
from torch import nn

from crmef.metrics.color import check_pair, filter_valid, gaussian_window, matlab_gray_uint8, require_min_size


def ssim_gray(a: torch.Tensor, b: torch.Tensor, k1: float = 0.01, k2: float = 0.03, peak: float = 255.0) -> torch.Tensor:
    """SSIM map-mean of two grey images in 0..peak (no conversion, no down-sampling).

    Args:
        a: (B, 1, H, W) float64 grey levels.
        b: same shape.
        k1: the luminance constant K1.
        k2: the contrast constant K2.
        peak: the dynamic range L.

    Returns:
        (B,) mean of the SSIM map over the 'valid' region of the 11x11 Gaussian window.
    """
    window = gaussian_window(11, 1.5).to(a.device)
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    mu_a, mu_b = filter_valid(a, window), filter_valid(b, window)
    saa = filter_valid(a * a, window) - mu_a**2
    sbb = filter_valid(b * b, window) - mu_b**2
    sab = filter_valid(a * b, window) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return smap.mean(dim=(1, 2, 3))


def ssim(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Structural similarity between an image and its reference.

    Convention (matches the MATLAB reference values to 1e-4): each RGB image is quantised to
    uint8, converted with MATLAB ``rgb2gray`` (0.2989 R + 0.5870 G + 0.1140 B) and rounded to
    uint8; 11x11 Gaussian window with sigma 1.5; K = (0.01, 0.03), L = 255; no down-sampling;
    the SSIM map is averaged over the 'valid' region (borders of 5 pixels dropped). float64.

    Args:
        img: (B, 3, H, W) or (3, H, W) RGB in [0, 1], at least 11x11.
        ref: same shape as ``img``.

    Returns:
        (B,) float64 SSIM in [-1, 1].
    """
    a, b = check_pair(img, ref)
    require_min_size(a, 11, "SSIM")
    return ssim_gray(matlab_gray_uint8(a), matlab_gray_uint8(b))


class SSIM(nn.Module):
    """Module wrapper of :func:`ssim`: ``forward(img, ref) -> (B,)``."""

    def forward(self, img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return ssim(img, ref)
