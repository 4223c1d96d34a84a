"""FSIM and FSIMc (Zhang, Zhang, Mou and Zhang, TIP 2011), feature similarity.

Follows the authors' MATLAB ``FeatureSIM.m`` as ported by piq (``piq.fsim``), whose values are
the reference here: the image is scaled to 0..255 and average-pooled by
``F = max(1, round(min(H, W) / 256))``; luminance Y and chroma I, Q come from YIQ; phase
congruency (Kovesi's ``phasecong2``: 4 scales, 4 orientations, log-Gabor filters, noise
compensation) and Scharr gradient magnitude are compared with T1 = 0.85, T2 = 160; FSIMc also
compares I and Q (T3 = T4 = 200, lambda = 0.03). Everything runs in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from crmef.metrics.color import check_pair

# RGB -> YIQ rows (Y, I, Q), as in piq.
_YIQ = ((0.299, 0.587, 0.114), (0.5959, -0.2746, -0.3213), (0.2115, -0.5227, 0.3112))
_T1, _T2, _T3, _T4, _LAMBDA = 0.85, 160.0, 200.0, 200.0, 0.03


def _centered_grid(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Normalised frequency coordinates of an n-point FFT, zero at the centre (MATLAB style)."""
    if n % 2:
        return torch.arange(-(n - 1) / 2, n / 2, dtype=dtype) / (n - 1)
    return torch.arange(-n / 2, n / 2, dtype=dtype) / n


