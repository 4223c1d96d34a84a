"""Baselines: Mertens fusion, enfuse, flow-aligned Mertens, mean."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from crmef.baselines import (
    FRAME_BASELINES,
    PAIR_BASELINES,
    EnfuseError,
    align_to,
    enfuse,
    enfuse_binary,
    flow_mertens,
    mean,
    mertens,
)
from crmef.data.layouts import scan_brackets
from crmef.data.reference import ArrayCache, load_rgb8, mertens_reference
from crmef.errors import InputError


def _scene(h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def test_mertens_range_and_exposure() -> None:
    scene = _scene()
    under, over = np.clip(scene * 0.3, 0, 1), np.clip(scene * 3.0, 0, 1)
    fused = mertens([under, over])
    assert fused.shape == scene.shape and fused.dtype == np.float32
    assert fused.min() >= 0.0 and fused.max() <= 1.0
    # a fusion lies between the two exposures in brightness (OpenCV float input scaled right)
    assert under.mean() + 0.05 < fused.mean() < over.mean()


@pytest.mark.parametrize("fuse", [mertens, mertens_reference], ids=["baseline", "reference"])
def test_mertens_uses_opencv_default_weights(fuse, monkeypatch: pytest.MonkeyPatch) -> None:
    # the documented weights of both: contrast 1, saturation 1, well-exposedness 0 (OpenCV's defaults)
    made = []
    real = cv2.createMergeMertens

    def spy(*args: float) -> cv2.MergeMertens:
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(cv2, "createMergeMertens", spy)
    scene = _scene()
    fuse([np.clip(scene * 0.3, 0, 1), np.clip(scene * 3.0, 0, 1)])
    (merge,) = made
    assert (merge.getContrastWeight(), merge.getSaturationWeight(), merge.getExposureWeight()) == (1.0, 1.0, 0.0)


@pytest.fixture
def one_cv2_thread():
    """OpenCV's MergeMertens on several threads differs from run to run in the last bits (seen up
    to 1e-3 under load): compare results made on one thread."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(before)


def test_reference_builder_and_baseline_are_one_mertens(shared_data: Path, tmp_path: Path, one_cv2_thread) -> None:
    """A real bracket's training/eval reference is the ``mertens_all`` baseline of its frames,
    and both give OpenCV the frames in BGR (its contrast weight uses its own BGR grey)."""
    scene = next(s for s in scan_brackets(shared_data / "sequences" / "deepfuse") if s.name.endswith("Seq_41"))
    frames = [load_rgb8(f.path, scene.size).astype(np.float32) / 255.0 for f in scene.frames]
    baseline = FRAME_BASELINES["mertens_all"](frames)
    np.testing.assert_array_equal(mertens_reference(frames), baseline)
    cached = ArrayCache(tmp_path / "cache").reference(scene)
    np.testing.assert_array_equal(cached, np.round(baseline * 255.0).astype(np.uint8))
    bgr = cv2.createMergeMertens().process([np.ascontiguousarray(f[..., ::-1]) * np.float32(255.0) for f in frames])
    np.testing.assert_array_equal(baseline, np.clip(bgr[..., ::-1], 0.0, 1.0))
    rgb = np.clip(cv2.createMergeMertens().process([f * np.float32(255.0) for f in frames]), 0.0, 1.0)
    assert np.abs(rgb - baseline).max() > 1 / 255  # the channel order matters: RGB given as BGR is another fusion


def test_mean_is_pixel_average() -> None:
    a, b = _scene(), _scene()[::-1].copy()
    np.testing.assert_allclose(mean([a, b]), (a + b) / 2, atol=1e-6)


def test_flow_alignment_recovers_a_shift() -> None:
    scene = _scene(160, 192)
    under, over = scene * 0.5, np.clip(scene * 1.6, 0, 1)
    shift = np.float32([[1, 0, 5], [0, 1, -3]])
    moved = cv2.warpAffine(under, shift, (192, 160), borderMode=cv2.BORDER_REPLICATE)
    inner = (slice(16, -16), slice(16, -16))
    before = np.abs(moved - under)[inner].mean()
    after = np.abs(align_to(moved, over) - under)[inner].mean()
    assert after < 0.2 * before
    fused = flow_mertens(moved, over)
    assert fused.shape == over.shape and 0.0 <= fused.min() and fused.max() <= 1.0
    assert np.abs(fused - mertens([under, over]))[inner].mean() < np.abs(mertens([moved, over]) - mertens([under, over]))[inner].mean()


def test_bad_frames() -> None:
    with pytest.raises(InputError, match="same size"):
        mertens([_scene(96, 128), _scene(64, 128)])
    with pytest.raises(InputError, match="at least 2"):
        mertens([_scene()])
    with pytest.raises(InputError, match="RGB"):
        mean([np.zeros((8, 8))])
    assert set(PAIR_BASELINES) == {"mertens", "flow_mertens", "mean", "enfuse"}
    assert set(FRAME_BASELINES) == {"mertens_all", "enfuse_all"}


needs_enfuse = pytest.mark.skipif(enfuse_binary() is None,
                                  reason="enfuse binary not on PATH (Debian package 'enfuse'; .ci/run installs it)")


@needs_enfuse
def test_enfuse_two_and_n_frames() -> None:
    scene = _scene()
    under, mid, over = np.clip(scene * 0.3, 0, 1), scene, np.clip(scene * 3.0, 0, 1)
    fused = enfuse([under, over])
    assert fused.shape == scene.shape and fused.dtype == np.float32
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    assert under.mean() + 0.05 < fused.mean() < over.mean()  # a fusion, between the exposures
    three = enfuse([over, under, mid], threads=1)  # any order, N frames
    assert three.shape == scene.shape and np.abs(three - fused).mean() < 0.1
    # enfuse is not bit-exact between runs (its threads): a 16-bit code or so
    np.testing.assert_allclose(enfuse([under, over]), fused, atol=2e-4)
    assert FRAME_BASELINES["enfuse_all"] is enfuse
    with pytest.raises(InputError, match="same size"):
        enfuse([under, over[:64]])


def test_enfuse_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMEF_ENFUSE", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EnfuseError, match=r"Debian/Ubuntu package 'enfuse' \(apt-get install enfuse\)"):
        enfuse([_scene(), _scene()])
    monkeypatch.setenv("CRMEF_ENFUSE", "/nonexistent/enfuse")
    with pytest.raises(EnfuseError, match="could not run"):
        enfuse([_scene(), _scene()])
