"""Detail Repletion Module (DRM): residual blocks of searchable ops at full resolution.

conv3×3(c_in→W) → PReLU → slot 0 … slot n-1 (W→W) → (+ head features) → conv3×3(W→3).
The width W is 2C. The 3-channel output is turned into an illumination map (Retinex head) or
the image itself (direct head) by :class:`crmef.nets.fusion.FusionNet`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from crmef.space import Choice


class DRM(nn.Module):
    """Detail repletion.

    Args:
        c_in: input channels (3 for the summed relit images, C for aligned features).
        width: block width W.
        slot_ops: candidate op names per block (one name per block once derived).

    Shapes: ``(B, c_in, H, W) -> (B, 3, H, W)`` (pre-activation logits).
    """

    def __init__(self, c_in: int, width: int, slot_ops: Sequence[Sequence[str]]) -> None:
        super().__init__()
        if not slot_ops:
            raise ValueError("DRM needs at least one block")
        self.head = nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.PReLU(width, init=0.1))
        self.blocks = nn.ModuleList(Choice("drm", ops, width, width, scale=1) for ops in slot_ops)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        f0 = self.head(x)
        f = f0
        for block in self.blocks:
            f = block(f)
        return self.tail(f + f0)
