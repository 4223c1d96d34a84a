"""The default fusion engine: N frames in, one image out, colour from the sources by construction.

This module is what ``crmef fuse`` runs. It imports numpy and OpenCV only (and onnxruntime for
the network), never torch: a whole ``crmef fuse`` costs what the fusion costs, not PyTorch's
2–3 s import. :mod:`crmef.nets.exposure` holds the same computation in torch for training; a
test keeps the two equal.

How one output pixel is made (``frames`` sorted dark to bright, RGB in [0, 1]):

0. **Gaps.** Consecutive frames more than ``max_gap`` stops apart get re-exposures of the darker
   one between them (:func:`fill_gaps`, :class:`Reexposed`): a pair is fused as the bracket it
   stands for. Re-exposures join the network's input and the coarse (tone) levels, never the
   detail levels or the colour mix.
1. **Work resolution.** Every frame is reduced to ``work_size`` pixels on its long side (area
   average). The exposure network (:class:`crmef.nets.exposure.ExposureNet`, exported to ONNX)
   sees the N reduced frames at once (shared weights per frame, a cross-frame mean for context)
   and returns per frame a tone logit map and one log2-gain for the scene. Cost: constant in the
   image size, linear in N.
2. **Weights.** Per level k of a full-depth Laplacian pyramid, frame i weighs
   ``s_i · G_k((|∇²g_i| + ε)^c)`` normalised over the frames (Mertens's contrast measure on the
   grey ``g_i``, so fine structure comes from the frame that holds it). ``s_i`` is a smooth map
   (softmax over frames, Gaussian blur, bilinear up-sampling): for the finest ``detail_levels``
   levels the well-exposedness prior ``-(g - 0.5)² / (2σ²)`` (structure by construction), for
   the coarser levels the network's tone logits (tone, down to the global average). The tone
   levels measure the contrast on the grey at the work resolution, where the network sees the
   frames (:func:`tone_contrast`): the tone does not move with pixel-level sharpness or noise (a
   resampled hand-held frame), nor with the image size.
3. **Structure.** The pyramid blend of the frames' grey images (MATLAB ``rgb2gray``, as
   MEF-SSIM sees them): the output's grey ``Y``. A weighted mean of frames whose details differ
   in strength weakens them, so on the levels :data:`REPLETE_LEVELS` each band is
   scaled back up towards the local energy of the strongest real frame's band there
   (:func:`replete`: by at most 2×, never down, never past black or white).
4. **Colour.** Each frame brings its unit-luminance colour ``lin(I_i) / lin(g_i)`` (its
   chromaticity, whatever its exposure), weighted by its smooth weight × its colour confidence
   (:func:`colour_confidence`: none where it is near black or a channel is clipped):
   ``out = lin(Y) · 2^gain · Σ a_i lin(I_i)/lin(g_i) / Σ a_i``. A mix of ``lin(I_i)`` itself
   would be dominated by the brightest frame (2^stops more light), the palest; this one keeps
   the colour of the frame the weights choose. Where that colour at the target luminance
   passes white, it moves towards the luminance-weighted mix ``Σ s_i lin(I_i) / Σ s_i lin(g_i)``
   (the palest colour the sources hold there) just enough to fit, then any channel still above
   1 scales the pixel down whole. Every output pixel is a positive multiple of a positive mix of
   its sources in linear light, so its chromaticity lies in the convex hull of theirs: the
   engine cannot invent colour. One departure, towards grey only: where the target luminance
   lies above every frame that holds the place unclipped (a colour lifted past what the camera
   recorded), the colour pales as the camera pales a brighter surface, by ``S(target) / S(held)``
   (:func:`desaturate_beyond`), ``S`` the bracket's saturation profile (:func:`camera_profile`:
   measured on the bracket's own frames, the typical camera's where they cannot tell): a dark
   frame's cream wall lifted to a bright level comes out cream, not peach. The repletion
   brightens a pixel only up to the grey at which its colour reaches white (past it the added
   detail would be paled or clipped). Last, each
   pixel is scaled so that the grey of its sRGB codes is the blended grey (:func:`match_grey`):
   the structure reaches the output as blended.

Frames are read as decoded (uint8 / uint16 codes, or float32) band by band of rows; no float
copy of a whole frame is made, and one frame's pyramid is alive at a time (:func:`blend`): a
12 MP pair needs under 0.5 GB, whatever N about eight full-resolution float32 maps.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from crmef.data.exposure import BLACK_LEVEL, DEFAULT_CLIP_FRACTION, WHITE_LEVEL
from crmef.errors import InputError

GRAY = np.array([0.2989, 0.5870, 0.1140], np.float32)
"""MATLAB ``rgb2gray`` weights (R, G, B): the grey MEF-SSIM and the blend use."""
MIN_SIDE = 16
"""Shortest image side (pixels) the engine accepts."""


@dataclass(frozen=True)
class BlendConfig:
    """The engine's fixed (not learned) settings; a model card stores them beside the weights.

    Attributes:
        work_size: long side (px) of the reduced frames the exposure network sees.
        sigma: width of the well-exposedness prior on grey in [0, 1].
        smooth: Gaussian blur (px at work resolution) of the per-frame weights.
        contrast: exponent ``c`` of the contrast term in the pyramid weights.
        max_gain: bound (stops) of the network's log2-gain.
        levels_top: the pyramid stops when its coarsest short side is at most this (1: full depth).
        detail_levels: the finest levels of the pyramid (detail up to ~2^levels px) take their
            weights from the well-exposedness prior alone; the network decides the coarser
            levels (tone) and the colour mix. 0: the network's weights everywhere.
        max_gap: largest exposure step (stops) between consecutive frames; a wider gap is filled
            with re-exposures of its darker frame (:func:`fill_gaps`), so a two-frame bracket is
            fused as the full bracket it stands for. 0: never.
    """

    work_size: int = 256
    sigma: float = 0.15
    smooth: float = 2.0
    contrast: float = 1.0
    max_gain: float = 1.0
    levels_top: int = 1
    detail_levels: int = 5
    max_gap: float = 2.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def pyramid_levels(h: int, w: int, top: int) -> int:
    """Number of pyramid reductions so that the coarsest short side is ≤ ``top`` (at least 1).

    With ``top = 1`` the pyramid has full depth (its coarsest level is 1–2 px): the blend's
    global tone is decided on the whole image, as in Mertens et al.'s exposure fusion (an 8 px
    top costs 3 dB against full-bracket references on validation pairs).
    """
    return max(1, math.ceil(math.log2(max(min(h, w), 2) / top)))


def work_shape(h: int, w: int, work_size: int) -> tuple[int, int]:
    """(h, w) of the reduced frames: long side ``work_size`` (never larger than the input), even."""
    s = min(1.0, work_size / max(h, w))
    return max(8, 2 * round(h * s / 2)), max(8, 2 * round(w * s / 2))


# ------------------------------------------------------------------------------- colour

_T = np.arange(65536, dtype=np.float64) / 65535
_TO_LIN = np.where(_T <= 0.04045, _T / 12.92, ((_T + 0.055) / 1.055) ** 2.4).astype(np.float32)
_LIN8 = _TO_LIN[np.arange(256) * 257].copy()
"""Linear value of each 8-bit sRGB code (``cv2.LUT`` table)."""


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding of sRGB values in [0, 1] (clipped), float32, same shape.

    ``cv2.pow`` on the power branch (vectorised; a 16-bit table look-up costs 10× more per
    value), the linear toe below 0.04045 exact.
    """
    x = np.clip(x, 0.0, 1.0, dtype=np.float32)
    t = x + np.float32(0.055)
    t *= np.float32(1 / 1.055)
    t = cv2.pow(t.reshape(-1, 1), 2.4).reshape(x.shape)
    np.multiply(x, np.float32(1 / 12.92), out=t, where=x <= 0.04045)
    return t


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encoding of linear values in [0, 1] (clipped), float32, same shape
    (``cv2.pow`` on the power branch, the linear toe below 0.0031308 exact)."""
    return _encode(np.clip(x, 0.0, 1.0, dtype=np.float32))


_TOE_CODE = 0.04045
"""Largest sRGB code of the curve's linear toe (the linear value 0.0031308)."""


def _encode(x: np.ndarray) -> np.ndarray:
    """:func:`linear_to_srgb` of float32 values already in [0, 1] (no clipped copy)."""
    t = cv2.pow(x.reshape(-1, 1), 1 / 2.4).reshape(x.shape)
    t *= np.float32(1.055)
    t -= np.float32(0.055)
    np.multiply(x, np.float32(12.92), out=t, where=x <= 0.0031308)
    return t


