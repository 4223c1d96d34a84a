"""``crmef eval`` with chroma_hull, the enfuse baselines and N-frame samples (``--frames all``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crmef.baselines import EnfuseError, enfuse_binary, mertens
from crmef.cli import main
from crmef.evaluation import Sample, evaluate, markdown_table, parse_methods, write_tables
from crmef.imageio import load_image, write_image
from crmef.metrics import chroma_hull, mef_ssim

needs_enfuse = pytest.mark.skipif(enfuse_binary() is None,
                                  reason="enfuse binary not on PATH (Debian package 'enfuse'; .ci/run installs it)")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _bracket(n: int = 3, h: int = 64, w: int = 96, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    small = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    scene = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)
    return [np.clip(scene * g, 0, 1).astype(np.float32) for g in np.geomspace(0.3, 3.0, n)]


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


def test_n_frame_samples_and_methods(tmp_path: Path) -> None:
    frames = _bracket(4)
    sample = Sample("scene", frames[0], frames[-1], None, frames=frames)
    res = evaluate([sample], parse_methods("mertens,mertens_all,mean"), ["mef_ssim", "chroma_hull"], tmp_path, "k",
                   progress=False)
    rows = {r["method"]: r for r in res.rows}
    fused = {m: load_image(res.fused[(m, "scene")]).rgb for m in rows}
    np.testing.assert_allclose(fused["mertens_all"], mertens(frames), atol=1e-4)  # all four frames at once
    np.testing.assert_allclose(fused["mertens"], mertens([frames[0], frames[-1]]), atol=1e-4)  # the extremes
    for m, r in rows.items():  # every method scored against all four frames
        assert r["mef_ssim"] == pytest.approx(float(mef_ssim([_t(f) for f in frames], _t(fused[m]))[0]), abs=1e-9)
        assert r["chroma_hull"] == pytest.approx(chroma_hull(frames, fused[m]), abs=1e-12)
    assert rows["mertens_all"]["mef_ssim"] > rows["mertens"]["mef_ssim"]  # the middle frames count
    assert rows["mean"]["chroma_hull"] < 1e-3  # a mean in sRGB is almost a linear-light mix
    table = markdown_table(res)
    assert "CHROMA-HULL ↓" in table and "MEF-SSIM ↑" in table
    assert "chroma_hull_mean" in write_tables(res, tmp_path)["csv"].read_text()

    # a pair sample: N-frame methods fuse the pair, like their pair versions
    pair = Sample("pair", frames[0], frames[-1], None)
    res = evaluate([pair], parse_methods("mertens,mertens_all"), ["chroma_hull"], tmp_path, "k", progress=False)
    a, b = (load_image(res.fused[(m, "pair")]).rgb for m in ("mertens", "mertens_all"))
    np.testing.assert_array_equal(a, b)


@needs_enfuse
def test_enfuse_methods_in_evaluate(tmp_path: Path) -> None:
    frames = _bracket(3)
    sample = Sample("scene", frames[0], frames[-1], frames[1], frames=frames)
    res = evaluate([sample], parse_methods("enfuse,enfuse_all,mertens_all"), ["psnr", "mef_ssim", "chroma_hull"],
                   tmp_path, "k", progress=False)
    by = {e["method"]: e for e in res.summary()}
    assert set(by) == {"enfuse", "enfuse_all", "mertens_all"}
    for e in by.values():
        assert 0.5 < e["mef_ssim"][0] <= 1 and 0 <= e["chroma_hull"][0] < 0.01 and e["psnr"][0] > 10


def test_enfuse_method_without_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMEF_ENFUSE", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    for spec in ("enfuse", "mertens,enfuse_all"):
        with pytest.raises(EnfuseError, match="package 'enfuse'"):
            parse_methods(spec)


def test_score_cli_chroma_hull(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = _bracket(3)
    paths = []
    for i, f in enumerate(frames):
        paths.append(str(tmp_path / f"f{i}.png"))
        write_image(paths[-1], f)
    write_image(tmp_path / "fused.png", mertens(frames))
    write_image(tmp_path / "small.png", frames[0][:40])
    assert main(["score", "--metric", "chroma_hull,mef_ssim", "--inputs", *paths, "--img", str(tmp_path / "fused.png"),
                 "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"chroma_hull", "mef_ssim"} and 0 <= scores["chroma_hull"] < 0.02
    assert main(["score", "--metric", "chroma_hull", "--inputs", *paths, "--img", str(tmp_path / "fused.png")]) == 0
    assert capsys.readouterr().out.startswith("chroma_hull 0.0")
    cases = [
        (["--metric", "chroma_hull", "--img", "fused.png"], "chroma_hull needs the source exposures"),
        (["--metric", "chroma_hull", "--inputs", "f0.png", "--img", "fused.png"], "need at least two --inputs"),
        (["--metric", "chroma_hull", "--inputs", "f0.png", "f1.png", "--img", "small.png"], "small.png (96x40)"),
        (["--metric", "chroma", "--inputs", "f0.png", "f1.png", "--img", "fused.png"], "unknown metric 'chroma'"),
    ]
    for argv, message in cases:
        argv = [a if not a.endswith(".png") else str(tmp_path / a) for a in argv]
        assert main(["score", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err, err


def test_eval_cli_all_frames(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--data", str(shared_data / "sequences"), "--frames", "all", "--limit", "1",
            "--methods", "mertens,mertens_all", "--metrics", "mef_ssim,chroma_hull", "--out", str(tmp_path),
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "all 3 frames" in out and "| mertens_all | 1 |" in out and "CHROMA-HULL" in out, out
    rows = (tmp_path / "per_image.csv").read_text().splitlines()
    assert rows[0] == "method,sample,seconds,cached,mef_ssim,chroma_hull" and len(rows) == 3
    assert main(["eval", "--data", str(shared_data / "hdr"), "--frames", "all", "--methods", "mertens"]) == 2
    assert "--frames all needs bracket folders" in capsys.readouterr().err
