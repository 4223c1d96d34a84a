"""Exposure order and pair selection on tiny generated brackets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from crmef.data.exposure import (
    frame_info,
    order_frames,
    select_pair,
    select_pairs,
    stops_between,
    trimmed_mean,
)
from crmef.data.synth import write_demo_bracket
from crmef.errors import InputError
from crmef.imageio import write_image


def _bracket(folder: Path, stops: list[float], names: list[str]) -> list[Path]:
    return write_demo_bracket(folder, stops, names)


def _with_exif(path: Path, time: tuple[int, int], fnum: tuple[int, int] = (4, 1), iso: int = 100) -> None:
    img = Image.open(path)
    img.load()
    exif = Image.Exif()
    exif.get_ifd(0x8769).update(
        {0x829A: TiffImagePlugin.IFDRational(*time), 0x829D: TiffImagePlugin.IFDRational(*fnum), 0x8827: iso}
    )
    img.save(path, exif=exif, quality=95)


def test_order_by_brightness_ignores_file_names(tmp_path: Path) -> None:
    # names sort opposite to brightness
    paths = _bracket(tmp_path, [2, 0, -2, -4], ["a.png", "b.png", "c.png", "d.png"])
    frames = order_frames(paths)
    assert [f.path.name for f in frames] == ["d.png", "c.png", "b.png", "a.png"]
    b = [f.brightness for f in frames]
    assert b == sorted(b) and b[0] < b[-1]
    assert all(f.exposure is None for f in frames)
    assert (frames[0].width, frames[0].height) == (48, 48)


def test_exif_exposure_wins_over_brightness(tmp_path: Path) -> None:
    paths = _bracket(tmp_path, [0, 1, 2], ["x.jpg", "y.jpg", "z.jpg"])
    # EXIF says the darkest-looking file had the longest exposure (times 1/10, 1/100, 1/1000 s)
    for p, t in zip(paths, [(1, 10), (1, 100), (1, 1000)]):
        _with_exif(p, t)
    frames = order_frames(paths)
    assert [f.path.name for f in frames] == ["z.jpg", "y.jpg", "x.jpg"]
    assert frames[0].exposure == pytest.approx(0.001 * 100 / 16)
    assert stops_between(frames[0], frames[1]) == pytest.approx(math.log2(10))


def test_select_pair_drops_nearly_black_and_white(tmp_path: Path) -> None:
    paths = _bracket(tmp_path, [-1, 0, 1], ["m1.png", "m2.png", "m3.png"])
    paths.append(write_image(tmp_path / "black.png", np.full((48, 48, 3), 0.005, np.float32)))
    paths.append(write_image(tmp_path / "white.png", np.full((48, 48, 3), 0.995, np.float32)))
    frames = order_frames(paths)
    assert frames[0].path.name == "black.png" and frames[-1].path.name == "white.png"
    under, over = select_pair(frames)
    assert (under.path.name, over.path.name) == ("m1.png", "m3.png")
    # the threshold is configurable: a frame that is 90 % black is usable at 0.95, not at 0.85
    mostly_black = np.full((48, 48, 3), 0.005, np.float32)
    mostly_black[:, :5] = 0.5
    info = frame_info(write_image(tmp_path / "mostly_black.png", mostly_black))
    assert 0.85 < info.dark_fraction < 0.95
    assert info.usable(0.95) and not info.usable(0.85)
    with pytest.raises(InputError, match="two usable frames"):
        select_pair(frames[:1] + frames[-1:])
    with pytest.raises(InputError, match="clip_fraction"):
        select_pair(frames, clip_fraction=0.0)


def test_select_pairs_by_minimum_gap(tmp_path: Path) -> None:
    paths = _bracket(tmp_path, [-3, -2, -1, 0], ["a.png", "b.png", "c.png", "d.png"])
    frames = order_frames(paths)
    # gap estimated from brightness is below the true gap when pixels clip; 1.5 stops keeps
    # the far pairs only
    pairs = select_pairs(frames, 1.5)
    assert pairs and all(stops_between(u, o) >= 1.5 for u, o in pairs)
    assert (frames[0], frames[-1]) in pairs
    assert (frames[0], frames[1]) not in pairs
    assert select_pairs(frames, 100.0) == []


def test_trimmed_mean_is_robust() -> None:
    hist = np.zeros(256)
    hist[100] = 96
    hist[255] = 2  # a few clipped pixels
    hist[0] = 2
    assert trimmed_mean(hist, 0.02) == pytest.approx(100 / 255)


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(InputError, match="broken.jpg"):
        frame_info(bad)
    with pytest.raises(InputError, match="missing.jpg"):
        frame_info(tmp_path / "missing.jpg")
