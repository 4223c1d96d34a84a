"""Synthetic exposure brackets with exact ground truth, from linear HDR radiance.

Public API:

- :func:`load_radiance` — OpenEXR (PyPI ``openexr``) or Radiance ``.hdr`` (OpenCV) as float32
  (H, W, 3) linear RGB.
- :class:`SynthConfig` — EV gap, metering, noise, camera response, JPEG options.
- :class:`CameraResponse` — a monotone camera response curve: sRGB, or a random member of the
  family ``f(x) = (1 - s) * x**(1/g) + s * smoothstep(x**(1/g))`` (gamma ``g``, S-curve weight
  ``s``), invertible through a look-up table.
- :func:`synthesize` — one ``(under, over, ref)`` triple (float32 (H, W, 3) in [0, 1]) plus the
  parameters used, from a radiance crop and a ``numpy.random.Generator``; deterministic for the
  generator's seed.
- :func:`random_crop_radiance` — a random crop of a radiance map.
- :func:`tonemap_reference` — the reference operator.

Exposure model: the crop is metered by its log-average luminance (Reinhard's key): the metered
exposure ``e0`` maps the log-average to ``meter_key`` (0.18, times a random ``meter_jitter_ev``
offset). A gap ``g`` (uniform in ``ev_gap``) is split around it: under ``e0 * 2**(-g/2)``, over
``e0 * 2**(g/2)``. The sensor sees ``x = e * L`` (1 = saturation), adds Poisson–Gaussian noise
(``Poisson(x * full_well) / full_well + N(0, read_noise**2)``; the Poisson draw is exact below
:data:`POISSON_EXACT_BELOW` photons and its Gaussian limit above), clips to [0, 1], applies the
camera response, quantises to 8 bits and optionally JPEG-compresses.

Reference operator: global extended Reinhard (Reinhard et al. 2002, eq. 4) on luminance,
``Ld = Ls (1 + Ls / Lw**2) / (1 + Ls)`` with ``Ls = key / logavg(L) * L`` (key 0.18) and
``Lw`` the 99.9th percentile of ``Ls`` (at least 1, so the curve never brightens), colour ratios preserved (``C_out = C / L * Ld``), then the
sRGB transfer curve, clipped to [0, 1]. It is computed from the noise-free radiance of the same
crop, so it is pixel-aligned with both exposures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from crmef.errors import InputError

COLD_PIXEL_RATIO = 0.02
"""A radiance pixel 50x darker than its 5x5 median is an artefact (see :func:`repair_radiance`)."""
POISSON_EXACT_BELOW = 16.0
"""Photon counts below this are drawn from an exact Poisson law, above from its Gaussian limit."""
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def load_radiance(path: str | os.PathLike[str]) -> np.ndarray:
    """Read linear radiance as float32 (H, W, 3) RGB (``.exr`` via ``openexr``, ``.hdr`` via cv2).

    Raises:
        InputError: missing file, unknown suffix or undecodable content.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".exr":
        import OpenEXR

        try:
            with OpenEXR.File(str(path)) as f:
                channels = f.channels()
                if "RGB" in channels:
                    rgb = np.asarray(channels["RGB"].pixels)
                elif all(c in channels for c in "RGB"):
                    rgb = np.stack([np.asarray(channels[c].pixels) for c in "RGB"], axis=-1)
                else:
                    raise InputError(f"{path}: no RGB channels (found {sorted(channels)})")
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{path}: cannot read OpenEXR file ({exc})") from exc
    elif suffix == ".hdr":
        bgr = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path}: cannot read Radiance HDR file")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:
        raise InputError(f"{path}: unknown radiance format {suffix!r}; use .exr or .hdr")
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{path}: expected (H, W, 3) radiance, got shape {rgb.shape}")
    return repair_radiance(rgb)


def repair_radiance(rgb: np.ndarray, max_iter: int = 50) -> np.ndarray:
    """Fill invalid pixels from their valid neighbours.

    Invalid: negative or non-finite in any channel, or "cold" (luminance below
    :data:`COLD_PIXEL_RATIO` times the 5x5 median). Some stitched panoramas hold negative or
    near-zero values inside bright light sources; left alone they paint black dots into
    highlights. Each pass replaces invalid pixels that touch a
    valid one by the mean of their valid 3x3 neighbours.

    Args:
        rgb: float32 (H, W, 3) linear radiance.

    Returns:
        float32 (H, W, 3), all values finite and >= 0.
    """
    bad = ~np.isfinite(rgb).all(axis=2) | (rgb < 0).any(axis=2)
    lum = luminance(np.where(bad[..., None], 0.0, rgb).astype(np.float32))
    bad |= lum < COLD_PIXEL_RATIO * cv2.medianBlur(lum, 5)
    if not bad.any():
        return rgb
    out = np.where(bad[..., None], 0.0, rgb).astype(np.float32)
    valid = (~bad).astype(np.float32)
    for _ in range(max_iter):
        if valid.all():
            break
        num = cv2.boxFilter(out * valid[..., None], -1, (3, 3), normalize=False, borderType=cv2.BORDER_REPLICATE)
        den = cv2.boxFilter(valid, -1, (3, 3), normalize=False, borderType=cv2.BORDER_REPLICATE)
        fill = (valid == 0) & (den > 0)
        out[fill] = num[fill] / den[fill][:, None]
        valid[fill] = 1.0
    return np.maximum(out, 0.0)


