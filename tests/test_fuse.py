"""Fusion engine (crmef.inference): sizes, tiling, fast mode, N frames. Tiny random-weight nets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from crmef.errors import InputError
from crmef.inference import FuseConfig, fuse, receptive_field, run_fast, run_full
from crmef.nets import FusionNet
from crmef.space import get_preset


@pytest.fixture(scope="module")
def net() -> FusionNet:
    torch.manual_seed(0)
    return FusionNet.from_genotype(get_preset("paper_general"), channels=4).eval()


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random radiance map (H, W, 3) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), 2).clip(0, 1) ** 1.5


def bracket(h: int, w: int, n: int = 2, seed: int = 0) -> list[np.ndarray]:
    """``n`` exposures of one scene from -2 EV to +2 EV, shuffled."""
    base = scene(h, w, seed)
    frames = [np.clip(base * 2.0**ev, 0, 1).astype(np.float32) for ev in np.linspace(-1.5, 1.5, n)]
    order = np.random.default_rng(seed).permutation(n)
    return [frames[i] for i in order]


@pytest.mark.parametrize("h,w", [(31, 45), (57, 17), (2, 3), (64, 64)])
def test_odd_sizes_keep_size(net, h, w):
    y = fuse(bracket(h, w), model=net, device="cpu", mode="full")
    assert y.shape == (h, w, 3) and y.dtype == np.float32
    assert np.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    y_fast = fuse(bracket(h, w), model=net, device="cpu", mode="fast", fast_size=32)
    assert y_fast.shape == (h, w, 3) and 0 <= y_fast.min() and y_fast.max() <= 1


def test_full_equals_network(net):
    u, o = sorted(bracket(37, 50), key=np.mean)
    with torch.no_grad():
        ref = net(torch.from_numpy(u).permute(2, 0, 1)[None], torch.from_numpy(o).permute(2, 0, 1)[None])
    y = fuse([o, u], model=net, device="cpu", mode="full")  # order does not matter
    np.testing.assert_allclose(y, ref[0].permute(1, 2, 0).numpy(), atol=1e-6)


@pytest.mark.parametrize("preset", ["paper_general", "paper_aligned"])
def test_tiled_equals_untiled(preset):
    torch.manual_seed(1)
    net = FusionNet.from_genotype(get_preset(preset), channels=4).eval()
    rf = receptive_field(net)
    assert 8 <= rf < 200
    h, w = (150, 203) if preset == "paper_general" else (64, 330)  # deformable convs are slow on CPU
    u, o = sorted(bracket(h, w, seed=3), key=np.mean)
    whole = run_full(net, u, o)
    tiles = []
    tile = 48 if preset == "paper_general" else 64
    tiled = run_full(net, u, o, tile=tile, progress=lambda d, t: tiles.append(t))
    assert tiles and tiles[0] >= 4  # really tiled
    assert np.abs(whole - tiled).max() < 1 / 255
    if preset == "paper_aligned":
        return
    # automatic tiling from the memory budget gives the same image
    auto = run_full(net, u, o, max_memory=32 << 20)
    assert np.abs(whole - auto).max() < 1 / 255


def test_too_small_overlap_would_differ(net):
    """Sanity check of the test above: blending tiles without context is visibly wrong."""
    u, o = sorted(bracket(96, 96, seed=4), key=np.mean)
    whole = run_full(net, u, o)
    naive = np.concatenate([run_full(net, u[:, :48], o[:, :48]), run_full(net, u[:, 48:], o[:, 48:])], axis=1)
    assert np.abs(whole - naive).max() > 1 / 255


def test_fast_mode_close_to_full(net):
    u, o = sorted(bracket(240, 320, seed=5), key=np.mean)
    full = run_full(net, u, o)
    fast = run_fast(net, u, o, fast_size=160)
    assert fast.shape == full.shape
    assert np.abs(fast - full).mean() < 0.02
    # at a reduction of 1 (no downscale) the fast path is close to the network itself
    same = run_fast(net, u, o, fast_size=320)
    assert np.abs(same - full).mean() < 0.01


def test_fast_mode_direct_head():
    torch.manual_seed(2)
    net = FusionNet.from_genotype(get_preset("paper_aligned"), channels=4).eval()
    u, o = sorted(bracket(100, 150, seed=6), key=np.mean)
    full = run_full(net, u, o)
    fast = run_fast(net, u, o, fast_size=75)
    assert np.abs(fast - full).mean() < 0.03


@pytest.mark.parametrize("n", [3, 5])
def test_n_frames(net, n):
    frames = bracket(40, 56, n=n, seed=n)
    by_mean = sorted(frames, key=np.mean)
    y = fuse(frames, model=net, device="cpu", mode="full")
    pair = fuse([by_mean[0], by_mean[-1]], model=net, device="cpu", mode="full")
    np.testing.assert_allclose(y, pair, atol=1e-6)  # darkest + brightest by default
    y_all = fuse(frames, model=net, device="cpu", mode="full", all_frames=True)
    r = by_mean[0]
    for f in by_mean[1:]:
        r = run_full(net, r, f)
    np.testing.assert_allclose(y_all, r, atol=1e-6)
    assert not np.allclose(y_all, y, atol=1e-3)


def test_unusable_frames_are_skipped(net):
    frames = bracket(40, 56, n=3, seed=7)
    black = np.zeros_like(frames[0])
    white = np.ones_like(frames[0])
    ref = fuse(frames, model=net, device="cpu", mode="full")
    y = fuse([*frames, black, white], model=net, device="cpu", mode="full")
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_bad_frames(net):
    a = scene(20, 30)
    with pytest.raises(InputError, match="at least two frames"):
        fuse([a], model=net, device="cpu")
    with pytest.raises(InputError, match="differs"):
        fuse([a, scene(21, 30)], model=net, device="cpu")
    y = fuse([a, scene(21, 30)], model=net, device="cpu", mode="full", resize=True)
    assert y.shape == (20, 30, 3)
    with pytest.raises(InputError, match="shape"):
        fuse([a, a[..., 0]], model=net, device="cpu")
    with pytest.raises(InputError, match="1x1 pixels; at least 2x2"):
        fuse([a[:1, :1], a[:1, :1]], model=net, device="cpu")
    with pytest.raises(InputError, match="mode"):
        FuseConfig(mode="quick")
