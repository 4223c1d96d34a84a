"""The default engine: numpy/torch parity, colour by construction, N frames, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crmef.engine import (
    PROFILE_KNOTS,
    TYPICAL_PROFILE,
    BlendConfig,
    ExposureModel,
    blend,
    camera_profile,
    gray,
    linear_to_srgb,
    load_engine,
    match_grey,
    prior_logits,
    scale_codes,
    select_frames,
    small_grey,
    srgb_to_linear,
    work_shape,
    reduce_frames,
)
from crmef.metrics.chroma import chroma_hull
from crmef.nets.exposure import ExposureNet, blend_torch, export_onnx, fuse_torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def bracket(n: int = 3, h: int = 96, w: int = 128, seed: int = 0) -> list[np.ndarray]:
    """A synthetic bracket: one coloured, textured linear scene exposed at n stops, sRGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([0.5 + 0.4 * np.sin(xx / 9), 0.4 + 0.3 * np.cos(yy / 7), 0.3 + 0.2 * np.sin((xx + yy) / 13)], -1)
    radiance = base * np.exp2(4 * xx / w - 2)[..., None] * (1 + 0.2 * rng.random((h, w, 1)))
    frames = []
    for k in range(n):
        lin = np.clip(radiance * 2.0 ** (k * 4 / max(n - 1, 1) - 2), 0, 1)
        frames.append(np.round(linear_to_srgb(lin.astype(np.float32)) * 255) / 255)
    return [f.astype(np.float32) for f in frames]


def test_colour_conversions_match_the_iec_curve():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    exact = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    assert np.abs(srgb_to_linear(x) - exact).max() < 5e-5
    x8 = np.arange(256, dtype=np.float32) / 255  # 8-bit values take the 8-bit table
    exact8 = np.where(x8 <= 0.04045, x8 / 12.92, ((x8 + 0.055) / 1.055) ** 2.4)
    assert np.abs(srgb_to_linear(x8) - exact8).max() < 1e-6
    back = linear_to_srgb(exact.astype(np.float32))
    assert np.abs(back - x).max() < 2e-4


def test_integer_output_equals_rounded_float_output():
    frames = bracket(3)
    cfg = BlendConfig()
    shape = work_shape(*frames[0].shape[:2], cfg.work_size)
    small = reduce_frames(frames, shape)
    prior = prior_logits(small_grey(small), cfg.sigma)
    gain = 0.0
    f = blend(frames, small, prior, gain, cfg)
    for bits, peak, dtype in ((8, 255, np.uint8), (16, 65535, np.uint16)):
        q = blend(frames, small, prior, gain, cfg, out_bits=bits)
        assert q.dtype == dtype
        assert np.abs(q.astype(np.float64) - np.round(f * peak)).max() <= 1


def test_numpy_blend_equals_torch_blend():
    frames = bracket(3)
    cfg = BlendConfig()
    shape = work_shape(*frames[0].shape[:2], cfg.work_size)
    small = reduce_frames(frames, shape)
    rng = np.random.default_rng(1)
    prior = prior_logits(small_grey(small), cfg.sigma)
    logits = (prior + rng.normal(0, 0.5, (3, *shape))).astype(np.float32)
    gain = 0.3
    a = blend(frames, small, logits, gain, cfg)
    t = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    b = blend_torch(t, torch.from_numpy(small), torch.from_numpy(logits)[:, None],
                    torch.tensor(gain).view(1, 1, 1, 1), cfg)
    b = b[0].permute(1, 2, 0).numpy()
    assert a.shape == b.shape == frames[0].shape
    assert np.abs(a - b).mean() < 1e-4  # equal but for float32 rounding (was 2e-3 before pyr_up matched cv2.pyrUp)
    assert np.abs(a - b).max() < 0.02


