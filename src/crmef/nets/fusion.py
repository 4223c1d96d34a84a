"""FusionNet: SAM (cascaded SRSM + optional DASM) followed by DRM and an output head.

Data flow for an under-exposed ``I_U`` and an over-exposed ``I_O`` (RGB in [0, 1]):

1. Relighting, ``cascades`` stages, separate weights per exposure and stage:
   ``I_U ← I_U ⊗ S_U^s(I_U)``, ``I_O ← I_O ⊗ S_O^s(I_O)``.
2. Without alignment: ``F_A = I_U + I_O`` (3 channels). With alignment (DASM):
   ``F_A = PCD(F_U, F_O) + F_O`` (C channels).
3. DRM at width 2C produces 3 logits ``z``. Heads:

   - ``retinex``: illumination ``R = ε + (1-ε)·σ(z)`` and ``y = B ⊘ R`` where the base ``B`` is
     ``F_A`` (no alignment) or ``conv3×3(F_A)`` (alignment).
   - ``direct``: ``y = σ(z)`` (the public code's aligned model).

   ``y`` is clipped to [0, 1] with a straight-through gradient, so saturated pixels still learn.

Tensors in, tensors out: no numpy or OpenCV inside :meth:`FusionNet.forward`. The same class is
the super-net (every slot a mixed :class:`~crmef.space.Choice`) and the derived net (every slot
one op), built by :meth:`FusionNet.supernet` and :meth:`FusionNet.from_genotype`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crmef.nets.dasm import DASM
from crmef.nets.drm import DRM
from crmef.nets.srsm import SRSM
from crmef.space import DASM_SLOTS, SRSM_SLOTS, Choice, Genotype, SearchSpace

HEADS = ("retinex", "direct")


@dataclass
class NetConfig:
    """Structure of a :class:`FusionNet` (the genotype, if any, fixes the ops).

    Attributes:
        channels: feature width C (DRM runs at 2C).
        cascades: number of SRSM stages per exposure, 0–3 (paper default 2).
        align: build the deformable alignment module (DASM).
        head: ``"retinex"`` (``y = F_A ⊘ R``) or ``"direct"`` (``y = σ(z)``).
        drm_blocks: number of DRM blocks (super-net only; a genotype fixes it).
        eps: floor of the Retinex illumination map.
        space: candidate ops per slot kind (super-net only).
    """

    channels: int = 64
    cascades: int = 2
    align: bool = False
    head: str = "retinex"
    drm_blocks: int = 4
    eps: float = 1e-3
    space: SearchSpace = field(default_factory=SearchSpace)

    def __post_init__(self) -> None:
        if not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f"channels must be a positive integer, got {self.channels!r}")
        if self.cascades not in (0, 1, 2, 3):
            raise ValueError(f"cascades must be 0, 1, 2 or 3, got {self.cascades!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.drm_blocks < 1:
            raise ValueError(f"drm_blocks must be >= 1, got {self.drm_blocks}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")


class _ClipST(torch.autograd.Function):
    """Clip to [0, 1] in the forward pass, identity gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def clip_st(x: Tensor) -> Tensor:
    """Clip to [0, 1] with a straight-through gradient (plain clamp when not tracking grads)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _ClipST.apply(x)
    return x.clamp(0.0, 1.0)


def check_pair(under: Tensor, over: Tensor) -> None:
    """Validate a network input pair; raises ``ValueError`` with a readable message.

    Both must be floating tensors of shape ``(B, 3, H, W)`` (or ``(3, H, W)``), equal shapes,
    finite values.
    """
    for name, t in (("under", under), ("over", over)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point tensor with values in [0, 1], got dtype {t.dtype} "
                "(convert 8-bit images with x.float() / 255)"
            )
        if t.dim() not in (3, 4):
            raise ValueError(f"{name} must have shape (B, 3, H, W) or (3, H, W), got {tuple(t.shape)}")
        if t.shape[-3] != 3:
            raise ValueError(f"{name} must have 3 (RGB) channels, got {t.shape[-3]} in shape {tuple(t.shape)}")
    if under.shape != over.shape:
        if under.shape[-2:] != over.shape[-2:]:
            uh, uw = under.shape[-2:]
            oh, ow = over.shape[-2:]
            raise ValueError(f"under and over must have the same size, got {uw}x{uh} and {ow}x{oh} (WxH)")
        raise ValueError(f"under and over must have the same shape, got {tuple(under.shape)} and {tuple(over.shape)}")
    for name, t in (("under", under), ("over", over)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


class FusionNet(nn.Module):
    """The multi-exposure fusion network (super-net or derived net).

    Args:
        config: structure (channels, cascades, alignment, head, …).
        genotype: fixes one op per slot; ``None`` builds the super-net over ``config.space``.

    Shapes: ``forward(under (B,3,H,W), over (B,3,H,W)) -> (B,3,H,W)`` in [0, 1], any H and W
    (reflect-padded to the pyramid's multiple and cropped back). 3-D inputs get a batch axis.
    """

    def __init__(self, config: NetConfig | None = None, genotype: Genotype | None = None) -> None:
        super().__init__()
        config = config or NetConfig()
        self.config = config
        c = config.channels
        if genotype is not None:
            if genotype.align != config.align:
                config = replace(config, align=genotype.align)
                self.config = config
            n_srsm = 2 * config.cascades
            if len(genotype.srsm) not in (1, n_srsm) and n_srsm > 0:
                raise ValueError(
                    f"genotype has {len(genotype.srsm)} SRSM triples but the net has {n_srsm} SRSM "
                    f"instances ({config.cascades} cascades x 2 exposures); give 1 shared triple or {n_srsm}"
                )
            srsm_ops = [[(op,) for op in genotype.srsm_ops(i)] for i in range(n_srsm)]
            drm_ops = [(op,) for op in genotype.drm]
            dasm_ops = [(op,) for op in genotype.dasm] if genotype.dasm else None
        else:
            sp = config.space
            srsm_ops = [[sp.srsm] * SRSM_SLOTS for _ in range(2 * config.cascades)]
            drm_ops = [sp.drm] * config.drm_blocks
            dasm_ops = [sp.dasm] * DASM_SLOTS if config.align else None
        self.genotype_given = genotype
        self.srsm = nn.ModuleList(SRSM(c, ops) for ops in srsm_ops)
        self.dasm = DASM(c, dasm_ops) if dasm_ops is not None else None
        self.drm = DRM(c if self.dasm is not None else 3, 2 * c, drm_ops)
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1) if (self.dasm is not None and config.head == "retinex") else None

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def supernet(cls, config: NetConfig | None = None) -> FusionNet:
        """The super-net: every slot mixes all candidates of ``config.space``."""
        return cls(config or NetConfig(), genotype=None)

    @classmethod
    def from_genotype(
        cls,
        genotype: Genotype,
        channels: int = 64,
        cascades: int = 2,
        head: str | None = None,
        eps: float = 1e-3,
    ) -> FusionNet:
        """The compact derived network of ``genotype``.

        ``head`` defaults to ``retinex`` without alignment and ``direct`` with it (as published).

        Raises:
            ValueError: an invalid structure.
        """
        head = head or ("direct" if genotype.align else "retinex")
        cfg = NetConfig(channels=channels, cascades=cascades, align=genotype.align, head=head,
                        drm_blocks=len(genotype.drm), eps=eps)
        return cls(cfg, genotype=genotype)

    # ---------------------------------------------------------------- search interface
    def choices(self) -> Iterator[tuple[str, Choice]]:
        """Every searchable slot with its qualified name, in a fixed order."""
        for name, module in self.named_modules():
            if isinstance(module, Choice):
                yield name, module

    @property
    def is_supernet(self) -> bool:
        """True when any slot still mixes several candidates."""
        return any(ch.is_searching for _, ch in self.choices())

    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture weights α of every searching slot (kept apart from network weights)."""
        return [ch.alpha for _, ch in self.choices() if ch.alpha is not None]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Network weights: every parameter that is not an architecture weight."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def derive(self) -> Genotype:
        """The genotype of the current α: argmax per slot (per SRSM instance; merged if equal)."""
        srsm = [tuple(ch.chosen() for ch in (m.slot0, m.slot1, m.slot2)) for m in self.srsm]
        if not srsm:
            srsm = [self.config.space.srsm[:1] * SRSM_SLOTS if self.genotype_given is None
                    else self.genotype_given.srsm[0]]
        if len(set(srsm)) == 1:
            srsm = srsm[:1]
        drm = tuple(b.chosen() for b in self.drm.blocks)
        dasm = None
        if self.dasm is not None:
            dasm = tuple(ch.chosen() for ch in (self.dasm.dcn3, self.dasm.dcn2, self.dasm.dcn1, self.dasm.dcn_cas))
        return Genotype(srsm=tuple(srsm), drm=drm, dasm=dasm)

    def slot_ops(self) -> dict[str, str]:
        """Slot name → chosen op (the derived op, or argmax α while searching)."""
        return {name: ch.chosen() for name, ch in self.choices()}

    # ---------------------------------------------------------------- forward
    @property
    def multiple(self) -> int:
        """H and W are padded to a multiple of this (pooling in SRSM, pyramid in DASM)."""
        if self.dasm is not None:
            return 4
        return 2 if self.config.cascades > 0 else 1

    def padding(self, h: int, w: int) -> tuple[int, int, bool]:
        """How :meth:`forward` pads an H×W input at the bottom/right: ``(ph, pw, reflect)`` —
        up to :attr:`multiple`, mirrored when the image is large enough, else edge-replicated."""
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        return ph, pw, h > ph and w > pw

    def relight(self, under: Tensor, over: Tensor) -> tuple[Tensor, Tensor]:
        """Cascaded relighting. ``(B,3,H,W) x2 -> (B,3,H,W) x2``; H, W even."""
        for s in range(self.config.cascades):
            under = self.srsm[2 * s](under)
            over = self.srsm[2 * s + 1](over)
        return under, over

    def fuse_features(self, under: Tensor, over: Tensor) -> tuple[Tensor, Tensor]:
        """Relight and (optionally) align: returns ``(F_A, base)`` where ``base`` is the image
        the Retinex head divides (``F_A`` itself without alignment)."""
        u, o = self.relight(under, over)
        if self.dasm is None:
            fa = u + o
            return fa, fa
        fa, _ = self.dasm(u, o)
        base = self.to_rgb(fa) if self.to_rgb is not None else fa
        return fa, base

    def illumination(self, z: Tensor) -> Tensor:
        """Retinex illumination map of DRM logits: ``(B,3,H,W) -> (B,3,H,W)`` in [ε, 1]."""
        eps = self.config.eps
        return eps + (1.0 - eps) * torch.sigmoid(z)

    def head(self, z: Tensor, base: Tensor) -> Tensor:
        """Output head on DRM logits ``z`` (B,3,H,W) -> unclipped image (B,3,H,W)."""
        if self.config.head == "direct":
            return torch.sigmoid(z)
        return base / self.illumination(z)

    def forward(self, under: Tensor, over: Tensor) -> Tensor:
        """Fuse a pair: ``(B,3,H,W) x2 -> (B,3,H,W)`` (or 3-D) in [0, 1] (module docstring)."""
        check_pair(under, over)
        squeeze = under.dim() == 3
        if squeeze:
            under, over = under.unsqueeze(0), over.unsqueeze(0)
        h, w = under.shape[-2:]
        ph, pw, reflect = self.padding(h, w)
        if ph or pw:
            mode = "reflect" if reflect else "replicate"
            under = F.pad(under, (0, pw, 0, ph), mode=mode)
            over = F.pad(over, (0, pw, 0, ph), mode=mode)
        fa, base = self.fuse_features(under, over)
        y = clip_st(self.head(self.drm(fa), base))[..., :h, :w]
        return y.squeeze(0) if squeeze else y
