"""Scene Relighting Sub-Module (SRSM): ``I^S = I ⊗ S(I)``.

``S`` = conv3×3(3→C) → slot 0 (C→C) → [max-pool ‖ avg-pool] (stride 2, 2C) → slot 1 (2C→C)
→ slot 2 (C→C, with residual) → bilinear ×2 → conv3×3(C→3) → sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crmef.space import SRSM_SLOTS, Choice


class SRSM(nn.Module):
    """One relighting stage for one exposure.

    Args:
        channels: feature width C.
        slot_ops: for each of the 3 slots, the candidate op names (one name once derived).

    Shapes: ``(B, 3, H, W) -> (B, 3, H, W)`` with H, W even; the relit image ``I ⊗ S(I)``.
    """

    def __init__(self, channels: int, slot_ops: Sequence[Sequence[str]]) -> None:
        super().__init__()
        if len(slot_ops) != SRSM_SLOTS:
            raise ValueError(f"SRSM needs {SRSM_SLOTS} slots, got {len(slot_ops)}")
        c = channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.slot0 = Choice("srsm", slot_ops[0], c, c, scale=1)
        self.slot1 = Choice("srsm", slot_ops[1], 2 * c, c, scale=2)
        self.slot2 = Choice("srsm", slot_ops[2], c, c, scale=2)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def attention(self, x: Tensor) -> Tensor:
        """The relighting map ``S(x)`` in (0, 1), shape ``(B, 3, H, W)``."""
        f = self.slot0(self.head(x))
        f = torch.cat([F.max_pool2d(f, 2), F.avg_pool2d(f, 2)], dim=1)
        f = self.slot1(f)
        f = f + self.slot2(f)
        f = F.interpolate(f, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.tail(f))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)
