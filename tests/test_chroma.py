"""chroma_hull (issue 17): the shared reference values through ``crmef score``, the hull distance
on hand-made points, dtype and crop conventions, and the property the metric exists for (a
linear-light mix of the sources scores ~0, a tinted one does not)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crmef.errors import InputError
from crmef.metrics.chroma import chroma_hull, chroma_hull_map, hull_distance

SRC = Path(__file__).resolve().parents[1] / "src"


# ----------------------------------------------------------------------------- helpers


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Andrew's monotone chain: the hull's vertices counter-clockwise (1 or 2 for degenerate sets)."""
    pts = sorted(set(points))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _seg(q, a, b) -> float:
    ax, ay, bx, by = *a, *b
    ex, ey = bx - ax, by - ay
    l2 = ex * ex + ey * ey
    t = 0.0 if l2 == 0 else min(1.0, max(0.0, ((q[0] - ax) * ex + (q[1] - ay) * ey) / l2))
    return math.hypot(q[0] - ax - t * ex, q[1] - ay - t * ey)


def _reference_distance(points: list[tuple[float, float]], q: tuple[float, float]) -> float:
    """Slow, independent distance to the convex hull: build it, test inside, distance to its edges."""
    h = _hull(points)
    if len(h) == 1:
        return math.hypot(q[0] - h[0][0], q[1] - h[0][1])
    if len(h) == 2:
        return _seg(q, h[0], h[1])
    edges = list(zip(h, h[1:] + h[:1]))
    if all((b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0]) >= 0 for a, b in edges):
        return 0.0
    return min(_seg(q, a, b) for a, b in edges)


def _one(points: list[tuple[float, float]], q: tuple[float, float], valid: list[bool] | None = None) -> float:
    p = np.array(points, dtype=np.float64)[None]
    ok = np.array(valid if valid is not None else [True] * len(points))[None]
    return float(hull_distance(p, ok, np.array([q], dtype=np.float64))[0])


def _to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


# ----------------------------------------------------------------------------- hull distance


def test_hull_distance_point_and_coincident_points() -> None:
    assert _one([(0.2, 0.4)], (0.2, 0.4)) == 0.0
    assert _one([(0.2, 0.4)], (0.23, 0.44)) == pytest.approx(0.05)
    assert _one([(0.2, 0.4)] * 3, (0.23, 0.44)) == pytest.approx(0.05)  # three coincident sources
    assert _one([(0.2, 0.4), (0.2, 0.4), (0.3, 0.4)], (0.25, 0.43)) == pytest.approx(0.03)  # segment


def test_hull_distance_collinear_points() -> None:
    line = [(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)]  # a degenerate "triangle": a segment
    assert _one(line, (0.15, 0.15)) == pytest.approx(0.0, abs=1e-15)  # on it
    assert _one(line, (0.5, 0.5)) == pytest.approx(math.hypot(0.2, 0.2))  # beyond its end, on its line
    assert _one(line, (0.05, 0.05)) == pytest.approx(math.hypot(0.05, 0.05))
    assert _one(line, (0.2, 0.3)) == pytest.approx(0.1 / math.sqrt(2))  # beside it
    # nearly collinear: a sliver 1e-13 wide is a segment, not a triangle that swallows its line
    assert _one([(0.1, 0.1), (0.3, 0.3), (0.2, 0.2 + 1e-13)], (0.5, 0.5)) == pytest.approx(math.hypot(0.2, 0.2))


def test_hull_distance_polygons() -> None:
    tri = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    assert _one(tri, (0.2, 0.2)) == 0.0
    assert _one(tri, (0.5, 0.5)) == pytest.approx(0.0, abs=1e-15)  # on an edge
    assert _one(tri, (0.5, -0.1)) == pytest.approx(0.1)  # nearest point on an edge
    assert _one(tri, (-0.3, -0.4)) == pytest.approx(0.5)  # nearest point a vertex
    # square with an interior source and a duplicate: the hull is the square
    square = [(0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 1.0)]
    assert _one(square, (0.9, 0.1)) == 0.0  # inside, outside every triangle with the interior apex
    assert _one(square, (0.9, 0.1), valid=[True, True, True, True, False, False]) == 0.0
    assert _one(square, (0.1, 0.9), valid=[True, True, True, True, False, False]) == pytest.approx(0.8 / math.sqrt(2))
    # hull (0, 0), (1, 0), (0.5, 0.5): nearest point on the edge along y = x
    assert _one(square, (0.1, 0.3), valid=[True, True, True, False, False, False]) == pytest.approx(0.2 / math.sqrt(2))
    assert _one(square, (1.2, 0.5)) == pytest.approx(0.2)
    # invalid points do not span the hull
    assert _one([(0.0, 0.0), (1.0, 0.0)], (1.0, 0.0), valid=[True, False]) == pytest.approx(1.0)


