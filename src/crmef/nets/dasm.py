"""Deformable Aligning Sub-Module (DASM): EDVR-style PCD alignment of F_U onto F_O.

A shared feature extractor builds a 3-level pyramid (L1 full, L2 ½, L3 ¼ resolution) of each
relit input. Offsets are predicted coarse-to-fine from ``[F_U ‖ F_O]``, each level's offset
features refined with the up-sampled coarser ones; four searchable deformable slots align at L3,
L2, L1 and in a final cascading step. Output ``F_A = A(F_U, F_O) + F_O``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crmef.space import DASM_SLOTS, Choice


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.LeakyReLU(0.1))


def _up(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FeaturePyramid(nn.Module):
    """Shared 3-level feature extractor. ``(B, 3, H, W) -> [(B,C,H,W), (B,C,H/2,W/2), (B,C,H/4,W/4)]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.l1 = nn.Sequential(_conv(3, c), _conv(c, c))
        self.l2 = nn.Sequential(_conv(c, c, stride=2), _conv(c, c))
        self.l3 = nn.Sequential(_conv(c, c, stride=2), _conv(c, c))

    def forward(self, x: Tensor) -> list[Tensor]:
        f1 = self.l1(x)
        f2 = self.l2(f1)
        return [f1, f2, self.l3(f2)]


class DASM(nn.Module):
    """PCD alignment with searchable deformable kernels.

    Args:
        channels: feature width C.
        slot_ops: candidate op names for the 4 deformable slots (L3, L2, L1, cascade).

    Shapes: ``forward(under (B,3,H,W), over (B,3,H,W)) -> (F_A (B,C,H,W), F_O (B,C,H,W))``;
    H and W must be divisible by 4.
    """

    def __init__(self, channels: int, slot_ops: Sequence[Sequence[str]]) -> None:
        super().__init__()
        if len(slot_ops) != DASM_SLOTS:
            raise ValueError(f"DASM needs {DASM_SLOTS} slots (L3, L2, L1, cascade), got {len(slot_ops)}")
        c = channels
        self.features = FeaturePyramid(c)
        # Offset features per level: [F_U ‖ F_O] -> C, refined with the coarser level's.
        self.off3 = nn.Sequential(_conv(2 * c, c), _conv(c, c))
        self.off2_a = _conv(2 * c, c)
        self.off2_b = nn.Sequential(_conv(2 * c, c), _conv(c, c))
        self.off1_a = _conv(2 * c, c)
        self.off1_b = nn.Sequential(_conv(2 * c, c), _conv(c, c))
        self.fuse2 = _conv(2 * c, c)
        self.fuse1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.off_cas = nn.Sequential(_conv(2 * c, c), _conv(c, c))
        self.dcn3 = Choice("dasm", slot_ops[0], c, c, c_cond=c, scale=4)
        self.dcn2 = Choice("dasm", slot_ops[1], c, c, c_cond=c, scale=2)
        self.dcn1 = Choice("dasm", slot_ops[2], c, c, c_cond=c, scale=1)
        self.dcn_cas = Choice("dasm", slot_ops[3], c, c, c_cond=c, scale=1)

    def forward(self, under: Tensor, over: Tensor) -> tuple[Tensor, Tensor]:
        fu1, fu2, fu3 = self.features(under)
        fo1, fo2, fo3 = self.features(over)
        o3 = self.off3(torch.cat([fu3, fo3], 1))
        a3 = self.dcn3(fu3, o3)
        o2 = self.off2_a(torch.cat([fu2, fo2], 1))
        o2 = self.off2_b(torch.cat([o2, _up(o3, o2.shape[-2:])], 1))
        a2 = self.fuse2(torch.cat([self.dcn2(fu2, o2), _up(a3, o2.shape[-2:])], 1))
        o1 = self.off1_a(torch.cat([fu1, fo1], 1))
        o1 = self.off1_b(torch.cat([o1, _up(o2, o1.shape[-2:])], 1))
        a1 = self.fuse1(torch.cat([self.dcn1(fu1, o1), _up(a2, o1.shape[-2:])], 1))
        oc = self.off_cas(torch.cat([a1, fo1], 1))
        aligned = self.dcn_cas(a1, oc)
        return aligned + fo1, fo1