def _ifftshift2(x: torch.Tensor) -> torch.Tensor:
    """``numpy.fft.ifftshift`` over the last two dimensions."""
    return torch.roll(x, shifts=(-(x.shape[-2] // 2), -(x.shape[-1] // 2)), dims=(-2, -1))


def _log_gabor_bank(h: int, w: int, scales: int, orientations: int, min_length: float, mult: float,
                    sigma_f: float, delta_theta: float, dtype: torch.dtype) -> torch.Tensor:
    """Frequency-domain log-Gabor filters, zero frequency at the corner.

    Returns:
        (orientations, scales, h, w) real filters.
    """
    gx, gy = torch.meshgrid(_centered_grid(h, dtype), _centered_grid(w, dtype), indexing="ij")
    radius = _ifftshift2(torch.sqrt(gx**2 + gy**2))
    theta = _ifftshift2(torch.atan2(-gy, gx))
    radius[0, 0] = 1.0
    lowpass = _ifftshift2(1.0 / (1.0 + (torch.sqrt(gx**2 + gy**2) / 0.45) ** 30))
    radial = []
    for s in range(scales):
        f0 = 1.0 / (min_length * mult**s)
        g = torch.exp(-(torch.log(radius / f0) ** 2) / (2 * math.log(sigma_f) ** 2)) * lowpass
        g[0, 0] = 0.0
        radial.append(g)
    theta_sigma = math.pi / (orientations * delta_theta)
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)
    angular = []
    for o in range(orientations):
        angle = o * math.pi / orientations
        ds = sin_t * math.cos(angle) - cos_t * math.sin(angle)
        dc = cos_t * math.cos(angle) + sin_t * math.sin(angle)
        dtheta = torch.abs(torch.atan2(ds, dc))
        angular.append(torch.exp(-(dtheta**2) / (2 * theta_sigma**2)))
    return torch.stack(angular)[:, None] * torch.stack(radial)[None]


def phase_congruency(y: torch.Tensor, scales: int = 4, orientations: int = 4, min_length: float = 6,
                     mult: float = 2, sigma_f: float = 0.55, delta_theta: float = 1.2, k: float = 2.0) -> torch.Tensor:
    """Phase congruency map (Kovesi's PC_2 measure with noise compensation).

    Args:
        y: (B, 1, H, W) luminance (float64, 0..255).
        scales, orientations, min_length, mult, sigma_f, delta_theta, k: filter-bank and noise
            parameters of ``phasecong2`` (defaults as in FSIM).

    Returns:
        (B, 1, H, W) phase congruency in [0, 1].
    """
    b, _, h, w = y.shape
    filt = _log_gabor_bank(h, w, scales, orientations, min_length, mult, sigma_f, delta_theta, y.dtype).to(y.device)
    resp = torch.fft.ifft2(torch.fft.fft2(y)[:, :, None] * filt[None])  # (B, O, S, H, W) complex
    even, odd = resp.real, resp.imag
    amp = torch.abs(resp)
    sum_e, sum_o = even.sum(dim=2, keepdim=True), odd.sum(dim=2, keepdim=True)
    energy_len = torch.sqrt(sum_e**2 + sum_o**2) + torch.finfo(y.dtype).eps
    mean_e, mean_o = sum_e / energy_len, sum_o / energy_len
    energy = (even * mean_e + odd * mean_o - torch.abs(even * mean_o - odd * mean_e)).sum(dim=2)  # (B, O, H, W)

    # Noise: median of the squared smallest-scale response, scaled to the filters' energies.
    em_n = (filt[:, 0] ** 2).sum(dim=(-2, -1))  # (O,)
    median_e2n = torch.median((amp[:, :, 0] ** 2).flatten(2), dim=-1).values  # (B, O)
    noise_power = (-median_e2n / math.log(0.5)) / em_n
    spatial = torch.fft.ifft2(filt).real * math.sqrt(h * w)  # (O, S, H, W)
    sum_an2 = (spatial**2).sum(dim=(1, 2, 3))
    # Cross terms between each scale and every larger one (as in the reference port).
    sum_ai_aj = sum((spatial[:, s : s + 1] * spatial[:, s + 1 :]).sum(dim=(1, 2, 3)) for s in range(scales - 1))
    noise_energy2 = 2 * noise_power * sum_an2 + 4 * noise_power * sum_ai_aj
    tau = torch.sqrt(noise_energy2 / 2)
    threshold = (tau * math.sqrt(math.pi / 2) + k * torch.sqrt((2 - math.pi / 2) * tau**2)) / 1.7
    energy = torch.clamp(energy - threshold[..., None, None], min=0.0)
    eps = torch.finfo(y.dtype).eps
    return ((energy.sum(dim=1) + eps) / (amp.sum(dim=(1, 2)) + eps)).unsqueeze(1)


def _gradient_magnitude(y: torch.Tensor) -> torch.Tensor:
    """Scharr gradient magnitude, zero padding, (B, 1, H, W) -> (B, 1, H, W)."""
    kx = torch.tensor([[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]], dtype=y.dtype, device=y.device) / 16
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)
    g = F.conv2d(y, kernels, padding=1)
    return torch.sqrt((g**2).sum(dim=1, keepdim=True))


def _similarity(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    return (2 * a * b + c) / (a**2 + b**2 + c)


def fsim(img: torch.Tensor, ref: torch.Tensor, chromatic: bool = True) -> torch.Tensor:
    """Feature similarity index between an image and its reference.

    Convention: values scaled to 0..255 (no quantisation), average-pooled by
    ``max(1, round(min(H, W) / 256))``, YIQ colour space; FSIMc (``chromatic=True``, the
    default and the paper's number) matches ``piq.fsim(chromatic=True)``; ``chromatic=False``
    gives grey FSIM on the Y channel.

    Args:
        img: (B, 3, H, W) or (3, H, W) RGB in [0, 1].
        ref: same shape as ``img``.
        chromatic: FSIMc (True) or FSIM (False).

    Returns:
        (B,) float64, usually in [0, 1].
    """
    a, b = check_pair(img, ref)
    a, b = a.double() * 255.0, b.double() * 255.0
    pool = max(1, round(min(a.shape[-2:]) / 256))
    if pool > 1:
        a, b = F.avg_pool2d(a, pool), F.avg_pool2d(b, pool)
    m = torch.tensor(_YIQ, dtype=a.dtype, device=a.device)
    ya, yb = torch.einsum("ck,bkhw->bchw", m, a), torch.einsum("ck,bkhw->bchw", m, b)
    pc_a, pc_b = phase_congruency(ya[:, :1]), phase_congruency(yb[:, :1])
    pc_max = torch.maximum(pc_a, pc_b)
    score = (
        _similarity(_gradient_magnitude(ya[:, :1]), _gradient_magnitude(yb[:, :1]), _T2)
        * _similarity(pc_a, pc_b, _T1)
        * pc_max
    )
    if chromatic:
        chroma = _similarity(ya[:, 1:2], yb[:, 1:2], _T3) * _similarity(ya[:, 2:], yb[:, 2:], _T4)
        score = score * torch.abs(chroma) ** _LAMBDA
    return score.sum(dim=(1, 2, 3)) / pc_max.sum(dim=(1, 2, 3))


class FSIM(nn.Module):
    """Module wrapper of :func:`fsim`: ``forward(img, ref) -> (B,)``."""

    def __init__(self, chromatic: bool = True) -> None:
        super().__init__()
        self.chromatic = chromatic

    def forward(self, img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return fsim(img, ref, chromatic=self.chromatic)
