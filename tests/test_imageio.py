"""Image I/O: 16-bit round trip, EXIF orientation, EXIF/ICC carry-over, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from crmef.errors import InputError
from crmef.imageio import ORIENTATION_TAG, load_image, to_uint, write_image


def _rand(h: int = 13, w: int = 21, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_round_trip(tmp_path, suffix):
    rgb = _rand()
    path = write_image(tmp_path / f"a{suffix}", rgb, bits=16)
    img = load_image(path)
    assert img.bits == 16 and img.rgb.shape == rgb.shape and img.rgb.dtype == np.float32
    np.testing.assert_array_equal(to_uint(img.rgb, 16), to_uint(rgb, 16))  # exact at 16 bits
    assert np.abs(img.rgb - rgb).max() <= 0.5 / 65535 + 1e-7


def test_8bit_png_round_trip_and_jpeg_is_8bit(tmp_path):
    rgb = _rand()
    img = load_image(write_image(tmp_path / "a.png", rgb, bits=8))
    assert img.bits == 8
    np.testing.assert_array_equal(to_uint(img.rgb, 8), to_uint(rgb, 8))
    assert load_image(write_image(tmp_path / "a.jpg", rgb, bits=16)).bits == 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    yy, xx = np.mgrid[0:24, 0:40].astype(np.float32)
    stored = np.stack([xx * 6, yy * 10, 255 - xx * 3 - yy * 4], axis=-1).clip(0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    exif[0x010F] = "crmef-test-camera"  # Make
    path = tmp_path / "o.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100, subsampling=0)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    img = load_image(path)
    assert img.orientation == orientation
    assert img.rgb.shape[:2] == expected.shape[:2]
    np.testing.assert_array_equal(to_uint(img.rgb, 8), expected)
    # the carried EXIF keeps the Make but says "upright"
    out = write_image(tmp_path / "out.jpg", img.rgb, exif=img.exif)
    with Image.open(out) as im:
        ex = im.getexif()
        assert ex.get(ORIENTATION_TAG, 1) == 1 and ex.get(0x010F) == "crmef-test-camera"
    np.testing.assert_allclose(load_image(out).rgb, img.rgb, atol=4 / 255)  # still upright


@pytest.mark.parametrize("name,bits", [("a.jpg", 8), ("a.png", 8), ("a.png", 16), ("a.tif", 8)])
def test_exif_and_icc_carried(tmp_path, name, bits):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "crmef-make"
    out = write_image(tmp_path / name, _rand(), bits=bits, exif=exif.tobytes(), icc=icc)
    img = load_image(out)
    assert img.bits == bits
    assert img.icc == icc
    with Image.open(out) as im:
        assert im.getexif().get(0x010F) == "crmef-make"


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(InputError, match="unknown output format"):
        write_image(tmp_path / "x.gif", _rand())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jpg", "text.png"]
