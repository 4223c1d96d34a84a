"""MEF-SSIM (Ma, Zeng and Wang, TIP 2015): no-reference quality of a multi-exposure fusion.

A faithful, vectorised port of the authors' MATLAB ``mef_ms_ssim.m``: for every 11x11 patch
the source patches are decomposed into mean, signal strength and structure; a desired patch is
built from the strongest signal strength and a structure that is a consistency-weighted mix of
the sources' structures; the fused patch is compared with it by the SSIM structure term. Three
scales (2x2 mean down-sampling, symmetric border), combined with weights
[0.0448, 0.2856, 0.3001] / sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crmef.errors import InputError
from crmef.metrics.color import as_batch, box_window, filter_valid, gaussian_window, matlab_gray_uint8

SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001)
MIN_SIDE = 11 * 2 ** (len(SCALE_WEIGHTS) - 1)
"""Shortest image side (pixels) the default three scales of 11x11 windows need (44)."""
_EPS = 2.220446049250313e-16  # MATLAB eps


def _mef_ssim_single(seq: torch.Tensor, fused: torch.Tensor, k: float = 0.03, wsize: int = 11) -> torch.Tensor:
    """Single-scale MEF-SSIM.

    Args:
        seq: (B, K, H, W) float64 grey sources in 0..255.
        fused: (B, 1, H, W) float64 grey fused image in 0..255.
        k: SSIM constant K (C = (k * 255)^2).
        wsize: window size.

    Returns:
        (B,) mean of the quality map over the 'valid' region.
    """
    n = wsize * wsize
    box = box_window(wsize).to(seq.device)
    gauss = gaussian_window(wsize, 1.5).to(seq.device)
    kk = seq.shape[1]

    mu = filter_valid(seq, box)  # (B, K, h, w)
    var = filter_valid(seq * seq, box) - mu**2
    ed = torch.sqrt(torch.clamp(n * var, min=0.0)) + 0.001

    # Structural consistency R: ||sum_k x_k - mean|| / sum_k ||x_k - mu_k||.
    total = seq.sum(dim=1, keepdim=True)
    mu_t = filter_valid(total, box)
    num = torch.sqrt(torch.clamp(n * (filter_valid(total * total, box) - mu_t**2), min=0.0))
    den = torch.sqrt(torch.clamp(n * var, min=0.0)).sum(dim=1, keepdim=True)
    r = (num + _EPS) / (den + _EPS)
    r = torch.where(r > 1, torch.full_like(r, 1 - _EPS), r)
    r = torch.where(r < 0, torch.full_like(r, _EPS), r)
    p = torch.clamp(torch.tan(math.pi / 2 * r), max=10.0)

    wmap = (ed / wsize) ** p + _EPS
    wmap = wmap / wmap.sum(dim=1, keepdim=True)
    max_ed = ed.max(dim=1, keepdim=True).values
    c = wmap / ed  # coefficient of (x_k - mu_k) in the desired patch, per window

    # Moments of the unnormalised desired patch s = sum_k c_k (x_k - mu_k) over the window.
    g = filter_valid(seq, gauss)  # Gaussian means of the sources
    gf = filter_valid(fused, gauss)
    mu1_u = (c * (g - mu)).sum(dim=1, keepdim=True)
    norm2 = torch.zeros_like(mu1_u)
    gss = torch.zeros_like(mu1_u)
    for i in range(kk):
        for j in range(kk):
            xi, xj = seq[:, i : i + 1], seq[:, j : j + 1]
            mi, mj = mu[:, i : i + 1], mu[:, j : j + 1]
            cij = c[:, i : i + 1] * c[:, j : j + 1]
            box_ij = filter_valid(xi * xj, box)
            g_ij = filter_valid(xi * xj, gauss)
            norm2 = norm2 + cij * n * (box_ij - mi * mj)
            gss = gss + cij * (g_ij - mj * g[:, i : i + 1] - mi * g[:, j : j + 1] + mi * mj)
    sxf = torch.zeros_like(mu1_u)
    for i in range(kk):
        xi, mi = seq[:, i : i + 1], mu[:, i : i + 1]
        sxf = sxf + c[:, i : i + 1] * (filter_valid(xi * fused, gauss) - mi * gf)

    norm = torch.sqrt(torch.clamp(norm2, min=0.0))
    # MATLAB rescales to the strongest signal strength only when the patch is not flat.
    flat = norm <= 1e-9 * max_ed.clamp(min=1.0)
    a = torch.where(flat, torch.ones_like(norm), max_ed / torch.where(flat, torch.ones_like(norm), norm))
    mu1 = a * mu1_u
    sigma1 = a * a * gss - mu1**2
    sigma2 = filter_valid(fused * fused, gauss) - gf**2
    sigma12 = a * sxf - mu1 * gf
    const = (k * 255.0) ** 2
    qmap = (2 * sigma12 + const) / (sigma1 + sigma2 + const)
    return qmap.mean(dim=(1, 2, 3))


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then ``x(1:2:end, 1:2:end)``."""
    p = F.pad(x, (0, 1, 0, 1), mode="replicate")
    avg = (p[..., :-1, :-1] + p[..., 1:, :-1] + p[..., :-1, 1:] + p[..., 1:, 1:]) / 4.0
    return avg[..., ::2, ::2]