def pixel_hull(frames: list[np.ndarray], out: np.ndarray) -> float:
    """Mean per-pixel chroma hull distance: ``chroma_hull`` of the images with every pixel made an
    8x8 block (the block form also counts the residue of a mix that varies inside a block)."""
    def up(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a, None, fx=8, fy=8, interpolation=cv2.INTER_NEAREST)

    return chroma_hull([up(f) for f in frames], up(out))


def test_output_colour_comes_from_the_sources():
    frames = bracket(3)
    cfg = BlendConfig()
    shape = work_shape(*frames[0].shape[:2], cfg.work_size)
    small = reduce_frames(frames, shape)
    gain = 0.8  # even a strong gain keeps the hue
    prior = prior_logits(small_grey(small), cfg.sigma)
    out = blend(frames, small, prior, gain, cfg)
    assert pixel_hull(frames, out) < 1e-5
    tinted = linear_to_srgb(np.clip(srgb_to_linear(out) * np.array([0.92, 1.0, 1.12], np.float32), 0, 1))
    assert chroma_hull(frames, tinted) > 4 * chroma_hull(frames, out)


def test_match_grey_gives_the_target_grey_and_keeps_the_chromaticity():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.001, 0.9, (64, 64)).astype(np.float32)

    def unit_colour() -> np.ndarray:  # a frame's colour lin(I) / lin(g), as the colour step makes it
        c = rng.uniform(0.02, 1.0, (64, 64, 3)).astype(np.float32)
        return c / srgb_to_linear(gray(linear_to_srgb(c)))[..., None]

    # The colour step: a mix of two frames' unit-luminance colours at the target luminance. Mixing
    # in linear light and encoding do not commute, so the codes' grey misses the target's.
    lin = 0.5 * (unit_colour() + unit_colour()) * target[..., None]
    lin /= np.maximum(lin.max(axis=2), 1.0)[..., None]
    fits = lin.max(axis=2) < 0.7  # room left below white
    want = linear_to_srgb(target)
    before = np.abs(gray(linear_to_srgb(lin)) - want)[fits].mean()
    codes = match_grey(lin.copy(), target, None)
    after = np.abs(gray(codes) - want)[fits]
    assert before > 5e-3  # the mismatch the step exists for
    assert after.mean() < before / 10 and after.max() < 5e-3
    out = srgb_to_linear(codes)
    ratio = out / np.maximum(lin, 1e-12)
    ok = lin.min(axis=2) > 1e-3  # float32 codes resolve the hue there
    assert np.abs(ratio - ratio[..., :1])[ok].max() < 2e-3  # one positive scale per pixel: same hue
    assert codes.max() <= 1.0
    q8 = match_grey(lin.copy(), target, 8)
    assert q8.dtype == np.uint8 and np.abs(q8 / 255.0 - codes).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("dark", [False, True])
def test_scale_codes_equals_the_curve_on_both_branches(dark: bool):
    rng = np.random.default_rng(3)
    # linear values from the deep toe (codes below 0.04045) to white; scales down and up
    lin = rng.uniform(0.0, 0.01 if dark else 1.0, (48, 40, 3)).astype(np.float32) ** 2
    r = rng.uniform(0.42, 2.38, (48, 40)).astype(np.float32)
    r = np.minimum(r, 1.0 / np.maximum(lin.max(axis=2), 1e-12) ** (1 / 2.4))  # no channel past white
    want = linear_to_srgb(lin.astype(np.float64) * r[..., None].astype(np.float64) ** 2.4)
    got = scale_codes(linear_to_srgb(lin), lin, r)
    assert (want < 0.04045).mean() > (0.5 if dark else 0.01)  # both branches are exercised
    assert np.abs(got - want).max() < 2e-6