def srgb_encode(x: np.ndarray) -> np.ndarray:
    """sRGB transfer curve (IEC 61966-2-1), linear [0, 1] -> encoded [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def srgb_decode(v: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer curve, encoded [0, 1] -> linear [0, 1]."""
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.04045, v / 12.92, np.power((v + 0.055) / 1.055, 2.4)).astype(np.float32)


@dataclass(frozen=True)
class CameraResponse:
    """A monotone camera response; ``gamma=None`` means sRGB.

    Attributes:
        gamma: exponent ``g`` of ``x**(1/g)``, or None for the sRGB curve.
        s_curve: weight in [0, 0.5] of the smoothstep S-curve blended in (contrast).
    """

    gamma: float | None = None
    s_curve: float = 0.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Linear [0, 1] -> encoded [0, 1] (same shape, float32)."""
        if self.gamma is None:
            return srgb_encode(x)
        t = np.power(np.clip(x, 0.0, 1.0), 1.0 / self.gamma)
        return ((1.0 - self.s_curve) * t + self.s_curve * t * t * (3.0 - 2.0 * t)).astype(np.float32)

    def invert(self, v: np.ndarray) -> np.ndarray:
        """Encoded [0, 1] -> linear [0, 1] (look-up-table inverse, exact for sRGB)."""
        if self.gamma is None:
            return srgb_decode(v)
        grid = np.linspace(0.0, 1.0, 4097, dtype=np.float64) ** 3  # dense near black
        return np.interp(np.clip(v, 0, 1), self.apply(grid).astype(np.float64), grid).astype(np.float32)


@dataclass
class SynthConfig:
    """Parameters of bracket synthesis (defaults follow issue 3).

    Attributes:
        crop: side of the square radiance crop, or None for the whole map.
        ev_gap: (min, max) EV gap between under and over, drawn uniformly.
        meter_key: linear value the log-average luminance is exposed to (0.18, mid-grey).
        meter_jitter_ev: the metered exposure is offset by a uniform draw in ±this many EV.
        full_well: (min, max) photons at saturation for Poisson noise (log-uniform); None: no shot noise.
        read_noise: (min, max) std of Gaussian read noise in [0, 1] units.
        crf: ``"srgb"`` or ``"random"`` (parametric family of :class:`CameraResponse`).
        gamma_range: gamma range for random responses.
        s_curve_range: S-curve weight range for random responses.
        jpeg_quality: None (PNG-exact 8-bit) or (min, max) JPEG quality drawn per sample.
        ref_key: key of the Reinhard reference operator.
        ref_white_percentile: percentile of scaled luminance used as the white point ``Lw``.
    """

    crop: int | None = 128
    ev_gap: tuple[float, float] = (2.0, 6.0)
    meter_key: float = 0.18
    meter_jitter_ev: float = 0.5
    full_well: tuple[float, float] | None = (1000.0, 20000.0)
    read_noise: tuple[float, float] = (0.0005, 0.003)
    crf: str = "srgb"
    gamma_range: tuple[float, float] = (1.8, 2.6)
    s_curve_range: tuple[float, float] = (0.0, 0.4)
    jpeg_quality: tuple[int, int] | None = None
    ref_key: float = 0.18
    ref_white_percentile: float = 99.9

    def __post_init__(self) -> None:
        lo, hi = self.ev_gap
        if not 0 <= lo <= hi:
            raise InputError(f"ev_gap must be 0 <= min <= max, got {self.ev_gap}")
        if self.crf not in ("srgb", "random"):
            raise InputError(f"crf must be 'srgb' or 'random', got {self.crf!r}")
        if self.crop is not None and self.crop < 8:
            raise InputError(f"crop must be at least 8 pixels, got {self.crop}")


@dataclass
class SynthSample:
    """A synthetic triple, float32 (H, W, 3) RGB in [0, 1], and how it was made."""

    under: np.ndarray
    over: np.ndarray
    ref: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec.709 luminance of linear RGB (H, W, 3) -> (H, W)."""
    return rgb @ _LUMA