def mef_ssim_gray(seq: torch.Tensor, fused: torch.Tensor, levels: int = 3, weights: Sequence[float] = SCALE_WEIGHTS) -> torch.Tensor:
    """Multi-scale MEF-SSIM on grey images in 0..255.

    Args:
        seq: (B, K, H, W) float64 grey source sequence (K >= 2 exposures); B may be 1 to share
            one sequence across a batch of fused images.
        fused: (B, 1, H, W) float64 grey fused image.
        levels: number of scales.
        weights: per-scale exponents (normalised to sum 1).

    Returns:
        (B,) float64 MEF-SSIM.
    """
    if len(weights) != levels:
        raise InputError(f"MEF-SSIM: {levels} levels need {levels} weights, got {len(weights)}")
    if min(seq.shape[-2:]) / 2 ** (levels - 1) < 11:
        raise InputError(
            f"MEF-SSIM with {levels} scales needs images of at least {11 * 2 ** (levels - 1)} pixels "
            f"on the short side, got {seq.shape[-1]}x{seq.shape[-2]}"
        )
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    out = torch.ones(max(seq.shape[0], fused.shape[0]), dtype=torch.float64, device=seq.device)
    for level in range(levels):
        q = _mef_ssim_single(seq, fused)
        out = out * q ** w[level].item()
        if level < levels - 1:
            seq, fused = _downsample(seq), _downsample(fused)
    return out


def mef_ssim(sources: Sequence[torch.Tensor] | torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """MEF-SSIM of a fused image given its source exposures (Ma et al. 2015, multi-scale).

    Convention (matches the MATLAB code to 1e-4): every image is quantised to uint8, converted
    with MATLAB ``rgb2gray`` and rounded; 11x11 windows (box for the patch statistics, Gaussian
    sigma 1.5 for the comparison), K = 0.03; 3 scales with weights [0.0448, 0.2856, 0.3001]
    normalised; float64. Higher is better; 1 is the maximum.

    Args:
        sources: the exposures, a sequence of (B, 3, H, W) / (3, H, W) tensors or one
            (B, K, 3, H, W) tensor, RGB in [0, 1]; at least two.
        fused: (B, 3, H, W) or (3, H, W) RGB in [0, 1], the same size as the sources. Sources
            with batch 1 are shared by every fused image of the batch (several methods scored
            against one bracket cost little more than one).

    Returns:
        (B,) float64 MEF-SSIM.

    Raises:
        InputError: fewer than two sources, or sizes that differ.
    """
    if isinstance(sources, torch.Tensor):
        if sources.ndim == 4:
            sources = sources.unsqueeze(0)
        if sources.ndim != 5:
            raise InputError(f"sources: expected (B, K, 3, H, W), got {tuple(sources.shape)}")
        sources = list(sources.unbind(1))
    srcs = [as_batch(s, f"source {i + 1}") for i, s in enumerate(sources)]
    if len(srcs) < 2:
        raise InputError(f"MEF-SSIM needs at least two source exposures, got {len(srcs)}")
    f = as_batch(fused, "fused")
    for i, s in enumerate(srcs):
        if s.shape[-2:] != f.shape[-2:] or s.shape[0] not in (1, f.shape[0]):
            raise InputError(
                f"the fused image ({f.shape[-1]}x{f.shape[-2]}) and source {i + 1} "
                f"({s.shape[-1]}x{s.shape[-2]}) must have the same size"
            )
    seq = torch.cat([matlab_gray_uint8(s) for s in srcs], dim=1)
    return mef_ssim_gray(seq, matlab_gray_uint8(f))


class MEFSSIM(nn.Module):
    """Module wrapper of :func:`mef_ssim`: ``forward(sources, fused) -> (B,)``."""

    def forward(self, sources: Sequence[torch.Tensor] | torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        return mef_ssim(sources, fused)
