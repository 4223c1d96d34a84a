"""Full-resolution fusion engine: any size, bounded memory (tiling), fast mode, N frames.

Public entry point: :func:`fuse` (numpy in, numpy out). The CLI (``crmef fuse``) adds file
handling on top (:func:`fuse_files`).

**Full mode** runs the network on the whole image, or — when the estimated working memory
exceeds ``max_memory`` or ``tile`` is given — on tiles. A tile is a *core* (a square of side
``tile``, a multiple of the net's padding multiple) grown by a margin ``P`` on every side that
has a neighbour. The margin is the measured receptive-field radius of the network
(:func:`receptive_field`, the extent of the non-zero input gradient of one output pixel) plus
half a feathering band: every output pixel inside ``core ± feather/2`` only sees input that the
tile contains, so it equals the untiled result up to float rounding, and neighbouring tiles are
blended there with linear weights that sum to one (feathered blending).

**Fast mode** uses the fact that the network's maps are multiplicative and smooth. For the
Retinex head without alignment (the paper's general genotype)::

    y = (I_U ⊗ A_U + I_O ⊗ A_O) ⊘ R,    A_X = Π_s S_X^s  (the cascaded SRSM attentions)

The maps ``A_U``, ``A_O`` and ``R`` are predicted on copies of the inputs reduced to a longest
side of ``fast_size`` pixels, transferred to full resolution with a fast guided filter
(He & Sun 2015: the linear coefficients ``a, b`` of ``map ≈ a·guide + b`` are fitted at low
resolution in box windows, bilinearly upsampled, and applied to the full-resolution guide, the
luma of the image the map multiplies), and the products and the division are done at full
resolution in row strips. For the direct head and for any model with alignment, the low-res
output is transferred as a guided-upsampled ratio to the full-resolution base ``(I_U+I_O)/2``.

**N frames**: frames are ordered darkest to brightest (EXIF exposure when every file has it,
else trimmed-mean brightness; :mod:`crmef.data.exposure`). By default the darkest and brightest
*usable* frames (not nearly all black/white) are fused. With ``all_frames=True`` every frame is
used by progressive pairwise fusion: ``r ← f_0``; for ``k = 1 … n-1``: ``r ← net(r, f_k)`` —
the running result is the under-exposed input and the next brighter frame the over-exposed one.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from crmef.engine import engine_card
from crmef.errors import InputError
from crmef.nets.fusion import FusionNet
from crmef.utils import resolve_device

MODES = ("auto", "fast", "full")
DEFAULT_MAX_MEMORY = 768 << 20
"""Default working-memory budget of the network (bytes): 768 MiB."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class FuseConfig:
    """How :func:`fuse` runs.

    Attributes:
        mode: ``"full"`` (network at full resolution), ``"fast"`` (maps at reduced resolution,
            guided upsampling) or ``"auto"`` (fast on CPU above ``fast_threshold_mp``).
        tile: core tile side in pixels for full mode; ``None`` picks it from ``max_memory``.
        max_memory: working-memory budget of the network in bytes (full mode tiling).
        fast_size: longest side of the reduced inputs in fast mode.
        fast_threshold_mp: image size (megapixels) above which ``auto`` uses fast mode on CPU.
        feather: width of the linear blending band between tiles, in pixels.
        gf_radius: guided-filter box radius at the reduced resolution.
        gf_eps: guided-filter regulariser.
        all_frames: fuse every frame (progressive pairwise) instead of the darkest/brightest pair.
        resize: resize frames of a different size to the first frame's size instead of failing.
    """

    mode: str = "auto"
    tile: int | None = None
    max_memory: int = DEFAULT_MAX_MEMORY
    fast_size: int = 512
    fast_threshold_mp: float = 2.0
    feather: int = 16
    gf_radius: int = 4
    gf_eps: float = 1e-3
    all_frames: bool = False
    resize: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.tile is not None and self.tile < 16:
            raise InputError(f"tile must be at least 16 pixels, got {self.tile}")
        if self.max_memory < (32 << 20):
            raise InputError(f"max_memory must be at least 32 MB, got {self.max_memory} bytes")
        if self.fast_size < 32:
            raise InputError(f"fast_size must be at least 32, got {self.fast_size}")