def test_network_gain_is_one_value_per_scene():
    torch.manual_seed(1)
    net = ExposureNet.from_ops(["conv_3", "resconv_3", "dilconv_3"], 8)
    torch.nn.init.normal_(net.tail.weight, std=0.5)
    with torch.no_grad():
        _, gain = net(torch.rand(3, 3, 32, 48))
    assert gain.shape == (1, 1, 1, 1) and float(gain.abs()) > 1e-3


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> tuple[ExposureNet, ExposureModel]:
    torch.manual_seed(0)
    net = ExposureNet.from_ops(["conv_3", "resconv_3", "dilconv_3"], 8)
    torch.nn.init.normal_(net.tail.weight, std=0.2)
    path = tmp_path_factory.mktemp("onnx") / "x.onnx"
    export_onnx(net, str(path))
    return net.eval(), ExposureModel(path, BlendConfig())


def test_onnx_engine_equals_torch(onnx_model):
    net, model = onnx_model
    frames = bracket(4, 128, 192)
    small = reduce_frames(frames, work_shape(128, 192, 256))
    logits, gain = model.session.run(None, {"frames": small})  # the network's part, without the prior
    with torch.no_grad():
        tl, tg = net(torch.from_numpy(small))
    assert np.abs(logits - tl.numpy()).max() < 1e-4 and np.abs(gain - tg.numpy()).max() < 1e-4
    out = model(frames)
    with torch.no_grad():
        ref = fuse_torch(net, torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), BlendConfig())
    assert np.abs(out - ref[0].permute(1, 2, 0).numpy()).mean() < 1e-4


def test_frame_order_does_not_matter_and_n_frames_fuse(onnx_model):
    _, model = onnx_model
    frames = bracket(5)
    a = model(frames)
    b = model(frames[::-1])
    assert np.array_equal(a, b)
    assert a.shape == frames[0].shape and a.dtype == np.float32
    assert 0 <= a.min() and a.max() <= 1


def test_unusable_frames_are_skipped():
    frames = bracket(3)
    black = np.zeros_like(frames[0])
    white = np.ones_like(frames[0])
    all_ = [frames[1], black, frames[0], white, frames[2]]
    used, skipped = select_frames(all_)
    assert used == [2, 0, 4] and skipped == [1, 3]
    assert select_frames(all_, extremes=True)[0] == [2, 4]


