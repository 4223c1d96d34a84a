"""Image reading and writing for photographs: 8/16-bit, EXIF orientation, EXIF/ICC carry-over.

Images inside crmef are float32 numpy arrays of shape (H, W, 3), RGB, values in [0, 1]; a decoded
file also keeps its uint8 / uint16 codes, which the default engine reads without a float copy.

Each file is read once. Pillow parses the header of those bytes (size, EXIF orientation, the
EXIF block and the ICC profile; it never decodes pixels here), the header is checked, and only
then OpenCV decodes the same bytes (fast, 8 and 16 bit, JPEG/PNG/TIFF/…). Orientation is
applied here, explicitly, so that the pixels always come out upright whatever the decoder does.

A bad file is one :class:`~crmef.errors.InputError` whose message starts with the file and says
what is wrong, raised before any large allocation where the header allows: zero or more than
:data:`MAX_PIXELS` pixels, a size the file is too small to hold, samples other than 8/16-bit
integers (float TIFF, …), or a decoder's failure (its exception or log line folded into the
message). The decoders' own messages never reach stderr (:func:`quiet_decoders`). Nothing here
imports torch.

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

import contextlib
import functools
import hashlib
import io
import os
import re
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from crmef.errors import InputError
from crmef.utils import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
ORIENTATION_TAG = 0x0112
"""EXIF tag of the orientation (1 = upright … 8)."""
MAX_PIXELS = 250_000_000
"""Largest image :func:`load_image` decodes (width × height, checked from the header first)."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and what is needed to write a result the same way.

    Attributes:
        codes: the decoded samples, uint8 or uint16 (H, W, 3) RGB, EXIF orientation applied
            (what the engine reads: no float copy of the frame is needed).
        bits: 8 or 16, the bit depth of the file.
        path: where it came from.
        exif: the raw EXIF block with orientation reset to 1, or ``None``.
        icc: the ICC profile bytes, or ``None``.
        orientation: the EXIF orientation found in the file (1 when absent or invalid).
        digest: SHA-256 of the file's bytes (hex), to recognise the same photo given twice.
    """

    codes: np.ndarray
    bits: int
    path: Path
    exif: bytes | None = None
    icc: bytes | None = None
    orientation: int = 1
    digest: str = ""

    @functools.cached_property
    def rgb(self) -> np.ndarray:
        """float32 (H, W, 3) RGB in [0, 1] (made on first use, then kept)."""
        rgb = self.codes.astype(np.float32)
        np.divide(rgb, np.float32(255.0 if self.bits == 8 else 65535.0), out=rgb)
        return rgb


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


def _orientation(exif: Image.Exif) -> int:
    """The EXIF orientation 1–8; anything else (missing, 0, 9, 65535, a malformed value) is 1."""
    value = exif.get(ORIENTATION_TAG, 1)
    if isinstance(value, (tuple, list)):  # a malformed tag can hold several values
        value = value[0] if value else 1
    try:
        orientation = int(value)
    except (TypeError, ValueError):
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _upright_exif(exif: Image.Exif) -> bytes | None:
    """The EXIF block with its orientation reset to 1, or ``None`` (no EXIF or a malformed one)."""
    if not len(exif):
        return None
    if ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1
    try:
        return exif.tobytes()
    except Exception:  # malformed maker notes etc.: drop EXIF rather than fail the fusion
        return None


@dataclass(frozen=True)
class _Header:
    """What the header says, read without decoding pixels."""

    width: int
    height: int
    orientation: int = 1
    exif: bytes | None = None
    icc: bytes | None = None
    sample: str | None = None
    """Why the samples cannot be read (e.g. ``"32-bit floating-point"``), ``None`` when they can."""
    min_bytes: int = 0
    """Fewest bytes a valid file of this size can have (0: no bound known), see :func:`_min_bytes`."""


_TIFF_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point", 4: "undefined"}


def _tiff_sample(bits: tuple[int, ...], sample_format: tuple[int, ...]) -> str | None:
    """Describe TIFF samples crmef cannot read (anything but 1/8/16-bit unsigned), else ``None``."""
    fmt = sample_format[0] if sample_format else 1
    depth = bits[0] if bits else 1
    if fmt in (3, 2) or fmt not in _TIFF_SAMPLE_FORMATS:
        kind = _TIFF_SAMPLE_FORMATS.get(fmt, f"sample format {fmt}")
        return f"{depth}-bit {kind}"
    if depth not in (1, 2, 4, 8, 16):
        return f"{depth}-bit integer"
    return None


def _tiff_header(data: bytes) -> _Header | None:
    """Size and sample format from a classic TIFF's first IFD (for files Pillow cannot open).

    Returns ``None`` when ``data`` is not a TIFF or its first directory cannot be read.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or struct.unpack(order + "H", data[2:4])[0] != 42:
        return None
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 6: 1, 7: 1, 8: 2, 9: 4, 11: 4, 12: 8, 16: 8}
    codes = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q"}
    try:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        tags: dict[int, tuple[int, ...]] = {}
        for i in range(count):
            entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, kind, n = struct.unpack(order + "HHI", entry[:8])
            if tag not in (256, 257, 258, 259, 274, 277, 339) or kind not in codes or n > 64:
                continue
            size = sizes[kind] * n
            raw = entry[8 : 8 + size] if size <= 4 else data[struct.unpack(order + "I", entry[8:12])[0] :][:size]
            tags[tag] = struct.unpack(order + codes[kind] * n, raw)
        width, height = tags[256][0], tags[257][0]
    except (struct.error, KeyError, IndexError):
        return None
    orientation = tags.get(274, (1,))[0]
    bits = tags.get(258, (1,))
    return _Header(width, height, orientation=orientation if 1 <= orientation <= 8 else 1,
                   sample=_tiff_sample(bits, tags.get(339, (1,))),
                   min_bytes=_min_bytes_tiff(width, height, tags.get(259, (1,))[0], sum(bits) or 1))


