"""``crmef fuse`` end to end: 16-bit, metadata, batch, and the bad-input matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crmef.cli import main
from crmef.imageio import load_image, write_image
from crmef.models import save_model
from crmef.nets import FusionNet
from crmef.space import get_preset


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = FusionNet.from_genotype(get_preset("paper_general"), channels=4)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(net, path, {"name": "tiny"})
    return str(path)


def _frames(d, n=2, h=33, w=47, suffix=".png", bits=8, exif=None):
    rng = np.random.default_rng(n)
    base = rng.random((h, w, 3), dtype=np.float32) * 0.5 + 0.1
    paths = []
    for i, ev in enumerate(np.linspace(-1.5, 1.5, n)):
        p = d / f"f{i}{suffix}"
        write_image(p, np.clip(base * 2.0**ev, 0, 1), bits=bits, exif=exif)
        paths.append(str(p))
    return paths


def test_16bit_in_16bit_out(tmp_path, model):
    frames = _frames(tmp_path, suffix=".tif", bits=16)
    out = tmp_path / "fused.tif"
    assert main(["fuse", *frames, "-o", str(out), "--model", model, "--device", "cpu"]) == 0
    img = load_image(out)
    assert img.bits == 16 and img.rgb.shape == (33, 47, 3)
    assert len(np.unique(img.rgb)) > 256  # really uses 16-bit levels
    assert main(["fuse", *frames, "-o", str(tmp_path / "f8.png"), "--bits", "8", "--model", model]) == 0
    assert load_image(tmp_path / "f8.png").bits == 8


def test_exif_carried_and_n_frames(tmp_path, model):
    exif = Image.Exif()
    exif[0x010F] = "crmef-cam"
    frames = _frames(tmp_path, n=5, suffix=".jpg", exif=exif.tobytes())
    out = tmp_path / "fused.jpg"
    assert main(["fuse", *frames, "-o", str(out), "--model", model]) == 0
    with Image.open(out) as im:
        assert im.getexif().get(0x010F) == "crmef-cam"


def test_batch(tmp_path, model, capsys):
    root = tmp_path / "scenes"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        _frames(root / name, n=3)
    (root / "bad").mkdir()
    (root / "bad" / "x.png").write_text("not an image")
    (root / "bad" / "y.png").write_text("not an image")
    out = tmp_path / "out"
    assert main(["fuse", "--batch", str(root), "-o", str(out), "--model", model]) == 1
    err = capsys.readouterr().err
    assert "failed: bad:" in err and "x.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    mtime = (out / "a.png").stat().st_mtime_ns
    assert main(["fuse", "--batch", str(root), "-o", str(out), "--model", model]) == 1
    assert "2 already done" in capsys.readouterr().err
    assert (out / "a.png").stat().st_mtime_ns == mtime


def _bad_cases(tmp_path):
    good = _frames(tmp_path)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "small.png", np.zeros((10, 10, 3), np.float32))
    return {
        "corrupt": ([good[0], str(tmp_path / "corrupt.jpg")], "corrupt.jpg"),
        "non-image": ([good[0], str(tmp_path / "notes.txt")], "notes.txt"),
        "missing": ([good[0], str(tmp_path / "nope.png")], "nope.png"),
        "single": ([good[0]], "at least two frames"),
        "sizes": ([good[0], str(tmp_path / "small.png")], "small.png"),
        "no scenes": (["--batch", str(tmp_path / "empty")], "no scenes"),
        "bad output": ([*good, "-o", str(tmp_path / "out.gif")], "out.gif"),
    }


@pytest.mark.parametrize("case", ["corrupt", "non-image", "missing", "single", "sizes", "no scenes", "bad output"])
def test_bad_input_matrix(tmp_path, model, capsys, case):
    args, needle = _bad_cases(tmp_path)[case]
    before = {p.name for p in tmp_path.rglob("*")}
    out = ["-o", str(tmp_path / "out.png")] if "-o" not in args else []
    code = main(["fuse", *args, *out, "--model", model])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("crmef: error: ") and needle in err[0]
    assert {p.name for p in tmp_path.rglob("*")} == before  # no output, no temporary left


def test_missing_default_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("crmef.engine.WEIGHTS_DIR", tmp_path / "none")
    frames = _frames(tmp_path)
    assert main(["fuse", *frames, "-o", str(tmp_path / "o.png")]) == 2
    assert "not installed" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