def test_hull_distance_matches_a_hull_construction() -> None:
    rng = np.random.default_rng(0)
    m, n = 3000, 7
    pts = rng.random((m, n, 2))
    # degenerate rows: coincident sources, collinear sources, points on a grid (exact ties)
    pts[: m // 6, 1:] = pts[: m // 6, :1]
    t = rng.random((m // 6, n, 1))
    pts[m // 6 : m // 3] = pts[m // 6 : m // 3, :1] + t * (pts[m // 6 : m // 3, 1:2] - pts[m // 6 : m // 3, :1])
    pts[m // 3 : m // 2] = rng.integers(0, 3, (m // 2 - m // 3, n, 2)) / 2.0
    valid = rng.random((m, n)) < 0.7
    valid[np.arange(m), rng.integers(0, n, m)] = True  # at least one per row
    q = rng.random((m, 2)) * 1.4 - 0.2
    q[m // 3 : m // 2] = rng.integers(-1, 4, (m // 2 - m // 3, 2)) / 2.0
    got = hull_distance(pts, valid, q)
    want = np.array([_reference_distance([tuple(p) for p in pts[i][valid[i]]], tuple(q[i])) for i in range(m)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert (want == 0).sum() > m // 20 and (want > 0).sum() > m // 20  # both cases are exercised


# ----------------------------------------------------------------------------- images


def _bracket(h: int = 64, w: int = 80, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    scene = rng.random((h, w, 3)) ** 2 * 0.6  # linear radiance
    srcs = [_to_srgb(scene * g) for g in (0.5, 1.5, 4.0)]
    return srcs, scene


def test_chroma_hull_conventions() -> None:
    srcs, _ = _bracket()
    fused = _to_srgb(_to_linear(srcs[0]) * 0.3 + _to_linear(srcs[1]) * 0.7)
    u8 = [np.rint(s * 255).astype(np.uint8) for s in [*srcs, fused]]
    v8 = chroma_hull(u8[:-1], u8[-1])
    # 8-bit, 16-bit (x 257) and float (/ 255, float32 or float64) spellings of one image agree exactly
    assert chroma_hull([a.astype(np.uint16) * 257 for a in u8[:-1]], u8[-1].astype(np.uint16) * 257) == v8
    assert chroma_hull([a.astype(np.float32) / 255 for a in u8[:-1]], u8[-1].astype(np.float32) / 255) == v8
    assert chroma_hull([a / 255.0 for a in u8[:-1]], u8[-1] / 255.0) == v8
    # crop to multiples of 8 from the top-left: pixels past the last full block do not count
    pad = [np.pad(a, ((0, 7), (0, 5), (0, 0)), constant_values=200) for a in u8]
    assert chroma_hull(pad[:-1], pad[-1]) == v8
    # a source as the fusion scores 0; a fixed-weight linear mix scores 0 up to 8-bit rounding
    assert chroma_hull(u8[:-1], u8[1]) == 0.0
    assert v8 < 2e-4
    dmap = chroma_hull_map(u8[:-1], u8[-1])
    assert dmap.shape == (8, 10) and np.nanmean(dmap) == pytest.approx(v8)


def test_chroma_hull_counted_blocks() -> None:
    srcs, _ = _bracket()
    grey = np.full_like(srcs[0], 0.5)
    black = np.zeros_like(srcs[0])
    red = np.zeros_like(srcs[0])
    red[..., 0] = 0.8
    d = chroma_hull_map([grey], red)
    assert np.isfinite(d).all() and d.min() > 0.1  # saturated red far from neutral grey
    assert chroma_hull([black, grey], red) == pytest.approx(chroma_hull([grey], red))  # black source ignored
    assert np.isnan(chroma_hull([black], red))  # no source above Y = 0.002: no block counts
    assert np.isnan(chroma_hull([grey], black))  # fused black: no block counts
    half = red.copy()
    half[:32] = 0
    d = chroma_hull_map([grey], half)
    assert np.isnan(d[:4]).all() and np.isfinite(d[4:]).all()


def test_chroma_hull_bad_input() -> None:
    srcs, _ = _bracket()
    with pytest.raises(InputError, match="same size"):
        chroma_hull([srcs[0][:32]], srcs[1])
    with pytest.raises(InputError, match="smaller than one 8x8 block"):
        chroma_hull([srcs[0][:7, :7]], srcs[1][:7, :7])
    with pytest.raises(InputError, match="at least one source"):
        chroma_hull([], srcs[1])
    with pytest.raises(InputError, match="RGB"):
        chroma_hull([srcs[0][..., 0]], srcs[1][..., 0])
    with pytest.raises(InputError, match="uint8, uint16 or float"):
        chroma_hull([srcs[0].astype(np.int32)], srcs[1])


def test_chroma_module_imports_no_torch() -> None:
    code = ("import sys; from crmef.metrics.chroma import chroma_hull; from crmef.metrics import chroma_hull_map, "
            "HIGHER_IS_BETTER; assert 'torch' not in sys.modules, 'torch imported'; "
            "from crmef.metrics import fsim; import crmef.metrics.fsim; from crmef.metrics import fsim as f2; "
            "assert callable(fsim) and f2 is fsim")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ----------------------------------------------------------------------------- shared data


def test_score_cli_matches_reference_values(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crmef.cli import main

    folder = shared_data / "metric_vectors" / "chroma_hull"
    rows = list(csv.DictReader((folder / "reference.csv").open()))
    assert len(rows) >= 15 and {len(r["sources"].split(";")) for r in rows} >= {2, 3}
    worst = 0.0
    for r in rows:
        inputs = [str(shared_data / s) for s in r["sources"].split(";")]
        assert main(["score", "--metric", "chroma_hull", "--inputs", *inputs, "--img", str(folder / r["fused"]),
                     "--json"]) == 0
        got = json.loads(capsys.readouterr().out)["chroma_hull"]
        worst = max(worst, abs(got - float(r["chroma_hull"])))
        assert got == pytest.approx(float(r["chroma_hull"]), abs=1e-5), r["fused"]
    print(f"chroma_hull: {len(rows)} rows, worst |diff| = {worst:.2e}")


def test_linear_mix_scores_near_zero_and_a_tint_does_not(shared_data: Path) -> None:
    """On a real bracket: a per-pixel linear-light mix of the sources with random positive
    weights stays in the hull (residue < 1e-3: a block mean of per-pixel mixes is a mix of the
    64 pixels' colours, not of the block means the hull is made of); tinting that same output
    in linear light (R x 0.92, B x 1.12) leaves it."""
    from crmef.imageio import read_image

    folder = shared_data / "sequences" / "deepfuse" / "Seq_25"
    srcs = [read_image(folder / f"Img{i}.jpg") for i in (1, 2, 3)]
    lin = [_to_linear(s.astype(np.float64)) for s in srcs]
    rng = np.random.default_rng(0)
    w = rng.uniform(0.01, 1.0, (len(srcs), *srcs[0].shape[:2], 1))
    mix = sum(wi * li for wi, li in zip(w, lin, strict=True)) / w.sum(axis=0)
    out = np.rint(_to_srgb(mix) * 255).astype(np.uint8)
    tinted = np.rint(_to_srgb(mix * np.array([0.92, 1.0, 1.12])) * 255).astype(np.uint8)
    clean, cast = chroma_hull(srcs, out), chroma_hull(srcs, tinted)
    print(f"Seq_25: linear mix {clean:.6f}, tinted {cast:.6f}")
    assert clean < 1e-3
    assert cast > clean + 0.002 and cast > 5 * clean


# ----------------------------------------------------------------------------- chroma_kept


def test_chroma_kept_reference_is_the_best_exposed_source() -> None:
    """A saturated source at middle grey and a pale, bright one: the saturated one is the
    reference, so a copy of it keeps 1, a copy of the pale one keeps its share, a grey keeps 0,
    and a more saturated image than the reference scores above 1."""
    from crmef.metrics.chroma import chroma_kept

    lin_sat = np.broadcast_to(np.array([0.30, 0.16, 0.10]), (16, 16, 3))  # Y ≈ 0.18, orange
    lin_pale = np.broadcast_to(np.array([0.95, 0.90, 0.85]), (16, 16, 3))  # nearly white
    sat, pale = _to_srgb(lin_sat), _to_srgb(lin_pale)
    assert chroma_kept([sat, pale], sat) == pytest.approx(1.0)
    assert chroma_kept([pale, sat], sat) == pytest.approx(1.0)  # any order
    share = chroma_kept([sat, pale], pale)
    assert 0.05 < share < 0.5
    grey = _to_srgb(np.full((16, 16, 3), 0.2))  # linear R = G = B: D65 white
    assert chroma_kept([sat, pale], grey) < 0.01
    more = _to_srgb(np.broadcast_to(np.array([0.40, 0.14, 0.05]), (16, 16, 3)))
    assert chroma_kept([sat, pale], more) > 1.2
    assert math.isnan(chroma_kept([np.zeros((8, 8, 3))], np.zeros((8, 8, 3))))
    with pytest.raises(InputError, match="chroma_kept: source 1 .* same size"):
        chroma_kept([sat], sat[:8])


def test_chroma_kept_sees_what_chroma_hull_cannot(shared_data: Path) -> None:
    """On a real bracket: the luminance-weighted linear mix (dominated by the brightest, palest
    frame) stays in the hull yet keeps clearly less colour than the best-exposed frame at each
    place; the frame-by-frame copy of the best-exposed source keeps all of it."""
    from crmef.imageio import read_image
    from crmef.metrics.chroma import chroma_kept

    folder = shared_data / "sequences" / "deepfuse" / "Seq_25"
    srcs = [read_image(folder / f"Img{i}.jpg") for i in (1, 2, 3)]
    lin = np.stack([_to_linear(s.astype(np.float64)) for s in srcs])
    pale = _to_srgb(lin.sum(axis=0) / 3)
    assert chroma_hull(srcs, pale) < 1e-3
    kept_pale = chroma_kept(srcs, pale)
    grey = lin @ np.array([0.2126, 0.7152, 0.0722])
    best = np.abs(np.log(np.maximum(grey, 1e-6) / 0.18)).argmin(axis=0)
    pick = np.take_along_axis(lin, best[None, ..., None].repeat(3, -1), 0)[0]
    kept_best = chroma_kept(srcs, _to_srgb(pick))
    print(f"Seq_25: chroma kept, linear mean {kept_pale:.3f}, best-exposed per pixel {kept_best:.3f}")
    assert kept_pale < 0.85 * kept_best
    assert kept_best > 0.9


# ---------------------------------------------------------------------------- camera_colour


def test_camera_colour_interpolates_the_brackets_own_colour_in_log_luminance() -> None:
    """Two unclipped frames of one surface, orange when dark and paler when bright (as a camera
    renders it): a fused block at a level between them is compared with their colours mixed at
    that level (log Y); each frame itself scores 0; a level beyond every frame does not count."""
    from crmef.metrics.chroma import block_chromaticity, camera_colour, camera_colour_from, camera_evidence

    dark = _to_srgb(np.broadcast_to(np.array([0.12, 0.06, 0.03]), (16, 16, 3)))
    bright = _to_srgb(np.broadcast_to(np.array([0.62, 0.52, 0.42]), (16, 16, 3)))
    assert camera_colour([dark, bright], dark) == pytest.approx(0.0, abs=1e-12)
    assert camera_colour([bright, dark], bright) == pytest.approx(0.0, abs=1e-12)
    (uv_d, y_d), (uv_b, y_b) = (block_chromaticity(x) for x in (dark, bright))
    y_mid = math.exp(0.5 * (math.log(y_d[0, 0]) + math.log(y_b[0, 0])))
    lifted = _to_srgb(np.broadcast_to(np.array([0.12, 0.06, 0.03]) * y_mid / y_d[0, 0], (16, 16, 3)))
    expected = 0.5 * np.hypot(*(uv_d[0, 0] - uv_b[0, 0]))  # the dark colour at the middle level
    assert camera_colour([dark, bright], lifted) == pytest.approx(expected, rel=1e-3)
    assert camera_colour_from(camera_evidence([dark, bright]), lifted) == camera_colour([dark, bright], lifted)
    assert expected > 0.01
    too_bright = _to_srgb(np.broadcast_to(np.array([0.9, 0.85, 0.8]), (16, 16, 3)))
    assert math.isnan(camera_colour([dark, bright], too_bright))
    clipped = bright.copy()
    clipped[..., 0] = 1.0  # a clipped frame is no evidence
    assert math.isnan(camera_colour([dark, clipped], lifted))


def test_camera_colour_sees_a_dark_frames_colour_lifted_past_the_camera(shared_data: Path) -> None:
    """On a real bracket whose camera pales bright surfaces (the corridor of ``Seq_41``): the
    middle frame scores 0 against the whole bracket, the dark frame's colour lifted in linear light
    to the middle frame's luminance (chroma_hull 0: it is a source's colour) does not, and a tint
    of the middle frame does not."""
    from crmef.imageio import read_image
    from crmef.metrics.chroma import camera_colour

    folder = shared_data / "sequences" / "deepfuse" / "Seq_41"
    frames = [read_image(folder / f"Img{i}.jpg") for i in (1, 2, 3)]
    lin = [_to_linear(f.astype(np.float64)) for f in frames]
    luma = np.array([0.2126, 0.7152, 0.0722])
    lift = (lin[1] @ luma) / np.maximum(lin[0] @ luma, 1e-4)
    lifted = np.clip(lin[0] * lift[..., None], 0, 1)
    ok = lifted.max(axis=-1) < 1  # no channel pushed past white
    lifted = np.where(ok[..., None], lifted, lin[1])
    own, dark, tint = (camera_colour(frames, x) for x in (frames[1], _to_srgb(lifted),
                                                           _to_srgb(np.clip(lin[1] * [0.92, 1.0, 1.12], 0, 1))))
    print(f"Seq_41 camera colour: middle frame {own:.5f}, dark frame's colour lifted {dark:.5f}, tinted {tint:.5f}")
    assert own < 1e-3
    assert chroma_hull(frames, _to_srgb(lifted)) < 1e-3
    assert dark > 0.01 and tint > 0.005