def log_average(lum: np.ndarray, eps: float = 1e-6) -> float:
    """Reinhard's key: ``exp(mean(log(eps + L)))``."""
    return float(np.exp(np.mean(np.log(eps + lum))))


def tonemap_reference(radiance: np.ndarray, key: float = 0.18, white_percentile: float = 99.9) -> np.ndarray:
    """Global extended Reinhard on luminance, colour ratios kept, sRGB-encoded.

    Args:
        radiance: float32 (H, W, 3) linear RGB, non-negative.
        key: exposure key (mid-grey target).
        white_percentile: percentile of the scaled luminance that maps to white.

    Returns:
        float32 (H, W, 3) RGB in [0, 1].
    """
    lum = luminance(radiance)
    ls = lum * (key / log_average(lum))
    lw = max(float(np.percentile(ls, white_percentile)), 1.0)  # Lw < 1 would brighten, not compress
    ld = ls * (1.0 + ls / (lw * lw)) / (1.0 + ls)
    ratio = np.where(lum > 1e-8, ld / np.maximum(lum, 1e-8), 0.0)[..., None]
    return srgb_encode(np.clip(radiance * ratio, 0.0, 1.0))


def random_crop_radiance(radiance: np.ndarray, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """A random ``size`` x ``size`` crop (whole map when ``size`` is None).

    Raises:
        InputError: the map is smaller than the crop.
    """
    if size is None:
        return radiance
    h, w = radiance.shape[:2]
    if h < size or w < size:
        raise InputError(f"radiance map {w}x{h} is smaller than the crop {size}x{size}")
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return radiance[y : y + size, x : x + size]


def _expose(x: np.ndarray, rng: np.random.Generator, full_well: float | None, read_noise: float) -> np.ndarray:
    """Sensor: Poisson shot noise (``full_well`` photons at saturation) plus Gaussian read noise.

    Pixels with fewer than :data:`POISSON_EXACT_BELOW` expected photons get an exact Poisson draw
    plus read noise; brighter pixels get the Gaussian limit ``N(x, x / full_well + read_noise**2)``
    (one draw; indistinguishable after 8-bit quantisation, and several times cheaper).
    """
    x = np.clip(x, 0.0, 4.0).astype(np.float32)  # beyond 4x saturation noise does not matter: it clips
    n = rng.standard_normal(x.shape, dtype=np.float32)
    r2 = np.float32(read_noise**2)
    if full_well is None:
        return np.clip(x + np.float32(read_noise) * n, 0.0, 1.0)
    fw = np.float32(full_well)
    y = x + np.sqrt(x / fw + r2) * n
    small = x * fw < POISSON_EXACT_BELOW
    if small.any():
        # n[small] is unused above for these pixels: reuse it as their read noise
        y[small] = rng.poisson(x[small] * fw).astype(np.float32) / fw + np.float32(read_noise) * n[small]
    return np.clip(y, 0.0, 1.0)


def _quantise(v: np.ndarray, jpeg: int | None) -> np.ndarray:
    q = np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)
    if jpeg is not None:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(q, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg)])
        if not ok:
            raise InputError("JPEG encoding failed")
        q = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return q.astype(np.float32) / np.float32(255.0)


