"""``crmef fuse`` never loses a photo: outputs that are inputs, bad files, one line, exit 2.

Every case runs the real CLI in-process (``crmef.cli.main``) and checks, with ``capfd`` (so that
decoders printing straight to file descriptor 2 are caught too): the exit code, exactly one
``crmef: error: <file>: ...`` line on stderr, no output or temporary file, and inputs that are
byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from crmef.cli import main
from crmef.errors import InputError
from crmef.imageio import MAX_PIXELS, ORIENTATION_TAG, load_image, write_image

pytestmark = pytest.mark.timeout(240)


RUN: list[str] = []
"""Options of every ``crmef fuse`` run here: none, the default model (the engine) is what users run."""


def _frames(d: Path, n: int = 2, h: int = 24, w: int = 40, suffix: str = ".png") -> list[Path]:
    base = np.random.default_rng(n).random((h, w, 3), dtype=np.float32) * 0.5 + 0.1
    return [write_image(d / f"f{i}{suffix}", np.clip(base * 2.0**ev, 0, 1))
            for i, ev in enumerate(np.linspace(-1.5, 1.5, n))]


def _sums(d: Path) -> dict[str, str]:
    """sha256 of every file under ``d`` (links followed), keyed by relative path."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _fails(capfd, args: list[str], needle: str) -> str:
    """Run ``crmef fuse ARGS``; assert exit 2 and one stderr line holding ``needle``; return it."""
    capfd.readouterr()
    code = main(["fuse", *args, *RUN])
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("crmef: error: ") and needle in lines[0], lines[0]
    assert out == ""
    return lines[0]


def _png_with_size(src: Path, dst: Path, w: int, h: int) -> Path:
    """Copy a PNG with the IHDR's width and height replaced (CRC fixed)."""
    data = bytearray(src.read_bytes())
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    dst.write_bytes(bytes(data))
    return dst


# --------------------------------------------------------------------------- output = an input
SPELLINGS = ["same", "dot", "absolute", "parent", "symlink", "hardlink", "input-symlink"]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_output_that_is_an_input_is_refused(tmp_path, capfd, monkeypatch, spelling, n):
    d = tmp_path / "photos"
    d.mkdir()
    monkeypatch.chdir(d)
    _frames(d, n=n)
    frames = [f"f{i}.png" for i in range(n)]
    target = frames[-1]
    if spelling == "symlink":
        os.symlink(target, "link.png")
    if spelling == "hardlink":
        os.link(target, "hard.png")
    if spelling == "input-symlink":
        os.symlink(target, "in.png")
        frames[-1] = "in.png"
    out = {"same": target, "dot": f"./{target}", "absolute": str(d / target),
           "parent": f"../photos/{target}", "symlink": "link.png", "hardlink": "hard.png",
           "input-symlink": target}[spelling]
    before = _sums(d)
    line = _fails(capfd, [*frames, "-o", out], "refusing to overwrite")
    assert line.startswith(f"crmef: error: {Path(out)}: ")
    assert _sums(d) == before  # inputs byte-identical, nothing added


def test_output_that_is_an_input_in_batch_is_never_written(tmp_path, capfd):
    root = tmp_path / "scenes"
    (root / "a").mkdir(parents=True)
    _frames(root / "a")
    before = _sums(root)
    # -o inside a scene: the output a/a.png would be written among the inputs of scene a
    os.link(root / "a" / "f0.png", root / "a" / "a.png")
    assert main(["fuse", "--batch", str(root), "-o", str(root / "a"), *RUN]) == 0
    assert _sums(root) == {**before, "a/a.png": before["a/f0.png"]}


