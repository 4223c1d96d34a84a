"""Chroma hull distance (``chroma_hull``, lower is better): colour a fusion invents.

A fusion that mixes its sources in linear light, each scaled by any per-pixel gain, cannot leave
the chromaticities its sources hold at that place. This metric measures how far a fused image
leaves them, with no reference image (issue 17). Definition, followed exactly so values agree
across implementations:

1. Every image (the N sources and the fused one, same size) as sRGB in [0, 1] (8-bit / 255,
   16-bit / 65535), to linear light with the IEC 61966-2-1 curve
   (x <= 0.04045: x / 12.92; else ((x + 0.055) / 1.055) ** 2.4).
2. Crop to multiples of 8 from the top-left corner; average every 8x8 block in linear RGB.
3. XYZ with the sRGB D65 matrix :data:`SRGB_TO_XYZ`; chromaticity
   u' = 4X / (X + 15Y + 3Z), v' = 9Y / (X + 15Y + 3Z).
4. A block counts when the fused Y > 0.002 and at least one source has Y > 0.002 there. Its
   hull is the convex hull of the (u', v') of the sources with Y > 0.002 in that block (a point,
   a segment or a polygon).
5. d = Euclidean distance in the u'v' plane from the fused block's chromaticity to that hull
   (0 inside). The metric is the mean of d over the counted blocks.

Numpy only (importing this module does not import torch) and vectorised over blocks: the hull
of each block is never built; the distance to it is the minimum distance to every segment
between two usable sources (a segment of one source with itself is that point), which equals
the distance to the hull for a point outside it, and 0 when the point lies in a triangle of
one usable source and two others (:func:`hull_distance`). Cost: O(N^2) array passes over the
blocks (N sources); a 12 MP bracket of three (uint8) scores in about half a second on a 2-core CPU.

Inputs are (H, W, 3) RGB arrays: ``uint8`` (/ 255), ``uint16`` (/ 65535) or float in [0, 1].
Float images are clipped to [0, 1] and read at 16-bit precision (rounded to k / 65535) so every
dtype goes through one exact table of the transfer curve: images decoded from 8- or 16-bit files
(k / 255 or k / 65535 as float32 or float64) are scored exactly; other floats move by at most
7.7e-6 in sRGB, far below the metric's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crmef.errors import InputError

__all__ = ["BLOCK", "CLIPPED", "D65_UV", "MID_GREY", "SRGB_TO_XYZ", "Y_MIN", "block_chromaticity", "camera_colour",
           "camera_colour_from", "camera_evidence",
           "chroma_hull", "chroma_hull_map", "chroma_kept", "hull_distance"]

BLOCK = 8
"""Side of the square blocks (pixels) that are averaged in linear light."""
Y_MIN = 0.002
"""A block takes part (fused) / a source spans the hull (sources) when its luminance Y > this."""
SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
"""Linear sRGB (D65) to CIE XYZ, the matrix of the definition (4 decimals)."""

_ROWS_PER_CHUNK = 16 * BLOCK  # rows linearised at a time (a small float64 working set that stays cached)
_COLUMN_SUM = np.tile(np.eye(3), (BLOCK, 1))  # (24, 3): sums the 8 RGB pixels of a block row per channel


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


_LUT8 = _srgb_to_linear(np.arange(256) / 255.0)
_LUT16: np.ndarray | None = None  # built on first use (65536 entries)


def _lut16() -> np.ndarray:
    global _LUT16
    if _LUT16 is None:
        _LUT16 = _srgb_to_linear(np.arange(65536) / 65535.0)
    return _LUT16


def _codes(img: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(integer codes, table)`` of an image: its linear values are ``table[codes]``."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise InputError(f"{what}: expected an (H, W, 3) RGB image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a, _LUT8
    if a.dtype == np.uint16:
        return a, _lut16()
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise InputError(f"{what}: the image holds NaN or infinite values")
        q = np.rint(np.clip(a, 0.0, 1.0) * 65535.0).astype(np.uint16)
        return q, _lut16()
    raise InputError(f"{what}: expected uint8, uint16 or float pixels, got {a.dtype}")


def _block_means(img: np.ndarray, what: str) -> np.ndarray:
    """(H // 8, W // 8, 3) float64 means of the 8x8 blocks in linear RGB (top-left crop)."""
    codes, table = _codes(img, what)
    h, w = (codes.shape[0] // BLOCK) * BLOCK, (codes.shape[1] // BLOCK) * BLOCK
    if h == 0 or w == 0:
        raise InputError(f"{what}: {codes.shape[1]}x{codes.shape[0]} is smaller than one {BLOCK}x{BLOCK} block")
    codes = np.ascontiguousarray(codes[:h, :w])
    out = np.empty((h // BLOCK, w // BLOCK, 3), dtype=np.float64)
    for top in range(0, h, _ROWS_PER_CHUNK):
        rows = min(_ROWS_PER_CHUNK, h - top)
        lin = table[codes[top : top + rows].reshape(-1)].reshape(rows // BLOCK, BLOCK, w * 3)
        acc = lin[:, 0].copy()  # sum the 8 rows of each block row (contiguous adds) ...
        for k in range(1, BLOCK):
            acc += lin[:, k]
        # ... then the 8 pixels of each block, per channel: (blocks, 24) @ (24, 3) 0/1 matrix
        out[top // BLOCK : (top + rows) // BLOCK] = (acc.reshape(-1, BLOCK * 3) @ _COLUMN_SUM).reshape(
            rows // BLOCK, w // BLOCK, 3
        )
    out /= BLOCK * BLOCK
    return out


def block_chromaticity(img: np.ndarray, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-3 of the definition for one image.

    Args:
        img: (H, W, 3) RGB, uint8, uint16 or float in [0, 1].
        what: name used in error messages.

    Returns:
        ``(uv, Y)``: (H // 8, W // 8, 2) u'v' chromaticities (NaN where X + 15Y + 3Z = 0) and
        (H // 8, W // 8) luminances of the 8x8 blocks.
    """
    xyz = _block_means(img, what) @ SRGB_TO_XYZ.T
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    den = x + 15.0 * y + 3.0 * z
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([4.0 * x / den, 9.0 * y / den], axis=-1)
    uv[den <= 0] = np.nan
    return uv, y


def _segment_distance(qx: np.ndarray, qy: np.ndarray, ax: np.ndarray, ay: np.ndarray, bx: np.ndarray,
                      by: np.ndarray) -> np.ndarray:
    """Distance from points q to segments [a, b] (coordinate arrays of one shape); a == b gives
    the distance to the point."""
    ex, ey = bx - ax, by - ay
    len2 = ex * ex + ey * ey
    t = ((qx - ax) * ex + (qy - ay) * ey) / np.where(len2 > 0, len2, 1.0)
    np.clip(t, 0.0, 1.0, out=t)
    dx, dy = qx - (ax + t * ex), qy - (ay + t * ey)
    return np.sqrt(dx * dx + dy * dy)


def _cross(ox: np.ndarray, oy: np.ndarray, ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    """z of (a - o) x (b - o): > 0 when o, a, b turn counter-clockwise."""
    return (ax - ox) * (by - oy) - (ay - oy) * (bx - ox)


def hull_distance(points: np.ndarray, valid: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Distance from each query point to the convex hull of its valid points, 0 inside.

    Args:
        points: (M, N, 2) N candidate points per query.
        valid: (M, N) bool, the points that span each hull.
        query: (M, 2).

    Returns:
        (M,) float64 distances (``inf`` for a row without a valid point).

    Exact up to floating point for any configuration (one point, coincident points, collinear
    points, polygons), with O(N^2) passes over the rows and no hull construction:

    - Outside the hull, the nearest hull point lies on a hull edge, which is one of the segments
      between two valid points, and every such segment lies in the hull: the distance is the
      minimum distance to all of them (a segment of a point with itself is that point).
    - Inside: with p0 any valid point (the first one here), the hull is the union of the
      triangles (p0, pi, pj): the ray from p0 through x leaves the hull on an edge [pi, pj], so
      x lies in that triangle. A query in one of them gets 0. Triangles whose doubled area is at
      most 1e-12 of their longest squared side are left to the segment test (they are segments
      to within 1e-12 of their length).
    """
    p = np.asarray(points, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool)
    q = np.asarray(query, dtype=np.float64)
    m, n = ok.shape
    if p.shape != (m, n, 2) or q.shape != (m, 2):
        raise InputError(f"hull_distance: shapes {p.shape}, {ok.shape}, {q.shape} do not match (M, N, 2), (M, N), (M, 2)")
    px, py = np.ascontiguousarray(p[..., 0].T), np.ascontiguousarray(p[..., 1].T)  # (N, M)
    okt = np.ascontiguousarray(ok.T)
    qx, qy = q[:, 0].copy(), q[:, 1].copy()
    best = np.full(m, np.inf)
    with np.errstate(invalid="ignore"):
        for i in range(n):
            for j in range(i, n):
                d = _segment_distance(qx, qy, px[i], py[i], px[j], py[j])
                np.minimum(best, np.where(okt[i] & okt[j], d, np.inf), out=best)
        first = np.argmax(ok, axis=1)  # the first valid point of each row: the triangles' apex
        rows = np.arange(m)
        ox, oy = px[first, rows], py[first, rows]
        for i in range(n):
            for j in range(i + 1, n):
                use = okt[i] & okt[j]
                ax, ay, bx, by = px[i], py[i], px[j], py[j]
                area2 = _cross(ox, oy, ax, ay, bx, by)
                side2 = np.maximum(np.maximum((ax - ox) ** 2 + (ay - oy) ** 2, (bx - ax) ** 2 + (by - ay) ** 2),
                                   (ox - bx) ** 2 + (oy - by) ** 2)
                s = np.sign(area2)
                inside = (use & (np.abs(area2) > 1e-12 * side2)
                          & (s * _cross(ox, oy, ax, ay, qx, qy) >= 0)
                          & (s * _cross(ax, ay, bx, by, qx, qy) >= 0)
                          & (s * _cross(bx, by, ox, oy, qx, qy) >= 0))
                best[inside] = 0.0
    return best


def _check_inputs(sources: Sequence[np.ndarray], fused: np.ndarray, metric: str) -> None:
    if isinstance(sources, np.ndarray) and sources.ndim == 3:
        raise InputError(f"{metric}: sources must be a sequence of (H, W, 3) images, got one image")
    if len(sources) < 1:
        raise InputError(f"{metric} needs at least one source image")
    shape = np.shape(fused)[:2]
    for i, s in enumerate(sources):
        if np.shape(s)[:2] != shape:
            raise InputError(
                f"{metric}: source {i + 1} is {np.shape(s)[1]}x{np.shape(s)[0]} but the fused image is "
                f"{shape[1] if len(shape) > 1 else '?'}x{shape[0] if shape else '?'}; all must have the same size"
            )


def chroma_hull_map(sources: Sequence[np.ndarray], fused: np.ndarray) -> np.ndarray:
    """Per-block chroma hull distances (steps 1-5 without the mean), e.g. to see where a cast is.

    Args:
        sources: the N source exposures, (H, W, 3) RGB each (uint8, uint16 or float in [0, 1]).
        fused: the fused image, same size.

    Returns:
        (H // 8, W // 8) float64: the u'v' distance of each 8x8 block of ``fused`` to the hull
        of its sources' chromaticities, NaN where the block does not count (fused Y <= 0.002 or
        no source with Y > 0.002).

    Raises:
        InputError: no source, images of different sizes or smaller than 8x8, bad dtype/shape.
    """
    _check_inputs(sources, fused, "chroma_hull")
    fuv, fy = block_chromaticity(fused, "fused image")
    suv, sok = [], []
    for i, s in enumerate(sources):
        uv, y = block_chromaticity(s, f"source {i + 1}")
        suv.append(uv)
        sok.append(y > Y_MIN)
    ok = np.stack(sok, axis=-1)  # (h, w, N)
    counted = (fy > Y_MIN) & ok.any(axis=-1)
    out = np.full(fy.shape, np.nan)
    if counted.any():
        pts = np.stack(suv, axis=-2)[counted]  # (M, N, 2)
        out[counted] = hull_distance(pts, ok[counted], fuv[counted])
    return out


def chroma_hull(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Chroma hull distance of a fused image given its sources (issue 17; lower is better).

    The mean over the counted 8x8 blocks of :func:`chroma_hull_map`: how far, in the CIE 1976
    u'v' plane, the fused image's colour leaves the convex hull of its sources' colours at the
    same place. 0 for any per-pixel linear-light mix of the sources with constant weights over
    each block; a pixel-varying mix leaves a small residue (a block mean of mixes is not a mix of
    the block means).

    Args:
        sources: the N >= 1 source exposures, (H, W, 3) RGB each: uint8, uint16 or float in [0, 1].
        fused: the fused image, same size and conventions.

    Returns:
        The mean distance (float); NaN when no block counts (all black).
    """
    d = chroma_hull_map(sources, fused)
    counted = np.isfinite(d)
    return float(d[counted].mean()) if counted.any() else float("nan")


D65_UV = (0.1978, 0.4683)
"""u'v' of the D65 white point (the neutral of sRGB): a block's chroma is its distance to it."""
MID_GREY = 0.18
"""Linear luminance a well-exposed block is closest to (photographic middle grey)."""


def chroma_kept(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """How much of its sources' colourfulness a fused image keeps (higher is better; 1 = all).

    ``chroma_hull`` sees colour a fusion invents but not colour it loses: a grey-washed mix stays
    inside the hull. This metric sees the loss, with no reference image. Per 8x8 block (steps 1-3
    of :func:`chroma_hull`), a block's chroma is its u'v' distance to D65 white; the block's
    reference is the source best exposed there (its Y closest to middle grey 0.18 in log,
    ``|log(Y / 0.18)|`` smallest), the colour a photographer sees in the frame made for that place.
    The metric is ``Σ chroma(fused) / Σ chroma(reference)`` over the blocks that count for
    :func:`chroma_hull` (fused Y > 0.002 and a source with Y > 0.002). A fusion as colourful as
    the best-exposed frame everywhere scores 1; one that washes colour out to the palest frame's
    scores its ratio; above 1 is more saturated than any well-exposed source (see ``chroma_hull``
    for whether that colour is invented).

    Args:
        sources: the N >= 1 source exposures, (H, W, 3) RGB each: uint8, uint16 or float in [0, 1].
        fused: the fused image, same size and conventions.

    Returns:
        The ratio (float); NaN when no block counts or the references have no colour at all.
    """
    _check_inputs(sources, fused, "chroma_kept")
    fuv, fy = block_chromaticity(fused, "fused image")
    best = np.full(fy.shape, np.inf)
    ref = np.zeros(fy.shape)
    usable = np.zeros(fy.shape, bool)
    white = np.array(D65_UV)
    for i, s in enumerate(sources):
        uv, y = block_chromaticity(s, f"source {i + 1}")
        ok = y > Y_MIN
        dist = np.where(ok, np.abs(np.log(np.maximum(y, 1e-12) / MID_GREY)), np.inf)
        take = dist < best
        best[take] = dist[take]
        ref[take] = np.hypot(*(uv[take] - white).T)
        usable |= ok
    counted = (fy > Y_MIN) & usable & np.isfinite(fuv).all(axis=-1) & np.isfinite(ref)
    den = float(ref[counted].sum())
    if not counted.any() or den <= 0:
        return float("nan")
    return float(np.hypot(*(fuv[counted] - white).T).sum() / den)


CLIPPED = 0.99
"""A bracket frame's 8x8 block is evidence for :func:`camera_colour` only when no channel of any
of its pixels reaches this (sRGB in [0, 1])."""


def _block_peak(img: np.ndarray) -> np.ndarray:
    """(H // 8, W // 8) largest channel value of each 8x8 block, sRGB in [0, 1]."""
    h, w = img.shape[0] // BLOCK * BLOCK, img.shape[1] // BLOCK * BLOCK
    peak = img[:h, :w].max(axis=-1).reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).max(axis=(1, 3))
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype, 1.0)
    return peak.astype(np.float64) / scale


def camera_evidence(bracket: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a bracket says of its camera's colour, for :func:`camera_colour`: per frame and 8x8
    block, its u'v', its log luminance and whether it is evidence (unclipped: no channel of any
    pixel at :data:`CLIPPED`; Y > ``Y_MIN``).

    Args:
        bracket: the N >= 1 frames, (H, W, 3) RGB each, one size: uint8, uint16 or float in [0, 1].

    Returns:
        ``(uv, log_y, ok)``: (N, H // 8, W // 8, 2), (N, H // 8, W // 8), (N, H // 8, W // 8) bool.
    """
    if isinstance(bracket, np.ndarray) and bracket.ndim == 3 or len(bracket) < 1:
        raise InputError("camera_colour: the bracket must be a sequence of one or more (H, W, 3) images")
    _check_inputs(bracket, bracket[0], "camera_colour")
    uvs, logs, oks = [], [], []
    for i, frame in enumerate(bracket):
        uv, y = block_chromaticity(frame, f"frame {i + 1}")
        uvs.append(uv)
        logs.append(np.log(np.maximum(y, 1e-12)))
        oks.append((y > Y_MIN) & (_block_peak(frame) < CLIPPED) & np.isfinite(uv).all(axis=-1))
    return np.stack(uvs), np.stack(logs), np.stack(oks)


def camera_colour(bracket: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """How far a fused image's colour lies from the colour its camera gives each place at the
    level the fusion shows it (lower is better; u'v' distance).

    ``chroma_hull`` and ``chroma_kept`` compare the output with its sources whatever their level;
    a camera, though, renders the same surface paler the brighter it records it, so a dark frame's
    colour lifted to a bright level is more saturated than the camera would make it (and a metric
    whose reference is the frame nearest middle grey counts the camera's own paling as lost
    colour). A bracket holds the camera's rendering of each place at several levels: per 8x8 block
    (steps 1-3 of :func:`chroma_hull`), the frames whose block is unclipped (no channel of any pixel
    at :data:`CLIPPED`) and above ``Y_MIN`` are the evidence; where the fused block's luminance lies
    between two of them (the nearest below and above, in log Y), the camera's chromaticity there is
    theirs interpolated linearly in log Y, and the block counts. The metric is the mean u'v'
    distance from the fused block's chromaticity to it over the counted blocks. Give the whole
    bracket, not only the frames that were fused: a pair fused from a bracket's extremes is then
    checked against the middle frames it never saw.

    Args:
        bracket: the N >= 1 frames of the bracket (the camera's evidence), (H, W, 3) RGB each, any
            order: uint8, uint16 or float in [0, 1].
        fused: the fused image, same size and conventions.

    Returns:
        The mean distance (float); NaN when no block counts.
    """
    _check_inputs(bracket, fused, "camera_colour")
    return camera_colour_from(camera_evidence(bracket), fused)


def camera_colour_from(evidence: tuple[np.ndarray, np.ndarray, np.ndarray], fused: np.ndarray) -> float:
    """:func:`camera_colour` with the bracket's :func:`camera_evidence` made once (several fused
    images of one bracket)."""
    uvs, logs, oks = evidence
    fuv, fy = block_chromaticity(fused, "fused image")
    if fy.shape != logs.shape[1:]:
        raise InputError(f"camera_colour: the fused image's {fy.shape[1]}x{fy.shape[0]} blocks are not the "
                         f"bracket's {logs.shape[2]}x{logs.shape[1]}; all must have the same size")
    level = np.log(np.maximum(fy, 1e-12))
    below, above = np.full(fy.shape, -np.inf), np.full(fy.shape, np.inf)
    uv_below, uv_above = np.zeros(fuv.shape), np.zeros(fuv.shape)
    for uv, ly, ok in zip(uvs, logs, oks):
        b = ok & (ly <= level) & (ly > below)
        below[b], uv_below[b] = ly[b], uv[b]
        a = ok & (ly >= level) & (ly < above)
        above[a], uv_above[a] = ly[a], uv[a]
    counted = np.isfinite(below) & np.isfinite(above) & (fy > Y_MIN) & np.isfinite(fuv).all(axis=-1)
    if not counted.any():
        return float("nan")
    span = (above - below)[counted]
    t = np.divide(level[counted] - below[counted], span, out=np.zeros_like(span), where=span > 0)
    camera = uv_below[counted] + (uv_above[counted] - uv_below[counted]) * t[:, None]
    return float(np.hypot(*(fuv[counted] - camera).T).mean())
