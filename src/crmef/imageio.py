"""Image reading and writing for photographs: 8/16-bit, EXIF orientation, atomic writes.

Images inside crmef are float32 numpy arrays of shape (H, W, 3), RGB, values in [0, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from crmef.errors import InputError
from crmef.utils import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and what is needed to write a result the same way.

    Attributes:
        rgb: float32 array (H, W, 3), RGB in [0, 1], EXIF orientation applied.
        bits: 8 or 16, the bit depth of the file.
        path: where it came from.
    """

    rgb: np.ndarray
    bits: int
    path: Path


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an image suffix crmef reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Read a JPEG/PNG/TIFF (8 or 16 bit, grey or colour) as RGB float32 in [0, 1].

    EXIF orientation is applied (OpenCV does this for ``IMREAD_COLOR``).

    Raises:
        InputError: the file is missing, empty, not an image or cannot be decoded.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise InputError(f"{path}: not a readable image (corrupt or unsupported format)")
    if img.dtype == np.uint8:
        bits, scale = 8, 255.0
    elif img.dtype == np.uint16:
        bits, scale = 16, 65535.0
    elif img.dtype in (np.float32, np.float64):
        bits, scale = 16, 1.0
    else:
        raise InputError(f"{path}: unsupported sample type {img.dtype}")
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / np.float32(scale)
    return LoadedImage(rgb=np.clip(rgb, 0.0, 1.0), bits=bits, path=path)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as float32 (H, W, 3) RGB in [0, 1]; see :func:`load_image`."""
    return load_image(path).rgb


def to_uint(rgb: np.ndarray, bits: int = 8) -> np.ndarray:
    """Quantise float RGB in [0, 1] (H, W, 3) to uint8 or uint16 with rounding."""
    if bits not in (8, 16):
        raise InputError(f"bits must be 8 or 16, got {bits}")
    peak = 255.0 if bits == 8 else 65535.0
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.round(np.clip(rgb, 0.0, 1.0) * peak).astype(dtype)


def write_image(path: str | os.PathLike[str], rgb: np.ndarray, bits: int = 8, quality: int = 95) -> Path:
    """Write float RGB (H, W, 3) in [0, 1] atomically; the format follows the suffix.

    JPEG is always 8-bit; PNG and TIFF keep 16 bits when ``bits=16``.

    Raises:
        InputError: unknown suffix or bad array shape.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unknown output format {suffix!r}; use .jpg, .png or .tif")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{path}: expected an (H, W, 3) image, got shape {tuple(rgb.shape)}")
    if suffix in (".jpg", ".jpeg", ".webp", ".bmp"):
        bits = 8
    arr = cv2.cvtColor(to_uint(rgb, bits), cv2.COLOR_RGB2BGR)
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise InputError(f"{path}: could not encode image")
    with atomic_path(path) as tmp:
        buf.tofile(str(tmp))
    return path