def test_existing_output_that_is_not_an_input_is_replaced(tmp_path, capfd):
    frames = _frames(tmp_path)
    out = tmp_path / "fused.png"
    out.write_bytes(b"old")
    assert main(["fuse", *map(str, frames), "-o", str(out), *RUN]) == 0
    assert load_image(out).rgb.shape == (24, 40, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.png", "f1.png", "fused.png"]


# --------------------------------------------------------------------------- the same frame twice
@pytest.mark.parametrize("how", ["same", "dot", "absolute", "symlink", "copy"])
def test_frame_given_twice(tmp_path, capfd, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    _frames(tmp_path)
    second = {"same": "f0.png", "dot": "./f0.png", "absolute": str(tmp_path / "f0.png"),
              "symlink": "l.png", "copy": "c.png"}[how]
    if how == "symlink":
        os.symlink("f0.png", "l.png")
    if how == "copy":
        Path("c.png").write_bytes(Path("f0.png").read_bytes())
    before = _sums(tmp_path)
    line = _fails(capfd, ["f0.png", "f1.png", second, "-o", "out.png"],
                  "the same photo twice" if how == "copy" else "given twice")
    assert "f0.png" in line
    assert _sums(tmp_path) == before


# --------------------------------------------------------------------------- bad files
def test_absurd_png_one_line_no_allocation(tmp_path, capfd):
    good = _frames(tmp_path)
    huge = _png_with_size(good[0], tmp_path / "huge.png", 60000, 60000)
    before = _sums(tmp_path)
    line = _fails(capfd, [str(huge), str(good[1]), "-o", str(tmp_path / "out.png")], "huge.png")
    assert "60000x60000" in line and f"at most {MAX_PIXELS // 1_000_000} megapixels" in line
    assert _sums(tmp_path) == before
    # peak memory of the whole `crmef fuse` process rejecting it (imports included). VmHWM, not
    # ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of pytest would report pytest's.
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS read from /proc (Linux only)")
    code = ("import re, sys\nfrom crmef.cli import main\n"
            "code = main(['fuse', sys.argv[1], sys.argv[2], '-o', sys.argv[3]])\n"
            "print(code, re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    res = subprocess.run([sys.executable, "-c", code, str(huge), str(good[1]), str(tmp_path / "out.png")],
                         capture_output=True, text=True, env=env, timeout=120)
    code, peak_kib = map(int, res.stdout.split())
    assert code == 2 and res.stderr.count("\n") == 1 and "huge.png" in res.stderr, res.stderr
    assert peak_kib * 1024 < 300e6, f"peak RSS {peak_kib} KiB"  # torch and the model are never imported
    assert _sums(tmp_path) == before


@pytest.mark.parametrize("w,h", [(0, 24), (40, 0)])
def test_zero_size_header(tmp_path, capfd, w, h):
    good = _frames(tmp_path)
    bad = _png_with_size(good[0], tmp_path / "zero.png", w, h)
    _fails(capfd, [str(bad), str(good[1]), "-o", str(tmp_path / "out.png")], "zero.png")
    assert not (tmp_path / "out.png").exists()


def test_header_bigger_than_the_file(tmp_path, capfd):
    good = _frames(tmp_path, suffix=".jpg")
    data = bytearray(good[0].read_bytes())
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", 15000, 15000)  # 225 MP claimed by a 1 KB file
    (tmp_path / "sof.jpg").write_bytes(bytes(data))
    line = _fails(capfd, [str(tmp_path / "sof.jpg"), str(good[1]), "-o", str(tmp_path / "o.jpg")], "sof.jpg")
    assert "15000x15000" in line and "cannot fit" in line


@pytest.mark.parametrize("side", [1, 2, 15])
def test_frames_too_small(tmp_path, capfd, side):
    a = write_image(tmp_path / "a.png", np.full((side, side, 3), 0.2, np.float32))
    b = write_image(tmp_path / "b.png", np.full((side, side, 3), 0.8, np.float32))
    line = _fails(capfd, [str(a), str(b), "-o", str(tmp_path / "o.png")], "a.png")
    assert f"{side}x{side}" in line and "at least 16 pixels" in line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("dtype,needle", [(np.float32, "32-bit floating-point"), (np.float64, "64-bit floating-point"),
                                          (np.int32, "32-bit signed integer")])
@pytest.mark.parametrize("channels", [1, 3])
def test_unsupported_sample_format(tmp_path, capfd, dtype, needle, channels):
    good = _frames(tmp_path)
    arr = np.random.default_rng(0).random((24, 40, channels)) * 0.5
    arr = (arr * 1000).astype(dtype) if np.dtype(dtype).kind == "i" else arr.astype(dtype)
    if not cv2.imwrite(str(tmp_path / "s.tif"), arr[..., 0] if channels == 1 else arr):
        pytest.skip(f"OpenCV cannot write {channels}-channel {np.dtype(dtype)} TIFF")
    line = _fails(capfd, [str(tmp_path / "s.tif"), str(good[1]), "-o", str(tmp_path / "o.png")], "s.tif")
    assert needle in line


def test_truncated_tiff_one_line(tmp_path, capfd):
    good = _frames(tmp_path)
    write_image(tmp_path / "t.tif", load_image(good[0]).rgb)
    data = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[: len(data) // 2])
    _fails(capfd, [str(tmp_path / "t.tif"), str(good[1]), "-o", str(tmp_path / "o.png")], "t.tif")


def test_decoder_chatter_stays_off_stderr(tmp_path, capfd):
    """A JPEG with stray bytes decodes (libjpeg warns on fd 2): the fusion succeeds, stderr empty."""
    good = _frames(tmp_path, suffix=".jpg")
    data = good[0].read_bytes()
    i = data.find(b"\xff\xdb")
    (tmp_path / "stray.jpg").write_bytes(data[:i] + b"\x00\x01\x02" + data[i:])
    capfd.readouterr()
    assert main(["fuse", str(tmp_path / "stray.jpg"), str(good[1]), "-o", str(tmp_path / "o.jpg"),
                 *RUN]) == 0
    assert capfd.readouterr().err == ""
    # a PNG whose pixel data fails its CRC: libpng's own line is folded into ours
    png = _frames(tmp_path)[0].read_bytes()
    j = png.find(b"IDAT")
    n = struct.unpack(">I", png[j - 4 : j])[0]
    bad = bytearray(png)
    bad[j + 4 + n] ^= 0xFF
    (tmp_path / "crc.png").write_bytes(bytes(bad))
    _fails(capfd, [str(tmp_path / "crc.png"), str(good[1]), "-o", str(tmp_path / "o2.png")], "crc.png")


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    good = _frames(tmp_path)
    with pytest.raises(InputError, match="x.png"):
        main(["--debug", "fuse", str(tmp_path / "x.png"), str(good[1]), "-o", str(tmp_path / "o.png"), *RUN])


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_invalid_exif_orientation_is_upright(tmp_path, value):
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = value
    rgb = np.random.default_rng(0).random((20, 30, 3), dtype=np.float32)
    img = load_image(write_image(tmp_path / "o.png", rgb, exif=exif.tobytes()))
    assert img.orientation == 1 and img.rgb.shape == (20, 30, 3)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_load_reads_the_file_once(tmp_path, monkeypatch, suffix):
    """One read of the file; Pillow parses those bytes for the header and never decodes pixels."""
    path = write_image(tmp_path / f"a{suffix}", np.zeros((20, 30, 3), np.float32))
    opened: list[str] = []
    real_open = Path.open

    def spy(self, *args, **kwargs):
        opened.append(str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: pytest.fail("imread re-opens the file"))
    monkeypatch.setattr(Image, "open", _no_path_open(Image.open))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("Pillow decodes the pixels"))
    img = load_image(path)
    assert opened == [str(path)]
    assert img.rgb.shape == (20, 30, 3)


def test_png_exif_after_the_image_data(tmp_path):
    """eXIf may follow IDAT: found without Pillow decoding the pixels."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    exif[0x010F] = "late-exif"
    png = write_image(tmp_path / "a.png", np.zeros((20, 30, 3), np.float32)).read_bytes()
    body = exif.tobytes()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body) & 0xFFFFFFFF)
    (tmp_path / "late.png").write_bytes(png[:-12] + chunk + png[-12:])  # just before IEND
    img = load_image(tmp_path / "late.png")
    assert img.orientation == 6 and img.rgb.shape == (30, 20, 3)
    carried = Image.Exif()
    carried.load(img.exif)
    assert carried.get(0x010F) == "late-exif" and carried.get(ORIENTATION_TAG) == 1


def test_imageio_does_not_import_torch():
    code = "import sys, crmef.imageio; sys.exit(3 if 'torch' in sys.modules else 0)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def _no_path_open(real):
    def wrapper(fp, *args, **kwargs):
        assert not isinstance(fp, (str, os.PathLike)), "Pillow must parse the bytes already read"
        return real(fp, *args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- batch
def test_batch_bad_scenes_do_not_stop_the_others(tmp_path, capfd, monkeypatch):
    root = tmp_path / "scenes"
    for name in ("a", "z"):
        (root / name).mkdir(parents=True)
        _frames(root / name)
    (root / "corrupt").mkdir()
    _frames(root / "corrupt")
    (root / "corrupt" / "f1.png").write_bytes((root / "corrupt" / "f1.png").read_bytes()[:100])
    (root / "tiny").mkdir()
    _frames(root / "tiny", h=8, w=8)
    (root / "dup").mkdir()
    _frames(root / "dup")
    (root / "dup" / "f2.png").write_bytes((root / "dup" / "f0.png").read_bytes())
    (root / "huge").mkdir()
    good = _frames(root / "huge")
    _png_with_size(good[0], good[0], 60000, 60000)
    (root / "crash").mkdir()
    _frames(root / "crash", w=41)
    before = _sums(root)

    import crmef.engine as engine

    real = engine.blend

    def crash_on_41(frames, *args, **kwargs):
        if frames[0].shape[1] == 41:
            raise RuntimeError("engine bug")
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(engine, "blend", crash_on_41)
    out = tmp_path / "out"
    capfd.readouterr()
    # in-process (--jobs 1) so that the patched engine is the one that runs
    assert main(["fuse", "--batch", str(root), "-o", str(out), "--jobs", "1", *RUN]) == 1
    err = capfd.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "z.png"]  # no partial or temporary file
    assert load_image(out / "z.png").rgb.shape == (24, 40, 3)
    failed = [ln for ln in err.splitlines() if ln.startswith("  failed: ")]
    assert len(failed) == 5, err
    for name, needle in [("corrupt", "f1.png"), ("tiny", "at least 16"), ("dup", "same photo twice"),
                         ("huge", "megapixels"), ("crash", "internal error (RuntimeError: engine bug)")]:
        assert any(ln.startswith(f"  failed: {name}: ") and needle in ln for ln in failed), (name, err)
    assert "Traceback" not in err
    assert _sums(root) == before


def test_batch_output_must_be_a_folder(tmp_path, capfd):
    root = tmp_path / "scenes"
    (root / "a").mkdir(parents=True)
    _frames(root / "a")
    (tmp_path / "file.png").write_bytes(b"x")
    _fails(capfd, ["--batch", str(root), "-o", str(tmp_path / "file.png")], "not a directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_not_a_regular_file_never_blocks(tmp_path, capfd):
    good = _frames(tmp_path)
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would wait for a writer forever
    _fails(capfd, [str(tmp_path / "pipe.jpg"), str(good[1]), "-o", str(tmp_path / "o.png")], "not a regular file")


def test_output_folder_blocked_by_a_file(tmp_path, capfd):
    good = _frames(tmp_path)
    before = _sums(tmp_path)
    _fails(capfd, [*map(str, good), "-o", str(good[0] / "x.png")], "a file is in the way")
    assert _sums(tmp_path) == before


def test_batch_output_folder_inside_the_scenes_is_not_a_scene(tmp_path, capfd):
    root = tmp_path / "scenes"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        _frames(root / name)
    for _ in range(2):  # the second run must not fuse a.png and b.png as a scene "fused"
        assert main(["fuse", "--batch", str(root), "-o", str(root / "fused"), *RUN]) == 0
    assert sorted(p.name for p in (root / "fused").iterdir()) == ["a.png", "b.png"]
