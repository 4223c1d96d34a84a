"""Training losses: intensity (L1), Sobel gradient (L2) and WGAN-GP.

The generator objective of the paper is ``ℓ = ℓ_Int + β1 ℓ_Gra + β2 ℓ_Dis`` with β1 = 0.75 and
β2 = 0.05 (:class:`LossConfig`). ``ℓ_Dis`` is the Wasserstein generator term ``-E[D(y)]`` of a
PatchGAN critic ``D`` (:mod:`crmef.nets.critic`) trained with the WGAN-GP objective
``E[D(y)] - E[D(x)] + λ E[(‖∇D(x̂)‖₂ - 1)²]`` on random interpolates ``x̂`` between reference
``x`` and output ``y`` (Gulrajani et al., 2017). A PatchGAN critic gives a map of scores; its
score of an image is the mean of that map, and the penalty uses the gradient of that score.

Not in the paper, off by default: ``w_mef (1 − MEF-SSIM(y; sources))``, the no-reference
structure term of Ma et al. (2015) used as a loss (as MEF-Net, Ma et al. 2019, trains), on the
same grey conversion as :func:`crmef.metrics.mef_ssim` without its 8-bit rounding; and
``w_lpips LPIPS(y, ref)``, the perceptual distance of :func:`crmef.metrics.lpips` (AlexNet, frozen,
its installed weights: ``crmef setup lpips``) used as a loss, as in perceptual-loss training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LossConfig",
    "intensity_loss",
    "sobel",
    "gradient_loss",
    "critic_score",
    "gradient_penalty",
    "critic_loss",
    "generator_adversarial_loss",
    "mef_ssim_loss",
    "lpips_loss",
    "FusionLoss",
]


@dataclass
class LossConfig:
    """Loss weights.

    Attributes:
        intensity: weight of ℓ_Int (L1 to the reference).
        gradient: β1, weight of ℓ_Gra (L2 between Sobel gradients).
        adversarial: β2, weight of ℓ_Dis (WGAN generator term); 0 disables the critic.
        gp: λ, weight of the gradient penalty in the critic loss.
        mef_ssim: weight of ``1 − MEF-SSIM`` against the two input frames (not in the paper;
            0 disables it).
        lpips: weight of LPIPS(y, ref) (:func:`lpips_loss`; not in the paper; 0 disables it;
            needs the LPIPS weights, ``crmef setup lpips``).
    """

    intensity: float = 1.0
    gradient: float = 0.75
    adversarial: float = 0.05
    gp: float = 10.0
    mef_ssim: float = 0.0
    lpips: float = 0.0

    def __post_init__(self) -> None:
        for name in ("intensity", "gradient", "adversarial", "gp", "mef_ssim", "lpips"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


def _check(y: Tensor, ref: Tensor) -> None:
    if y.shape != ref.shape or y.dim() != 4:
        raise ValueError(f"output and reference must both be (B, C, H, W) of one shape, got {tuple(y.shape)} and {tuple(ref.shape)}")


def intensity_loss(y: Tensor, ref: Tensor) -> Tensor:
    """ℓ_Int: mean absolute difference.

    Args:
        y: output, (B, C, H, W).
        ref: reference, (B, C, H, W).

    Returns:
        Scalar tensor.
    """
    _check(y, ref)
    return F.l1_loss(y, ref)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel(x: Tensor) -> Tensor:
    """Per-channel horizontal and vertical Sobel responses (replicate padding).

    Args:
        x: images, (B, C, H, W).

    Returns:
        (B, 2C, H, W): for each channel its x- then y-derivative.
    """
    if x.dim() != 4:
        raise ValueError(f"sobel expects (B, C, H, W), got {tuple(x.shape)}")
    c = x.shape[1]
    kx = _SOBEL_X.to(device=x.device, dtype=x.dtype)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def gradient_loss(y: Tensor, ref: Tensor) -> Tensor:
    """ℓ_Gra: mean squared difference between the Sobel gradients of ``y`` and ``ref``.

    Takes the same (B, C, H, W) pair as :func:`intensity_loss` and returns a scalar tensor.
    """
    _check(y, ref)
    return F.mse_loss(sobel(y), sobel(ref))


def critic_score(critic: nn.Module, x: Tensor) -> Tensor:
    """A critic's score per image: the mean of its (patch) output.

    Args:
        critic: maps (B, 3, H, W) to (B, ...) scores.
        x: images, (B, 3, H, W).

    Returns:
        (B,) scores.
    """
    out = critic(x)
    return out.reshape(out.shape[0], -1).mean(dim=1)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP penalty ``E[(‖∇_x̂ D(x̂)‖₂ - 1)²]`` on random interpolates.

    ``x̂ = ε x + (1 - ε) y`` with one ε ~ U(0, 1) per image; the norm is over all of an image's
    pixels. The graph is kept (``create_graph``) so the penalty trains the critic.

    Args:
        critic: the critic.
        real: references, (B, 3, H, W).
        fake: outputs, (B, 3, H, W) (detached by the caller for the critic step).
        generator: optional RNG for ε.

    Returns:
        Scalar tensor (0 exactly when every interpolate's gradient has unit norm).
    """
    _check(fake, real)
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype, generator=generator)
    x_hat = (eps * real + (1.0 - eps) * fake).detach().requires_grad_(True)
    score = critic_score(critic, x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def critic_loss(critic: nn.Module, real: Tensor, fake: Tensor, gp_weight: float = 10.0) -> tuple[Tensor, dict[str, float]]:
    """WGAN-GP critic objective ``E[D(y)] - E[D(x)] + λ GP``.

    Args:
        critic: the critic.
        real: references, (B, 3, H, W).
        fake: generator outputs, (B, 3, H, W); detached here.
        gp_weight: λ.

    Returns:
        (scalar loss, {"critic_wd": E[D(x)] - E[D(y)], "gp": penalty}).
    """
    fake = fake.detach()
    wd = critic_score(critic, real).mean() - critic_score(critic, fake).mean()
    gp = gradient_penalty(critic, real, fake)
    return -wd + gp_weight * gp, {"critic_wd": float(wd.detach()), "gp": float(gp.detach())}


def generator_adversarial_loss(critic: nn.Module, fake: Tensor) -> Tensor:
    """ℓ_Dis for the generator: ``-E[D(y)]`` (scalar)."""
    return -critic_score(critic, fake).mean()


def mef_ssim_loss(y: Tensor, sources: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    """``1 − MEF-SSIM(y; sources)``, batch mean, differentiable in ``y``.

    Grey conversion as MATLAB ``rgb2gray`` on 0..255 values, float64, without the metric's
    8-bit rounding (so it has a gradient); three scales, 11×11 windows.

    Args:
        y: output, (B, 3, H, W) in [0, 1]; H, W >= 44.
        sources: the input exposures, each (B, 3, H, W).

    Returns:
        Scalar loss in [0, 2] (0 when the structure of every window is the ideal one).
    """
    from crmef.metrics.color import MATLAB_GRAY
    from crmef.metrics.mef_ssim import mef_ssim_gray

    if len(sources) < 2:
        raise ValueError(f"the MEF-SSIM loss needs at least two source frames, got {len(sources)}")
    for s in sources:
        _check(y, s)
    k = torch.tensor(MATLAB_GRAY, dtype=torch.float64, device=y.device).view(1, 3, 1, 1)

    def grey(x: Tensor) -> Tensor:
        return (x.to(torch.float64).clamp(0.0, 1.0) * 255.0 * k).sum(1, keepdim=True)

    seq = torch.cat([grey(s.detach()) for s in sources], 1)
    return (1.0 - mef_ssim_gray(seq, grey(y))).mean().to(y.dtype)


def lpips_loss(y: Tensor, ref: Tensor) -> Tensor:
    """LPIPS(y, ref), batch mean, differentiable in ``y`` (the network's weights stay frozen).

    The same network and weights as the metric :func:`crmef.metrics.lpips` (v0.1, AlexNet), on
    ``y`` clamped to [0, 1], in float32.

    Args:
        y: output, (B, 3, H, W) in [0, 1].
        ref: reference, (B, 3, H, W).

    Returns:
        Scalar loss >= 0 (0 when ``y == ref``).

    Raises:
        ConfigError: the LPIPS weights are not installed (the message gives the command).
    """
    from crmef.metrics.lpips import load_lpips_net

    _check(y, ref)
    net = load_lpips_net(y.device)
    return net(y.float().clamp(0.0, 1.0), ref.detach().float()).mean().to(y.dtype)


class FusionLoss(nn.Module):
    """The generator objective ``w_int ℓ_Int + β1 ℓ_Gra + β2 ℓ_Dis`` (``+ w_mef (1 − MEF-SSIM)``
    when ``cfg.mef_ssim > 0``, ``+ w_lpips LPIPS(y, ref)`` when ``cfg.lpips > 0``).

    Args:
        cfg: weights.
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()

    def forward(self, y: Tensor, ref: Tensor, critic: nn.Module | None = None,
                sources: tuple[Tensor, ...] | None = None) -> tuple[Tensor, dict[str, float]]:
        """Total generator loss.

        Args:
            y: output, (B, 3, H, W).
            ref: reference, (B, 3, H, W).
            critic: the critic, or None to leave out the adversarial term (pixel warm-up).
            sources: the input frames, each (B, 3, H, W); needed when ``cfg.mef_ssim > 0``.

        Returns:
            (scalar loss, {"int", "gra", "dis", "mef", "lpips", "total"} as floats;
            "dis"/"mef"/"lpips" only when that term is on).

        Raises:
            ValueError: the MEF-SSIM term is on and ``sources`` is missing.
        """
        l_int = intensity_loss(y, ref)
        l_gra = gradient_loss(y, ref)
        total = self.cfg.intensity * l_int + self.cfg.gradient * l_gra
        parts = {"int": float(l_int.detach()), "gra": float(l_gra.detach())}
        if critic is not None and self.cfg.adversarial > 0:
            l_dis = generator_adversarial_loss(critic, y)
            total = total + self.cfg.adversarial * l_dis
            parts["dis"] = float(l_dis.detach())
        if self.cfg.mef_ssim > 0:
            if sources is None:
                raise ValueError("loss.mef_ssim > 0 needs the source frames (FusionLoss(..., sources=(under, over)))")
            l_mef = mef_ssim_loss(y, sources)
            total = total + self.cfg.mef_ssim * l_mef
            parts["mef"] = float(l_mef.detach())
        if self.cfg.lpips > 0:
            l_lp = lpips_loss(y, ref)
            total = total + self.cfg.lpips * l_lp
            parts["lpips"] = float(l_lp.detach())
        parts["total"] = float(total.detach())
        return total, parts