def synthesize(radiance: np.ndarray, rng: np.random.Generator, cfg: SynthConfig | None = None) -> SynthSample:
    """Synthesise one (under, over, ref) triple from a linear radiance crop.

    Args:
        radiance: float32 (H, W, 3) linear RGB (already cropped; see :func:`random_crop_radiance`).
        rng: the only source of randomness (same seed, same bytes).
        cfg: synthesis parameters.

    Returns:
        A :class:`SynthSample`; ``params`` holds ``ev_gap``, ``exposure_under``,
        ``exposure_over``, ``full_well``, ``read_noise``, ``crf`` (a :class:`CameraResponse`)
        and ``jpeg_quality``.
    """
    cfg = cfg or SynthConfig()
    radiance = np.asarray(radiance, dtype=np.float32)
    if radiance.ndim != 3 or radiance.shape[2] != 3:
        raise InputError(f"radiance must be (H, W, 3), got shape {radiance.shape}")
    gap = float(rng.uniform(*cfg.ev_gap))
    jitter = float(rng.uniform(-cfg.meter_jitter_ev, cfg.meter_jitter_ev))
    e0 = cfg.meter_key / max(log_average(luminance(radiance)), 1e-8) * 2.0**jitter
    e_under, e_over = e0 * 2.0 ** (-gap / 2), e0 * 2.0 ** (gap / 2)
    full_well = None
    if cfg.full_well is not None:
        lo, hi = np.log(cfg.full_well)
        full_well = float(np.exp(rng.uniform(lo, hi)))
    read_noise = float(rng.uniform(*cfg.read_noise))
    if cfg.crf == "random":
        crf = CameraResponse(float(rng.uniform(*cfg.gamma_range)), float(rng.uniform(*cfg.s_curve_range)))
    else:
        crf = CameraResponse()
    jpeg = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) if cfg.jpeg_quality else None
    under = _quantise(crf.apply(_expose(radiance * e_under, rng, full_well, read_noise)), jpeg)
    over = _quantise(crf.apply(_expose(radiance * e_over, rng, full_well, read_noise)), jpeg)
    ref = _quantise(tonemap_reference(radiance, cfg.ref_key, cfg.ref_white_percentile), None)
    params = {
        "ev_gap": gap,
        "exposure_under": e_under,
        "exposure_over": e_over,
        "full_well": full_well,
        "read_noise": read_noise,
        "crf": crf,
        "jpeg_quality": jpeg,
    }
    return SynthSample(under, over, ref, params)


def measured_ev_gap(sample: SynthSample, lo: float = 0.05, hi: float = 0.95) -> float:
    """EV gap measured from the images: median of ``log2(lin(over) / lin(under))`` over pixels
    (channels) unclipped in both, with the response inverted (``params["crf"]``)."""
    crf: CameraResponse = sample.params["crf"]
    u, o = sample.under, sample.over
    ok = (u > lo) & (u < hi) & (o > lo) & (o < hi)
    if not ok.any():
        raise InputError("no pixel is unclipped in both exposures; cannot measure the EV gap")
    return float(np.median(np.log2(crf.invert(o[ok]) / np.maximum(crf.invert(u[ok]), 1e-8))))


def synthetic_radiance(h: int, w: int, rng: np.random.Generator, dynamic_range: float = 1e4) -> np.ndarray:
    """A procedural linear radiance map for tests and demos (no files needed).

    Smooth log-luminance blobs spanning ``dynamic_range`` plus fine texture and a checker
    pattern, with mild colour variation.

    Returns:
        float32 (h, w, 3), values in about [1/dynamic_range, 1].
    """
    coarse = rng.uniform(0.0, 1.0, size=(4, 4)).astype(np.float32)
    logl = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    logl = (logl - logl.min()) / max(float(np.ptp(logl)), 1e-6)
    yy, xx = np.mgrid[0:h, 0:w]
    checker = (((yy // 8) + (xx // 8)) % 2).astype(np.float32)
    texture = rng.uniform(0.0, 1.0, size=(h, w)).astype(np.float32)
    lum = np.exp(np.log(dynamic_range) * (logl - 1.0)) * (0.6 + 0.25 * checker + 0.15 * texture)
    tint = cv2.resize(rng.uniform(0.7, 1.0, size=(2, 2, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return (lum[..., None] * tint).astype(np.float32)


def render_exposure(radiance: np.ndarray, exposure: float, crf: CameraResponse | None = None) -> np.ndarray:
    """Noise-free rendering of radiance at an exposure: ``crf(clip(exposure * L))``, 8-bit quantised.

    Returns:
        float32 (H, W, 3) in [0, 1] (multiples of 1/255).
    """
    return _quantise((crf or CameraResponse()).apply(np.clip(radiance * exposure, 0.0, 1.0)), None)


def write_demo_bracket(
    folder: str | os.PathLike[str],
    stops: list[float],
    names: list[str] | None = None,
    size: tuple[int, int] = (48, 48),
    seed: int = 0,
    base_exposure: float = 0.5,
) -> list[Path]:
    """Write a tiny bracket of :func:`synthetic_radiance` (for tests and demos).

    Args:
        folder: output folder (created).
        stops: exposure of each frame in EV relative to ``base_exposure``.
        names: file names (suffix picks the format); default ``f{i}.png``.
        size: ``(h, w)``.
        seed: radiance seed (frames of one bracket share it).
        base_exposure: linear exposure at 0 EV.

    Returns:
        The written paths, in the order of ``stops``.
    """
    from crmef.imageio import write_image

    names = names or [f"f{i}.png" for i in range(len(stops))]
    rad = synthetic_radiance(size[0], size[1], np.random.default_rng(seed), dynamic_range=1e3)
    return [write_image(Path(folder) / n, render_exposure(rad, base_exposure * 2.0**s)) for s, n in zip(stops, names)]
