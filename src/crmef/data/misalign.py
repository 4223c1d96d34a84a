"""Misalignment synthesis: a hand-held under frame against a static over frame and reference.

Public API:

- :class:`MisalignConfig` — translation (±8 px), rotation (±2°), scale (±2 %), optional smooth
  local displacement (amplitude in px on a coarse random grid, bicubically upsampled).
- :func:`random_homography` — a 3x3 homography (rotation and scale about the image centre, then
  translation) drawn from a ``numpy.random.Generator``.
- :func:`max_border` — an upper bound on the invalid border the config can create.
- :func:`warp_under` — warp one image with a homography and optional displacement field.
- :func:`misalign_triple` — warp the under frame only (the reference stays aligned with the over
  frame) and crop the invalid border from all three.

Warping convention: ``warped(p) = image(H^-1 p + d(p))``, i.e. ``cv2.warpPerspective(image, H)``
followed by sampling at the displacement field ``d`` (pixels, (H, W, 2) as (dx, dy)). So the
content at ``p`` in the original appears at ``H p`` in the warped frame; warping back with
``H^-1`` realigns it (when ``d = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from crmef.errors import InputError


@dataclass
class MisalignConfig:
    """Ranges of the random misalignment (each drawn uniformly in ±value).

    Attributes:
        max_translation: pixels, per axis.
        max_rotation_deg: degrees, about the image centre.
        max_scale: relative scale change (0.02 = ±2 %).
        local_amplitude: max smooth local displacement in pixels (0 disables it).
        local_grid: the coarse grid of random displacements is ``local_grid`` x ``local_grid``.
    """

    max_translation: float = 8.0
    max_rotation_deg: float = 2.0
    max_scale: float = 0.02
    local_amplitude: float = 0.0
    local_grid: int = 4

    def __post_init__(self) -> None:
        for name in ("max_translation", "max_rotation_deg", "max_scale", "local_amplitude"):
            if getattr(self, name) < 0:
                raise InputError(f"MisalignConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.local_grid < 2:
            raise InputError(f"MisalignConfig.local_grid must be >= 2, got {self.local_grid}")


def random_homography(rng: np.random.Generator, h: int, w: int, cfg: MisalignConfig | None = None) -> np.ndarray:
    """A random similarity-type homography for an ``h`` x ``w`` image.

    Returns:
        float64 (3, 3): ``T(t) @ C @ R(theta) S(s) @ C^-1`` (C moves the origin to the centre).
    """
    cfg = cfg or MisalignConfig()
    theta = math.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    scale = 1.0 + rng.uniform(-cfg.max_scale, cfg.max_scale)
    tx, ty = rng.uniform(-cfg.max_translation, cfg.max_translation, size=2)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    c, s = scale * math.cos(theta), scale * math.sin(theta)
    return np.array(
        [
            [c, -s, cx - c * cx + s * cy + tx],
            [s, c, cy - s * cx - c * cy + ty],
            [0.0, 0.0, 1.0],
        ]
    )


def max_border(h: int, w: int, cfg: MisalignConfig) -> int:
    """Pixels that may be invalid at each side after the worst-case warp (a safe bound)."""
    half_diag = 0.5 * math.hypot(h, w)
    theta = math.radians(cfg.max_rotation_deg)
    shift = cfg.max_translation + half_diag * (cfg.max_scale + 2 * math.sin(theta / 2) * (1 + cfg.max_scale))
    return int(math.ceil(shift + cfg.local_amplitude + 1.0))


def random_displacement(rng: np.random.Generator, h: int, w: int, cfg: MisalignConfig) -> np.ndarray | None:
    """A smooth random field (H, W, 2) float32 of (dx, dy) with |d| <= ``local_amplitude``."""
    if cfg.local_amplitude <= 0:
        return None
    coarse = rng.uniform(-1.0, 1.0, size=(cfg.local_grid, cfg.local_grid, 2)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    peak = float(np.abs(field).max()) or 1.0
    return field * np.float32(cfg.local_amplitude / max(peak, 1.0))


def warp_under(image: np.ndarray, homography: np.ndarray, displacement: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Warp an image; returns ``(warped, valid)``.

    Args:
        image: (H, W, C) or (H, W) array (float32 or uint8).
        homography: (3, 3) forward transform (content at p moves to H p).
        displacement: optional (H, W, 2) field added to the sampling positions.

    Returns:
        warped image (same shape and dtype) and a bool (H, W) mask of pixels sampled from
        inside the source.
    """
    h, w = image.shape[:2]
    flags = cv2.INTER_LINEAR
    warped = cv2.warpPerspective(image, homography, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)
    valid = cv2.warpPerspective(np.ones((h, w), np.uint8), homography, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    if displacement is not None:
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = gx + displacement[..., 0], gy + displacement[..., 1]
        warped = cv2.remap(warped, mx, my, flags, borderMode=cv2.BORDER_REFLECT)
        valid = cv2.remap(valid, mx, my, cv2.INTER_NEAREST, borderValue=0)
    # Erode by one pixel: bilinear samples at the edge mix in reflected pixels.
    valid = cv2.erode(valid, np.ones((3, 3), np.uint8), borderValue=0)
    return warped, valid.astype(bool)


def valid_margin(valid: np.ndarray) -> int:
    """Smallest symmetric margin ``m`` such that ``valid[m:-m, m:-m]`` is all True."""
    h, w = valid.shape
    lo, hi = 0, min(h, w) // 2
    while lo < hi:
        mid = (lo + hi) // 2
        if valid[mid : h - mid, mid : w - mid].all():
            hi = mid
        else:
            lo = mid + 1
    return lo


def misalign_triple(
    under: np.ndarray,
    over: np.ndarray,
    ref: np.ndarray,
    rng: np.random.Generator,
    cfg: MisalignConfig | None = None,
    out_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, object]]:
    """Misalign the under frame; crop the invalid border from all three.

    Args:
        under, over, ref: (H, W, 3) arrays of one size.
        rng: randomness source.
        cfg: misalignment ranges.
        out_size: ``(h, w)`` centre crop to return (must fit inside the valid region); by default
            the largest centred crop with no invalid pixel.

    Returns:
        ``(under, over, ref, info)`` cropped; ``info`` holds ``homography`` (3x3, in the
        coordinates of the *uncropped* frames), ``displacement`` (or None) and ``margin``
        (pixels cropped on each side, top/left).

    Raises:
        InputError: shapes differ, or the valid region is smaller than ``out_size``.
    """
    cfg = cfg or MisalignConfig()
    if not under.shape == over.shape == ref.shape:
        raise InputError(f"under, over and ref must have one shape, got {under.shape}, {over.shape}, {ref.shape}")
    h, w = under.shape[:2]
    hom = random_homography(rng, h, w, cfg)
    disp = random_displacement(rng, h, w, cfg)
    warped, valid = warp_under(under, hom, disp)
    margin = valid_margin(valid)
    if out_size is None:
        top, left, ch, cw = margin, margin, h - 2 * margin, w - 2 * margin
    else:
        ch, cw = out_size
        top, left = (h - ch) // 2, (w - cw) // 2
        if top < margin or left < margin:
            raise InputError(f"misaligned valid region {w - 2 * margin}x{h - 2 * margin} is smaller than the crop {cw}x{ch}")
    if ch <= 0 or cw <= 0:
        raise InputError(f"image {w}x{h} is too small for this misalignment (invalid border {margin} px)")
    sl = (slice(top, top + ch), slice(left, left + cw))
    info = {"homography": hom, "displacement": disp, "margin": (top, left)}
    return warped[sl], over[sl], ref[sl], info
