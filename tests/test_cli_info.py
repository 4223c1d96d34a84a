"""`crmef info` CLI smoke tests."""

from __future__ import annotations

import json

from crmef.cli import main


def test_info_json(capsys) -> None:
    assert main(["info", "--preset", "paper_general", "--channels", "64", "--size", "1080x1920", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 1_793_807
    assert info["gflops"] > 1000
    assert len(info["slots"]) == 4 * 3 + 4
    assert set(info["slots"].values()) == {"conv_3", "resdilconv_3", "resconv_3"}


def test_info_genotype_file(tmp_path, capsys) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"srsm": ["conv_1", "conv_1", "conv_1"], "drm": ["conv_1"]}))
    assert main(["info", "--genotype", str(path), "--channels", "4", "--size", "32x32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["genotype"]["drm"] == ["conv_1"]


def test_info_bad_genotype_exit_2(tmp_path, capsys) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"srsm": ["conv_1", "conv_1", "warp_9"], "drm": ["conv_1"]}))
    assert main(["info", "--genotype", str(path)]) == 2
    err = capsys.readouterr().err
    assert "g.json" in err and "warp_9" in err and len(err.strip().splitlines()) == 1


def test_engine_model_names_are_not_presets(capsys) -> None:
    """``general`` / ``aligned`` name the shipped engine models, not the paper's genotypes."""
    assert main(["info", "--preset", "general"]) == 2
    assert "available: paper_aligned, paper_general" in capsys.readouterr().err
