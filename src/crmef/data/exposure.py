"""Exposure order of the frames of one scene, and the (under, over) pair to fuse.

Public API (used by ``crmef fuse`` on users' files and by the datasets):

- :class:`FrameInfo` — one frame: ``path``, ``brightness`` (robust luma statistic in [0, 1]),
  ``exposure`` (EXIF exposure value ``time * ISO / f_number**2`` or ``None``), ``width``,
  ``height`` (after EXIF orientation) and the fractions of nearly black / nearly white pixels.
- :func:`frame_info` — measure one file (fast: EXIF and size from the header with Pillow,
  brightness from a 1/4-scale JPEG decode, ``cv2.IMREAD_REDUCED_COLOR_4``).
- :func:`order_frames` — measure files and sort them darkest to brightest: by EXIF exposure when
  every frame has one (and they differ), otherwise by brightness.
- :func:`select_pair` — the darkest and brightest *usable* frames (frames that are nearly all
  black or nearly all white are dropped; the threshold is configurable).
- :func:`select_pairs` — every usable pair whose exposure gap is at least ``min_stops`` stops
  (the "arbitrary exposure ratio" experiment).
- :func:`stops_between` — the exposure gap between two frames in stops (EXIF when available,
  else estimated from the brightness through the sRGB transfer curve).

The brightness statistic is the mean of Rec.601 luma after trimming the darkest and brightest
``TRIM`` fraction of pixels, computed from a 256-bin histogram of the reduced decode.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from crmef.errors import InputError

TRIM = 0.02
"""Fraction of pixels trimmed at each end of the luma histogram for :attr:`FrameInfo.brightness`."""
BLACK_LEVEL = 8
"""8-bit luma at or below which a pixel counts as nearly black."""
WHITE_LEVEL = 247
"""8-bit luma at or above which a pixel counts as nearly white."""
DEFAULT_CLIP_FRACTION = 0.95
"""A frame whose nearly-black (or nearly-white) pixel fraction reaches this is not usable."""

_EXIF_IFD = 0x8769
_EXPOSURE_TIME = 0x829A
_F_NUMBER = 0x829D
_ISO = 0x8827
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class FrameInfo:
    """One frame of a bracket and its exposure measurements.

    Attributes:
        path: the image file.
        brightness: trimmed-mean luma in [0, 1] (robust to a few clipped or black pixels).
        exposure: EXIF ``exposure_time * ISO / f_number**2`` (ISO 100 and f/1 assumed when only
            the exposure time is recorded), or ``None`` without EXIF exposure time.
        width: image width after EXIF orientation.
        height: image height after EXIF orientation.
        dark_fraction: fraction of pixels with luma <= :data:`BLACK_LEVEL`.
        bright_fraction: fraction of pixels with luma >= :data:`WHITE_LEVEL`.
    """

    path: Path
    brightness: float
    exposure: float | None
    width: int
    height: int
    dark_fraction: float
    bright_fraction: float

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return (self.width, self.height)

    def usable(self, clip_fraction: float = DEFAULT_CLIP_FRACTION) -> bool:
        """False when the frame is nearly all black or nearly all white."""
        return self.dark_fraction < clip_fraction and self.bright_fraction < clip_fraction


def _exif(path: Path) -> tuple[float | None, int, int]:
    """Header-only read: (exposure value or None, width, height) after EXIF orientation."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            exif = im.getexif()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc
    if exif.get(_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
    sub = exif.get_ifd(_EXIF_IFD) if exif else {}
    time = sub.get(_EXPOSURE_TIME)
    if time is None or float(time) <= 0:
        return None, width, height
    fnum = sub.get(_F_NUMBER)
    iso = sub.get(_ISO)
    if isinstance(iso, tuple):
        iso = iso[0] if iso else None
    f = float(fnum) if fnum and float(fnum) > 0 else 1.0
    s = float(iso) if iso and float(iso) > 0 else 100.0
    return float(time) * s / (f * f), width, height


def luma_histogram(path: str | os.PathLike[str]) -> np.ndarray:
    """256-bin histogram of Rec.601 luma from a reduced (1/4 scale for JPEG) decode.

    Returns:
        float64 array (256,) of pixel counts.

    Raises:
        InputError: the file cannot be decoded.
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_4) if data.size else None
    if img is None:
        raise InputError(f"{path}: not a readable image (corrupt or unsupported format)")
    return np.bincount(img.ravel(), minlength=256).astype(np.float64)


def trimmed_mean(hist: np.ndarray, trim: float = TRIM) -> float:
    """Mean of a 256-bin histogram after dropping ``trim`` of the mass at each end, in [0, 1]."""
    total = hist.sum()
    lo, hi = trim * total, (1.0 - trim) * total
    cum = np.cumsum(hist)
    prev = cum - hist
    # Portion of each bin that lies inside [lo, hi] of the cumulative mass.
    kept = np.clip(np.minimum(cum, hi) - np.maximum(prev, lo), 0.0, None)
    return float((kept * np.arange(256)).sum() / max(kept.sum(), 1e-12) / 255.0)


def frame_info(path: str | os.PathLike[str]) -> FrameInfo:
    """Measure one frame (EXIF exposure, size, brightness, clipped fractions).

    Raises:
        InputError: missing or unreadable file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    exposure, width, height = _exif(path)
    hist = luma_histogram(path)
    total = hist.sum()
    return FrameInfo(
        path=path,
        brightness=trimmed_mean(hist),
        exposure=exposure,
        width=width,
        height=height,
        dark_fraction=float(hist[: BLACK_LEVEL + 1].sum() / total),
        bright_fraction=float(hist[WHITE_LEVEL:].sum() / total),
    )


def sort_frames(frames: Iterable[FrameInfo]) -> list[FrameInfo]:
    """Sort measured frames darkest to brightest (EXIF exposure if all have distinct-ish ones)."""
    frames = list(frames)
    exposures = [f.exposure for f in frames]
    if frames and all(e is not None for e in exposures) and len(set(exposures)) > 1:
        return sorted(frames, key=lambda f: (f.exposure, f.brightness, f.path.name))
    return sorted(frames, key=lambda f: (f.brightness, f.path.name))


def order_frames(paths: Iterable[str | os.PathLike[str]]) -> list[FrameInfo]:
    """Measure image files and return them sorted darkest to brightest.

    EXIF exposure (``time * ISO / f**2``) decides when every frame has one and they are not all
    equal; otherwise the trimmed-mean brightness does.

    Raises:
        InputError: a file is missing or unreadable (use :func:`frame_info` per file to skip).
    """
    return sort_frames(frame_info(p) for p in paths)


def _srgb_to_linear(v: float) -> float:
    v = min(max(v, 1e-4), 1.0)
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def stops_between(a: FrameInfo, b: FrameInfo) -> float:
    """Exposure gap ``b`` over ``a`` in stops (EV); positive when ``b`` is brighter.

    Exact from EXIF when both frames have it; otherwise an estimate from the brightness, taken
    as sRGB-encoded and linearised (it underestimates gaps of frames with many clipped pixels).
    """
    if a.exposure is not None and b.exposure is not None:
        return math.log2(b.exposure / a.exposure)
    return math.log2(_srgb_to_linear(b.brightness) / _srgb_to_linear(a.brightness))


def usable_frames(frames: Sequence[FrameInfo], clip_fraction: float = DEFAULT_CLIP_FRACTION) -> list[FrameInfo]:
    """The frames that are neither nearly all black nor nearly all white (order kept)."""
    if not 0.0 < clip_fraction <= 1.0:
        raise InputError(f"clip_fraction must be in (0, 1], got {clip_fraction}")
    return [f for f in frames if f.usable(clip_fraction)]


def select_pair(
    frames: Sequence[FrameInfo], clip_fraction: float = DEFAULT_CLIP_FRACTION
) -> tuple[FrameInfo, FrameInfo]:
    """The darkest and brightest usable frames of an ordered scene.

    Args:
        frames: frames sorted darkest to brightest (see :func:`order_frames`).
        clip_fraction: a frame with at least this fraction of nearly black (or nearly white)
            pixels is dropped.

    Returns:
        ``(under, over)``.

    Raises:
        InputError: fewer than two usable frames.
    """
    good = usable_frames(frames, clip_fraction)
    if len(good) < 2:
        names = ", ".join(f.path.name for f in frames) or "no frames"
        raise InputError(
            f"need two usable frames (not nearly all black/white at clip_fraction={clip_fraction}), "
            f"got {len(good)} of {len(frames)}: {names}"
        )
    return good[0], good[-1]


def select_pairs(
    frames: Sequence[FrameInfo], min_stops: float, clip_fraction: float = DEFAULT_CLIP_FRACTION
) -> list[tuple[FrameInfo, FrameInfo]]:
    """Every usable ``(under, over)`` pair whose exposure gap is at least ``min_stops`` stops.

    Args:
        frames: frames sorted darkest to brightest.
        min_stops: minimum gap in EV (see :func:`stops_between`).
        clip_fraction: see :func:`select_pair`.

    Returns:
        Pairs ordered by under frame then over frame; empty when no pair has a large enough gap.
    """
    good = usable_frames(frames, clip_fraction)
    return [
        (a, b)
        for i, a in enumerate(good)
        for b in good[i + 1 :]
        if stops_between(a, b) >= min_stops
    ]
