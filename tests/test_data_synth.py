"""HDR synthesis: exposure order of the triple, clipping, determinism, EV gap, radiance I/O."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import OpenEXR
import pytest

from crmef.data.synth import (
    CameraResponse,
    SynthConfig,
    load_radiance,
    measured_ev_gap,
    random_crop_radiance,
    repair_radiance,
    synthesize,
    synthetic_radiance,
    tonemap_reference,
)
from crmef.errors import InputError


def _radiance(seed: int, size: int = 64) -> np.ndarray:
    return synthetic_radiance(size, size, np.random.default_rng(seed), dynamic_range=1e4)


@pytest.mark.parametrize("crf", ["srgb", "random"])
def test_under_darker_than_reference_darker_than_over_and_over_clips_more(crf: str) -> None:
    cfg = SynthConfig(crf=crf)
    for seed in range(8):
        s = synthesize(_radiance(seed), np.random.default_rng(seed), cfg)
        assert s.under.dtype == s.over.dtype == s.ref.dtype == np.float32
        assert s.under.shape == s.over.shape == s.ref.shape == (64, 64, 3)
        assert s.under.mean() < s.ref.mean() < s.over.mean(), (seed, s.params)
        assert (s.over >= 1.0).mean() > (s.under >= 1.0).mean(), seed
        assert 0.0 <= s.under.min() and s.over.max() <= 1.0


def test_same_seed_same_bytes_other_seed_differs() -> None:
    rad = _radiance(0)
    cfg = SynthConfig(crf="random", jpeg_quality=(70, 95))
    a = synthesize(rad, np.random.default_rng(42), cfg)
    b = synthesize(rad, np.random.default_rng(42), cfg)
    c = synthesize(rad, np.random.default_rng(43), cfg)
    for key in ("under", "over", "ref"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes()
    assert a.under.tobytes() != c.under.tobytes()


@pytest.mark.parametrize(("gap", "crf"), [(2.0, "srgb"), (3.5, "random"), (5.0, "srgb"), (6.0, "random")])
def test_ev_gap_matches_request(gap: float, crf: str) -> None:
    # fixed gap; measured on linear (response inverted) values of pixels unclipped in both frames
    cfg = SynthConfig(ev_gap=(gap, gap), crf=crf)
    s = synthesize(_radiance(3, 96), np.random.default_rng(7), cfg)
    assert s.params["ev_gap"] == pytest.approx(gap)
    assert s.params["exposure_over"] / s.params["exposure_under"] == pytest.approx(2.0**gap)
    assert measured_ev_gap(s) == pytest.approx(gap, abs=0.1)


@pytest.mark.parametrize("crf", ["srgb", "random"])
def test_ev_gap_exact_without_noise(crf: str) -> None:
    # noise-free: only quantisation remains, the measured gap matches to 0.01 EV over 2-6 EV
    for gap in (2.0, 3.0, 4.5, 6.0):
        cfg = SynthConfig(ev_gap=(gap, gap), crf=crf, full_well=None, read_noise=(0.0, 0.0))
        for seed in range(3):
            s = synthesize(_radiance(seed, 96), np.random.default_rng(seed), cfg)
            assert measured_ev_gap(s) == pytest.approx(gap, abs=0.01)


def test_ev_gap_drawn_in_range() -> None:
    rng = np.random.default_rng(0)
    gaps = [synthesize(_radiance(1, 32), rng).params["ev_gap"] for _ in range(20)]
    assert 2.0 <= min(gaps) and max(gaps) <= 6.0 and np.ptp(gaps) > 1.0


def test_camera_response_inverse() -> None:
    x = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    for crf in (CameraResponse(), CameraResponse(2.4, 0.4), CameraResponse(1.8, 0.0)):
        y = crf.apply(x)
        assert np.all(np.diff(y) >= 0)
        assert np.abs(crf.invert(y) - x).max() < 2e-3


def test_reference_is_a_well_exposed_rendering() -> None:
    rad = _radiance(5)
    ref = tonemap_reference(rad)
    assert ref.min() >= 0.0 and ref.max() <= 1.0
    assert 0.25 < ref.mean() < 0.65
    # order of luminance is kept (global, monotone operator)
    lum_in = rad @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    lum_out = ref.mean(axis=2)
    order = np.argsort(lum_in.ravel())
    assert np.corrcoef(np.arange(order.size), np.argsort(np.argsort(lum_out.ravel()))[order])[0, 1] > 0.99


def test_load_radiance_exr_hdr_and_repair(tmp_path: Path) -> None:
    rad = _radiance(2, 16) * 100.0
    rad[3, 4] = [-1.0, 5.0, 5.0]  # a negative value in a bright neighbourhood
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"RGB": rad}).write(
        str(tmp_path / "m.exr")
    )
    back = load_radiance(tmp_path / "m.exr")
    assert back.shape == (16, 16, 3) and back.min() >= 0.0
    ok = np.ones((16, 16), bool)
    ok[3, 4] = False
    assert np.array_equal(back[ok], rad[ok])
    assert back[3, 4].min() > 0.0  # filled from neighbours, not clamped to black
    cv2.imwrite(str(tmp_path / "m.hdr"), cv2.cvtColor(np.abs(rad), cv2.COLOR_RGB2BGR))
    assert np.allclose(load_radiance(tmp_path / "m.hdr"), np.abs(rad), rtol=0.02)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(InputError, match="unknown radiance format"):
        load_radiance(tmp_path / "m.txt")
    cold = np.full((9, 9, 3), 50.0, np.float32)
    cold[4, 4] = 0.01
    assert repair_radiance(cold)[4, 4].min() == pytest.approx(50.0)


def test_random_crop_radiance() -> None:
    rad = _radiance(0, 40)
    crop = random_crop_radiance(rad, 16, np.random.default_rng(0))
    assert crop.shape == (16, 16, 3)
    with pytest.raises(InputError, match="smaller than the crop"):
        random_crop_radiance(rad, 64, np.random.default_rng(0))


def test_shared_hdr_maps(shared_data: Path) -> None:
    rng = np.random.default_rng(0)
    unders, refs, overs = [], [], []
    for path in sorted((shared_data / "hdr").glob("*.exr")):
        rad = load_radiance(path)
        assert rad.shape == (512, 1024, 3) and np.isfinite(rad).all() and rad.min() >= 0
        for _ in range(3):
            s = synthesize(random_crop_radiance(rad, 128, rng), rng)
            unders.append(s.under.mean())
            refs.append(s.ref.mean())
            overs.append(s.over.mean())
    assert np.mean(unders) < np.mean(refs) < np.mean(overs)
    assert np.mean(np.array(unders) < np.array(overs)) == 1.0
