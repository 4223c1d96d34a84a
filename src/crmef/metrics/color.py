"""Shared helpers for the metrics: input validation, uint8 quantisation, MATLAB grey, windows.

Every metric in :mod:`crmef.metrics` takes images as torch tensors of shape (B, 3, H, W) or
(3, H, W), RGB, float values in [0, 1], and returns one value per image, shape (B,).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from crmef.errors import InputError

# First row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]): MATLAB's rgb2gray weights.
MATLAB_GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def as_batch(x: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate an RGB image tensor and return it as (B, 3, H, W).

    Args:
        x: (B, 3, H, W) or (3, H, W) tensor, RGB in [0, 1].
        name: what to call the tensor in error messages.

    Raises:
        InputError: wrong rank, not 3 channels, or not a floating-point tensor.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"{name}: expected shape (B, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a float tensor in [0, 1], got dtype {x.dtype}")
    return x


def check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("img", "ref")) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two images that are compared pixel by pixel; returns both as (B, 3, H, W).

    Raises:
        InputError: the shapes differ (the message gives both sizes as WxH).
    """
    a, b = as_batch(a, names[0]), as_batch(b, names[1])
    if a.shape != b.shape:
        raise InputError(
            f"{names[0]} and {names[1]} must have the same size, got "
            f"{a.shape[-1]}x{a.shape[-2]} (batch {a.shape[0]}) and {b.shape[-1]}x{b.shape[-2]} (batch {b.shape[0]})"
        )
    return a, b


def to_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """Quantise [0, 1] values to the integer levels 0..255 (float64), as an 8-bit file stores them.

    Rounds half away from zero (MATLAB's ``uint8``), after clipping to [0, 1].
    """
    return torch.floor(x.double().clamp(0.0, 1.0) * 255.0 + 0.5)


def matlab_gray_uint8(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rgb2gray`` of the uint8 image, rounded to uint8 levels.

    Args:
        x: (B, 3, H, W) RGB in [0, 1].

    Returns:
        (B, 1, H, W) float64 grey levels in 0..255 (integers).
    """
    q = to_uint8_levels(x)
    w = torch.tensor(MATLAB_GRAY, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return torch.floor((q * w).sum(dim=1, keepdim=True) + 0.5).clamp(0, 255)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1-D factor of MATLAB ``fspecial('gaussian', size, sigma)``: a (size,) tensor summing to 1.

    The 2-D window is its outer product with itself (the Gaussian is separable).
    """
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(r**2) / (2.0 * sigma**2))
    return g / g.sum()


def box_window(size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1-D factor of the averaging window MATLAB ``ones(size) / size^2``: a (size,) tensor."""
    return torch.full((size,), 1.0 / size, dtype=dtype)


def filter_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """MATLAB ``filter2(w * w', x, 'valid')`` for every channel of x, computed separably.

    Args:
        x: (B, C, H, W).
        window: (k,) 1-D factor of a separable, symmetric 2-D window.

    Returns:
        (B, C, H - k + 1, W - k + 1).
    """
    c, k = x.shape[1], window.numel()
    w = window.to(dtype=x.dtype, device=x.device)
    x = F.conv2d(x, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def min_side(x: torch.Tensor) -> int:
    """The shorter side of an image batch (B, C, H, W)."""
    return int(min(x.shape[-2:]))


def require_min_size(x: torch.Tensor, size: int, what: str) -> None:
    """Raise :class:`InputError` when the image is smaller than ``size`` pixels on a side."""
    if min_side(x) < size:
        raise InputError(
            f"{what} needs images of at least {size}x{size} pixels, got {x.shape[-1]}x{x.shape[-2]}"
        )


__all__ = [
    "MATLAB_GRAY",
    "as_batch",
    "box_window",
    "check_pair",
    "filter_valid",
    "gaussian_window",
    "matlab_gray_uint8",
    "require_min_size",
    "to_uint8_levels",
]
