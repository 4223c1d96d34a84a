"""``crmef data inspect|synth|split`` end to end (tiny trees in tmp_path; shared data where present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import OpenEXR
import pytest

from crmef.cli import main
from crmef.data.layouts import detect_layout
from crmef.data.synth import synthetic_radiance, write_demo_bracket
from crmef.imageio import write_image


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_shared_sequences_all_scenes_in_brightness_order(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _json(capsys, ["data", "inspect", str(shared_data / "sequences"), "--json"])
    scenes = report["scenes"]
    assert len(scenes) == 81
    assert {s["name"].split("/")[0] for s in scenes} == {"hdrps", "deepfuse", "forth"}
    for s in scenes:
        b = [f["brightness"] for f in s["frames"]]
        assert b == sorted(b) and b[0] < b[-1], s["name"]
        assert set(s["frames"][0]) >= {"file", "brightness", "exposure"}
        usable = [f["file"] for f in s["frames"] if f["usable"]]
        assert s["pair"] == [usable[0], usable[-1]]
    # the manifest's per-frame means agree with our order
    manifest = {e["scene"]: e for e in json.loads((shared_data / "manifest.json").read_text())}
    for s in scenes:
        means = {f["file"]: f["mean"] for f in manifest[f"sequences/{s['name']}"]["frames"]}
        m = [means[f["file"]] for f in s["frames"]]
        assert m == sorted(m), s["name"]


def test_inspect_text_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_demo_bracket(tmp_path / "ok", [1, -1, 3], ["b.png", "a.png", "c.png"])
    write_demo_bracket(tmp_path / "single", [0])
    (tmp_path / "ok" / "zz_broken.jpg").write_bytes(b"garbage")
    assert main(["data", "inspect", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "ok  48x48" in out and "pair: under a.png, over c.png" in out
    assert out.index("a.png") < out.index("b.png") < out.index("c.png")
    assert "crmef: warning: skipping scene single" in err
    assert "zz_broken.jpg" in err
    report = _json(capsys, ["data", "inspect", str(tmp_path), "--json"])
    assert [s["name"] for s in report["scenes"]] == ["ok"]
    assert [f["file"] for f in report["scenes"][0]["frames"]] == ["a.png", "b.png", "c.png"]

    mixed = tmp_path / "mixed_root" / "scene7"
    write_image(mixed / "a.png", np.full((30, 40, 3), 0.2, np.float32))
    write_image(mixed / "b.png", np.full((32, 40, 3), 0.8, np.float32))
    assert main(["data", "inspect", str(tmp_path / "mixed_root")]) == 2
    assert "crmef: error: scene scene7" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path / "mixed_root"), "--resize", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scenes"][0]["size"] == [40, 30]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "inspect", str(empty)]) == 2
    assert "no usable scenes" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2


def _hdr_dir(tmp_path: Path) -> Path:
    hdr = tmp_path / "hdr"
    hdr.mkdir()
    for i in range(2):
        rad = synthetic_radiance(96, 96, np.random.default_rng(i), dynamic_range=1e4)
        OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"RGB": rad}).write(
            str(hdr / f"h{i}.exr")
        )
    return hdr


def test_synth_writes_paired_folder_deterministically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hdr = _hdr_dir(tmp_path)
    outs = []
    for run in ("a", "b"):
        out = tmp_path / f"out_{run}"
        argv = ["data", "synth", "--hdr", str(hdr), "--out", str(out), "--count", "3", "--misalign", "--seed", "5", "--crop", "48"]
        assert main(argv) == 0
        outs.append(out)
    a, b = outs
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert files == [f"train{x}/{i:05d}.png" for x in "ABC" for i in range(3)]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert detect_layout(a) == "paired"
    meta = json.loads((a / "synth.json").read_text())
    assert meta["count"] == 3 and meta["misalign"] and len(meta["samples"]) == 3
    main(["data", "synth", "--hdr", str(hdr), "--out", str(tmp_path / "c"), "--count", "3", "--misalign", "--seed", "6", "--crop", "48"])
    assert (tmp_path / "c" / "trainA" / "00000.png").read_bytes() != (a / "trainA" / "00000.png").read_bytes()
    capsys.readouterr()
    report = _json(capsys, ["data", "inspect", str(a), "--json"])
    assert report["layout"] == "paired" and len(report["scenes"]) == 3
    assert main(["data", "synth", "--hdr", str(tmp_path / "none"), "--out", str(tmp_path / "x"), "--count", "1"]) == 2


def test_split_check(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "split", "--root", str(shared_data), "--check"]) == 0
    out = tmp_path / "split.json"
    assert main(["data", "split", "--root", str(shared_data), "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert len([k for k in table["scenes"] if k.startswith("sequences/")]) == 81
    assert main(["data", "split", "--root", str(shared_data), "--out", str(out), "--seed", "1", "--check"]) == 1
