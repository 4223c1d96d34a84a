"""Fuzzed bad inputs: seeded random mutations of real JPEG, PNG (8/16-bit) and TIFF files.

Seeds are small files made here (JPEG, PNG 8 and 16-bit, TIFF 8 and 16-bit, with EXIF where the
format carries it) plus, where ``../shared/data`` is present, a real camera JPEG. Mutation classes:

- ``truncate``: cut at a random offset;
- ``header-flip``: 1–4 random bytes of the first 256 changed;
- ``body-flip``: 1–8 random bytes anywhere changed;
- ``dims``: random width and height written into the header (PNG IHDR with its CRC fixed, the
  JPEG frame header, the TIFF ImageWidth/ImageLength tags), from 0 and 1 to 2**32 - 1;
- ``orientation``: a random EXIF orientation value (0, 9, 65535, 1–8, any 16-bit value);
- ``stacked``: two of the above.

Property (every case through :func:`crmef.imageio.load_image`): it returns float32 RGB (H, W, 3)
in [0, 1], of the size the header gives (turned by the orientation it reports), or raises
:class:`InputError` with a one-line message that starts with the file; nothing else, nothing on
stderr (decoders' own messages included), never a hang. A fixed sample also goes through
``crmef fuse`` in-process: exit 0 with an image of the partner frame's size and an empty stderr,
or exit 2 with exactly one ``crmef: error:`` line and no output file.

Deterministic (fixed seeds) with a fixed budget: ``N_LOAD`` cases, ``N_CLI`` of them via the CLI.
The counts and classes are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import collections
import io
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crmef.cli import main
from crmef.errors import InputError
from crmef.imageio import ORIENTATION_TAG, load_image, write_image

SEED = 21
N_LOAD = int(os.environ.get("CRMEF_FUZZ_CASES", "480"))
"""Mutated files through load_image: a fixed budget (about 20 s on a slow core, CLI sample
included); set ``CRMEF_FUZZ_CASES`` higher for a longer hunt (the first 480 cases stay the same)."""
N_CLI = int(os.environ.get("CRMEF_FUZZ_CLI", "24"))
"""Of those, how many also go through ``crmef fuse`` (evenly spaced)."""
CLASSES = ("truncate", "header-flip", "body-flip", "dims", "orientation", "stacked")
REAL_JPEG = Path("sequences/forth/Knossos1/DSC_0715.jpg")
H, W = 24, 40


RUN: list[str] = []
"""Options of every ``crmef fuse`` run here: none, the default model (the engine) is what users run."""


# --------------------------------------------------------------------------- seeds
def _exif() -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 1
    exif[0x010F] = "crmef-fuzz"  # Make
    return exif.tobytes()


def _make_seeds(d: Path, shared: Path | None) -> dict[str, tuple[Path, Path]]:
    """name -> (seed file, a valid brighter partner frame of the same size and format)."""
    rgb = np.random.default_rng(SEED).random((H, W, 3), dtype=np.float32) * 0.4 + 0.05
    yy, xx = np.mgrid[0:H, 0:W]
    rgb[..., 1] = (xx / W * 0.5).astype(np.float32)  # some structure, not only noise
    bright = np.clip(rgb * 2.2, 0, 1)
    seeds = {}
    for name, suffix, bits, exif in [("jpeg", ".jpg", 8, True), ("png8", ".png", 8, True),
                                     ("png16", ".png", 16, True), ("tiff8", ".tif", 8, True),
                                     ("tiff16", ".tif", 16, False)]:
        meta = _exif() if exif else None
        seeds[name] = (write_image(d / f"seed-{name}{suffix}", rgb, bits=bits, exif=meta),
                       write_image(d / f"partner-{name}{suffix}", bright, bits=bits, exif=meta))
    if shared is not None and (shared / REAL_JPEG).is_file():
        real = d / "seed-real.jpg"
        real.write_bytes((shared / REAL_JPEG).read_bytes())
        img = load_image(real)
        seeds["real-jpeg"] = (real, write_image(d / "partner-real.jpg", np.clip(img.rgb * 1.8, 0, 1)))
    return seeds


# --------------------------------------------------------------------------- mutations
def _png_fix_crc(data: bytearray, offset: int) -> None:
    """Recompute the CRC of the PNG chunk holding byte ``offset``."""
    i = 8
    while i + 12 <= len(data):
        n = struct.unpack(">I", data[i : i + 4])[0]
        if i <= offset < i + 12 + n:
            data[i + 8 + n : i + 12 + n] = struct.pack(">I", zlib.crc32(bytes(data[i + 4 : i + 8 + n])) & 0xFFFFFFFF)
            return
        i += 12 + n


def _dim(rng: np.random.Generator, orig: int, top: int) -> int:
    pool = [0, 1, 2, 15, 16, 17, orig, orig - 1, orig + 1, orig * 2, orig * 100, 4096, 60000, top,
            int(rng.integers(1, 70000))]
    return int(min(pool[int(rng.integers(len(pool)))], top))


def _tiff_entries(data: bytes):
    """(offset of the entry, tag, type) of each entry of a little/big-endian TIFF's first IFD."""
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    n = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
    for k in range(n):
        e = ifd + 2 + 12 * k
        tag, kind = struct.unpack(order + "HH", data[e : e + 4])
        yield e, tag, kind, order


