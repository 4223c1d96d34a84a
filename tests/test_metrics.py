"""Metrics agree with the original implementations' values in ../shared/data/metric_vectors."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from crmef.errors import ConfigError, InputError
from crmef.imageio import read_image
from crmef.metrics import fsim, lpips, mef_ssim, psnr, ssim
from crmef.metrics.lpips import convert_checkpoint, weights_installed

IQA_NAMES = ["I03", "I04", "I06", "I08", "I19"]
TOLERANCE = {"psnr": 0.01, "ssim": 0.002, "fsim": 0.002, "lpips_alex": 0.002}
FUNCS = {"psnr": psnr, "ssim": ssim, "fsim": fsim, "lpips_alex": lpips}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_image(path)).permute(2, 0, 1)


def require_lpips() -> None:
    """Skip without weights locally; in CI (CI=true) missing weights are a failure."""
    if not weights_installed():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("LPIPS weights missing in CI: `crmef setup lpips` must run before the tests")
        pytest.skip("LPIPS weights not installed (run `crmef setup lpips`)")


@pytest.fixture(scope="module")
def iqa(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, dict[str, float]]]:
    root = shared_data / "metric_vectors" / "iqa"
    ref = torch.stack([_tensor(root / f"ref_{n}.png") for n in IQA_NAMES])
    dist = torch.stack([_tensor(root / f"dist_{n}.png") for n in IQA_NAMES])
    with open(root / "reference.csv", newline="") as fh:
        table = {row["metric"]: {n: float(row[n]) for n in IQA_NAMES} for row in csv.DictReader(fh)}
    return dist, ref, table


@pytest.mark.parametrize("metric", ["psnr", "ssim", "fsim", "lpips_alex"])
def test_iqa_reference_values(metric: str, iqa) -> None:
    if metric == "lpips_alex":
        require_lpips()
    dist, ref, table = iqa
    got = FUNCS[metric](dist, ref)
    assert got.shape == (len(IQA_NAMES),)
    expected = torch.tensor([table[metric][n] for n in IQA_NAMES], dtype=torch.float64)
    diff = (got.double() - expected).abs()
    print(f"{metric}: worst |diff| = {diff.max().item():.6f}")
    assert diff.max().item() <= TOLERANCE[metric], f"{metric}: {got.tolist()} vs {expected.tolist()}"


def test_mef_ssim_matlab_values(shared_data: Path) -> None:
    root = shared_data / "metric_vectors" / "mef_ssim"
    with open(root / "reference.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18
    worst = 0.0
    for scene in sorted({r["scene"] for r in rows}):
        group = [r for r in rows if r["scene"] == scene]
        under, over = _tensor(root / group[0]["under"]), _tensor(root / group[0]["over"])
        fused = torch.stack([_tensor(root / r["fused"]) for r in group])
        got = mef_ssim([under, over], fused)  # one bracket shared by six fused images
        expected = torch.tensor([float(r["mef_ssim_matlab"]) for r in group], dtype=torch.float64)
        worst = max(worst, (got - expected).abs().max().item())
    print(f"mef_ssim: worst |diff| = {worst:.2e}")
    assert worst <= 1e-4


def test_identity_and_ordering() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 48, 64, generator=gen)
    noisy = (img + 0.1 * torch.randn(img.shape, generator=gen)).clamp(0, 1)
    noisier = (img + 0.3 * torch.randn(img.shape, generator=gen)).clamp(0, 1)
    assert torch.isinf(psnr(img, img)).all()
    assert ssim(img, img).item() == pytest.approx(1.0)
    assert fsim(img, img).item() == pytest.approx(1.0)
    assert psnr(noisy, img) > psnr(noisier, img)
    assert ssim(noisy, img) > ssim(noisier, img)
    assert fsim(noisy, img) > fsim(noisier, img)
    # (3, H, W) input gives a batch of one
    assert psnr(noisy[0], img[0]).shape == (1,)


def test_lpips_identity_and_batch() -> None:
    require_lpips()
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 64, 64, generator=gen)
    b = torch.rand(2, 3, 64, 64, generator=gen)
    assert lpips(a, a).abs().max().item() < 1e-6
    both = lpips(a, b)
    assert both.shape == (2,)
    assert torch.allclose(both[1:], lpips(a[1:], b[1:]), atol=1e-5)


def test_mef_ssim_prefers_a_real_fusion_over_one_exposure() -> None:
    gen = torch.Generator().manual_seed(2)
    scene = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=gen), size=(96, 96), mode="bicubic").clamp(0, 1)
    under, over = (scene * 0.35).clamp(0, 1), (scene * 2.5).clamp(0, 1)
    good = mef_ssim([under, over], scene)
    bad = mef_ssim([under, over], torch.full_like(scene, 0.5))
    assert good.item() > bad.item()
    assert good.item() <= 1.0


def test_bad_inputs_name_the_problem() -> None:
    a, b = torch.rand(3, 32, 40), torch.rand(3, 33, 40)
    for fn in (psnr, ssim, fsim):
        with pytest.raises(InputError, match="same size, got 40x32"):
            fn(a, b)
    with pytest.raises(InputError, match="shape"):
        psnr(torch.rand(4, 32, 32), torch.rand(4, 32, 32))
    with pytest.raises(InputError, match="at least two"):
        mef_ssim([torch.rand(3, 64, 64)], torch.rand(3, 64, 64))
    with pytest.raises(InputError, match="same size"):
        mef_ssim([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], torch.rand(3, 64, 48))
    with pytest.raises(InputError, match="at least 44"):
        mef_ssim([torch.rand(3, 40, 40), torch.rand(3, 40, 40)], torch.rand(3, 40, 40))


def test_lpips_missing_weights_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMEF_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="crmef setup lpips"):
        lpips(torch.rand(3, 32, 32), torch.rand(3, 32, 32))


def test_checkpoint_loader_refuses_code() -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        convert_checkpoint(pickle.dumps({"AlexNet_0": Evil()}))
    arrays = {"AlexNet_0": {f"Conv_{i}": {"kernel": np.zeros((1, 1, 1, 1), np.float32), "bias": np.zeros(1, np.float32)} for i in range(5)}}
    arrays.update({f"NetLinLayer_{i}": {"Conv_0": {"kernel": np.zeros((1, 1, 1, 1), np.float32)}} for i in range(5)})
    with pytest.raises(ConfigError, match="unexpected shapes"):
        convert_checkpoint(pickle.dumps(arrays))
