"""Losses (L1, Sobel gradient, WGAN-GP) and the PatchGAN critic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crmef.losses import (
    FusionLoss,
    LossConfig,
    critic_loss,
    gradient_loss,
    gradient_penalty,
    intensity_loss,
    sobel,
)
from crmef.nets.critic import CriticConfig, PatchCritic


class LinearCritic(nn.Module):
    """D(x) = <w, x> per image: its gradient with respect to x is w everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def _pair(b: int = 3, s: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, 3, s, s), torch.rand(b, 3, s, s)


def test_gradient_penalty_zero_for_unit_norm_gradient_critic() -> None:
    w = torch.randn(1, 3, 16, 16)
    critic = LinearCritic(w / w.norm())
    real, fake = _pair()
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("scale, expected", [(2.0, 1.0), (0.5, 0.25), (3.0, 4.0)])
def test_gradient_penalty_positive_otherwise(scale: float, expected: float) -> None:
    w = torch.randn(1, 3, 16, 16)
    critic = LinearCritic(scale * w / w.norm())
    real, fake = _pair()
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_penalty_trains_the_critic() -> None:
    critic = PatchCritic(CriticConfig(channels=4, layers=2))
    real, fake = _pair(2, 32)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() > 0
    gp.backward()
    # Every weight shapes the input gradient (the output bias does not: its penalty gradient is None).
    weights = [p for p in critic.parameters() if p.dim() > 1]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in weights)


def test_critic_loss_sign_and_parts() -> None:
    w = torch.ones(1, 3, 8, 8) / (3 * 64) ** 0.5  # unit norm: GP = 0, D(x) = mean(x) * sqrt(192)
    critic = LinearCritic(w)
    real = torch.full((2, 3, 8, 8), 0.8)
    fake = torch.full((2, 3, 8, 8), 0.2)
    loss, parts = critic_loss(critic, real, fake, gp_weight=10.0)
    wd = (0.8 - 0.2) * (3 * 64) ** 0.5
    assert parts["critic_wd"] == pytest.approx(wd, rel=1e-5)
    assert parts["gp"] == pytest.approx(0.0, abs=1e-9)
    assert loss.item() == pytest.approx(-wd, rel=1e-5)


def test_intensity_and_gradient_losses() -> None:
    y, ref = _pair()
    assert intensity_loss(y, ref).item() == pytest.approx((y - ref).abs().mean().item(), rel=1e-6)
    assert intensity_loss(ref, ref).item() == 0.0
    assert gradient_loss(ref, ref).item() == 0.0
    # A constant offset changes intensity but not gradients.
    assert gradient_loss(ref + 0.1, ref).item() == pytest.approx(0.0, abs=1e-10)
    assert gradient_loss(y, ref).item() > 0
    with pytest.raises(ValueError, match="of one shape"):
        intensity_loss(y, ref[:, :, :8])


def test_sobel_of_a_ramp() -> None:
    ramp = torch.arange(8.0).repeat(8, 1).expand(1, 3, 8, 8)  # +1 per column
    g = sobel(ramp)
    assert g.shape == (1, 6, 8, 8)
    assert torch.allclose(g[0, 0, 1:-1, 1:-1], torch.full((6, 6), 8.0))  # x-derivative: 1+2+1 times 2
    assert torch.allclose(g[0, 1, 1:-1, 1:-1], torch.zeros(6, 6))  # y-derivative


def test_fusion_loss_weights() -> None:
    y, ref = _pair()
    critic = PatchCritic(CriticConfig(channels=4, layers=2))
    total, parts = FusionLoss(LossConfig())(y, ref, critic)
    expected = parts["int"] + 0.75 * parts["gra"] + 0.05 * parts["dis"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total_px, parts_px = FusionLoss(LossConfig())(y, ref, None)
    assert "dis" not in parts_px and total_px.item() == pytest.approx(parts["int"] + 0.75 * parts["gra"], rel=1e-5)
    with pytest.raises(ValueError, match="gradient"):
        LossConfig(gradient=-1)


def test_patch_critic_shapes_and_no_batch_norm() -> None:
    for norm in ("none", "layer", "instance"):
        critic = PatchCritic(CriticConfig(channels=4, layers=3, norm=norm))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
        assert critic(torch.rand(2, 3, 64, 48)).shape == (2, 1, 8, 6)
    with pytest.raises(ValueError, match="norm"):
        CriticConfig(norm="batch")


def test_mef_ssim_loss_matches_the_metric_and_has_a_gradient() -> None:
    from crmef.losses import mef_ssim_loss
    from crmef.metrics.mef_ssim import mef_ssim

    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 3, 64, 72, generator=g)
    u, o = base * 0.3, (0.5 + 0.5 * base).clamp(0, 1)
    for y0 in ((u + o) / 2, u, torch.rand(2, 3, 64, 72, generator=g)):
        y = y0.clone().requires_grad_(True)
        loss = mef_ssim_loss(y, (u, o))
        want = 1 - float(mef_ssim([u, o], y0).mean())  # the metric rounds to 8 bits; the loss does not
        assert abs(float(loss) - want) < 0.01
        loss.backward()
        assert y.grad is not None and torch.isfinite(y.grad).all() and float(y.grad.abs().max()) > 0
    # noise scores worse than the average of the sources
    assert float(mef_ssim_loss(torch.rand(2, 3, 64, 72, generator=g), (u, o))) > float(mef_ssim_loss((u + o) / 2, (u, o)))


def test_fusion_loss_mef_term_needs_the_sources() -> None:
    y, ref = torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 48)
    plain = FusionLoss(LossConfig(adversarial=0.0))
    with_mef = FusionLoss(LossConfig(adversarial=0.0, mef_ssim=0.5))
    t0, p0 = plain(y, ref)
    t1, p1 = with_mef(y, ref, sources=(y * 0.5, y))
    assert "mef" not in p0 and "mef" in p1
    assert float(t1) == pytest.approx(float(t0) + 0.5 * p1["mef"], abs=1e-6)
    with pytest.raises(ValueError, match="needs the source frames"):
        with_mef(y, ref)
    with pytest.raises(ValueError, match="must be >= 0"):
        LossConfig(mef_ssim=-1.0)


def test_lpips_loss_matches_the_metric_has_a_gradient_and_joins_the_total() -> None:
    import os

    from crmef.losses import lpips_loss
    from crmef.metrics import lpips
    from crmef.metrics.lpips import weights_installed

    if not weights_installed():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("LPIPS weights missing in CI: `crmef setup lpips` must run before the tests")
        pytest.skip("LPIPS weights not installed (run `crmef setup lpips`)")
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 64, 64, generator=g)
    y = (ref + 0.1 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1).requires_grad_(True)
    loss = lpips_loss(y, ref)
    assert float(loss.detach()) == pytest.approx(float(lpips(y.detach(), ref).mean()), rel=1e-5)
    assert float(loss.detach()) > 0.01 and float(lpips_loss(ref, ref)) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    base, parts0 = FusionLoss(LossConfig(adversarial=0.0))(y.detach(), ref)
    total, parts = FusionLoss(LossConfig(adversarial=0.0, lpips=0.5))(y.detach(), ref)
    assert "lpips" not in parts0 and parts["lpips"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert float(total) == pytest.approx(float(base) + 0.5 * parts["lpips"], rel=1e-5)
    with pytest.raises(ValueError, match="loss.lpips must be >= 0"):
        LossConfig(lpips=-1.0)