_DEFLATE_RATIO = 1032
"""Deflate's largest possible compression ratio (PNG, TIFF 'deflate')."""
_TIFF_RATIOS = {1: 1, 32773: 64, 8: _DEFLATE_RATIO, 32946: _DEFLATE_RATIO, 5: 4096}
"""Largest compression ratio of TIFF compressions (none, PackBits, deflate, LZW), generous."""
_JPEG_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}
_JPEG_SOF = _JPEG_HUFFMAN_SOF | {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _min_bytes_tiff(width: int, height: int, compression: int, bits_per_pixel: int) -> int:
    """Fewest bytes of a TIFF of this size (half the tightest bound, for safety; 0 if unknown)."""
    if compression == 7:  # JPEG inside TIFF
        return width * height // 1024
    ratio = _TIFF_RATIOS.get(compression)
    return 0 if ratio is None else height * ((width * bits_per_pixel + 7) // 8) // ratio // 2


def _min_bytes(fmt: str | None, data: bytes, width: int, height: int, tiff: dict) -> int:
    """Fewest bytes a valid file with this header can have, or 0 when no bound is known.

    A few bytes claiming hundreds of megapixels would make the decoder allocate the whole frame
    before it finds the data missing (seconds and gigabytes, for a file of a few kilobytes). The
    bounds are half the tightest possible size, so only impossible files fail them:

    - PNG: deflate cannot compress better than 1032:1, and each row has a filter byte.
    - JPEG (Huffman coded): every 8×8 block of every component costs at least one bit, so at
      least ``pixels / 512`` bytes. Arithmetic-coded JPEG has no such bound (no check).
    - TIFF: by compression (none 1:1, PackBits, deflate, LZW, JPEG); other compressions unchecked.
    """
    if fmt == "PNG" and data[12:16] == b"IHDR":
        depth, colour = data[24], data[25]
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
        return height * (1 + (width * channels * depth + 7) // 8) // _DEFLATE_RATIO // 2
    if fmt in ("JPEG", "MPO"):
        return width * height // 1024 if _jpeg_sof(data) in _JPEG_HUFFMAN_SOF else 0
    if fmt == "TIFF":
        bits = tiff.get(258, 1)
        bits = sum(bits) if isinstance(bits, tuple) else int(bits)
        compression = tiff.get(259, 1)
        return _min_bytes_tiff(width, height, int(compression) if isinstance(compression, int) else 0, bits or 1)
    return 0


def _jpeg_sof(data: bytes) -> int | None:
    """The frame marker (0xC0 baseline, 0xC2 progressive, 0xC9 arithmetic, …) of a JPEG, or ``None``."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            return marker
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _png_exif(data: bytes) -> Image.Exif:
    """The eXIf chunk of a PNG, wherever it is (Pillow's ``getexif`` decodes every pixel to look
    after the image data)."""
    exif = Image.Exif()
    i = 8
    while i + 12 <= len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        if kind == b"eXIf":
            exif.load(data[i + 8 : i + 8 + n])
            break
        if kind == b"IEND":
            break
        i += 12 + n
    return exif


_PIL_LIMIT = threading.Lock()


def _pil_open(data: bytes) -> Image.Image:
    """Pillow's lazy open (header only), without its decompression-bomb limit.

    crmef applies its own limit (:data:`MAX_PIXELS`) to the size this returns, before decoding.
    """
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        pass
    with _PIL_LIMIT:  # Pillow's limit is a module global: lift it only for this header read
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _read_header(path: Path, data: bytes) -> _Header:
    """Size, orientation, EXIF and ICC from the bytes of a file, without decoding pixels.

    Raises:
        InputError: the header is not one of a readable image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's corrupt-EXIF and bomb warnings: we report ourselves
        try:
            with _pil_open(data) as im:
                width, height = im.size
                fmt = im.format
                tiff = dict(getattr(im, "tag_v2", {}) or {}) if im.format == "TIFF" else {}
                icc = im.info.get("icc_profile") or None
                try:
                    exif = _png_exif(data) if im.format == "PNG" else im.getexif()
                    orientation, raw = _orientation(exif), _upright_exif(exif)
                except Exception:  # unreadable EXIF: no metadata, pixels as stored
                    orientation, raw = 1, None
        except Exception as exc:  # any failure of Pillow's header parsers
            header = _tiff_header(data)
            if header is None:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if isinstance(exc, UnidentifiedImageError):
                    reason = "unknown format, or a corrupt or truncated header"
                raise InputError(f"{path}: not a readable image ({reason})") from exc
            return header
    sample = None
    if tiff:
        as_tuple = lambda v: v if isinstance(v, tuple) else (v,)  # noqa: E731
        try:
            sample = _tiff_sample(as_tuple(tiff.get(258, 1)), as_tuple(tiff.get(339, 1)))
        except (TypeError, ValueError):
            sample = None
    try:
        min_bytes = _min_bytes(fmt, data, width, height, tiff)
    except (TypeError, ValueError, struct.error):
        min_bytes = 0
    return _Header(width, height, orientation, raw, icc if isinstance(icc, bytes) else None, sample, min_bytes)


class _Quiet:
    """Shared state of :func:`quiet_decoders` (re-entrant, shared between threads)."""

    lock = threading.Lock()
    depth = 0
    saved_fd = -1
    sink: IO[bytes] | None = None
    cv_level = 0


@contextlib.contextmanager
def quiet_decoders() -> Iterator[list[str]]:
    """Keep the decoders' own messages (OpenCV's log, libpng, libjpeg, libtiff, Pillow's warnings) off stderr.

    libpng and libjpeg print straight to file descriptor 2, so it points at a temporary file
    while the block runs (the first thread to enter redirects, the last to leave restores; a
    thread printing to stderr meanwhile is captured too). Yields a list that receives the lines
    printed during the block, so an error can quote the decoder's reason.
    """
    q = _Quiet
    lines: list[str] = []
    with q.lock:
        if q.depth == 0:
            q.cv_level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            q.sink = None
            try:
                sys.stderr.flush()
                q.saved_fd = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to silence
                pass
            else:
                sink = tempfile.TemporaryFile()
                os.dup2(sink.fileno(), 2)
                q.sink = sink
        q.depth += 1
        start = os.lseek(q.sink.fileno(), 0, os.SEEK_END) if q.sink is not None else 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "corrupt EXIF", "tag data larger than file", …
            yield lines
    finally:
        with q.lock:
            q.depth -= 1
            if q.sink is not None:
                end = os.lseek(q.sink.fileno(), 0, os.SEEK_END)
                text = os.pread(q.sink.fileno(), end - start, start) if end > start else b""
                lines.extend(ln.strip() for ln in text.decode("utf-8", "replace").splitlines() if ln.strip())
            if q.depth == 0:
                cv2.utils.logging.setLogLevel(q.cv_level)
                if q.sink is not None:
                    os.dup2(q.saved_fd, 2)
                    os.close(q.saved_fd)
                    q.sink.close()
                    q.sink = None


def _decode(path: Path, data: bytes) -> np.ndarray:
    """OpenCV's decode of ``data`` (BGR, 8/16-bit as stored, orientation ignored) with clean errors."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
    with quiet_decoders() as said:
        try:
            img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
        except Exception as exc:  # cv2.error and anything else a codec raises
            said.append(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
            img = None
    if img is None or img.size == 0:
        why = next((ln for ln in said if "error" in ln.lower()), said[0] if said else "")
        why = re.sub(r"^\[\s*\w+:[^\]]*\]\s*", "", why)[:160]
        detail = f": {why}" if why else ""
        raise InputError(f"{path}: not a readable image (corrupt, truncated or unsupported{detail})")
    return img


def load_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Read a JPEG/PNG/TIFF (8 or 16 bit, grey or colour): its RGB codes as decoded (and, on
    first use of ``.rgb``, float32 in [0, 1]).

    The file is read once: its header (size, EXIF, ICC) is parsed by Pillow without decoding
    pixels, the size is checked against :data:`MAX_PIXELS`, and only then OpenCV decodes the same
    bytes. EXIF orientation is applied; the EXIF block (orientation reset to 1) and the ICC profile
    are kept on the result for :func:`write_image`.

    Raises:
        InputError: the file is missing, empty, not an image, corrupt, zero-sized or larger than
            :data:`MAX_PIXELS`, or holds samples other than 8/16-bit integers (the message names
            the file and the problem). No other exception escapes for a bad file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image")
    if not path.is_file():  # a FIFO would block the read forever, a device never end
        raise InputError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not data:
        raise InputError(f"{path}: empty file")
    head = _read_header(path, data)
    w, h = head.width, head.height
    if w <= 0 or h <= 0:
        raise InputError(f"{path}: image has no pixels (its header says {w}x{h})")
    if w * h > MAX_PIXELS:
        raise InputError(f"{path}: image is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); "
                         f"crmef reads at most {MAX_PIXELS // 1_000_000} megapixels")
    if len(data) < head.min_bytes:
        raise InputError(f"{path}: corrupt or truncated image (its header says {w}x{h} pixels, which "
                         f"cannot fit in {len(data)} bytes)")
    if head.sample is not None:
        raise InputError(f"{path}: unsupported sample format: {head.sample} "
                         "(crmef reads 8- and 16-bit integer images)")
    img = _decode(path, data)
    if img.shape[:2] != (h, w):
        raise InputError(f"{path}: corrupt image (decoded {img.shape[1]}x{img.shape[0]} pixels, "
                         f"its header says {w}x{h})")
    if img.dtype == np.uint8:
        bits = 8
    elif img.dtype == np.uint16:
        bits = 16
    else:
        kind = {"f": "floating-point", "i": "signed integer"}.get(img.dtype.kind, "integer")
        raise InputError(f"{path}: unsupported sample format: {img.dtype.itemsize * 8}-bit {kind} "
                         "(crmef reads 8- and 16-bit integer images)")
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place
    codes = np.ascontiguousarray(apply_orientation(img, head.orientation))
    return LoadedImage(codes=codes, bits=bits, path=path, exif=head.exif, icc=head.icc,
                       orientation=head.orientation, digest=hashlib.sha256(data).hexdigest())


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as float32 (H, W, 3) RGB in [0, 1]; see :func:`load_image`."""
    return load_image(path).rgb


def to_uint(rgb: np.ndarray, bits: int = 8) -> np.ndarray:
    """Quantise float RGB in [0, 1] (H, W, 3) to uint8 or uint16 with rounding; integer codes
    (uint8 / uint16) pass through or change depth exactly."""
    if bits not in (8, 16):
        raise InputError(f"bits must be 8 or 16, got {bits}")
    if rgb.dtype == np.uint8:
        return rgb if bits == 8 else rgb.astype(np.uint16) * np.uint16(257)
    if rgb.dtype == np.uint16:
        return rgb if bits == 16 else ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    peak = 255.0 if bits == 8 else 65535.0
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.round(np.clip(rgb, 0.0, 1.0) * peak).astype(dtype)


EIGHT_BIT_SUFFIXES = (".jpg", ".jpeg", ".webp", ".bmp")
"""Output formats written with 8 bits whatever was asked."""


def output_bits(path: str | os.PathLike[str], bits: int) -> int:
    """The bit depth :func:`write_image` writes ``path`` with when asked for ``bits``: 8 for the
    formats of :data:`EIGHT_BIT_SUFFIXES`, else ``bits``."""
    return 8 if Path(path).suffix.lower() in EIGHT_BIT_SUFFIXES else bits


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
    """Write RGB (H, W, 3) atomically: float in [0, 1], or uint8 / uint16 codes; the format
    follows the suffix.

    JPEG (and BMP/WebP) are always 8-bit; PNG and TIFF keep 16 bits when ``bits=16``. ``exif``
    and ``icc`` are embedded where the format allows (table in the module docstring).

    Raises:
        InputError: unknown suffix, bad array shape, or the file cannot be written (a missing
            permission, a full disk, a parent that is a file); ``path`` is then left as it was.
    """
    try:
        return _write_image(Path(path), rgb, bits, quality, exif, icc)
    except (FileExistsError, NotADirectoryError) as exc:  # a file where a folder should be
        raise InputError(f"{path}: cannot write (a file is in the way of its folder {Path(path).parent})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def _write_image(
    path: Path,
    rgb: np.ndarray,
    bits: int = 8,
    quality: int = 95,
    exif: bytes | None = None,
    icc: bytes | None = None,
) -> Path:
    """:func:`write_image` without the translation of OS errors."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unknown output format {suffix!r}; use .jpg, .png or .tif")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{path}: expected an (H, W, 3) image, got shape {tuple(rgb.shape)}")
    bits = output_bits(path, bits)
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