def small_grey(small: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of an (N, 3, h, w) float32 stack -> (N, h, w) float32.

    Three multiply-adds, not ``np.tensordot``: a BLAS call starts OpenBLAS's threads, which then
    spin beside OpenCV's (and beside the other workers of a batch), a third slower on 2 cores.
    """
    g = small[:, 0] * GRAY[0]
    g += small[:, 1] * GRAY[1]
    g += small[:, 2] * GRAY[2]
    return g


def gray(img: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of (H, W, 3) RGB float32 -> (H, W) float32 (no rounding)."""
    if img.ndim == 2:
        return img
    out = cv2.transform(np.ascontiguousarray(img, dtype=np.float32), GRAY[None, :])
    return out if out.ndim == 2 else out[..., 0]


# ------------------------------------------------------------------------------- sources
# Frames reach the engine as decoded (uint8 / uint16 sRGB codes) or as float32 in [0, 1]. Every
# full-resolution pass reads them in bands of rows: no float copy of a whole frame is made, so
# memory holds the codes, a few single-channel maps and one band's temporaries.

_BAND_BYTES = 1 << 21
"""Size of one band of float32 RGB rows (2 MiB: stays in cache, allocated once and reused)."""


def code_peak(frame: np.ndarray) -> float:
    """The value of white in ``frame``: 255 (uint8), 65535 (uint16) or 1 (float32).

    Raises:
        InputError: any other dtype.
    """
    if frame.dtype == np.uint8:
        return 255.0
    if frame.dtype == np.uint16:
        return 65535.0
    if frame.dtype == np.float32:
        return 1.0
    raise InputError(f"frames must be uint8, uint16 or float32 arrays, got {frame.dtype}")


def bands(h: int, w: int) -> list[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` that cover an (h, w) image in bands of about :data:`_BAND_BYTES`
    of float32 RGB."""
    step = max(8, _BAND_BYTES // (12 * w))
    return [(r, min(h, r + step)) for r in range(0, h, step)]


def for_bands(fn: Callable[[int, int], None], h: int, w: int) -> None:
    """``fn(r0, r1)`` for every band of an (h, w) image (:func:`bands`), on as many threads as
    OpenCV may use (``cv2.getNumThreads()``, at most 4; a batch worker sets 1): numpy and
    OpenCV release the GIL, and each band writes only its own rows."""
    jobs = bands(h, w)
    threads = min(4, max(1, cv2.getNumThreads()), len(jobs))
    if threads == 1:
        for r0, r1 in jobs:
            fn(r0, r1)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(fn, r0, r1) for r0, r1 in jobs]:
            fut.result()


@dataclass(frozen=True, eq=False)
class Reexposed:
    """A virtual frame: ``frame`` re-exposed by ``stops`` (its linear light × 2^stops, a pixel
    whose largest channel would pass 1 scaled down whole, hue kept), read like a frame.

    Its grey enters the coarse pyramid levels as any frame's; it brings no colour (the colour
    mix of :func:`blend` takes the real frames only).
    """

    frame: np.ndarray
    stops: float

    @property
    def shape(self) -> tuple[int, ...]:
        return self.frame.shape


Frame = np.ndarray | Reexposed
"""What the engine fuses: a frame's array, or a re-exposure of one."""


TRUST_FROM, TRUST_RAMP = 0.04, 0.08
"""A frame's colour is trusted from its grey ``TRUST_FROM`` (codes <= 10 of 255: noise and the
sensor's cast) up, fully from ``TRUST_FROM + TRUST_RAMP``."""
CLIP_AT, CLIP_RAMP = 0.99, 0.10
"""... and distrusted as its largest channel nears white: none at ``CLIP_AT`` (a clipped channel
has lost the hue), full up to ``CLIP_AT - CLIP_RAMP``."""
COLOUR_FLOOR = 0.01
"""Confidence every frame keeps (where all are dark or clipped, the mix still has a colour)."""


def trust(grey: np.ndarray) -> np.ndarray:
    """The dark end of a frame's colour confidence, from its grey (float32 in [0, 1]): 0 at or
    below :data:`TRUST_FROM`, 1 from ``TRUST_FROM + TRUST_RAMP`` up, linear between."""
    t = grey - np.float32(TRUST_FROM)
    t *= np.float32(1 / TRUST_RAMP)
    return np.clip(t, 0.0, 1.0, out=t)


_UNCLIPPED16 = np.clip((CLIP_AT - _T) / CLIP_RAMP, 0, 1).astype(np.float32)
_UNCLIPPED8 = _UNCLIPPED16[np.arange(256) * 257].copy()
"""The clip ramp by 16- / 8-bit code (an 8-bit code k is the 16-bit code 257 k)."""


def top_code(band: np.ndarray) -> np.ndarray:
    """Largest channel of an (h, W, 3) band, (h, W), in the band's own dtype (codes stay codes)."""
    if band.dtype == np.float32:
        return cv2.reduce(np.ascontiguousarray(band).reshape(-1, 3), 1, cv2.REDUCE_MAX).reshape(band.shape[:2])
    c = cv2.split(band)
    return cv2.max(cv2.max(c[0], c[1]), c[2])


def colour_confidence(frame: np.ndarray, r0: int, r1: int, grey: np.ndarray) -> np.ndarray:
    """How far the colour of rows ``[r0, r1)`` of ``frame`` can be trusted, float32 (h, W) in
    [COLOUR_FLOOR, 1 + COLOUR_FLOOR]: :func:`trust` of its ``grey`` (those rows' sRGB grey) ×
    the clip ramp of its largest channel (from the codes where there are codes), + the floor."""
    band = frame[r0:r1]
    top = top_code(band)
    if band.dtype == np.uint8:
        unclipped = cv2.LUT(top, _UNCLIPPED8)
    elif band.dtype == np.uint16:
        unclipped = _UNCLIPPED16[top]
    else:
        unclipped = np.clip((np.float32(CLIP_AT) - top) * np.float32(1 / CLIP_RAMP), 0.0, 1.0)
    conf = trust(grey)
    conf *= unclipped
    conf += np.float32(COLOUR_FLOOR)
    return conf


def rgb_rows(frame: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Rows ``[r0, r1)`` of a frame as float32 sRGB in [0, 1] (a view for float32 frames)."""
    band = frame[r0:r1]
    if band.dtype == np.float32:
        return band
    out = band.astype(np.float32)
    out *= np.float32(1.0 / code_peak(frame))
    return out


def grey_rows(frame: Frame, r0: int, r1: int) -> np.ndarray:
    """MATLAB ``rgb2gray`` of rows ``[r0, r1)`` of a frame, float32 (h, W) in [0, 1].

    Codes are weighed straight from their integers (one conversion, no scaled copy); a
    re-exposure is encoded from its linear light.
    """
    if isinstance(frame, Reexposed):  # its linear light is at most 1 (capped whole)
        return gray(_encode(linear_rows(frame, r0, r1)))
    band = frame[r0:r1]
    if band.dtype == np.float32:
        return gray(band)
    return gray(band.astype(np.float32)) * np.float32(1.0 / code_peak(frame))


def linear_rows(frame: Frame, r0: int, r1: int) -> np.ndarray:
    """Rows ``[r0, r1)`` of a frame in linear light, float32 (a table look-up for codes)."""
    if isinstance(frame, Reexposed):  # × 2^stops, a pixel whose largest channel passes 1 scaled down whole
        lin = linear_rows(frame.frame, r0, r1)
        lin *= reexposure_gain(frame.stops, peak_rows(frame.frame, r0, r1, lin))[..., None]
        return lin
    band = frame[r0:r1]
    if band.dtype == np.uint8:
        return cv2.LUT(band, _LIN8)
    if band.dtype == np.uint16:
        return _TO_LIN[band]
    return srgb_to_linear(band)


def peak_rows(frame: np.ndarray, r0: int, r1: int, lin: np.ndarray) -> np.ndarray:
    """Largest channel of rows ``[r0, r1)`` in linear light, float32 (h, W) (from the codes
    where there are codes: the curve is monotonic, and a max over 8/16-bit codes is cheap);
    ``lin`` is those rows' :func:`linear_rows`."""
    band = frame[r0:r1]
    if band.dtype == np.uint8:
        return cv2.LUT(top_code(band), _LIN8)
    if band.dtype == np.uint16:
        return _TO_LIN[top_code(band)]
    return top_code(lin)


def reexposure_gain(stops: float, peak: np.ndarray) -> np.ndarray:
    """``min(2^stops, 1 / peak)``: a re-exposure's gain per pixel, float32 (the largest channel
    of a pixel that would pass 1 lands on 1, its hue kept)."""
    return np.minimum(np.float32(2.0**stops), 1.0 / np.maximum(peak, 1e-6))


def grey_full(frame: Frame, out: np.ndarray | None = None) -> np.ndarray:
    """MATLAB ``rgb2gray`` of a whole frame, float32 (H, W) in [0, 1], computed band by band
    (into ``out`` when given)."""
    h, w = frame.shape[:2]
    if out is None:
        out = np.empty((h, w), np.float32)

    def rows(r0: int, r1: int) -> None:
        out[r0:r1] = grey_rows(frame, r0, r1)

    for_bands(rows, h, w)
    return out


def as_frame(frame: np.ndarray) -> np.ndarray:
    """A frame in a dtype the engine reads (uint8, uint16, float32; float64 becomes float32),
    (H, W, 3) RGB.

    Raises:
        InputError: not an (H, W, 3) array, or another dtype.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"a frame must be an (H, W, 3) RGB array, got shape {frame.shape}")
    if frame.dtype == np.float64:
        frame = frame.astype(np.float32)
    code_peak(frame)
    return frame


# ------------------------------------------------------------------------------- frames


def frame_means(frames: Sequence[np.ndarray]) -> tuple[list[float], list[bool]]:
    """Mean grey and usability of each frame, from one 64×64 reduction per frame.

    A frame is usable unless at least ``DEFAULT_CLIP_FRACTION`` of its grey is at or below
    ``BLACK_LEVEL`` or at or above ``WHITE_LEVEL`` (:mod:`crmef.data.exposure`'s rule for files:
    nearly all black or all white, it holds nothing the others lack).
    """
    means, usable = [], []
    for f in frames:
        small = cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) if min(f.shape[:2]) > 64 else f
        g = gray(small.astype(np.float32) * np.float32(1.0 / code_peak(f)))
        means.append(float(g.mean()))
        g8 = cv2.convertScaleAbs(g, alpha=255.0)
        usable.append(bool((g8 <= BLACK_LEVEL).mean() < DEFAULT_CLIP_FRACTION
                           and (g8 >= WHITE_LEVEL).mean() < DEFAULT_CLIP_FRACTION))
    return means, usable


def select_frames(frames: Sequence[np.ndarray], extremes: bool = False) -> tuple[list[int], list[int]]:
    """Which frames to fuse: ``(used, skipped)`` indices into ``frames`` (used: dark to bright).

    Every usable frame (:func:`frame_means`), or with ``extremes`` only the darkest and brightest
    of them; ``skipped`` are the nearly all-black or all-white frames left out. When exactly one
    frame is usable, the darkest and brightest frames are used, so a bracket with one good frame
    still fuses.

    Raises:
        InputError: no frame is usable.
    """
    means, usable = frame_means(frames)
    order = sorted(range(len(frames)), key=lambda i: means[i])
    keep = [i for i in order if usable[i]]
    if not keep:
        raise InputError(f"every frame is nearly all black or all white (at least {DEFAULT_CLIP_FRACTION:.0%} of "
                         "its pixels clipped): nothing to fuse")
    if len(keep) == 1:
        keep = [order[0], order[-1]]
    skipped = [i for i in range(len(frames)) if i not in keep]
    if extremes and len(keep) > 2:
        keep = [keep[0], keep[-1]]
    return keep, skipped


# ------------------------------------------------------------------------------- the blend


def reduce_frames(frames: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(N, 3, h, w) float32 stack of real frames (any engine dtype) reduced by area averaging (a
    re-exposure's reduced frame is :func:`reexpose_small` of its source's).

    Area averaging is separable: each band of rows is reduced across, then the (H, w) result
    down (equal to one ``cv2.resize(..., INTER_AREA)`` of the float frame).
    """
    h, w = shape
    out = []
    for f in frames:
        hh, ww = f.shape[:2]
        across = np.empty((hh, w, 3), np.float32)
        for r0, r1 in bands(hh, ww):
            across[r0:r1] = cv2.resize(rgb_rows(f, r0, r1), (w, r1 - r0), interpolation=cv2.INTER_AREA)
        out.append(cv2.resize(across, (w, h), interpolation=cv2.INTER_AREA).transpose(2, 0, 1))
    return np.stack(out)


def gap_stops(small: np.ndarray) -> list[float]:
    """Exposure steps (stops, ≥ 0) between consecutive (N, 3, h, w) reduced frames sorted dark
    to bright: log2 of the median ratio of their linear grey over the pixels well exposed in
    both (grey above 0.04 in the darker, below 0.92 in the brighter); the ratio of the means
    where fewer than 16 such pixels exist. Capped at 12 stops."""
    g = small_grey(small)
    lin = srgb_to_linear(g)
    steps = []
    for a, b, la, lb in zip(g[:-1], g[1:], lin[:-1], lin[1:]):
        m = (a > 0.04) & (b < 0.92)
        r = float(np.median(lb[m] / la[m])) if m.sum() >= 16 else float(lb.mean() / max(float(la.mean()), 1e-6))
        steps.append(min(max(math.log2(max(r, 1e-6)), 0.0), 12.0))
    return steps


def virtual_stops(gap: float, max_gap: float) -> list[float]:
    """Re-exposures (stops above the darker frame) that split a gap of ``gap`` stops into equal
    steps of at most ``max_gap`` (none when ``max_gap`` is 0 or the gap is narrow enough).

    A tenth of a step is allowed for the measurement (a ±2 EV pair measures 4.00–4.05 stops
    and gets one re-exposure at the middle, not two)."""
    if max_gap <= 0:
        return []
    n = max(1, math.ceil(gap / max_gap - 0.1))
    return [gap * j / n for j in range(1, n)]


def reexpose_small(small: np.ndarray, stops: float) -> np.ndarray:
    """A reduced (3, h, w) frame re-exposed as :class:`Reexposed` does (linear light × 2^stops,
    a pixel whose largest channel passes 1 scaled down whole): what the network sees of a
    re-exposure (the reduction of the full-resolution one would cost a pass over the photo)."""
    lin = srgb_to_linear(small)
    return linear_to_srgb(lin * reexposure_gain(stops, lin.max(axis=0, keepdims=True)))


def fill_gaps(frames: Sequence[np.ndarray], small: np.ndarray, max_gap: float) -> tuple[list[Frame], np.ndarray]:
    """The frames (sorted dark to bright) with every exposure gap wider than ``max_gap`` stops
    filled by re-exposures of its darker frame (:class:`Reexposed`), and their reduced stack.

    A bracket stands for the scene at every exposure between its extremes; the frames a
    photographer did not take are re-exposures of the darker frame of the gap (it holds the
    highlights the brighter one clipped), so the blend sees the mid-tones a full bracket would
    give. A re-exposure's reduced frame is :func:`reexpose_small` of its source's. Brackets
    spaced at most ``max_gap`` stops apart are returned unchanged.
    """
    out: list[Frame] = [frames[0]]
    stack = [small[0]]
    for i, gap in enumerate(gap_stops(small)):
        for k in virtual_stops(gap, max_gap):
            out.append(Reexposed(frames[i], k))
            stack.append(reexpose_small(small[i], k))
        out.append(frames[i + 1])
        stack.append(small[i + 1])
    return out, np.stack(stack) if len(stack) > len(small) else small


def prior_logits(grey: np.ndarray, sigma: float) -> np.ndarray:
    """Well-exposedness logits ``-(g - 0.5)² / (2σ²)`` of (N, h, w) grey -> (N, h, w)."""
    return -((grey - 0.5) ** 2) / (2 * sigma**2)


def smooth_weights(logits: np.ndarray, smooth: float) -> np.ndarray:
    """Softmax over frames of (N, h, w) logits, each map blurred by a Gaussian of ``smooth`` px."""
    z = logits - logits.max(0, keepdims=True)
    e = np.exp(z)
    e /= e.sum(0, keepdims=True)
    if smooth > 0:
        e = np.stack([cv2.GaussianBlur(m, (0, 0), smooth, borderType=cv2.BORDER_REFLECT_101) for m in e])
    return e.astype(np.float32)


class RowUpsampler:
    """Bilinear up-sampling of an (h, w) float32 map to (H, W), a band of rows at a time.

    Equal (to float rounding) to ``cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)``: the
    source rows a band needs are resized across, and each output row mixes its two source rows
    with OpenCV's coordinates (``y = (r + 0.5) · h / H - 0.5``, clamped at the borders). Nothing
    of full width is kept between bands.
    """

    def __init__(self, m: np.ndarray, size: tuple[int, int]) -> None:
        self.m = np.ascontiguousarray(m, dtype=np.float32)
        self.width, h_out = size
        h = m.shape[0]
        fy = (np.arange(h_out, dtype=np.float64) + 0.5) * (h / h_out) - 0.5
        y0 = np.floor(fy).astype(np.int64)
        a = (fy - y0).astype(np.float32)
        a[y0 < 0] = 0.0
        self.y0 = np.clip(y0, 0, h - 1)
        self.y1 = np.minimum(self.y0 + 1, h - 1)
        self.a = a

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``[r0, r1)`` of the up-sampled map, float32 (r1 - r0, W)."""
        y0, y1 = self.y0[r0:r1], self.y1[r0:r1]
        first, last = int(y0[0]), int(y1[-1]) + 1
        across = cv2.resize(self.m[first:last], (self.width, last - first), interpolation=cv2.INTER_LINEAR)
        lo = across[y0 - first]
        hi = across[y1 - first]
        hi -= lo
        hi *= self.a[r0:r1, None]
        hi += lo
        return hi


def _normalised(ws: list[np.ndarray]) -> list[np.ndarray]:
    """Maps divided by their sum over the frames (in place)."""
    total = ws[0].copy()
    for w in ws[1:]:
        total += w
    total += 1e-12
    for w in ws:
        w /= total
    return ws


def match_grey(lin: np.ndarray, target: np.ndarray, bits: int | None) -> np.ndarray:
    """Encode linear RGB ``lin`` (h, w, 3; every channel in [0, 1]) as sRGB, each pixel scaled so
    that the grey of its codes (MATLAB ``rgb2gray``, the grey MEF-SSIM sees) is the grey of the
    target luminance ``target`` (h, w): the pyramid's structure reaches the output as blended.

    The colour step sets a pixel's *linear* luminance; the grey of the encoded codes then differs
    with the colour's saturation (sRGB is not linear, and a mix of colours in linear light does
    not commute with it): by 0.017 of grey on average on validation pairs. On the curve's power
    branch a code is ``1.055 x^(1/2.4) - 0.055``, so scaling a pixel's linear light by
    ``k = r^2.4`` maps its codes ``c`` to ``(c + 0.055) r - 0.055`` (:func:`scale_codes`), and
    ``r = (T + 0.055) / (grey + 0.055)`` gives the grey ``T`` exactly where every channel is on that
    branch (a channel in the linear toe, codes below 0.04045, leaves a residual of a few 1e-4 of
    grey). ``r`` is bounded to [0.42, 2.38] (``k`` to [1/8, 8]) and so that no channel passes
    white (the pixel is scaled down whole). One positive scale per pixel: the chromaticity is
    untouched. The pixel is encoded once; the scaled codes are exact (the affine map on the power
    branch, the curve itself for channels in the toe), then rounded: this is also the output's
    encoding.

    Args:
        lin: (h, w, 3) float32 linear RGB in [0, 1].
        target: (h, w) float32 target linear luminance (values above 1 mean white).
        bits: None: float32 codes in [0, 1]; 8 or 16: rounded uint8 / uint16 codes.

    Returns:
        (h, w, 3) sRGB codes.
    """
    codes = _encode(lin)
    r = gray(codes)
    r += np.float32(0.055)
    t = linear_to_srgb(np.minimum(target, 1.0))
    t += np.float32(0.055)
    np.divide(t, r, out=r)
    np.clip(r, 0.42, 2.38, out=r)
    cap = top_code(codes)  # no channel past white: (top + 0.055) r <= 1.055
    cap += np.float32(0.055)
    np.divide(np.float32(1.055), cap, out=cap)
    np.minimum(r, cap, out=r)
    out = scale_codes(codes, lin, r)
    if bits is None:
        return out
    out *= np.float32(255.0 if bits == 8 else 65535.0)
    out += np.float32(0.5)
    return out.astype(np.uint8 if bits == 8 else np.uint16)


def scale_codes(codes: np.ndarray, lin: np.ndarray, r: np.ndarray) -> np.ndarray:
    """sRGB codes of ``lin · r^2.4`` from the codes of ``lin``, in place, clipped to [0, 1].

    On the power branch of the curve the codes of ``x k`` are ``(c + 0.055) k^(1/2.4) - 0.055``:
    one multiply-add per channel instead of the curve. A channel in the linear toe before or
    after the scaling (codes below 0.04045) is encoded exactly from its linear value.

    Args:
        codes: (h, w, 3) float32 codes of ``lin`` (overwritten with the result).
        lin: (h, w, 3) float32 linear values.
        r: (h, w) float32 ``k^(1/2.4)`` per pixel (> 0).

    Returns:
        ``codes``, now the codes of ``lin · r^2.4``.
    """
    toe = codes < np.float32(_TOE_CODE)
    codes += np.float32(0.055)
    codes *= r[..., None]
    codes -= np.float32(0.055)
    toe |= codes < np.float32(_TOE_CODE)
    n_toe = np.count_nonzero(toe)
    if n_toe > toe.size // 8:  # mostly dark: the curve on the whole band is cheaper than a gather
        k = cv2.pow(r, 2.4)
        exact = _encode(np.minimum(lin * k[..., None], np.float32(1.0)))
        np.copyto(codes, exact, where=toe)
    elif n_toe:
        rows, cols, _ = np.nonzero(toe)
        k = cv2.pow(np.ascontiguousarray(r[rows, cols]).reshape(-1, 1), 2.4).reshape(-1)
        codes[toe] = _encode(np.minimum(lin[toe] * k, np.float32(1.0)))
    return np.clip(codes, 0.0, 1.0, out=codes)


def level_shape(h: int, w: int, k: int) -> tuple[int, int]:
    """(h, w) of level ``k`` of an (h, w) image's pyramid (``cv2.pyrDown`` rounds up)."""
    for _ in range(k):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def contrast_measure(grey: np.ndarray, contrast: float, out: np.ndarray | None = None) -> np.ndarray:
    """Mertens's contrast measure ``(|∇²g| + ε)^contrast`` of an (h, w) float32 grey (4-neighbour
    Laplacian, borders reflected), into ``out`` when given -> float32 (h, w)."""
    out = cv2.Laplacian(grey, cv2.CV_32F, dst=out, ksize=1)
    np.abs(out, out=out)
    out += np.float32(1e-3)
    if contrast != 1:
        cv2.pow(out, contrast, dst=out)
    return out


def tone_contrast(grey: np.ndarray, level: tuple[int, int], contrast: float) -> np.ndarray:
    """The contrast term of the tone levels: ``(|∇²g| + ε)^contrast`` of a frame's grey at the
    work resolution (the reduced frame the network sees), brought to the size of the first tone
    level.

    Measured where the network works, not at full resolution: the tone then depends on the scene
    as the network saw it (and as it was trained, on whole images at the work size), not on the
    sharpness or sensor noise of the full-resolution pixels. Measured at full resolution, a
    resampled frame (an aligned hand-held frame, σ = 0.7 px of blur) lost contrast, so its share
    of the tone: the output brightened by 0.03 on a real pair, 0.065 on a noisy HDR pair.

    Args:
        grey: (h, w) float32 grey of one reduced frame (:func:`small_grey`).
        level: (h', w') the size of the first tone level (:func:`level_shape`).
        contrast: the exponent ``c``.

    Returns:
        float32 (h', w').
    """
    c = contrast_measure(grey, contrast)
    while c.shape[0] >= 2 * level[0] and c.shape[1] >= 2 * level[1]:
        c = cv2.pyrDown(c)
    return cv2.resize(c, (level[1], level[0]), interpolation=cv2.INTER_LINEAR)


REPLETE_LEVELS = (1, 4)
"""Detail repletion covers these pyramid levels, first and last (detail of ~2 to ~32 px: what
the 11 px windows of MEF-SSIM's three scales see). Not the finest level: its 1 px band holds
mostly sensor noise and compression artefacts, and restoring the strongest frame's there
restored its noise (validation HDR pairs 22.33 dB / LPIPS 0.1151 with it, 22.51 / 0.1121
without; the structure scores equal) at a sixth of a 12 MP fusion's time."""
REPLETE_SIGMA, REPLETE_MAX, REPLETE_EPS = 2.0, 2.0, 1e-6
"""Its local window (Gaussian σ in px of the level), largest gain, and the energy floor (grey²)
below which a band counts as flat."""


def band_energy(band: np.ndarray) -> np.ndarray:
    """Local energy of one Laplacian band, ``G_σ(band²)`` (σ = :data:`REPLETE_SIGMA` px), float32,
    same shape (blurred into a new array: OpenCV's in-place Gaussian blur costs three times)."""
    return cv2.GaussianBlur(cv2.multiply(band, band), (0, 0), REPLETE_SIGMA, borderType=cv2.BORDER_REFLECT_101)


def replete(band: np.ndarray, source_energy: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Detail repletion of one output band, in place: where the blend's band holds less local
    energy than the strongest real frame's band at that place (weighted averaging of frames
    whose details differ in strength weakens them), it is scaled up towards that frame's, by at
    most :data:`REPLETE_MAX`, never down, and never past the range: where the band pushes the
    grey towards white (black), it grows only as far as ``base`` leaves room below 1 (above 0).

    Args:
        band: (h, w) float32 Laplacian band of the output's grey (scaled in place).
        source_energy: (h, w) float32 the largest :func:`band_energy` of the real frames' bands
            (overwritten).
        base: (h, w) float32 the output's grey of the coarser levels, up-sampled to this one
            (what the band is added to).

    Returns:
        (h, w) float32 what the repletion added to the band (the colour step keeps a colour's
        brightening within its gamut, :func:`blend`).
    """
    e = band_energy(band)  # needs the neighbouring rows: the whole level first
    one, cap, eps = np.float32(1.0), np.float32(REPLETE_MAX), np.float32(REPLETE_EPS)

    def rows(r0: int, r1: int) -> None:
        gain, b, room = source_energy[r0:r1], band[r0:r1], e[r0:r1]
        gain += eps
        room += eps
        np.divide(gain, room, out=gain)
        cv2.sqrt(gain, dst=gain)
        np.minimum(gain, cap, out=gain)
        np.subtract(one, base[r0:r1], out=room)  # room to white, to black where the band is < 0
        np.copyto(room, base[r0:r1], where=b < 0)
        np.maximum(room, 0.0, out=room)
        mag = np.abs(b)
        np.maximum(mag, np.float32(1e-12), out=mag)
        np.divide(room, mag, out=room)
        np.minimum(gain, room, out=gain)
        np.maximum(gain, one, out=gain)
        gain -= one
        np.multiply(b, gain, out=room)  # what the repletion adds
        b += room

    for_bands(rows, *band.shape)
    return e


PROFILE_KNOTS = np.linspace(0.0, 1.0, 11)
"""Grey levels (sRGB codes) at which a camera's saturation profile is kept (linear between)."""
TYPICAL_PROFILE = np.array([1.0, 1.0, 1.0, 1.0, 0.996, 0.942, 0.846, 0.707, 0.571, 0.352, 0.173])
"""A typical camera's saturation at each knot relative to the shadows': the 56 brackets of the
training split pooled (``benchmarks/camera_profile.py``); what a bracket's own frames do not
measure is taken from it."""
PROFILE_PRIOR = 50.0
"""Weight of the typical camera (``β = 1``) against a bracket's own measurement in
:func:`camera_profile`: as many pixel pairs as carry 50 units of ``Σ x²`` (a few hundred pixels
lifted across the typical camera's shoulder)."""
PROFILE_MAX_STRENGTH = 1.5
"""Largest ``β``."""
PROFILE_FLAT_TO = float(PROFILE_KNOTS[np.flatnonzero(TYPICAL_PROFILE < 1.0)[0] - 1])
"""Grey (sRGB code) up to which :data:`TYPICAL_PROFILE`, and so every bracket's profile, is flat:
no target below it pales."""


_PROFILE_BIN = 0.05
_PROFILE_MIN_BIN = 20


def profile_pairs(small: np.ndarray) -> np.ndarray:
    """How a camera's saturation changes with level, from its own bracket: for every pair of
    consecutive frames, pixels seen well in both (every channel of the darker frame above
    0.02 and its grey above 0.1, every channel of both below 0.95, the darker frame's chroma
    above 0.05), the log ratio of their chroma (the L1 distance from grey of the unit-luminance
    colour ``lin(rgb) / lin(grey)`` that the blend mixes and :func:`desaturate_beyond` pales), grouped by the two frames' grey levels in bins of 0.05.

    Args:
        small: (N, 3, h, w) float32 sRGB in [0, 1], the real frames at the work resolution,
            sorted dark to bright.

    Returns:
        (K, 4) float64 rows ``(grey in the darker frame, grey in the brighter, median log
        chroma ratio, pixels)`` of the bins holding at least 20 pixels.
    """
    rows = []
    grey = small_grey(small).reshape(len(small), -1)
    for a, b, ga, gb in zip(small[:-1], small[1:], grey[:-1], grey[1:]):
        a, b = a.reshape(3, -1), b.reshape(3, -1)
        m = (a.min(axis=0) > 0.02) & (ga > 0.1) & (a.max(axis=0) < 0.95) & (b.max(axis=0) < 0.95)
        ua = srgb_to_linear(a[:, m]).astype(np.float64) / srgb_to_linear(ga[m]).astype(np.float64)
        ub = srgb_to_linear(b[:, m]).astype(np.float64) / srgb_to_linear(gb[m]).astype(np.float64)
        ca, cb = np.abs(ua - 1).sum(axis=0), np.abs(ub - 1).sum(axis=0)
        k = ca > 0.05
        if not k.any():
            continue
        y = np.log(np.maximum(cb[k], 1e-4) / ca[k])
        xa, xb = ga[m][k], gb[m][k]
        nb = int(round(1 / _PROFILE_BIN))
        key = np.minimum((xa / _PROFILE_BIN).astype(int), nb - 1) * nb + np.minimum((xb / _PROFILE_BIN).astype(int), nb - 1)
        _, starts, counts = np.unique(np.sort(key), return_index=True, return_counts=True)
        keep = counts >= _PROFILE_MIN_BIN
        starts, counts = starts[keep], counts[keep]
        lo, hi = starts + (counts - 1) // 2, starts + counts // 2  # the middle of each bin
        cols = []
        for v in (xa, xb, y):  # each bin's median of v: sorted by bin, then by v
            sv = v[np.lexsort((v, key))]
            cols.append(0.5 * (sv[lo] + sv[hi]))
        rows.append(np.stack([*cols, counts.astype(np.float64)], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 4))


def camera_profile(small: np.ndarray) -> np.ndarray:
    """The saturation profile of the camera that made a bracket: log of its saturation at each of
    :data:`PROFILE_KNOTS` relative to the shadows', ``β · log`` :data:`TYPICAL_PROFILE`.

    A camera's rendering compresses every channel towards white as the level rises, so the same
    surface comes out paler in a brighter frame; a synthetic bracket cut from radiance with one
    curve keeps its chroma until a channel clips. One strength ``β`` tells them apart (0: chroma
    kept, 1: the typical camera): each bin of :func:`profile_pairs` says ``β = y / x`` with ``x``
    the typical profile's change between the bin's two levels (bins where it is below 0.05 say
    nothing) and ``y`` its measured log chroma ratio; ``β`` is their median weighted by pixels ×
    ``x²`` (robust to bins that a clipped channel pales), with ``β = 1`` counted with the weight
    :data:`PROFILE_PRIOR` (a pair whose frames share few well-seen pixels, or a single frame,
    gets the typical camera), within [0, :data:`PROFILE_MAX_STRENGTH`]. Measured on the
    validation and test brackets, a real camera's ``β`` is 0.36–1.5 and the synthetic HDR pairs'
    0.03–0.29.

    Args:
        small: (N, 3, h, w) float32 sRGB, the real frames at the work resolution, dark to bright.

    Returns:
        (11,) float64; the saturation factor at grey ``g`` is ``exp(interp(g, knots, profile))``.
    """
    typical = np.log(TYPICAL_PROFILE)
    pairs = profile_pairs(small) if len(small) > 1 else np.zeros((0, 4))
    x = np.interp(pairs[:, 1], PROFILE_KNOTS, typical) - np.interp(pairs[:, 0], PROFILE_KNOTS, typical)
    keep = np.abs(x) > 0.05  # bins whose two levels the typical camera renders differently
    ratios = np.append(pairs[keep, 2] / x[keep], 1.0)
    weights = np.append(pairs[keep, 3] * x[keep] ** 2, PROFILE_PRIOR)
    order = np.argsort(ratios)
    cum = np.cumsum(weights[order])
    beta = float(ratios[order][np.searchsorted(cum, 0.5 * cum[-1])])
    return min(max(beta, 0.0), PROFILE_MAX_STRENGTH) * typical


PROFILE_LUT_SIZE = 65536
"""Entries of :func:`profile_lut` (evenly spaced in the square root of linear luminance)."""


def profile_lut(profile: np.ndarray) -> np.ndarray:
    """A bracket's :func:`camera_profile` as a look-up table on linear luminance: entry ``k`` is
    the log saturation at the grey of luminance ``(k / (PROFILE_LUT_SIZE - 1))²`` (one table look-up
    per pixel instead of an sRGB encode and an interpolation; within 2e-4 of them).

    Args:
        profile: (11,) log saturation at :data:`PROFILE_KNOTS`.

    Returns:
        (PROFILE_LUT_SIZE,) float32.
    """
    lum = np.linspace(0.0, 1.0, PROFILE_LUT_SIZE, dtype=np.float64) ** 2
    return np.interp(linear_to_srgb(lum.astype(np.float32)), PROFILE_KNOTS, profile).astype(np.float32)


def _profile_at(lut: np.ndarray, lum: np.ndarray) -> np.ndarray:
    """Look up :func:`profile_lut` at (h, w) linear luminance (clipped to [0, 1]) -> (h, w) float32."""
    idx = np.sqrt(np.clip(lum, 0.0, 1.0))
    idx *= np.float32(PROFILE_LUT_SIZE - 1)
    idx += np.float32(0.5)
    return lut[idx.astype(np.int32)]


def desaturate_beyond(unit: np.ndarray, target: np.ndarray, held: np.ndarray, lut: np.ndarray) -> bool:
    """Render a unit-luminance colour at a level above every source that holds it as the camera
    would: its chroma (its distance from grey, ``unit - 1``) × ``S(target) / S(held)``, ``S`` the
    bracket's saturation profile (:func:`camera_profile`, as :func:`profile_lut`) at the two
    levels, in place; unchanged where ``target`` is not above ``held`` (the profile never rises,
    so there the ratio is at least 1 and is capped to 1).

    Args:
        unit: (h, w, 3) float32 unit-luminance linear colour (the mix), overwritten.
        target: (h, w) float32 target linear luminance.
        held: (h, w) float32 the brightest linear luminance at which a real frame holds the place
            unclipped (at the work resolution, blurred and up-sampled as the weights are).
        lut: the bracket's :func:`profile_lut`.

    Returns:
        Whether any pixel can have changed (moved towards grey).
    """
    if lut[-1] >= 0.0 or not (target > np.float32(srgb_to_linear(np.float32(PROFILE_FLAT_TO)))).any():
        return False  # a flat profile, or every target where every camera's profile is flat
    f = _profile_at(lut, target)
    f -= _profile_at(lut, held)
    np.minimum(f, 0.0, out=f)
    np.exp(f, out=f)
    unit *= f[..., None]  # 1 + (unit - 1) f: at least 0 for unit >= 0 and f in (0, 1]
    np.subtract(1.0, f, out=f)
    unit += f[..., None]
    return True


def blend(frames: Sequence[Frame], small: np.ndarray, tone_logits: np.ndarray, log_gain: float,
          cfg: BlendConfig, out_bits: int | None = None) -> np.ndarray:
    """Fuse full-resolution frames with work-resolution logits and gain (steps 2–4 above).

    The pyramid weights of frame i at level k are ``s_i · G_k(c_i)`` normalised over the frames,
    with ``c_i = (|∇²g_i| + ε)^contrast`` and ``G_k`` the Gaussian pyramid: for the finest
    ``cfg.detail_levels`` levels ``s_i`` is the prior's smooth weight and ``c_i`` the contrast of
    the full-resolution grey, both reduced with the pyramid; from level ``detail_levels`` on
    ``s_i`` is the network's smooth weight and ``c_i`` the contrast of the grey at the work
    resolution (:func:`tone_contrast`), both resized to that level (so the full-resolution passes
    do not grow with the network's part, and the tone does not depend on pixel-level sharpness).

    Memory is bounded whatever N: a first pass over the frames sums the detail weights (one
    full-resolution map), a second adds each frame's weighted Laplacian pyramid into the
    output's (one frame's pyramid at a time; its grey and contrast are recomputed from the
    codes rather than kept), and the colour is made band by band of rows into the output
    array. Besides the frames and the output, about eight single-channel full-resolution
    float32 maps are alive at the peak (one of them the grey the repletion added, which the
    colour step reads).

    Args:
        frames: N (H, W, 3) RGB frames of one size: uint8 / uint16 sRGB codes or float32 in [0, 1],
            or :class:`Reexposed` frames of them (their colour weight goes to their source).
        small: (N, 3, h, w) float32 the frames at the work resolution, as the network saw them
            (:func:`reduce_frames`, :func:`fill_gaps`): their grey gives the finest levels' prior
            (:func:`prior_logits`) and the tone levels' contrast (:func:`tone_contrast`).
        tone_logits: (N, h, w) float32 logits of the coarser levels and of the colour mix (the
            network's).
        log_gain: the scene's log2-gain (already bounded).
        cfg: the blend settings.
        out_bits: None: float32 output; 8 or 16: sRGB codes of that depth (saves the writer's
            conversion passes).

    Returns:
        (H, W, 3) RGB: float32 in [0, 1], or uint8 / uint16 codes.
    """
    frames = [f if isinstance(f, Reexposed) else as_frame(f) for f in frames]
    h_full, w_full = frames[0].shape[:2]
    size = (w_full, h_full)
    n_lev = pyramid_levels(h_full, w_full, cfg.levels_top)
    split = min(cfg.detail_levels, n_lev)
    work_grey = small_grey(small)
    sw_tone = smooth_weights(tone_logits, cfg.smooth)
    sw_detail = smooth_weights(prior_logits(work_grey, cfg.sigma), cfg.smooth) if split else sw_tone
    # Full-resolution single-channel buffers, allocated once (OpenCV writes into them).
    g = np.empty((h_full, w_full), np.float32)  # the grey of the frame at hand
    con = np.empty_like(g)  # its contrast measure, then its detail weight
    tmp = np.empty_like(g)

    def detail_weight(i: int, f: Frame, normalise: bool) -> np.ndarray:
        """Grey of ``f`` into ``g``, its contrast measure into ``con``, and ``c_i · s_i`` of the
        detail levels (in ``tmp``, or with ``normalise`` in ``con`` divided by the sum over the
        frames); with no detail levels, the contrast alone."""
        contrast_measure(grey_full(f, out=g), cfg.contrast, out=con)
        if not split:
            return con
        cv2.resize(sw_detail[i], size, dst=tmp, interpolation=cv2.INTER_LINEAR)
        if not normalise:  # pass 1 keeps the bare contrast in con for its pyramid
            return cv2.multiply(con, tmp, dst=tmp)
        np.multiply(con, tmp, out=con)
        np.divide(con, total, out=con)
        return con

    # Pass 1: Σ_i c_i·s_i at full resolution over the real frames, each frame's tone contrast (at
    # the work resolution, brought to the split level), and a re-exposure's grey at the split
    # level (it takes part in the coarse levels only).
    total = np.zeros((h_full, w_full), np.float32) if split else None
    split_shape = level_shape(h_full, w_full, split)
    cons_split, grey_split = [], {}
    for i, f in enumerate(frames):
        if isinstance(f, Reexposed) and split:
            c = grey_full(f, out=g)
            for _ in range(split):
                c = cv2.pyrDown(c)
            grey_split[i] = c
        else:
            wd = detail_weight(i, f, normalise=False)
            if total is not None:
                total += wd
        cons_split.append(tone_contrast(work_grey[i], split_shape, cfg.contrast))
    hs, ws_ = cons_split[0].shape
    wt = _normalised([cv2.multiply(c, cv2.resize(s, (ws_, hs), interpolation=cv2.INTER_LINEAR))
                      for c, s in zip(cons_split, sw_tone)])
    del cons_split
    if total is not None:
        total += 1e-12
    # Pass 2: each frame's grey Laplacian pyramid, weighted, added into the output pyramid (its
    # finest level in a zeroed buffer, the pyrUp of each level written into ``tmp``).
    out_pyr: list[np.ndarray | None] = [None] * (n_lev + 1)
    rep = range(REPLETE_LEVELS[0], min(REPLETE_LEVELS[1] + 1, n_lev))  # the repleted levels
    energy: dict[int, np.ndarray] = {}  # the real frames' largest band energy, by level
    for i, f in enumerate(frames):
        if i in grey_split:
            first, cur, w = split, grey_split.pop(i), wt[i]
        else:
            first, cur = 0, g
            w = detail_weight(i, f, normalise=True) if split else (grey_full(f, out=g), wt[i])[1]
        for k in range(first, n_lev + 1):
            if k == split:
                w = wt[i]
            if k < n_lev:
                down = cv2.pyrDown(cur)
                term = cv2.pyrUp(down, dst=tmp if k == 0 else None, dstsize=cur.shape[1::-1])
                np.subtract(cur, term, out=term)
                if k in rep and not isinstance(f, Reexposed):  # the real frames' largest band energy
                    e = band_energy(term)
                    if k in energy:
                        np.maximum(energy[k], e, out=energy[k])
                    else:
                        energy[k] = e
                    del e
                term *= w
            else:
                term = cur * w
            acc = out_pyr[k]
            if acc is None:
                out_pyr[k] = term.copy() if term is tmp else term
            else:
                acc += term
            if k < n_lev:
                cur = down
                w = cv2.pyrDown(w)
        del cur, w, term
    del g, con, total, wt
    y = out_pyr.pop()
    assert y is not None
    added_y = None  # the grey the repletion added (its levels collapsed alone)
    while out_pyr:
        lap = out_pyr.pop()
        assert lap is not None
        y = cv2.pyrUp(y, dst=tmp if not out_pyr else None, dstsize=lap.shape[1::-1])
        if len(out_pyr) in rep:
            added = replete(lap, energy.pop(len(out_pyr)), y)
            if added_y is not None:
                cv2.add(cv2.pyrUp(added_y, dstsize=lap.shape[1::-1]), added, dst=added)
            added_y = added
            del added
        elif added_y is not None:  # a finer level, not repleted
            added_y = cv2.pyrUp(added_y, dstsize=lap.shape[1::-1])
        lap += y
        y = lap
    del lap, tmp
    # Colour, band by band: a mix of the real frames' unit-luminance colours (weights: their smooth
    # tone weights × their colour confidence; a re-exposure brings no colour), at the target
    # luminance; where that passes white, moved towards the luminance-weighted mix (the palest
    # colour the sources hold) just enough, then capped.
    tone_up = [RowUpsampler(m, size) for m in sw_tone]
    gain = np.float32(2.0 ** float(log_gain))
    sources = [(i, f) for i, f in enumerate(frames) if not isinstance(f, Reexposed)]
    dtype = {None: np.float32, 8: np.uint8, 16: np.uint16}.get(out_bits)
    if dtype is None:
        raise InputError(f"bits must be 8 or 16, got {out_bits}")
    out = np.empty((h_full, w_full, 3), dtype)

    # Colour lifted past every frame that holds it pales as the bracket's camera pales a brighter
    # surface: its saturation profile, and the brightest level at which a real frame holds each
    # place unclipped, both at the work resolution (held: blurred and up-sampled like the weights).
    real = [i for i, _ in sources]
    real_small = small[real]
    lut = profile_lut(camera_profile(real_small))
    held = srgb_to_linear(work_grey[real])
    held *= real_small.max(axis=1) < CLIP_AT
    held_up = RowUpsampler(cv2.GaussianBlur(held.max(axis=0), (0, 0), cfg.smooth), size)

    def colour(r0: int, r1: int) -> None:
        mix = conf_sum = pale = pale_lum = None
        for i, src in sources:
            lin = linear_rows(src, r0, r1)
            g = grey_rows(src, r0, r1)
            w = tone_up[i].rows(r0, r1)
            conf = colour_confidence(src, r0, r1, g)
            conf *= w
            lg = srgb_to_linear(g)
            weighted = lin * w[..., None]  # the luminance-weighted mix's term
            w *= lg
            np.maximum(lg, 1e-6, out=lg)
            np.divide(conf, lg, out=lg)
            lin *= lg[..., None]  # unit-luminance colour × its weight
            if mix is None:
                mix, conf_sum, pale, pale_lum = lin, conf, weighted, w
            else:
                mix += lin
                conf_sum += conf
                pale += weighted
                pale_lum += w
        assert mix is not None and conf_sum is not None and pale is not None and pale_lum is not None
        mix /= np.maximum(conf_sum, 1e-6)[..., None]  # the unit-luminance colour
        top = cv2.reduce(mix.reshape(-1, 3), 1, cv2.REDUCE_MAX).reshape(conf_sum.shape)
        target = srgb_to_linear(y[r0:r1])
        target *= gain
        if added_y is not None:
            # The repletion brightens a pixel only up to the grey at which its colour reaches
            # white (past it, the added detail would be paled or clipped away). Only a pixel
            # whose colour passes white at the repleted grey can be affected.
            hot = top * target > 1.0
            hot &= added_y[r0:r1] > 0
            if hot.any():
                yh, add = y[r0:r1][hot], added_y[r0:r1][hot]
                c = _encode(np.minimum(np.float32(1.0) / np.maximum(top[hot] * gain, np.float32(1e-6)), 1.0))
                room = np.maximum(c - (yh - add), 0.0)  # above the unrepleted grey
                target[hot] = srgb_to_linear(yh - np.maximum(add - room, 0.0)) * gain
        if desaturate_beyond(mix, target, held_up.rows(r0, r1), lut):
            top = cv2.reduce(mix.reshape(-1, 3), 1, cv2.REDUCE_MAX).reshape(conf_sum.shape)
        mix *= target[..., None]
        top *= target
        over = top > 1.0
        if over.any():
            u = mix[over]
            o = pale[over] * (target[over] / np.maximum(pale_lum[over], 1e-6))[:, None]
            step = np.where(u > 1.0, (u - 1.0) / np.maximum(u - o, 1e-6), 0.0).max(axis=1)
            u += (o - u) * np.clip(step, 0.0, 1.0)[:, None]
            u /= np.maximum(u.max(axis=1), 1.0)[:, None]
            mix[over] = u
        out[r0:r1] = match_grey(mix, target, out_bits)

    for_bands(colour, h_full, w_full)
    return out


# ------------------------------------------------------------------------------- alignment


def flow_trust(g_target: np.ndarray) -> np.ndarray:
    """Where a flow onto ``target`` has evidence: its grey away from black and white (uint8
    (h, w) in; float32 (h, w) out: 1 over 12..242 of 255, ramping to 0 at 3 and 252). Where the
    target is clipped it holds no structure to match, and the other frame (which holds it there)
    would be moved by whatever the flow's smoothing made up."""
    x = g_target.astype(np.float32)
    return np.clip(np.minimum((x - 3.0) / 9.0, (252.0 - x) / 10.0), 0.0, 1.0)


def robust_flow(g_moving: np.ndarray, g_target: np.ndarray, fill_sigma: float = 16.0,
                trust_sigma: float = 4.0) -> np.ndarray:
    """The flow that aligns ``moving`` onto ``target``: DIS flow where the target holds
    structure, the camera's motion plus the flow's smooth residual where it does not.

    1. DIS flow on histogram-matched grey (:func:`crmef.baselines.dis_flow`).
    2. A homography fitted with RANSAC (1 px) to the flow at trusted pixels
       (:func:`flow_trust` = 1; a grid of about 20,000 points): the camera's motion, which
       holds over the whole frame, clipped regions included.
    3. The residual flow − homography, filled into untrusted regions by normalised convolution
       (Gaussian, ``fill_sigma`` px) from trusted ones: smooth local motion (parallax, a lens'
       distortion) carries over, made-up matches do not.
    4. ``t · flow + (1 − t) · (homography + filled residual)``, ``t`` the trust blurred by
       ``trust_sigma`` px.

    With fewer than 50 trusted points (or no homography found) the DIS flow is returned as is.

    Args:
        g_moving, g_target: (h, w) uint8 greys of the two frames (:func:`crmef.baselines.flow_grey`).

    Returns:
        (h, w, 2) float32 flow at the greys' resolution (target pixel + flow = where it lies in
        ``moving``), for :func:`crmef.baselines.warp`.
    """
    from crmef.baselines import dis_flow

    flow = dis_flow(g_moving, g_target)
    h, w = flow.shape[:2]
    trust = flow_trust(g_target)
    step = max(1, int(np.sqrt(h * w / 20000)))
    ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
    keep = trust[ys, xs] >= 1.0
    if keep.sum() < 50:
        return flow
    src = np.stack([xs[keep], ys[keep]], -1).astype(np.float32)
    hom, _ = cv2.findHomography(src, src + flow[ys[keep], xs[keep]], cv2.RANSAC, 1.0)
    if hom is None:
        return flow
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
    camera = cv2.perspectiveTransform(grid.reshape(-1, 1, 2), hom).reshape(h, w, 2) - grid
    num = cv2.GaussianBlur((flow - camera) * trust[..., None], (0, 0), fill_sigma)
    den = cv2.GaussianBlur(trust, (0, 0), fill_sigma)[..., None]
    camera += num / np.maximum(den, 1e-3) * np.minimum(den / 0.05, 1.0)  # no trusted pixel near: camera alone
    t = cv2.GaussianBlur(trust, (0, 0), trust_sigma)[..., None]
    return (t * flow + (1.0 - t) * camera).astype(np.float32)


def align_frames(frames: Sequence[np.ndarray], ref: int, max_side: int = 1600) -> list[np.ndarray]:
    """Warp every frame onto frame ``ref`` (hand-held brackets), once, on the whole image, by
    :func:`robust_flow` on greys at most ``max_side`` px on the long side (the reference's grey
    made once) and a bilinear warp at full resolution.

    Returns:
        The N frames on ``ref``'s grid (``frames[ref]`` itself unchanged).
    """
    from crmef.baselines import flow_grey, warp

    g_ref = flow_grey(frames[ref], max_side)  # once, whatever N
    return [f if i == ref else warp(f, robust_flow(flow_grey(f, max_side), g_ref)) for i, f in enumerate(frames)]


# ------------------------------------------------------------------------------- the model

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ENGINE_MODELS = ("general", "aligned")
"""Shipped engine models: ``weights/<name>.json`` cards naming one ONNX network."""


class ExposureModel:
    """A shipped exposure network (ONNX) with its blend settings: ``model(frames) -> fused``.

    Args:
        onnx_path: the exported :class:`~crmef.nets.exposure.ExposureNet` (``crmef export``).
        cfg: the blend settings from the model card.
        threads: intra-op threads of onnxruntime (default: ``cv2.getNumThreads()``, the budget
            the blend uses too; a batch worker sets 1).
    """

    def __init__(self, onnx_path: str | os.PathLike[str], cfg: BlendConfig, prealign: bool = False,
                 threads: int | None = None, name: str = "") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads or max(1, cv2.getNumThreads())
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.cfg, self.prealign, self.name = cfg, prealign, name
        self.path = Path(onnx_path)

    @classmethod
    def from_card(cls, card_path: str | os.PathLike[str]) -> ExposureModel:
        """Load from a model card (JSON) that names its ONNX file and blend settings."""
        card_path = Path(card_path)
        if card_path.parent == WEIGHTS_DIR:
            check_installed(card_path)
        try:
            card = json.loads(card_path.read_text())
            return cls(card_path.with_name(card["onnx"]), BlendConfig(**card["blend"]),
                       prealign=card.get("prealign") == "flow", name=card.get("name", card_path.stem))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{card_path}: not a crmef engine model card ({exc})") from None

    def maps(self, small: np.ndarray) -> tuple[np.ndarray, float]:
        """The network on (N, 3, h, w) reduced frames sorted dark to bright: its tone logits
        (N, h, w) and the scene's log2-gain."""
        logits, gain = self.session.run(None, {"frames": small})
        return logits[:, 0], float(gain.reshape(-1)[0])

    def __call__(self, frames: Sequence[np.ndarray], out_bits: int | None = None) -> np.ndarray:
        """Fuse N ≥ 2 (H, W, 3) frames of one scene (any order; uint8 / uint16 sRGB codes as
        decoded, or float32 in [0, 1]) into one image (float32 in [0, 1], or with ``out_bits``
        8 / 16 sRGB codes)."""
        if len(frames) < 2:
            raise InputError(f"need at least two frames, got {len(frames)}")
        frames = [as_frame(f) for f in frames]
        h, w = frames[0].shape[:2]
        if min(h, w) < MIN_SIDE:
            raise InputError(f"frames of {w}x{h} are too small: the shortest side must be at least {MIN_SIDE} px")
        shape = work_shape(h, w, self.cfg.work_size)
        small = reduce_frames(frames, shape)
        order = np.argsort(small_grey(small).mean(axis=(1, 2)), kind="stable")
        ordered, small = [frames[i] for i in order], small[order]
        if self.prealign:  # the reduced stack is made again from the aligned frames
            ordered = align_frames([rgb_rows(f, 0, h) for f in ordered], len(ordered) // 2)
            small = reduce_frames(ordered, shape)
        fused, small = fill_gaps(ordered, small, self.cfg.max_gap)
        logits, gain = self.maps(small)
        return blend(fused, small, logits, gain, self.cfg, out_bits)


def fuse_bracket(model: ExposureModel, frames: Sequence[np.ndarray], names: Sequence[str] | None = None,
                 extremes: bool = False, resize: bool = False, out_bits: int | None = None,
                 ) -> tuple[np.ndarray, list[int]]:
    """A bracket as a user gives it (any order, maybe clipped frames) through ``model``.

    Sizes are checked (:func:`check_sizes`), the usable frames chosen (:func:`select_frames`)
    and fused; the CLI, :func:`crmef.fuse` and ``crmef eval`` all come through here.

    Returns:
        The fused image (see :meth:`ExposureModel.__call__`) and the indices of the skipped frames.

    Raises:
        InputError: sizes differ (without ``resize``) or no frame is usable, naming the files.
    """
    names = list(names) if names is not None else [f"frame {i + 1}" for i in range(len(frames))]
    arrays = check_sizes([as_frame(f) for f in frames], names, resize=resize)
    try:
        used, skipped = select_frames(arrays, extremes=extremes)
    except InputError as exc:
        raise InputError(f"{', '.join(names)}: {exc}") from None
    return model([arrays[i] for i in used], out_bits=out_bits), skipped


def check_sizes(frames: Sequence[np.ndarray], names: Sequence[str], resize: bool = False) -> list[np.ndarray]:
    """Frames of one size (the first frame's): an error naming the odd file, or with ``resize``
    the others resampled (area when shrinking, bilinear when growing).

    Raises:
        InputError: sizes differ and ``resize`` is false.
    """
    h, w = frames[0].shape[:2]
    out = [frames[0]]
    for f, name in zip(frames[1:], names[1:]):
        if f.shape[:2] == (h, w):
            out.append(f)
        elif resize:
            inter = cv2.INTER_AREA if f.shape[0] > h else cv2.INTER_LINEAR
            out.append(cv2.resize(f, (w, h), interpolation=inter))
        else:
            raise InputError(f"{name}: {f.shape[1]}x{f.shape[0]} pixels, but {names[0]} is {w}x{h}; frames of "
                             "one bracket must have the same size (--resize resamples them)")
    return out


def engine_card(model: str | os.PathLike[str]) -> Path | None:
    """The engine card a ``--model`` value names (a shipped name or a ``.json`` path), else None."""
    text = str(model)
    if text in ENGINE_MODELS:
        return WEIGHTS_DIR / f"{text}.json"
    p = Path(text)
    if p.suffix == ".json" and p.is_file():
        try:
            if "onnx" in json.loads(p.read_text()):
                return p
        except (OSError, ValueError):
            return None
    return None


def load_engine(model: str | os.PathLike[str] = "general") -> ExposureModel:
    """An engine model by shipped name (``general``, ``aligned``) or card path."""
    card = engine_card(model)
    if card is None:
        raise InputError(f"unknown engine model {model!r}; use one of {', '.join(ENGINE_MODELS)} or a card .json")
    return ExposureModel.from_card(card)


def check_installed(card: Path) -> None:
    """A clear error when a shipped model's card or network file is missing.

    Raises:
        InputError: naming the missing file.
    """
    if not card.is_file():
        raise InputError(f"the default model {card.stem!r} is not installed: {card} is missing "
                         "(reinstall crmef, or see docs/training.md to rebuild it)")
