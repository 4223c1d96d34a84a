"""``crmef eval`` and ``crmef score``: tables, cache reuse, report, clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crmef.cli import main
from crmef.evaluation import EvalResult, Sample, evaluate, markdown_table, parse_methods, write_report, write_tables
from crmef.imageio import write_image


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _scene(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _samples(n: int = 2) -> list[Sample]:
    out = []
    for i in range(n):
        ref = _scene(seed=i)
        out.append(Sample(f"scene{i}", np.clip(ref * 0.4, 0, 1), np.clip(ref * 2.2, 0, 1), ref))
    return out


def test_evaluate_tables_cache_and_report(tmp_path: Path) -> None:
    samples = _samples()
    methods = parse_methods("mertens,flow_mertens,mean")
    metrics = ["psnr", "ssim", "fsim", "mef_ssim"]
    first = evaluate(samples, methods, metrics, tmp_path, "synthetic", progress=False)
    assert len(first.rows) == 6 and not any(r["cached"] for r in first.rows)
    second = evaluate(samples, methods, metrics, tmp_path, "synthetic", progress=False)
    assert all(r["cached"] for r in second.rows)
    for a, b in zip(first.rows, second.rows, strict=True):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-6)  # 16-bit cache: same 8-bit values
        assert a["seconds"] == pytest.approx(b["seconds"])  # timings of the real fusion are kept
    table = markdown_table(second)
    assert "| mertens | 2 |" in table and "±" in table
    by = {e["method"]: e for e in second.summary()}
    assert by["mertens"]["mef_ssim"][0] > by["mean"]["mef_ssim"][0]  # Mertens beats averaging
    paths = write_tables(second, tmp_path)
    assert paths["csv"].read_text().startswith("method,n,psnr_mean,psnr_std")
    assert len(paths["per_image"].read_text().strip().splitlines()) == 7
    page = write_report(second, samples, tmp_path, "test", max_figures=1, crop=48)
    assert "figures/scene0.png" in page.read_text()
    fig = cv2.imread(str(tmp_path / "figures" / "scene0.png"))
    assert fig is not None and fig.shape[0] > 300 and fig.std() > 10


def test_folder_method_and_size_errors(tmp_path: Path) -> None:
    samples = _samples(1)
    good = tmp_path / "good"
    write_image(good / "scene0.png", samples[0].ref)
    res = evaluate(samples, parse_methods(f"folder:{good}"), ["psnr"], tmp_path / "o", "k", progress=False)
    assert res.rows[0]["psnr"] > 40
    bad = tmp_path / "bad"
    write_image(bad / "scene0.png", samples[0].ref[:32])
    with pytest.raises(Exception, match=r"bad/scene0.png: fused image is 96x32 but its sources are 96x64"):
        evaluate(samples, parse_methods(f"folder:{bad}"), ["psnr"], tmp_path / "o", "k", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no fused image for sample 'scene0'"):
        evaluate(samples, parse_methods(f"folder:{empty}"), ["psnr"], tmp_path / "o", "k", progress=False)
    with pytest.raises(Exception, match="unknown method 'sharpest'"):
        parse_methods("mertens,sharpest")


def test_eval_result_without_references(tmp_path: Path) -> None:
    s = _samples(1)[0]
    s.ref = None
    res = evaluate([s], parse_methods("mertens"), ["psnr", "mef_ssim"], tmp_path, "k", progress=False)
    assert res.rows[0]["mef_ssim"] > 0.5 and "psnr" not in res.rows[0]
    assert isinstance(res, EvalResult)


def test_score_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _scene(64, 96)
    img = np.clip(ref + 0.02, 0, 1)
    write_image(tmp_path / "ref.png", ref)
    write_image(tmp_path / "img.png", img)
    write_image(tmp_path / "small.png", ref[:48])
    write_image(tmp_path / "under.png", ref * 0.4)
    write_image(tmp_path / "over.png", np.clip(ref * 2, 0, 1))
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["score", "--metric", "psnr,ssim,fsim", "--ref", str(tmp_path / "ref.png"),
                 "--img", str(tmp_path / "img.png"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"psnr", "ssim", "fsim"} and 30 < scores["psnr"] < 40
    assert main(["score", "--metric", "mef_ssim", "--inputs", str(tmp_path / "under.png"), str(tmp_path / "over.png"),
                 "--img", str(tmp_path / "img.png"), "--json"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["mef_ssim"] <= 1

    cases = [
        (["--ref", "ref.png", "--img", "small.png"], "small.png (96x48)"),
        (["--ref", "ref.png", "--img", "notes.png"], "notes.png: not a readable image"),
        (["--ref", "missing.png", "--img", "img.png"], "missing.png: no such file"),
        (["--img", "img.png"], "need a reference"),
        (["--metric", "mef_ssim", "--inputs", "under.png", "over.png", "--img", "small.png"], "small.png (96x48)"),
    ]
    for argv, message in cases:
        argv = [a if not a.endswith(".png") else str(tmp_path / a) for a in argv]
        assert main(["score", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("crmef: error:") and message in err, err


def test_eval_cli_on_synthetic_hdr(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--data", str(shared_data / "hdr"), "--methods", "mertens,mean", "--samples", "1",
            "--metrics", "psnr,ssim", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| mertens | 1 |" in out and "hdr_synth" in out
    assert main(argv) == 0
    assert "(2 reused" in capsys.readouterr().out
    assert main(["eval", "--data", str(tmp_path / "nope"), "--methods", "mertens"]) == 2
    assert "nope: no such folder" in capsys.readouterr().err


def test_load_samples_misaligned(shared_data: Path) -> None:
    from crmef.evaluation import load_samples

    (plain,), _ = load_samples(shared_data / "hdr", samples=1, limit=1)
    (mis,), _ = load_samples(shared_data / "hdr", samples=1, limit=1, misalign=True)
    (again,), _ = load_samples(shared_data / "hdr", samples=1, limit=1, misalign=True)
    assert mis.under.shape == mis.over.shape == mis.ref.shape
    assert mis.under.shape[0] < plain.under.shape[0]  # invalid borders cropped
    np.testing.assert_array_equal(mis.under, again.under)  # reproducible for the seed


def test_model_method_reports_params_and_flops(tmp_path: Path) -> None:
    pytest.importorskip("crmef.inference", reason="inference engine not available")
    from crmef.models import save_model
    from crmef.nets.fusion import FusionNet
    from crmef.space import get_preset

    weights, _ = save_model(FusionNet.from_genotype(get_preset("paper_general"), channels=4), tmp_path / "tiny", {"name": "tiny"})
    res = evaluate(_samples(1), parse_methods(f"mertens,model:{weights}"), ["psnr"], tmp_path / "o", "k", progress=False)
    by = {e["method"]: e for e in res.summary()}
    assert by["model:tiny"]["params"] > 0 and by["model:tiny"]["gflops"] > 0
    assert by["mertens"]["params"] is None
    assert "| model:tiny | 1 |" in markdown_table(res)
