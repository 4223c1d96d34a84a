"""``crmef demo``: a bracket from a photo shipped with scikit-image, fused, four PNGs written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crmef.cli import main
from crmef.imageio import read_image


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_demo_writes_bracket_fusion_and_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    under, over, fused = (read_image(out / f"{n}.png") for n in ("under", "over", "fused"))
    side = read_image(out / "side_by_side.png")
    assert under.shape == over.shape == fused.shape
    assert side.shape[0] == fused.shape[0] and side.shape[1] >= 3 * fused.shape[1]
    # a real bracket: the over frame is brighter, the fusion lies between and differs from both
    assert under.mean() + 0.15 < over.mean()
    assert under.mean() < fused.mean() < over.mean()
    assert np.abs(fused - under).mean() > 0.02 and np.abs(fused - over).mean() > 0.02
    assert sorted(p.name for p in out.iterdir()) == ["fused.png", "over.png", "side_by_side.png", "under.png"]


def test_demo_bad_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--model", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "nope.safetensors" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d" / "fused.png").exists()