def test_all_clipped_frames_are_an_error(tmp_path, capsys):
    from crmef.cli import main
    from crmef.errors import InputError
    from crmef.imageio import write_image

    frames = [np.zeros((40, 48, 3), np.float32), np.ones((40, 48, 3), np.float32)]
    with pytest.raises(InputError, match="nearly all black or all white"):
        select_frames(frames)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p, f in zip(paths, frames):
        write_image(p, f)
    out = tmp_path / "out.png"
    assert main(["fuse", *map(str, paths), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.png" in err[0] and "nothing to fuse" in err[0]
    assert not out.exists()


def test_frames_of_different_sizes_are_an_error(tmp_path, capsys):
    from crmef.cli import main
    from crmef.imageio import write_image

    a, b = bracket(2)
    write_image(tmp_path / "a.png", a)
    write_image(tmp_path / "b.png", b[:80])
    out = tmp_path / "out.png"
    assert main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.png" in err[0] and "same size" in err[0]
    assert not out.exists()
    assert main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--resize"]) == 0


def test_shipped_models_load_and_fuse():
    for name in ("general", "aligned"):
        model = load_engine(name)
        out = model(bracket(3))
        assert out.shape == (96, 128, 3)


def test_engine_import_does_not_import_torch():
    code = "import sys, crmef.engine; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_real_bracket_keeps_source_colour():
    from crmef.imageio import read_image

    folder = SHARED / "sequences" / "deepfuse" / "Seq_25"
    frames = [read_image(p) for p in sorted(folder.iterdir())]
    out = load_engine("general")(frames)
    assert chroma_hull(frames, out) < 1e-3


def camera_bracket(n: int = 3, h: int = 96, w: int = 128, strength: float = 1.0) -> list[np.ndarray]:
    """:func:`bracket` as a camera renders it: each pixel's chroma (its unit-luminance colour's
    distance from grey) × the typical camera's saturation at its grey, to the power ``strength``."""
    frames = []
    for f in bracket(n, h, w):
        lum = srgb_to_linear(gray(f))[..., None]
        unit = srgb_to_linear(f) / np.maximum(lum, 1e-6)
        out = f
        for _ in range(4):  # the saturation at the rendered pixel's own grey
            s = np.exp(strength * np.interp(gray(out), PROFILE_KNOTS, np.log(TYPICAL_PROFILE)))[..., None]
            out = linear_to_srgb(np.clip((1 + (unit - 1) * s) * lum, 0, 1).astype(np.float32))
        frames.append((np.round(out * 255) / 255).astype(np.float32))
    return frames


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_camera_profile_is_measured_on_the_bracket(strength: float):
    frames = camera_bracket(4, 128, 192, strength)
    small = reduce_frames(frames, work_shape(128, 192, 256))
    profile = camera_profile(small)
    beta = profile[-1] / np.log(TYPICAL_PROFILE[-1])  # the typical camera's, to a measured power
    assert np.allclose(profile, beta * np.log(TYPICAL_PROFILE))
    # within 25 % (pixels unclipped in the brighter frame are the paler ones near white)
    assert abs(beta - strength) < 0.05 + 0.25 * strength
    # a single frame (or frames sharing no well-seen pixels) gets the typical camera
    assert np.array_equal(camera_profile(small[:1]), np.log(TYPICAL_PROFILE))


def test_colour_lifted_past_every_frame_that_holds_it_pales_as_the_camera_does(onnx_model):
    net, model = onnx_model
    pair = camera_bracket(2, 128, 192)
    out = model(pair)
    with torch.no_grad():
        ref = fuse_torch(net, torch.from_numpy(np.stack(pair)).permute(0, 3, 1, 2), BlendConfig())
    assert np.abs(out - ref[0].permute(1, 2, 0).numpy()).mean() < 1e-4
    # where the over frame is clipped, the output's colour is the under frame's lifted: paler by
    # the camera's saturation at the output's grey over the under frame's
    lin, lin0 = srgb_to_linear(out), srgb_to_linear(pair[0])
    unit = lambda x: x / np.maximum(srgb_to_linear(gray(linear_to_srgb(x))), 1e-6)[..., None]
    chroma = lambda x: np.abs(unit(x) - 1).sum(-1)
    s = lambda g: np.exp(np.interp(g, PROFILE_KNOTS, camera_profile(reduce_frames(pair, work_shape(128, 192, 256)))))
    lifted = (pair[1].max(axis=-1) >= 0.99) & (gray(out) > gray(pair[0]) + 0.15) & (pair[0].min(axis=-1) > 0.1)
    assert lifted.sum() > 200
    ratio = chroma(lin)[lifted] / np.maximum(chroma(lin0)[lifted], 1e-4)
    expected = s(gray(out)[lifted]) / s(gray(pair[0])[lifted])
    assert np.median(expected) < 0.9
    assert np.median(np.abs(ratio - expected)) < 0.05


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_a_sky_lifted_from_the_under_frame_takes_the_cameras_colour_at_that_level():
    from crmef.imageio import read_image
    from crmef.metrics.chroma import block_chromaticity

    folder = SHARED / "sequences" / "hdrps" / "Bar_Harbor_Presunrise"
    frames = [read_image(p) for p in sorted(folder.iterdir())]
    frames.sort(key=lambda a: float(a.mean()))
    out = load_engine("general")([frames[0], frames[-1]])
    sky = slice(0, frames[0].shape[0] // 5)

    def uv_y(img: np.ndarray) -> tuple[np.ndarray, float]:
        uv, y = block_chromaticity(np.ascontiguousarray(img[sky]), "sky")
        return np.nanmedian(uv.reshape(-1, 2), axis=0), float(np.median(y))

    (uv_out, y_out), (uv_under, _) = uv_y(out), uv_y(frames[0])
    levels = [uv_y(f) for f in frames]  # the camera's own rendering of the sky at 9 levels
    ys = np.log([y for _, y in levels])
    camera = np.array([np.interp(np.log(y_out), ys, [uv[j] for uv, _ in levels]) for j in range(2)])
    # the under frame's colour is far from the camera's at the output's level; the output is near
    assert np.hypot(*(uv_under - camera)) > 0.012
    assert np.hypot(*(uv_out - camera)) < 0.5 * np.hypot(*(uv_under - camera))


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_alignment_does_not_move_what_the_reference_clipped():
    """A tripod pair (nothing to move): where the over frame is clipped the DIS flow has no
    structure to match and moved the under frame's text and edges by up to several pixels (mean
    error 0.025 over those pixels); the aligner trusts the flow only where the reference holds
    structure (0.007 measured). Shifted by a known homography, the under frame is put back."""
    from crmef.baselines import align_to
    from crmef.engine import align_frames
    from crmef.imageio import read_image

    folder = SHARED / "sequences" / "deepfuse" / "Seq_16"
    frames = sorted((read_image(p) for p in folder.glob("*.jpg")), key=lambda f: float(f.mean()))
    under, over = frames[0], frames[-1]
    bright = gray(over) > 0.9
    assert bright.mean() > 0.3
    dis_error = np.abs(align_to(under, over) - under)[bright].mean()
    error = np.abs(align_frames([under, over], 1)[0] - under)[bright].mean()
    assert error < 0.5 * dis_error, (error, dis_error)
    h, w = under.shape[:2]
    hom = np.float32([[1.0, 0.01, 4.0], [-0.01, 1.0, -3.0], [0.0, 0.0, 1.0]])
    moved = cv2.warpPerspective(under, hom, (w, h), borderMode=cv2.BORDER_REPLICATE)
    inner = (slice(40, -40), slice(40, -40))
    before = np.abs(moved - under)[inner].mean()
    after = np.abs(align_frames([moved, over], 1)[0] - under)[inner].mean()
    assert after < 0.25 * before, (after, before)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_tone_does_not_move_with_pixel_sharpness():
    """A frame resampled once (what aligning a hand-held frame does: σ ≈ 0.7 px of blur) keeps
    the output's tone. With the tone levels' contrast measured at full resolution the output
    brightened by 0.031 here (0.065 on a noisy HDR pair), as the blurred frame lost its share."""
    from crmef.imageio import read_image

    folder = SHARED / "sequences" / "deepfuse" / "Seq_11"
    frames = [read_image(p) for p in sorted(folder.glob("*.jpg"))]
    means = [f.mean() for f in frames]
    under, over = frames[int(np.argmin(means))], frames[int(np.argmax(means))]
    model = load_engine("general")
    sharp = model([under, over])
    soft = model([cv2.GaussianBlur(under, (0, 0), 0.7), over])
    assert abs(float(soft.mean() - sharp.mean())) < 0.012  # 0.0055 measured


def test_codes_fuse_like_floats():
    """uint8 / uint16 frames as decoded give the float path's result (no float copy needed)."""
    frames = bracket(3, 80, 120)
    cfg = BlendConfig()
    shape = work_shape(80, 120, cfg.work_size)
    small = reduce_frames(frames, shape)
    prior = prior_logits(small_grey(small), cfg.sigma)
    gain = 0.3
    ref = blend(frames, small, prior, gain, cfg, out_bits=16).astype(np.float64)
    for peak, dtype in ((255, np.uint8), (65535, np.uint16)):
        codes = [np.round(f * peak).astype(dtype) for f in frames]
        assert np.abs(reduce_frames(codes, shape) - small).max() < 1e-5
        out = blend(codes, small, prior, gain, cfg, out_bits=16).astype(np.float64)
        assert np.abs(out - ref).max() <= 2


def test_row_upsampler_equals_cv2_resize():
    import cv2

    from crmef.engine import RowUpsampler, bands

    m = np.random.default_rng(0).random((17, 26)).astype(np.float32)
    for size in ((260, 170), (263, 171), (26, 17), (1000, 9)):
        up = RowUpsampler(m, size)
        rows = np.concatenate([up.rows(r0, r1) for r0, r1 in bands(size[1], size[0])])
        assert np.abs(rows - cv2.resize(m, size, interpolation=cv2.INTER_LINEAR)).max() < 1e-6


def test_blend_memory_does_not_grow_with_the_frames():
    """Beyond its inputs the engine holds a few single-channel maps, whatever N (a float copy of
    each frame alone would be 3 maps per frame): about eight, one of them the grey the detail
    repletion added, which the colour step needs to keep it within each colour's gamut."""
    import tracemalloc

    rng = np.random.default_rng(0)
    h, w = 1200, 1800  # bands of rows (2 MiB each, one per thread) are small beside a map
    one_map = h * w * 4
    cfg = BlendConfig()
    shape = work_shape(h, w, cfg.work_size)
    peaks = {}
    for n in (2, 6):
        frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
        small = np.zeros((n, 3, *shape), np.float32)
        logits = np.zeros((n, *shape), np.float32)
        tracemalloc.start()
        blend(frames, small, logits, 0.0, cfg, out_bits=8)
        peaks[n] = tracemalloc.get_traced_memory()[1] / one_map
        tracemalloc.stop()
    assert peaks[2] < 9, peaks
    assert peaks[6] - peaks[2] < 1.5, peaks  # work-resolution maps only


def test_wide_gaps_are_filled_with_reexposures():
    """A pair 4 stops apart is fused as the bracket it stands for: one re-exposure of the dark
    frame 2 stops up (measured from the frames), none for a bracket 1.3 stops apart."""
    from crmef.engine import Reexposed, fill_gaps, gap_stops, virtual_stops

    pair = bracket(2)
    shape = work_shape(96, 128, 256)
    small = reduce_frames(pair, shape)
    (gap,) = gap_stops(small)
    assert abs(gap - 4.0) < 0.3
    assert virtual_stops(4.0, 2.0) == [2.0] and virtual_stops(4.05, 2.0) == [2.025]
    assert virtual_stops(6.0, 2.0) == [2.0, 4.0] and virtual_stops(1.5, 2.0) == [] and virtual_stops(9.0, 0) == []
    frames, stack = fill_gaps(pair, small, 2.0)
    assert len(frames) == 3 and isinstance(frames[1], Reexposed) and frames[1].frame is pair[0]
    assert stack.shape == (3, 3, *shape)
    means = stack.mean(axis=(1, 2, 3))
    assert means[0] < means[1] < means[2]  # the re-exposure lies between its neighbours
    dense = bracket(4)
    assert len(fill_gaps(dense, reduce_frames(dense, shape), 2.0)[0]) == 4


def test_reexposures_match_torch_and_keep_source_colour(onnx_model):
    net, model = onnx_model
    cfg = BlendConfig()
    assert cfg.max_gap == 2.0
    plain = ExposureModel(model.path, BlendConfig(max_gap=0.0))
    pair = bracket(2, 128, 192)
    out = model(pair)
    assert np.abs(out - plain(pair)).mean() > 1e-3  # the re-exposure changes the result
    with torch.no_grad():
        ref = fuse_torch(net, torch.from_numpy(np.stack(pair)).permute(0, 3, 1, 2), cfg)
    assert np.abs(out - ref[0].permute(1, 2, 0).numpy()).mean() < 1e-4
    assert pixel_hull(pair, out) < 1e-5
    codes = [np.round(f * 255).astype(np.uint8) for f in pair]
    assert np.abs(model(codes, out_bits=8).astype(np.float64) - np.round(out * 255)).max() <= 2


def test_ship_writes_cards_with_blend_settings_chosen_after_training(tmp_path):
    from dataclasses import asdict

    from safetensors.torch import save_file

    from crmef.exposure_train import ExposureTrainConfig, ship

    run = tmp_path / "exp_train"
    run.mkdir()
    ops = ["conv_3", "resconv_3", "dilconv_3"]
    net = ExposureNet.from_ops(ops, 8)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "exposure.safetensors"))
    summary = {"config": asdict(ExposureTrainConfig()), "genotype": ops, "steps": 1, "seconds": 0, "overrides": []}
    (run / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "weights"
    out.mkdir()
    cards = ship(run, out, ["general:detail_levels=7", "smooth=3"])
    card, aligned = (json.loads(c.read_text()) for c in cards)
    assert card["blend"]["detail_levels"] == 7 and card["training"]["config"]["blend"]["detail_levels"] == 5
    assert aligned["blend"]["detail_levels"] == 5 and card["blend"]["smooth"] == aligned["blend"]["smooth"] == 3
    assert card["training"]["commands"][-1].endswith(
        "ship runs/exp_train --set blend.general:detail_levels=7 --set blend.smooth=3")
    model = ExposureModel.from_card(cards[0])
    assert model.cfg.detail_levels == 7 and model(bracket(2)).shape == (96, 128, 3)
    with pytest.raises(SystemExit):
        ship(run, out, ["nonsense=1"])


def test_search_uses_the_given_latency_table_whatever_the_machine(tmp_path):
    """A search given a latency table reads it instead of measuring (so it can be repeated on any
    machine: given one table the search is deterministic), keeps a copy beside its output, and
    refuses a table that lacks a candidate, naming the file."""
    from crmef.errors import InputError
    from crmef.exposure_train import REFERENCE_LATENCY, ExposureTrainConfig, latency_table
    from crmef.latency import LatencyTable

    root = Path(__file__).resolve().parents[1]
    cfg = ExposureTrainConfig(latency=str(root / REFERENCE_LATENCY))
    net = ExposureNet(cfg.channels, [cfg.candidates] * 3)
    table, _ = latency_table(net, cfg, tmp_path)
    shipped = LatencyTable.load(root / REFERENCE_LATENCY)
    assert table.entries == shipped.entries and table.meta == shipped.meta  # read, not measured
    assert LatencyTable.load(tmp_path / "latency.json").entries == shipped.entries
    partial = LatencyTable(meta=dict(shipped.meta), entries=dict(list(shipped.entries.items())[:3]))
    partial.save(tmp_path / "partial.json")
    with pytest.raises(InputError, match="partial.json"):
        latency_table(net, ExposureTrainConfig(latency=str(tmp_path / "partial.json")), tmp_path / "x")
    other = LatencyTable(meta={**shipped.meta, "batch": 16}, entries=shipped.entries)
    other.save(tmp_path / "batch16.json")
    with pytest.raises(InputError, match="batch 16"):
        latency_table(net, ExposureTrainConfig(latency=str(tmp_path / "batch16.json")), tmp_path / "x")
    # on the command line: one line naming the file, exit 2
    from crmef.exposure_train import main

    assert main(["search", "--out", str(tmp_path / "s"), "--set", f"latency={tmp_path / 'missing.json'}",
                 "--set", "hdr_samples=0", "--set", "steps=1"]) == 2


def test_torch_pyramid_ops_equal_opencv_at_every_size():
    """The training twin's pyr_down / pyr_up equal cv2's on odd and 1-2 px sizes too (the top of
    a full-depth pyramid decides the global tone; cropping before filtering once cost 0.03 of grey)."""
    from crmef.nets.exposure import pyr_down, pyr_up

    rng = np.random.default_rng(0)
    for h, w in ((8, 12), (5, 7), (3, 4), (2, 3), (1, 2), (1, 1)):
        a = rng.random((h, w)).astype(np.float32)
        d = cv2.pyrDown(a)
        assert np.abs(pyr_down(torch.from_numpy(a)[None, None])[0, 0].numpy() - d).max() < 1e-6
        up = pyr_up(torch.from_numpy(d)[None, None], (h, w))[0, 0].numpy()
        assert np.abs(up - cv2.pyrUp(d, dstsize=(w, h))).max() < 1e-6, (h, w)