def _mutate_dims(data: bytearray, fmt: str, rng: np.random.Generator) -> bool:
    if fmt == "png":
        w, h = struct.unpack(">II", data[16:24])
        data[16:24] = struct.pack(">II", _dim(rng, w, 2**32 - 1), _dim(rng, h, 2**32 - 1))
        _png_fix_crc(data, 16)
        return True
    if fmt == "jpeg":
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            if data[i + 1] in (0xC0, 0xC1, 0xC2):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                data[i + 5 : i + 9] = struct.pack(">HH", _dim(rng, h, 65535), _dim(rng, w, 65535))
                return True
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        return False
    done = False
    for e, tag, kind, order in _tiff_entries(bytes(data)):
        if tag in (256, 257) and kind in (3, 4):  # SHORT: 2 bytes then padding; LONG: 4 bytes
            fmt_ = order + ("HH" if kind == 3 else "I")
            orig = struct.unpack(fmt_, data[e + 8 : e + 12])[0]
            value = _dim(rng, orig, 65535 if kind == 3 else 2**32 - 1)
            data[e + 8 : e + 12] = struct.pack(fmt_, *((value, 0) if kind == 3 else (value,)))
            done = True
    return done


def _try_dims(data: bytearray, fmt: str, rng: np.random.Generator) -> bool:
    """:func:`_mutate_dims`, False when the (already mutated) header cannot be walked."""
    try:
        return _mutate_dims(data, fmt, rng)
    except (struct.error, IndexError):
        return False


def _orientation_offsets(data: bytes) -> list[int]:
    """Offsets of the value of every EXIF/TIFF orientation entry (SHORT, count 1) in ``data``."""
    offsets = []
    for pattern, order in ((b"\x12\x01\x03\x00\x01\x00\x00\x00", "<"), (b"\x01\x12\x00\x03\x00\x00\x00\x01", ">")):
        start = data.find(pattern)
        while start >= 0:
            offsets.append(start + 8)
            start = data.find(pattern, start + 1)
    return offsets


def _mutate(data: bytes, fmt: str, cls: str, rng: np.random.Generator) -> tuple[bytes, str, int | None]:
    """Apply one mutation class; returns (bytes, class applied, orientation written or None)."""
    buf = bytearray(data)
    if cls == "stacked":
        first, second = rng.choice([c for c in CLASSES if c != "stacked"], size=2, replace=False)
        mid, a, o1 = _mutate(data, fmt, str(first), rng)
        out, b, o2 = _mutate(mid, fmt, str(second), rng)
        flipped = {a, b} & {"truncate", "header-flip", "body-flip"}  # may have hit the EXIF itself
        return out, "stacked", None if flipped else (o2 if o2 is not None else o1)
    if cls == "orientation":
        offsets = _orientation_offsets(data)
        if offsets:
            pool = [0, 9, 65535, *range(1, 9), int(rng.integers(0, 65536))]
            value = pool[int(rng.integers(len(pool)))]
            for off in offsets:
                buf[off : off + 2] = struct.pack("<H" if data[off - 8] == 0x12 else ">H", value)
                if fmt == "png":
                    _png_fix_crc(buf, off)
            return bytes(buf), "orientation", value
        cls = "header-flip"  # no EXIF in this seed (16-bit TIFF, the real JPEG)
    if cls == "dims" and _try_dims(buf, fmt, rng):
        return bytes(buf), "dims", None
    if cls == "truncate":
        return data[: int(rng.integers(1, len(data)))], "truncate", None
    label = "body-flip" if cls == "body-flip" else "header-flip"  # dims without a header to edit: flip
    span = len(buf) if label == "body-flip" else min(len(buf), 256)
    for pos in rng.integers(0, span, size=int(rng.integers(1, 9 if label == "body-flip" else 5))):
        buf[pos] ^= int(rng.integers(1, 256))
    return bytes(buf), label, None


