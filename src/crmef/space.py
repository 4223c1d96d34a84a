"""The search space: candidate operations, the searchable slot (:class:`Choice`) and genotypes.

Candidate operations (``k`` is the kernel size; every op maps ``(B, C_in, H, W)`` to
``(B, C_out, H, W)``, same spatial size):

========================  =====================================================================
``conv_k``  k∈{1,3,5,7}   ``k×k`` convolution → PReLU
``dilconv_k`` k∈{3,5,7}   ``k×k`` convolution with dilation 2 → PReLU
``resconv_k`` k∈{1,3,5,7} ``skip(x) + proj3×3(PReLU(conv_k(x)))``; ``skip`` is the identity when
                          ``C_in == C_out`` else a 1×1 convolution
``resdilconv_k`` k∈{3,5,7} as ``resconv_k`` with a dilated (2) ``k×k`` convolution
``deform_k`` k∈{3,5,7}    modulated deformable ``k×k`` convolution (``torchvision.ops.deform_conv2d``)
                          whose offsets and mask are predicted from a conditioning tensor; the
                          predictor starts at zero offsets and unit mask, i.e. as a plain conv
========================  =====================================================================

A :class:`Choice` is one searchable slot: while searching it is the softmax(α)-weighted sum of its
candidates (α are its own registered parameters, named ``alpha``); once derived it holds exactly
one op. The modules of :mod:`crmef.nets` are written once against this interface, so one module
definition serves both the super-net and the derived network.

A :class:`Genotype` is plain data: one op name per slot, validated and JSON round-trippable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# Candidate operations
# --------------------------------------------------------------------------------------------

CONV_OPS: tuple[str, ...] = (
    "conv_1", "conv_3", "conv_5", "conv_7",
    "dilconv_3", "dilconv_5", "dilconv_7",
    "resconv_1", "resconv_3", "resconv_5", "resconv_7",
    "resdilconv_3", "resdilconv_5", "resdilconv_7",
)  # fmt: skip
DEFORM_OPS: tuple[str, ...] = ("deform_3", "deform_5", "deform_7")
ALL_OPS: tuple[str, ...] = CONV_OPS + DEFORM_OPS

#: Which ops each kind of slot may hold.
SLOT_KINDS: dict[str, tuple[str, ...]] = {"srsm": CONV_OPS, "drm": CONV_OPS, "dasm": DEFORM_OPS}


def parse_op(name: str) -> tuple[str, int]:
    """Split an op name into its family and kernel size, e.g. ``"resdilconv_5" -> ("resdilconv", 5)``.

    Raises:
        ValueError: the name is not one of :data:`ALL_OPS`.
    """
    if name not in ALL_OPS:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(ALL_OPS)}")
    family, k = name.rsplit("_", 1)
    return family, int(k)


class ConvOp(nn.Module):
    """``conv_k`` / ``dilconv_k``: a (dilated) ``k×k`` convolution followed by PReLU.

    Shapes: ``(B, c_in, H, W) -> (B, c_out, H, W)``.
    """

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2), dilation=dilation)
        self.act = nn.PReLU(c_out, init=0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class ResConvOp(nn.Module):
    """``resconv_k`` / ``resdilconv_k``: ``skip(x) + proj3x3(PReLU(conv_k(x)))``.

    Shapes: ``(B, c_in, H, W) -> (B, c_out, H, W)``.
    """

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2), dilation=dilation)
        self.act = nn.PReLU(c_out, init=0.1)
        self.proj = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip: nn.Module = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.proj(self.act(self.conv(x)))


class DeformOp(nn.Module):
    """``deform_k``: modulated deformable convolution (DCNv2) via ``torchvision.ops.deform_conv2d``.

    Offsets (``2·k²`` channels) and mask (``k²`` channels, ``2·sigmoid`` so that it starts at 1)
    are predicted from a conditioning tensor by a 3×3 convolution initialised to zero, so a fresh
    op is exactly a plain ``k×k`` convolution with the same weights.

    Shapes: ``x (B, c_in, H, W)``, ``cond (B, c_cond, H, W)`` (defaults to ``x``)
    ``-> (B, c_out, H, W)``.
    """

    def __init__(self, c_in: int, c_out: int, k: int, c_cond: int | None = None) -> None:
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        fan_in = c_in * k * k
        nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.offset_mask = nn.Conv2d(c_cond if c_cond is not None else c_in, 3 * k * k, 3, padding=1)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        self.act = nn.PReLU(c_out, init=0.1)

    def offsets_and_mask(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Predict ``(offset (B, 2k², H, W), mask (B, k², H, W))`` from ``cond``."""
        om = self.offset_mask(cond)
        kk = self.k * self.k
        offset, mask = om[:, : 2 * kk], om[:, 2 * kk :]
        return offset, 2.0 * torch.sigmoid(mask)

    def deform(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """The modulated deformable convolution itself (no activation)."""
        # imported here: torchvision.ops pulls in torch._dynamo (~2 s), and only DASM needs it
        from torchvision.ops import deform_conv2d

        return deform_conv2d(x, offset, self.weight, self.bias, padding=self.k // 2, mask=mask)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        offset, mask = self.offsets_and_mask(x if cond is None else cond)
        return self.act(self.deform(x, offset, mask))


def make_op(name: str, c_in: int, c_out: int, c_cond: int | None = None) -> nn.Module:
    """Build the candidate op ``name`` mapping ``c_in`` to ``c_out`` channels.

    Args:
        name: one of :data:`ALL_OPS`.
        c_in: input channels.
        c_out: output channels.
        c_cond: channels of the conditioning tensor of ``deform_k`` ops (default ``c_in``).

    Raises:
        ValueError: unknown op or non-positive channel counts.
    """
    family, k = parse_op(name)
    if c_in <= 0 or c_out <= 0:
        raise ValueError(f"op {name!r}: channel counts must be positive, got {c_in} -> {c_out}")
    if family == "conv":
        return ConvOp(c_in, c_out, k)
    if family == "dilconv":
        return ConvOp(c_in, c_out, k, dilation=2)
    if family == "resconv":
        return ResConvOp(c_in, c_out, k)
    if family == "resdilconv":
        return ResConvOp(c_in, c_out, k, dilation=2)
    return DeformOp(c_in, c_out, k, c_cond=c_cond)


# --------------------------------------------------------------------------------------------
# Choice: one searchable slot
# --------------------------------------------------------------------------------------------


class Choice(nn.Module):
    """One searchable slot: a mixed op while searching, a single op once derived.

    The slot records what a latency look-up table needs: its ``kind`` (``srsm``/``drm``/``dasm``),
    channel counts and ``scale`` (the feature map's down-sampling factor relative to the input).

    Args:
        kind: slot kind, which fixes the allowed ops (:data:`SLOT_KINDS`).
        candidates: op names to search over; a single name gives a derived (fixed) slot.
        c_in, c_out: channel counts; ``c_cond`` for deformable ops' conditioning input.
        scale: spatial down-sampling factor of the feature map this slot runs on (1, 2, 4, …).

    Shapes: ``forward(x (B, c_in, H, W), *extra) -> (B, c_out, H, W)``; ``extra`` is passed to
    every candidate (the conditioning tensor for ``deform_k``).
    """

    def __init__(
        self,
        kind: str,
        candidates: Sequence[str],
        c_in: int,
        c_out: int,
        *,
        c_cond: int | None = None,
        scale: int = 1,
    ) -> None:
        super().__init__()
        if kind not in SLOT_KINDS:
            raise ValueError(f"unknown slot kind {kind!r}; expected one of {sorted(SLOT_KINDS)}")
        candidates = tuple(candidates)
        if not candidates:
            raise ValueError(f"a {kind} slot needs at least one candidate op, got an empty list")
        for name in candidates:
            parse_op(name)
            if name not in SLOT_KINDS[kind]:
                raise ValueError(
                    f"op {name!r} is not allowed in a {kind} slot; allowed: {', '.join(SLOT_KINDS[kind])}"
                )
        if len(set(candidates)) != len(candidates):
            raise ValueError(f"duplicate candidate ops in a {kind} slot: {candidates}")
        self.kind, self.candidates = kind, candidates
        self.c_in, self.c_out, self.c_cond, self.scale = c_in, c_out, c_cond, scale
        self.ops = nn.ModuleList(make_op(n, c_in, c_out, c_cond=c_cond) for n in candidates)
        if len(candidates) > 1:
            self.alpha: nn.Parameter | None = nn.Parameter(1e-3 * torch.randn(len(candidates)))
        else:
            self.register_parameter("alpha", None)

    @property
    def is_searching(self) -> bool:
        """True while the slot mixes more than one candidate."""
        return len(self.candidates) > 1

    def weights(self) -> Tensor:
        """softmax(α), shape ``(len(candidates),)``; ``[1.]`` for a derived slot."""
        if self.alpha is None:
            return torch.ones(1)
        return F.softmax(self.alpha, dim=0)

    def chosen(self) -> str:
        """The op with the largest α (the derived op of a fixed slot)."""
        if self.alpha is None:
            return self.candidates[0]
        return self.candidates[int(torch.argmax(self.alpha.detach()))]

    def forward(self, x: Tensor, *extra: Tensor) -> Tensor:
        if self.alpha is None:
            return self.ops[0](x, *extra)
        w = F.softmax(self.alpha, dim=0)
        out = w[0] * self.ops[0](x, *extra)
        for i in range(1, len(self.ops)):
            out = out + w[i] * self.ops[i](x, *extra)
        return out

    def extra_repr(self) -> str:
        return f"kind={self.kind}, c_in={self.c_in}, c_out={self.c_out}, scale={self.scale}, candidates={list(self.candidates)}"


# --------------------------------------------------------------------------------------------
# Genotype
# --------------------------------------------------------------------------------------------

SRSM_SLOTS = 3  #: searchable ops per scene-relighting sub-module
DASM_SLOTS = 4  #: deformable convolutions of PCD alignment: L3, L2, L1, cascade


def _as_ops(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"genotype {what} must be a list of op names, got {value!r}")
    out = tuple(value)
    for name in out:
        if not isinstance(name, str):
            raise ValueError(f"genotype {what}: op names must be strings, got {name!r}")
    return out


@dataclass(frozen=True)
class Genotype:
    """A derived architecture: one op name per searchable slot. Plain data, never code.

    Attributes:
        srsm: ops of the scene-relighting sub-modules, either one triple shared by every SRSM
            instance (as in the published genotypes) or one triple per instance, in the order
            ``under stage 1, over stage 1, under stage 2, over stage 2, …``.
        drm: ops of the Detail Repletion Module blocks (their number sets the block count).
        dasm: the four deformable ops of PCD alignment (L3, L2, L1, cascade), or ``None`` for a
            network without alignment.

    Raises:
        ValueError: on an unknown op, a wrong slot count or an op not allowed in a slot (the
            message names the slot and the op).
    """

    srsm: tuple[tuple[str, ...], ...]
    drm: tuple[str, ...]
    dasm: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        srsm = self.srsm
        if isinstance(srsm, Sequence) and srsm and all(isinstance(s, str) for s in srsm):
            srsm = (srsm,)  # one shared triple
        if isinstance(srsm, str) or not isinstance(srsm, Sequence) or not srsm:
            raise ValueError(f"genotype srsm must be a list of {SRSM_SLOTS} op names (or a list of such lists), got {self.srsm!r}")
        triples = tuple(_as_ops(t, f"srsm[{i}]") for i, t in enumerate(srsm))
        for i, t in enumerate(triples):
            if len(t) != SRSM_SLOTS:
                raise ValueError(f"genotype srsm[{i}] needs {SRSM_SLOTS} ops, got {len(t)}: {list(t)}")
            for j, name in enumerate(t):
                _check_slot_op("srsm", f"srsm[{i}][{j}]", name)
        drm = _as_ops(self.drm, "drm")
        if not drm:
            raise ValueError("genotype drm needs at least one op, got none")
        for j, name in enumerate(drm):
            _check_slot_op("drm", f"drm[{j}]", name)
        dasm = None
        if self.dasm is not None:
            dasm = _as_ops(self.dasm, "dasm")
            if len(dasm) != DASM_SLOTS:
                raise ValueError(f"genotype dasm needs {DASM_SLOTS} ops (L3, L2, L1, cascade), got {len(dasm)}: {list(dasm)}")
            for j, name in enumerate(dasm):
                _check_slot_op("dasm", f"dasm[{j}]", name)
        object.__setattr__(self, "srsm", triples)
        object.__setattr__(self, "drm", drm)
        object.__setattr__(self, "dasm", dasm)

    @property
    def align(self) -> bool:
        """True when the genotype has deformable alignment (DASM)."""
        return self.dasm is not None

    def srsm_ops(self, instance: int) -> tuple[str, ...]:
        """The op triple of SRSM instance ``instance`` (shared triples broadcast)."""
        return self.srsm[0] if len(self.srsm) == 1 else self.srsm[instance]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict; a single shared SRSM triple is written as a flat list."""
        d = asdict(self)
        d["srsm"] = list(self.srsm[0]) if len(self.srsm) == 1 else [list(t) for t in self.srsm]
        d["drm"] = list(self.drm)
        d["dasm"] = None if self.dasm is None else list(self.dasm)
        return d

    def to_json(self) -> str:
        """Serialise to a JSON string (round-trips through :meth:`from_json`)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Genotype:
        """Build from a dict as written by :meth:`to_dict` (unknown keys are an error)."""
        if not isinstance(d, dict):
            raise ValueError(f"a genotype must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"srsm", "drm", "dasm"}
        if unknown:
            raise ValueError(f"unknown genotype keys: {sorted(unknown)}; expected srsm, drm, dasm")
        for key in ("srsm", "drm"):
            if key not in d:
                raise ValueError(f"genotype is missing {key!r}")
        return cls(srsm=d["srsm"], drm=d["drm"], dasm=d.get("dasm"))  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        """Parse a JSON string."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"genotype is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """Read a genotype JSON file (errors name the file)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{path}: cannot read genotype: {exc.strerror}") from exc
        try:
            return cls.from_json(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write the genotype as JSON, atomically."""
        from crmef.utils import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")


def _check_slot_op(kind: str, where: str, name: str) -> None:
    if name not in ALL_OPS:
        raise ValueError(f"genotype {where}: unknown op {name!r}; known ops: {', '.join(ALL_OPS)}")
    if name not in SLOT_KINDS[kind]:
        raise ValueError(f"genotype {where}: op {name!r} is not allowed in a {kind} slot; allowed: {', '.join(SLOT_KINDS[kind])}")


# --------------------------------------------------------------------------------------------
# Published genotypes (authors' code) as presets. Named paper_*: the shipped models ``general`` and
# ``aligned`` are engine models (crmef.engine), not these networks.
# --------------------------------------------------------------------------------------------

PRESETS: dict[str, Genotype] = {
    "paper_general": Genotype(
        srsm=("conv_3", "conv_3", "conv_3"),  # type: ignore[arg-type]
        drm=("resdilconv_3", "resdilconv_3", "resconv_3", "resconv_3"),
    ),
    "paper_aligned": Genotype(
        srsm=("conv_3", "conv_3", "dilconv_3"),  # type: ignore[arg-type]
        drm=("resconv_3", "resdilconv_3", "resdilconv_3", "resconv_3"),
        dasm=("deform_5", "deform_5", "deform_5", "deform_3"),
    ),
}


def get_preset(name: str) -> Genotype:
    """The published genotype ``name`` (``paper_general`` or ``paper_aligned``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None


@dataclass
class SearchSpace:
    """Candidate ops per slot kind for the super-net (defaults: every allowed op)."""

    srsm: tuple[str, ...] = field(default_factory=lambda: CONV_OPS)
    drm: tuple[str, ...] = field(default_factory=lambda: CONV_OPS)
    dasm: tuple[str, ...] = field(default_factory=lambda: DEFORM_OPS)

    def __post_init__(self) -> None:
        for kind in ("srsm", "drm", "dasm"):
            ops = tuple(getattr(self, kind))
            if not ops:
                raise ValueError(f"search space: the {kind} candidate list is empty")
            for name in ops:
                _check_slot_op(kind, f"{kind} candidates", name)
            setattr(self, kind, ops)
