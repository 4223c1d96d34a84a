"""FusionNet: SAM (cascaded SRSM + optional DASM) followed by DRM and an output head.

Data flow for an under-exposed ``I_U`` and an over-exposed ``I_O`` (RGB in [0, 1]):

0. Optionally (``prealign = "flow"``, not in the paper) the under frame is first warped onto the
   over frame by DIS optical flow, on the whole image (:meth:`FusionNet.prepare`); the network
   (and its DASM, if any) then handles what the flow leaves: residual misalignment, occlusions,
   flow errors.
1. Relighting, ``cascades`` stages, separate weights per exposure and stage:
   ``I_U ← I_U ⊗ S_U^s(I_U)``, ``I_O ← I_O ⊗ S_O^s(I_O)``.
2. Without alignment: ``F_A = I_U + I_O`` (3 channels). With alignment (DASM):
   ``F_A = PCD(F_U, F_O) + F_O`` (C channels); or, with ``align_mode = "residual"`` (not in the
   paper), ``F_A = (I_U + conv(PCD(F_U, F_O))) + I_O`` (3 channels, a zero-initialised
   correction of the relit under image).
3. DRM at width 2C produces 3 logits ``z``. Heads:

   - ``retinex``: illumination ``R = ε + (1-ε)·σ(z)`` and ``y = B ⊘ R`` where the base ``B`` is
     ``F_A`` (no alignment) or ``conv3×3(F_A)`` (alignment). Optionally (``illum_smooth = r > 0``,
     not in the paper) ``R`` is box-filtered with radius ``r``: Retinex theory's piecewise-smooth
     illumination, so the detail of ``y`` comes from ``B`` and a per-pixel ``R`` cannot invert
     small highlights (point lights turned into dark dots by the per-pixel map).
   - ``direct``: ``y = σ(z)`` (the public code's aligned model).

   ``y`` is clipped to [0, 1] with a straight-through gradient, so saturated pixels still learn.
4. Optionally (``prior = "mertens"``, ``"flow_mertens"`` or ``"mertens_detail"``, not in the paper):
   ``y ← y + w ⊙ (P − y)`` where ``P`` is the Mertens exposure fusion of the two whole input
   images, after optical-flow alignment for ``flow_mertens``, with the detail of a contrast-weighted
   Mertens fusion for ``mertens_detail`` (:func:`~crmef.nets.prior.prior_image`,
   an input of the network, computed from ``under`` and ``over`` when not given) and ``w ∈ (0, 1)`` comes from a small CNN at 1/8 resolution
   (:class:`~crmef.nets.prior.PriorBlend`): the network learns where the classical fusion is the
   better estimate and where its own output is.

The same class is the super-net (every slot a mixed :class:`~crmef.space.Choice`) and the derived
net (every slot one op), built by :meth:`FusionNet.supernet` and :meth:`FusionNet.from_genotype`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crmef.nets.dasm import DASM
from crmef.nets.drm import DRM
from crmef.nets.prior import DETAIL_SPACES, PAIR_PRIORS, PREALIGNS, PRIORS, PriorBlend, prealign_image, prior_image
from crmef.nets.srsm import SRSM
from crmef.space import DASM_SLOTS, SRSM_SLOTS, Choice, Genotype, SearchSpace

HEADS = ("retinex", "direct")
ALIGN_MODES = ("features", "residual")
NET_OPTIONS = ("eps", "illum_smooth", "prior", "detail", "detail_space", "headroom", "dark_guard", "prealign",
               "align_mode")
"""The :class:`NetConfig` fields a derived net takes besides its genotype, channels, cascades
and head: :meth:`FusionNet.from_genotype`'s options, the model card's remaining structural keys
(:mod:`crmef.models`) and the training config's model options (:class:`crmef.train.ModelSpec`)."""


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
        illum_smooth: box-filter radius applied to the Retinex illumination map (0: the paper's
            per-pixel map; see the module docstring).
        prior: ``"none"`` (the paper), ``"mertens"``, ``"flow_mertens"`` or ``"mertens_detail"``: blend the output
            with that classical fusion of the inputs (module docstring, step 4).
        detail: low-pass scale σ in pixels of the prior's detail transfer (0: none; needs a
            prior; :class:`~crmef.nets.prior.PriorBlend`).
        detail_space: how the detail is added: ``"rgb"`` (per channel) or ``"luma"`` (its luma
            in full, its chroma scaled by the base-to-prior luminance ratio, at most 1: a base
            darker than the prior keeps the prior's grey contrast without its colour contrast
            turning dark detail red; :class:`~crmef.nets.prior.PriorBlend`), or ``"luma_gamut"``
            (as ``"luma"``, the chroma further limited so that no channel leaves [0, 1]).
        headroom: envelope scale σ_h in pixels that keeps the transferred detail inside [0, 1]
            (0: clip it; needs ``detail``; :class:`~crmef.nets.prior.PriorBlend`).
        dark_guard: threshold τ in stops (0: off; needs a prior): where the network's output is
            locally more than ``2^τ`` times darker than the prior, the blend moves towards the
            prior (:class:`~crmef.nets.prior.PriorBlend`).
        prealign: ``"none"`` or ``"flow"``: warp the under frame onto the over frame by DIS
            optical flow before the network (whole image, not differentiable; needs
            ``prior = "mertens"`` (or ``"mertens_detail"``), which then is the flow-then-Mertens fusion;
            :func:`~crmef.nets.prior.prealign_image`).
        align_mode: with alignment, ``"features"`` (the paper: ``F_A = PCD(F_U, F_O) + F_O``, C
            channels into the DRM) or ``"residual"`` (the PCD-aligned features, through a
            zero-initialised 3×3 convolution, correct the relit under image:
            ``F_A = (I_U + conv(PCD(F_U, F_O))) + I_O``, 3 channels, the layout of the network
            without alignment, so its weights initialise this one and it starts as that network).
        space: candidate ops per slot kind (super-net only).
    """

    channels: int = 64
    cascades: int = 2
    align: bool = False
    head: str = "retinex"
    drm_blocks: int = 4
    eps: float = 1e-3
    illum_smooth: int = 0
    prior: str = "none"
    detail: int = 0
    detail_space: str = "rgb"
    headroom: int = 0
    dark_guard: float = 0.0
    prealign: str = "none"
    align_mode: str = "features"
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
        if not isinstance(self.illum_smooth, int) or isinstance(self.illum_smooth, bool) or self.illum_smooth < 0:
            raise ValueError(f"illum_smooth must be a non-negative integer radius, got {self.illum_smooth!r}")
        if self.illum_smooth and self.head != "retinex":
            raise ValueError(f"illum_smooth applies to the retinex head only, got head {self.head!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if not isinstance(self.detail, int) or isinstance(self.detail, bool) or not 0 <= self.detail <= 512:
            raise ValueError(f"detail must be an integer low-pass scale in pixels, 0..512, got {self.detail!r}")
        if self.detail and self.prior == "none":
            raise ValueError("detail transfer needs a prior (prior 'mertens', 'flow_mertens' or 'mertens_detail')")
        if self.detail_space not in DETAIL_SPACES:
            raise ValueError(f"detail_space must be one of {DETAIL_SPACES}, got {self.detail_space!r}")
        if not isinstance(self.headroom, int) or isinstance(self.headroom, bool) or not 0 <= self.headroom <= 512:
            raise ValueError(f"headroom must be an integer envelope scale in pixels, 0..512, got {self.headroom!r}")
        if self.headroom and not self.detail:
            raise ValueError("headroom keeps the transferred detail in range: it needs detail > 0")
        if isinstance(self.dark_guard, bool) or not isinstance(self.dark_guard, (int, float)) or not 0 <= self.dark_guard <= 16:
            raise ValueError(f"dark_guard must be a threshold in stops, 0..16, got {self.dark_guard!r}")
        if self.dark_guard and self.prior == "none":
            raise ValueError("dark_guard moves the blend towards the prior: it needs a prior")
        if self.prealign not in PREALIGNS:
            raise ValueError(f"prealign must be one of {PREALIGNS}, got {self.prealign!r}")
        if self.prealign != "none" and self.prior not in PAIR_PRIORS:
            raise ValueError(f"prealign {self.prealign!r} needs prior 'mertens' or 'mertens_detail' (the fusion of the pre-aligned "
                             f"pair; it runs on the whole image with the pre-alignment), got prior {self.prior!r}")
        if self.align_mode not in ALIGN_MODES:
            raise ValueError(f"align_mode must be one of {ALIGN_MODES}, got {self.align_mode!r}")


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
        residual = self.dasm is not None and config.align_mode == "residual"
        drm_in = c if (self.dasm is not None and not residual) else 3
        self.drm = DRM(drm_in, 2 * c, drm_ops)
        self.to_rgb = (nn.Conv2d(c, 3, 3, padding=1)
                       if (self.dasm is not None and not residual and config.head == "retinex") else None)
        self.align_out: nn.Conv2d | None = None
        if residual:  # zero-initialised: the net starts as the one without alignment
            self.align_out = nn.Conv2d(c, 3, 3, padding=1)
            nn.init.zeros_(self.align_out.weight)
            nn.init.zeros_(self.align_out.bias)
        self.blend = (PriorBlend(detail=config.detail, headroom=config.headroom, detail_space=config.detail_space,
                                 dark_guard=float(config.dark_guard))
                      if config.prior != "none" else None)

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
        **options: Any,
    ) -> FusionNet:
        """The compact derived network of ``genotype``.

        ``head`` defaults to ``retinex`` without alignment and ``direct`` with it (as published).
        ``options``: any of :data:`NET_OPTIONS` (``prior="mertens"``, ``detail=32``, …).

        Raises:
            ValueError: an unknown option or an invalid structure.
        """
        unknown = sorted(set(options) - set(NET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown network option(s) {', '.join(unknown)}; use {', '.join(NET_OPTIONS)}")
        head = head or ("direct" if genotype.align else "retinex")
        cfg = NetConfig(channels=channels, cascades=cascades, align=genotype.align, head=head,
                        drm_blocks=len(genotype.drm), **options)
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
        """H and W are padded to a multiple of this (pooling in SRSM, pyramid in DASM, the 1/8
        grid of the prior blend — tiles then share the whole image's pooling grid)."""
        if self.blend is not None:
            return 8
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
        if self.align_out is not None:  # residual: aligned features correct the relit under image
            fa, fo = self.dasm(u, o)
            fa = u + self.align_out(fa - fo) + o
            return fa, fa
        fa, _ = self.dasm(u, o)
        base = self.to_rgb(fa) if self.to_rgb is not None else fa
        return fa, base

    def illumination(self, z: Tensor) -> Tensor:
        """Retinex illumination map of DRM logits: ``(B,3,H,W) -> (B,3,H,W)`` in [ε, 1],
        box-filtered with radius ``illum_smooth`` (edges replicated) when that is positive."""
        eps = self.config.eps
        illumination = eps + (1.0 - eps) * torch.sigmoid(z)
        r = self.config.illum_smooth
        if r:
            illumination = F.avg_pool2d(F.pad(illumination, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)
        return illumination

    def head(self, z: Tensor, base: Tensor) -> Tensor:
        """Output head on DRM logits ``z`` (B,3,H,W) -> unclipped image (B,3,H,W)."""
        if self.config.head == "direct":
            return torch.sigmoid(z)
        return base / self.illumination(z)

    def forward(self, under: Tensor, over: Tensor, prior: Tensor | None = None) -> Tensor:
        """Fuse a pair. For nets with a prior (``NetConfig.prior``), ``prior`` is that fusion of the
        *whole* images (same shape as the inputs; tiled inference and the trainer pass crops of
        it); when None it is computed from ``under`` and ``over`` as given (:meth:`prepare`: with
        ``prealign`` the under frame is pre-aligned first). Given a prior, the inputs are taken as
        prepared (pre-aligned). Must be None for other nets."""
        check_pair(under, over)
        if prior is not None and (self.blend is None or prior.shape != under.shape):
            raise ValueError("prior given to a network without one, or of a different shape than the inputs")
        if self.blend is not None and prior is None:
            under, prior = self.prepare(under, over)
        squeeze = under.dim() == 3
        if squeeze:
            under, over = under.unsqueeze(0), over.unsqueeze(0)
            prior = prior.unsqueeze(0) if prior is not None else None
        h, w = under.shape[-2:]
        ph, pw, reflect = self.padding(h, w)
        if ph or pw:
            mode = "reflect" if reflect else "replicate"
            under = F.pad(under, (0, pw, 0, ph), mode=mode)
            over = F.pad(over, (0, pw, 0, ph), mode=mode)
            prior = F.pad(prior, (0, pw, 0, ph), mode=mode) if prior is not None else None
        y = self.fuse_raw(under, over)
        if self.blend is not None:
            assert prior is not None
            y = self.blend(y, prior, under, over)
        y = y[..., :h, :w]
        return y.squeeze(0) if squeeze else y

    def prepare(self, under: Tensor, over: Tensor) -> tuple[Tensor, Tensor | None]:
        """The whole-image, non-differentiable inputs of :meth:`forward`: the under frame
        pre-aligned (``NetConfig.prealign``; unchanged without) and the prior (None without).
        ``(B,3,H,W) x2 -> ((B,3,H,W), (B,3,H,W) | None)`` (or 3-D)."""
        under = prealign_image(self.config.prealign, under, over)
        prior = prior_image(self.config.prior, under, over) if self.blend is not None else None
        return under, prior

    def fuse_raw(self, under: Tensor, over: Tensor) -> Tensor:
        """The network without its prior blend, on inputs already padded to :attr:`multiple`:
        ``(B,3,H,W) x2 -> (B,3,H,W)`` in [0, 1] (tiled inference runs this per tile and applies the
        blend once to the whole image)."""
        fa, base = self.fuse_features(under, over)
        return clip_st(self.head(self.drm(fa), base))
