"""Image reading and writing for photographs: 8/16-bit, EXIF orientation, EXIF/ICC carry-over.

Images inside crmef are float32 numpy arrays of shape (H, W, 3), RGB, values in [0, 1].

Decoding is OpenCV's (fast, 8 and 16 bit, JPEG/PNG/TIFF/…); metadata is Pillow's (EXIF
orientation, the EXIF block and the ICC profile, read from the header only). Orientation is
applied here, explicitly, so that the pixels always come out upright whatever the decoder does.

Metadata written back (:func:`write_image` with ``exif=``/``icc=``):

======================  =============  =============
format                  EXIF           ICC profile
======================  =============  =============
JPEG (8-bit)            yes            yes
PNG 8-bit               yes            yes
PNG 16-bit              yes (eXIf)     yes (iCCP)
TIFF 8-bit              yes            yes
TIFF 16-bit, others     no             no
======================  =============  =============

Carried EXIF always has its orientation reset to 1 (the pixels are already upright).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from crmef.errors import InputError
from crmef.utils import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
ORIENTATION_TAG = 0x0112
"""EXIF tag of the orientation (1 = upright … 8)."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and what is needed to write a result the same way.

    Attributes:
        rgb: float32 array (H, W, 3), RGB in [0, 1], EXIF orientation applied.
        bits: 8 or 16, the bit depth of the file.
        path: where it came from.
        exif: the raw EXIF block with orientation reset to 1, or ``None``.
        icc: the ICC profile bytes, or ``None``.
        orientation: the EXIF orientation found in the file (1 when absent).
    """

    rgb: np.ndarray
    bits: int
    path: Path
    exif: bytes | None = None
    icc: bytes | None = None
    orientation: int = 1


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an image suffix crmef reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1–8) to an (H, W, ...) array, as Pillow's ``exif_transpose``."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return np.swapaxes(img, 0, 1)
    if orientation == 6:
        return np.rot90(img, -1)
    if orientation == 7:
        return np.swapaxes(img[::-1, ::-1], 0, 1)
    if orientation == 8:
        return np.rot90(img, 1)
    return img


def _read_metadata(path: Path) -> tuple[int, bytes | None, bytes | None]:
    """``(orientation, exif_bytes_upright, icc)`` from the file header; (1, None, None) if none."""
    try:
        with Image.open(path) as im:
            icc = im.info.get("icc_profile") or None
            exif = im.getexif()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return 1, None, None
    orientation = int(exif.get(ORIENTATION_TAG, 1) or 1)
    if orientation not in range(1, 9):
        orientation = 1
    raw: bytes | None = None
    if len(exif):
        if ORIENTATION_TAG in exif:
            exif[ORIENTATION_TAG] = 1
        try:
            raw = exif.tobytes()
        except Exception:  # malformed maker notes etc.: drop EXIF rather than fail the fusion
            raw = None
    return orientation, raw, icc


def load_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Read a JPEG/PNG/TIFF (8 or 16 bit, grey or colour) as RGB float32 in [0, 1].

    EXIF orientation is applied; the EXIF block (orientation reset to 1) and the ICC profile are
    kept on the result for :func:`write_image`.

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
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
    img = cv2.imdecode(data, flags)
    if img is None or img.size == 0:
        raise InputError(f"{path}: not a readable image (corrupt or unsupported format)")
    if img.dtype == np.uint8:
        bits, scale = 8, 255.0
    elif img.dtype == np.uint16:
        bits, scale = 16, 65535.0
    elif img.dtype in (np.float32, np.float64):
        bits, scale = 16, 1.0
    else:
        raise InputError(f"{path}: unsupported sample type {img.dtype}")
    orientation, exif, icc = _read_metadata(path)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / np.float32(scale)
    rgb = np.ascontiguousarray(apply_orientation(rgb, orientation))
    return LoadedImage(rgb=np.clip(rgb, 0.0, 1.0), bits=bits, path=path, exif=exif, icc=icc,
                       orientation=orientation)


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


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_add_metadata(png: bytes, exif: bytes | None, icc: bytes | None) -> bytes:
    """Insert iCCP and eXIf chunks right after IHDR of an encoded PNG."""
    ihdr_end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    if exif:
        body = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        extra += _png_chunk(b"eXIf", body)
    return png[:ihdr_end] + extra + png[ihdr_end:]


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    bits: int = 8,
    quality: int = 95,
    exif: bytes | None = None,
    icc: bytes | None = None,
) -> Path:
    """Write float RGB (H, W, 3) in [0, 1] atomically; the format follows the suffix.

    JPEG (and BMP/WebP) are always 8-bit; PNG and TIFF keep 16 bits when ``bits=16``. ``exif``
    and ``icc`` are embedded where the format allows (table in the module docstring).

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
    q = to_uint(rgb, bits)
    meta = bool(exif or icc)
    if bits == 8 and meta and suffix in (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"):
        kwargs: dict[str, object] = {}
        if exif:
            kwargs["exif"] = exif
        if icc:
            kwargs["icc_profile"] = icc
        if suffix in (".jpg", ".jpeg", ".webp"):
            kwargs["quality"] = int(quality)
        if suffix in (".jpg", ".jpeg"):
            kwargs["subsampling"] = 0
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
               ".webp": "WEBP"}[suffix]
        with atomic_path(path) as tmp:
            Image.fromarray(q).save(tmp, format=fmt, **kwargs)
        return path
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(q, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise InputError(f"{path}: could not encode image")
    data = buf.tobytes()
    if meta and suffix == ".png":
        data = _png_add_metadata(data, exif, icc)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