# --------------------------------------------------------------------------- helpers
def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) float32 numpy -> (1, 3, H, W) tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).to(device)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor -> (H, W, 3) float32 numpy."""
    return t[0].permute(1, 2, 0).float().cpu().numpy()


def luma(img: np.ndarray) -> np.ndarray:
    """Rec.601 luma of (H, W, 3) RGB -> (H, W) float32."""
    y = cv2.transform(img, _LUMA[None, :])
    return y[..., 0] if y.ndim == 3 else y


def check_frames(frames: Sequence[np.ndarray], names: Sequence[str] | None = None, resize: bool = False) -> list[np.ndarray]:
    """Validate frames (each (H, W, 3) float in [0, 1], same size); returns float32 copies/views.

    Raises:
        InputError: fewer than two frames, a bad shape, or different sizes without ``resize``.
    """
    names = list(names) if names is not None else [f"frame {i}" for i in range(len(frames))]
    if len(frames) < 2:
        which = f": {names[0]}" if names else ""
        raise InputError(f"need at least two frames (an under- and an over-exposed one), got {len(frames)}{which}")
    out: list[np.ndarray] = []
    h0 = w0 = 0
    for i, (img, name) in enumerate(zip(frames, names)):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3:
            raise InputError(f"{name}: expected an RGB image of shape (H, W, 3), got {tuple(img.shape)}")
        if img.shape[0] < 2 or img.shape[1] < 2:
            raise InputError(f"{name}: image is {img.shape[1]}x{img.shape[0]} pixels; at least 2x2 is needed")
        if img.dtype == np.uint8:
            img = img.astype(np.float32) / 255.0
        elif img.dtype == np.uint16:
            img = img.astype(np.float32) / 65535.0
        elif img.dtype != np.float32:
            img = img.astype(np.float32)
        if i == 0:
            h0, w0 = img.shape[:2]
        elif img.shape[:2] != (h0, w0):
            if not resize:
                raise InputError(
                    f"{name}: size {img.shape[1]}x{img.shape[0]} differs from {names[0]} ({w0}x{h0}); "
                    "frames of one bracket must have the same size (use --resize to resample them)"
                )
            img = cv2.resize(img, (w0, h0), interpolation=cv2.INTER_AREA)
        out.append(img)
    return out


def order_by_brightness(frames: Sequence[np.ndarray]) -> list[int]:
    """Indices of ``frames`` sorted darkest to brightest (mean luma of a 1/8 subsample)."""
    return sorted(range(len(frames)), key=lambda i: float(luma(np.ascontiguousarray(frames[i][::8, ::8])).mean()))


def usable_pair(frames: Sequence[np.ndarray], clip_fraction: float = 0.95) -> tuple[int, int]:
    """Darkest and brightest usable frames of brightness-ordered frames (indices into them).

    A frame is unusable when at least ``clip_fraction`` of its pixels are nearly black (luma
    <= 8/255) or nearly white (>= 247/255); if fewer than two are usable, the extremes are used.
    """
    good = []
    for i, f in enumerate(frames):
        y = luma(np.ascontiguousarray(f[::4, ::4]))
        if (y <= 8 / 255).mean() < clip_fraction and (y >= 247 / 255).mean() < clip_fraction:
            good.append(i)
    if len(good) < 2:
        return 0, len(frames) - 1
    return good[0], good[-1]


# --------------------------------------------------------------------------- receptive field
def receptive_field(net: FusionNet, device: torch.device | str = "cpu") -> int:
    """Measured receptive-field radius (pixels) of ``net``: how far an input pixel can affect an
    output pixel.

    One input pixel (at two parities, in both frames) is changed and the extent of the change of
    the unclipped output is measured, on an input grown until that extent stops short of its
    border. Forward passes only; cached on the net. For deformable (aligned) models this is the
    extent at the measured offsets, so a safety margin of 16 pixels is added for learned offsets.
    """
    cached = getattr(net, "_crmef_rf", None)
    if cached is not None:
        return int(cached)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    size = 96
    while True:
        u = (0.2 + 0.3 * torch.rand(1, 3, size, size, generator=gen)).to(device)
        o = (0.5 + 0.3 * torch.rand(1, 3, size, size, generator=gen)).to(device)

        def raw(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            fa, base = net.fuse_features(a, b)
            return net.head(net.drm(fa), base)

        with torch.no_grad():
            ref = raw(u, o)
            c = size // 2
            radius = 0
            for d in (0, 1):
                u2, o2 = u.clone(), o.clone()
                u2[..., c + d, c + d] += 0.5
                o2[..., c + d, c + d] -= 0.4
                changed = ((raw(u2, o2) - ref).abs().amax(dim=(0, 1)) > 0).nonzero()
                if len(changed):
                    radius = max(radius, int((changed - (c + d)).abs().max()))
        if radius < c - 4 or size >= 1024:
            break
        size *= 2
    if net.dasm is not None:
        radius += 16
    net._crmef_rf = radius  # type: ignore[attr-defined]
    return radius


def bytes_per_pixel(net: FusionNet) -> int:
    """Estimated peak working memory of a full-resolution forward pass, bytes per input pixel.

    The DRM at width 2C dominates: its stem and running features plus a block's conv, PReLU,
    projection and skip tensors, about 7 tensors of 2C channels alive at once, in float32; plus
    the inputs, relit images and maps (~40 channels). Calibrated against the peak RSS measured by
    ``benchmarks/bench_fuse.py`` (C=16: estimate 1,056 B/px).
    """
    c = net.config.channels
    extra = 8 * c if net.dasm is not None else 0  # pyramid features and offsets
    return 4 * (7 * 2 * c + 40 + extra)


def choose_tile(net: FusionNet, margin: int, max_memory: int) -> int:
    """Largest core tile side (multiple of ``net.multiple``) whose padded tile fits ``max_memory``."""
    side = int(math.sqrt(max_memory / bytes_per_pixel(net))) - 2 * margin
    m = 2 * net.multiple
    return max(m * 8, side // m * m)


def _axis_tiles(n: int, core: int, margin: int, feather: int) -> list[tuple[int, int, int, int, np.ndarray]]:
    """1-D tiling of ``n`` pixels: (ext_start, ext_end, weights over the extended range)."""
    tiles = []
    starts = list(range(0, n, core))
    for i, s in enumerate(starts):
        e = min(s + core, n)
        first, last = i == 0, i == len(starts) - 1
        a = s if first else max(0, s - margin)
        b = e if last else min(n, e + margin)
        pos = np.arange(a, b, dtype=np.float32) + 0.5
        w = np.ones(b - a, dtype=np.float32)
        if not first:
            w = np.minimum(w, np.clip(0.5 + (pos - s) / feather, 0.0, 1.0))
        if not last:
            w = np.minimum(w, np.clip(0.5 + (e - pos) / feather, 0.0, 1.0))
        tiles.append((a, b, s, e, w))
    return tiles


@torch.no_grad()
def run_full(
    net: FusionNet,
    under: np.ndarray,
    over: np.ndarray,
    tile: int | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    feather: int = 16,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Network at full resolution, tiled when needed; (H, W, 3) x2 -> (H, W, 3) float32.

    Tiling happens when ``tile`` is given or the estimated working memory
    (``H·W·bytes_per_pixel``) exceeds ``max_memory``. Overlap margin = measured receptive field
    + ``feather/2`` + 8, rounded up to the net's multiple, so tiles equal untiled inference.
    """
    device = torch.device(device)
    h, w = under.shape[:2]
    if tile is None and h * w * bytes_per_pixel(net) <= max_memory:
        return _to_numpy(net(_to_tensor(under, device), _to_tensor(over, device)))
    m = net.multiple
    rf = receptive_field(net, device)
    margin = int(math.ceil((rf + feather / 2 + 8) / m) * m)  # +8: safety over the measured radius
    core = tile if tile is not None else choose_tile(net, margin, max_memory)
    core = max(m, core // m * m)
    ys = _axis_tiles(h, core, margin, feather)
    xs = _axis_tiles(w, core, margin, feather)
    out = np.zeros((h, w, 3), dtype=np.float32)
    acc = np.zeros((h, w, 1), dtype=np.float32)
    total, done = len(ys) * len(xs), 0
    for y0, y1, _, _, wy in ys:
        for x0, x1, _, _, wx in xs:
            u = _to_tensor(under[y0:y1, x0:x1], device)
            o = _to_tensor(over[y0:y1, x0:x1], device)
            res = _to_numpy(net(u, o))
            wt = (wy[:, None] * wx[None, :])[..., None]
            out[y0:y1, x0:x1] += res * wt
            acc[y0:y1, x0:x1] += wt
            done += 1
            if progress is not None:
                progress(done, total)
    out /= np.maximum(acc, 1e-12)
    return out


# --------------------------------------------------------------------------- fast mode
def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_coefficients(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Guided-filter coefficients (He et al.) with a grey guide and a multi-channel source.

    Args:
        guide: (h, w) float32.
        src: (h, w, c) float32, the map to transfer.
        radius: box radius; eps: regulariser.

    Returns:
        ``(a, b)``, each (h, w, c), such that ``src ≈ a·guide + b`` locally (box-smoothed).
    """
    g = guide[..., None]
    mean_g = _box(guide, radius)[..., None]
    mean_s = _box(src, radius).reshape(src.shape)
    corr_gs = _box(g * src, radius).reshape(src.shape)
    var_g = _box(guide * guide, radius)[..., None] - mean_g * mean_g
    a = (corr_gs - mean_g * mean_s) / (var_g + eps)
    b = mean_s - a * mean_g
    return _box(a, radius).reshape(src.shape), _box(b, radius).reshape(src.shape)


class _Upsampler:
    """Bilinear upsampling of low-res maps (h, w, c) to rows of a full-res (H, W) grid, matching
    ``cv2.resize(..., INTER_LINEAR)`` (pixel-centre alignment), one row strip at a time."""

    def __init__(self, low: tuple[int, int], full: tuple[int, int]) -> None:
        (h, w), (self.H, self.W) = low, full
        self.map_x = ((np.arange(self.W, dtype=np.float32) + 0.5) * (w / self.W) - 0.5).clip(0, w - 1)
        self.sy, self.h = h / self.H, h

    def strip(self, maps: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` of ``maps`` upsampled: (r1-r0, W, c)."""
        map_y = ((np.arange(r0, r1, dtype=np.float32) + 0.5) * self.sy - 0.5).clip(0, self.h - 1)
        mx = np.broadcast_to(self.map_x[None, :], (r1 - r0, self.W))
        my = np.broadcast_to(map_y[:, None], (r1 - r0, self.W))
        out = cv2.remap(maps, np.ascontiguousarray(mx), np.ascontiguousarray(my), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(r1 - r0, self.W, -1)


def _reduced_size(h: int, w: int, longest: int, m: int) -> tuple[int, int]:
    s = min(1.0, longest / max(h, w))
    return max(m, int(round(h * s / m)) * m), max(m, int(round(w * s / m)) * m)


@torch.no_grad()
def run_fast(
    net: FusionNet,
    under: np.ndarray,
    over: np.ndarray,
    fast_size: int = 512,
    gf_radius: int = 4,
    gf_eps: float = 1e-3,
    device: torch.device | str = "cpu",
    strip: int = 256,
) -> np.ndarray:
    """Fast mode (module docstring): maps at longest side ``fast_size``, guided upsampling,
    application at full resolution in row strips. (H, W, 3) x2 -> (H, W, 3) float32."""
    device = torch.device(device)
    h, w = under.shape[:2]
    lh, lw = _reduced_size(h, w, fast_size, net.multiple)
    ul = cv2.resize(under, (lw, lh), interpolation=cv2.INTER_AREA)
    ol = cv2.resize(over, (lw, lh), interpolation=cv2.INTER_AREA)
    tu, to = _to_tensor(ul, device), _to_tensor(ol, device)
    up = _Upsampler((lh, lw), (h, w))
    out = np.empty((h, w, 3), dtype=np.float32)
    eps = net.config.eps
    if net.config.head == "retinex" and net.dasm is None:
        au, ao = torch.ones_like(tu), torch.ones_like(to)
        ru, ro = tu, to
        for s in range(net.config.cascades):
            su, so = net.srsm[2 * s].attention(ru), net.srsm[2 * s + 1].attention(ro)
            au, ao, ru, ro = au * su, ao * so, ru * su, ro * so
        fa = ru + ro
        illum = net.illumination(net.drm(fa))
        au_n, ao_n, fa_n, r_n = (_to_numpy(t) for t in (au, ao, fa, illum))
        cu = np.concatenate(guided_coefficients(luma(ul), au_n, gf_radius, gf_eps), axis=2)
        co = np.concatenate(guided_coefficients(luma(ol), ao_n, gf_radius, gf_eps), axis=2)
        cr = np.concatenate(guided_coefficients(luma(fa_n), r_n, gf_radius, gf_eps), axis=2)
        for r0 in range(0, h, strip):
            r1 = min(h, r0 + strip)
            u, o = under[r0:r1], over[r0:r1]
            ku, ko, kr = up.strip(cu, r0, r1), up.strip(co, r0, r1), up.strip(cr, r0, r1)
            fa_s = u * (ku[..., :3] * luma(u)[..., None] + ku[..., 3:])
            fa_s += o * (ko[..., :3] * luma(o)[..., None] + ko[..., 3:])
            illum_s = kr[..., :3] * luma(fa_s)[..., None] + kr[..., 3:]
            np.divide(fa_s, np.maximum(illum_s, eps), out=fa_s)
            np.clip(fa_s, 0.0, 1.0, out=out[r0:r1])
        return out
    # direct head or alignment: transfer the low-res output as a ratio to the base (I_U+I_O)/2
    yl = _to_numpy(net(tu, to))
    base_l = 0.5 * (ul + ol)
    ratio = yl / (base_l + 1e-2)
    cb = np.concatenate(guided_coefficients(luma(base_l), ratio, gf_radius, gf_eps), axis=2)
    for r0 in range(0, h, strip):
        r1 = min(h, r0 + strip)
        base = 0.5 * (under[r0:r1] + over[r0:r1])
        k = up.strip(cb, r0, r1)
        ratio_s = k[..., :3] * luma(base)[..., None] + k[..., 3:]
        np.clip((base + 1e-2) * ratio_s, 0.0, 1.0, out=out[r0:r1])
    return out


# --------------------------------------------------------------------------- public API
def resolve_mode(mode: str, device: torch.device, pixels: int, threshold_mp: float = 2.0) -> str:
    """``auto`` → ``fast`` on CPU for images above ``threshold_mp`` megapixels, else ``full``."""
    if mode != "auto":
        return mode
    return "fast" if device.type == "cpu" and pixels > threshold_mp * 1e6 else "full"


def fuse_pair(net: FusionNet, under: np.ndarray, over: np.ndarray, cfg: FuseConfig, device: torch.device) -> np.ndarray:
    """Fuse one (under, over) pair of (H, W, 3) float32 arrays with ``cfg`` -> (H, W, 3)."""
    mode = resolve_mode(cfg.mode, device, under.shape[0] * under.shape[1], cfg.fast_threshold_mp)
    if mode == "fast":
        return run_fast(net, under, over, cfg.fast_size, cfg.gf_radius, cfg.gf_eps, device)
    return run_full(net, under, over, cfg.tile, cfg.max_memory, cfg.feather, device)


def fuse_ordered(net: FusionNet, frames: Sequence[np.ndarray], cfg: FuseConfig, device: torch.device) -> np.ndarray:
    """Fuse frames already sorted darkest to brightest: the usable extremes, or with
    ``cfg.all_frames`` every frame by progressive pairwise fusion (module docstring)."""
    if cfg.all_frames:
        result = frames[0]
        for f in frames[1:]:
            result = fuse_pair(net, result, f, cfg, device)
        return result
    i, j = usable_pair(frames)
    return fuse_pair(net, frames[i], frames[j], cfg, device)


def get_model(model: str | os.PathLike[str] | FusionNet, device: torch.device) -> FusionNet:
    """A :class:`FusionNet` from a name, a path or a net (moved to ``device``, eval mode)."""
    if isinstance(model, FusionNet):
        return model.to(device).eval()
    from crmef.models import load_model

    return load_model(model, device=device)


def get_device(device: str | torch.device) -> torch.device:
    """:func:`crmef.utils.resolve_device` with errors as :class:`InputError`."""
    try:
        return resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise InputError(str(exc)) from exc


def fuse(
    images: Sequence[np.ndarray | str | os.PathLike[str]],
    model: str | os.PathLike[str] | FusionNet = "general",
    device: str | torch.device = "auto",
    mode: str = "auto",
    **options: object,
) -> np.ndarray:
    """Fuse a bracket into one well-exposed image.

    With an engine model (``"general"``, the default, ``"aligned"``, or an engine card ``.json``)
    every usable frame is fused at once by :mod:`crmef.engine` (``extremes=True``: only the
    darkest and brightest usable frames); with the paper's network (a ``.safetensors`` path from
    ``crmef train``, or a :class:`FusionNet`) the pair path below.

    Args:
        images: two or more frames of one scene, each an (H, W, 3) RGB array (float in [0, 1],
            uint8 or uint16) or an image path, in any order.
        model: ``"general"``, ``"aligned"``, an engine card ``.json``, a ``.safetensors`` path from
            ``crmef train``, or a :class:`FusionNet`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        mode: ``"auto"``, ``"fast"`` or ``"full"``.
        **options: any other :class:`FuseConfig` field (``tile``, ``max_memory``, ``all_frames``,
            ``resize``, ``fast_size``, …).

    Returns:
        float32 array (H, W, 3), RGB in [0, 1], the size of the first frame.

    Raises:
        InputError: bad frames (fewer than two, unreadable, different sizes) or a missing model.
    """
    from crmef.imageio import read_image

    names = [str(f) if isinstance(f, (str, os.PathLike)) else f"frame {i}" for i, f in enumerate(images)]
    arrays = [read_image(f) if isinstance(f, (str, os.PathLike)) else f for f in images]
    card = None if isinstance(model, FusionNet) else engine_card(model)
    if card is not None:
        from crmef.engine import fuse_bracket

        extremes = bool(options.pop("extremes", False))
        resize = bool(options.pop("resize", False))
        if options or mode != "auto":
            raise InputError(f"the engine model {model!r} takes no options besides extremes and resize, "
                             f"got {sorted(options) + ([f'mode={mode}'] if mode != 'auto' else [])}")
        frames = check_frames(arrays, names, resize=resize)
        return fuse_bracket(_engine(str(card)), frames, names, extremes=extremes)[0]
    options.pop("extremes", None)
    cfg = FuseConfig(mode=mode, **options)  # type: ignore[arg-type]
    frames = check_frames(arrays, names, resize=cfg.resize)
    order = order_by_brightness(frames)
    dev = get_device(device)
    net = get_model(model, dev)
    return fuse_ordered(net, [frames[i] for i in order], cfg, dev)


@functools.lru_cache(maxsize=4)
def _engine(card: str):
    from crmef.engine import ExposureModel

    return ExposureModel.from_card(card)


def order_files(paths: Sequence[Path]) -> list[Path]:
    """Image files sorted darkest to brightest (EXIF exposure, else brightness)."""
    try:
        from crmef.data.exposure import order_frames
    except ImportError:  # pragma: no cover - the exposure module ships with crmef
        from crmef.imageio import read_image

        arrays = [read_image(p) for p in paths]
        return [paths[i] for i in order_by_brightness(arrays)]
    return [f.path for f in order_frames(paths)]
