"""Joint transforms for (under, over, ref) triples: the same crop, flip and rotation for all.

Public API:

- :func:`random_crop_box` — a random ``size`` x ``size`` window ``(top, left)``.
- :func:`crop` — cut the same window from several (H, W, C) arrays.
- :func:`augment` — the same random horizontal flip, vertical flip and 90° rotation for all.
- :func:`to_tensor` — (H, W, 3) uint8 or float array -> float32 Tensor (3, H, W) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from crmef.errors import InputError


def random_crop_box(rng: np.random.Generator, h: int, w: int, size: int) -> tuple[int, int]:
    """Top-left corner of a uniformly random ``size`` x ``size`` window in an ``h`` x ``w`` image.

    Raises:
        InputError: the image is smaller than the window.
    """
    if h < size or w < size:
        raise InputError(f"image {w}x{h} is smaller than the crop {size}x{size}")
    return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))


def crop(arrays: Sequence[np.ndarray], top: int, left: int, size: int) -> list[np.ndarray]:
    """The same ``size`` x ``size`` window of every (H, W, C) array."""
    return [a[top : top + size, left : left + size] for a in arrays]


def augment(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Apply one random flip/rotation (8 dihedral cases) identically to every (H, W, C) array."""
    hflip, vflip, k = bool(rng.integers(2)), bool(rng.integers(2)), int(rng.integers(4))
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        out.append(np.rot90(a, k) if k else a)
    return out


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 (scaled by 1/255) or float array -> float32 Tensor (3, H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    return t.to(torch.float32)
