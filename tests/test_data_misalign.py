"""Misalignment synthesis: known homographies realign a dot pattern to sub-pixel accuracy."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from crmef.data.misalign import (
    MisalignConfig,
    max_border,
    misalign_triple,
    random_displacement,
    random_homography,
    warp_under,
)
from crmef.errors import InputError

STEP = 16


def _dots(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian dots (sigma 1.5 px) on a 16 px grid; returns (float32 (h, w, 3), centres (N, 2) x, y)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w), np.float32)
    centres = []
    for cy in np.arange(STEP / 2, h, STEP):
        for cx in np.arange(STEP / 2, w, STEP):
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2))
            centres.append((cx, cy))
    return np.repeat(img[..., None], 3, axis=2), np.array(centres, np.float64)


def _centroid(img: np.ndarray, x: float, y: float, r: int = 5) -> tuple[float, float]:
    g = img[..., 0]
    x0, y0 = int(round(x)), int(round(y))
    win = g[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1].astype(np.float64)
    win = np.clip(win - 0.05, 0, None)
    ys, xs = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
    return float((win * xs).sum() / win.sum()), float((win * ys).sum() / win.sum())


def _errors(img: np.ndarray, centres: np.ndarray, margin: int) -> np.ndarray:
    h, w = img.shape[:2]
    inside = [(x, y) for x, y in centres if margin <= x < w - margin and margin <= y < h - margin]
    assert len(inside) >= 16
    return np.array([math.hypot(*np.subtract(_centroid(img, x, y), (x, y))) for x, y in inside])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inverse_homography_realigns_pattern_below_half_pixel(seed: int) -> None:
    h, w = 128, 160
    pattern, centres = _dots(h, w)
    hom = random_homography(np.random.default_rng(seed), h, w, MisalignConfig())
    warped, valid = warp_under(pattern, hom)
    margin = 24
    # the convention: content at p moves to H p
    moved = cv2.perspectiveTransform(centres[None], hom)[0]
    assert np.linalg.norm(moved - centres, axis=1).mean() > 1.0  # the warp really moved the pattern
    assert _errors(warped, moved, margin).max() < 0.5
    back = cv2.warpPerspective(warped, np.linalg.inv(hom), (w, h), flags=cv2.INTER_LINEAR)
    after = _errors(back, centres, margin)
    assert after.max() < 0.5, after.max()


def test_misalign_triple_crops_invalid_border_and_keeps_reference_aligned() -> None:
    h, w = 128, 128
    pattern, centres = _dots(h, w)
    over = pattern * 0.5
    ref = pattern * 0.8
    cfg = MisalignConfig()
    u, o, r, info = misalign_triple(pattern, over, ref, np.random.default_rng(3), cfg)
    top, left = info["margin"]
    assert top == left and 0 < top <= max_border(h, w, cfg)
    assert u.shape == o.shape == r.shape == (h - 2 * top, w - 2 * left, 3)
    # over and reference are untouched crops: still aligned with each other
    assert np.array_equal(o, over[top:-top, left:-left]) and np.array_equal(r, ref[top:-top, left:-left])
    # no invalid pixel left in the warped under frame
    _, valid = warp_under(np.ones((h, w, 3), np.float32), info["homography"])
    assert valid[top:-top, left:-left].all()
    # the homography in crop coordinates realigns the crop
    shift = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]], np.float64)
    hom_crop = shift @ info["homography"] @ np.linalg.inv(shift)
    back = cv2.warpPerspective(u, np.linalg.inv(hom_crop), (u.shape[1], u.shape[0]), flags=cv2.INTER_LINEAR)
    crop_centres = centres - [left, top]
    assert _errors(back, crop_centres, 16).max() < 0.5


def test_out_size_and_too_small() -> None:
    img = np.random.default_rng(0).random((96, 96, 3)).astype(np.float32)
    u, o, r, _ = misalign_triple(img, img, img, np.random.default_rng(0), out_size=(64, 64))
    assert u.shape == o.shape == r.shape == (64, 64, 3)
    with pytest.raises(InputError, match="smaller than the crop"):
        misalign_triple(img, img, img, np.random.default_rng(0), MisalignConfig(max_translation=20), out_size=(90, 90))
    with pytest.raises(InputError, match="one shape"):
        misalign_triple(img, img[:50], img, np.random.default_rng(0))


def test_local_displacement_is_smooth_and_bounded() -> None:
    cfg = MisalignConfig(local_amplitude=2.0)
    d = random_displacement(np.random.default_rng(0), 64, 80, cfg)
    assert d is not None and d.shape == (64, 80, 2)
    assert np.abs(d).max() <= 2.0 + 1e-5 and np.abs(d).max() > 0.5
    assert np.abs(np.diff(d, axis=0)).max() < 0.5 and np.abs(np.diff(d, axis=1)).max() < 0.5
    assert random_displacement(np.random.default_rng(0), 64, 80, MisalignConfig()) is None
    img = np.random.default_rng(1).random((64, 80, 3)).astype(np.float32)
    u, _, _, info = misalign_triple(img, img, img, np.random.default_rng(0), cfg)
    assert info["displacement"] is not None and u.shape[0] < 64


def test_homography_ranges() -> None:
    cfg = MisalignConfig()
    rng = np.random.default_rng(0)
    for _ in range(50):
        hom = random_homography(rng, 100, 100, cfg)
        centre = hom @ np.array([49.5, 49.5, 1.0])
        assert np.abs(centre[:2] - 49.5).max() <= 8.0 + 1e-9
        scale = math.sqrt(abs(np.linalg.det(hom[:2, :2])))
        assert abs(scale - 1.0) <= 0.02 + 1e-9
        assert abs(math.degrees(math.atan2(hom[1, 0], hom[0, 0]))) <= 2.0 + 1e-9
    with pytest.raises(InputError, match="max_translation"):
        MisalignConfig(max_translation=-1)