# --------------------------------------------------------------------------- properties
def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as Pillow reads the header, or None when it cannot."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception:
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_load(path: Path, data: bytes, orientation: int | None) -> str:
    """The load_image property for one file; returns "decoded" or "rejected"."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = load_image(path)
    except InputError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
        return "rejected"
    assert not caught, [str(w.message) for w in caught]
    rgb = img.rgb
    assert rgb.dtype == np.float32 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 1
    assert np.isfinite(rgb).all() and rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert img.bits in (8, 16) and 1 <= img.orientation <= 8
    if orientation is not None:
        assert img.orientation == (orientation if 1 <= orientation <= 8 else 1)
    size = _header_size(data)
    if size is not None:
        w, h = size
        assert rgb.shape[:2] == ((w, h) if img.orientation in (5, 6, 7, 8) else (h, w))
    return "decoded"


def _check_cli(capfd, d: Path, path: Path, partner: Path) -> int:
    """The ``crmef fuse`` property for one mutated frame and a valid partner; returns the exit code."""
    out = d / f"fused{partner.suffix}"
    before = sorted(p.name for p in d.iterdir())
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:  # pytest would hide them from stderr
        warnings.simplefilter("always")
        code = main(["fuse", str(path), str(partner), "-o", str(out), *RUN])
    leaked = [f"{w.category.__name__}: {w.message}" for w in caught if "PIL" in w.filename or "cv2" in w.filename]
    assert not leaked, leaked
    stdout, stderr = capfd.readouterr()
    assert "Traceback" not in stderr
    if code == 0:
        assert stderr == "", stderr
        assert load_image(out).rgb.shape == load_image(partner).rgb.shape
        out.unlink()
    else:
        lines = stderr.strip().splitlines()
        assert code == 2, (code, stderr)
        assert len(lines) == 1 and lines[0].startswith("crmef: error: "), stderr
        assert not out.exists()
    assert sorted(p.name for p in d.iterdir()) == before  # no output, no temporary left
    return code


@pytest.fixture(scope="module")
def shared_or_none() -> Path | None:
    """``../shared/data`` when present (adds a real camera JPEG seed), else ``None``."""
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return shared if shared.is_dir() else None


@pytest.mark.timeout(300)
def test_fuzz_load_and_cli(tmp_path, capfd, shared_or_none):
    seeds = _make_seeds(tmp_path, shared_or_none)
    names = sorted(seeds)
    cli_every = max(N_LOAD // N_CLI, 1)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    cli_codes: collections.Counter[int] = collections.Counter()
    slowest = 0.0
    t_start = time.perf_counter()
    case_dir = tmp_path / "cases"
    case_dir.mkdir()
    for k in range(N_LOAD):
        name = names[k % len(names)]
        cls = CLASSES[(k // len(names)) % len(CLASSES)]
        seed, partner = seeds[name]
        fmt = {".jpg": "jpeg", ".png": "png", ".tif": "tiff"}[seed.suffix]
        rng = np.random.default_rng([SEED, k])
        data, applied, orientation = _mutate(seed.read_bytes(), fmt, cls, rng)
        path = case_dir / f"case{k:04d}{seed.suffix}"
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            outcome = _check_load(path, data, orientation)
            if k % cli_every == 0:
                cli_codes[_check_cli(capfd, case_dir, path, partner)] += 1
        except BaseException as exc:  # say which case, so it can be replayed
            raise AssertionError(f"case {k}: seed {name}, class {applied}: {type(exc).__name__}: {exc}") from exc
        slowest = max(slowest, time.perf_counter() - t0)
        counts[(applied, outcome)] += 1
        path.unlink()
    elapsed = time.perf_counter() - t_start
    assert capfd.readouterr().err == ""  # no decoder chatter leaked in N_LOAD cases
    assert sum(counts.values()) == N_LOAD and sum(cli_codes.values()) == len(range(0, N_LOAD, cli_every))
    assert {c for c, _ in counts} == set(CLASSES)  # every class exercised
    assert {o for _, o in counts} == {"decoded", "rejected"}  # and both outcomes seen
    assert slowest < 20.0
    with capfd.disabled():
        by_class = {c: {o: counts[(c, o)] for o in ("decoded", "rejected")} for c in CLASSES}
        print(f"\nfuzz: {N_LOAD} inputs from seeds {names}; classes {by_class}; "
              f"CLI sample {dict(cli_codes)} (exit code: count); {elapsed:.1f} s, slowest case {slowest:.2f} s")
