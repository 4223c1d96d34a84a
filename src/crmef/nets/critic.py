"""PatchGAN critic for the WGAN-GP term ℓ_Dis.

A stack of 4×4 stride-2 convolutions with LeakyReLU (pix2pix's PatchGAN, Isola et al. 2017)
ending in a 1-channel score map; each score sees a patch of the image. There is no batch
normalisation: it couples the images of a batch and so breaks the per-sample gradient penalty of
WGAN-GP (Gulrajani et al. recommend layer normalisation or none). ``norm`` picks ``"none"``,
``"layer"`` (GroupNorm with one group) or ``"instance"`` (affine InstanceNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["CriticConfig", "PatchCritic"]

NORMS = ("none", "layer", "instance")


@dataclass
class CriticConfig:
    """PatchGAN critic shape.

    Attributes:
        channels: width of the first layer (doubles per down-sampling, capped at 8×).
        layers: number of stride-2 convolutions (receptive field 34 px for 3, 70 px for 4...).
        norm: ``"none"``, ``"layer"`` or ``"instance"``.
    """

    channels: int = 32
    layers: int = 3
    norm: str = "none"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"critic.norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.channels < 1 or self.layers < 1:
            raise ValueError(f"critic.channels and critic.layers must be >= 1, got {self.channels}, {self.layers}")


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "layer":
        return nn.GroupNorm(1, c)
    if kind == "instance":
        return nn.InstanceNorm2d(c, affine=True)
    return nn.Identity()


class PatchCritic(nn.Module):
    """PatchGAN critic: (B, 3, H, W) in [0, 1] → (B, 1, H', W') unbounded scores.

    Args:
        cfg: the shape (see :class:`CriticConfig`).
        in_channels: input channels (3 for RGB).
    """

    def __init__(self, cfg: CriticConfig | None = None, in_channels: int = 3) -> None:
        super().__init__()
        cfg = cfg or CriticConfig()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(in_channels, cfg.channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = cfg.channels
        for i in range(1, cfg.layers):
            c_next = cfg.channels * min(2**i, 8)
            layers += [nn.Conv2d(c, c_next, 4, 2, 1), _norm(cfg.norm, c_next), nn.LeakyReLU(0.2)]
            c = c_next
        layers += [nn.Conv2d(c, c, 3, 1, 1), _norm(cfg.norm, c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Score map.

        Args:
            x: images, (B, 3, H, W) with H, W >= 2**layers.

        Returns:
            (B, 1, H / 2**layers, W / 2**layers) scores.
        """
        if x.dim() != 4:
            raise ValueError(f"critic expects (B, C, H, W), got {tuple(x.shape)}")
        return self.net(2.0 * x - 1.0)
