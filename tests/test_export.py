"""ONNX export: onnxruntime matches PyTorch at two sizes (dynamic axes); aligned is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crmef.cli import main
from crmef.models import save_model
from crmef.nets import FusionNet
from crmef.space import get_preset

ort = pytest.importorskip("onnxruntime")


def test_onnx_parity_two_sizes(tmp_path):
    torch.manual_seed(0)
    net = FusionNet.from_genotype(get_preset("paper_general"), channels=4).eval()
    w, _ = save_model(net, tmp_path / "m", {"name": "tiny"})
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(w), "--onnx", str(out)]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w_ in [(48, 64), (90, 38)]:
        u, o = torch.rand(1, 3, h, w_) * 0.5, torch.rand(1, 3, h, w_) * 0.5 + 0.5
        got = sess.run(None, {"under": u.numpy(), "over": o.numpy()})[0]
        with torch.no_grad():
            ref = net(u, o).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4


def test_aligned_export_is_refused(tmp_path, capsys):
    net = FusionNet.from_genotype(get_preset("paper_aligned"), channels=4)
    w, _ = save_model(net, tmp_path / "a", {})
    assert main(["export", "--model", str(w), "--onnx", str(tmp_path / "a.onnx")]) == 2
    assert "deform_conv2d" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


def test_engine_model_is_not_exported(tmp_path, capsys):
    assert main(["export", "--model", "general", "--onnx", str(tmp_path / "g.onnx")]) == 2
    assert "exposure.onnx" in capsys.readouterr().err
