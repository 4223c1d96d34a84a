"""The exposure network and the engine's blend in torch (for search and training).

:class:`ExposureNet` is the scene-relighting idea of the paper's SRSM applied to N frames at
once: every frame passes the same searchable sub-network (shared weights, so any N and any
order work), a cross-frame mean gives each frame the context of the others, and the head
returns per frame a logit map (how much this frame should make the output here) and one
log2-gain for the scene (one value, the global exposure). It runs at the engine's work
resolution (256 px on the long side), so its cost does not grow with the photo's size.

    x_i (3, h, w) → conv3×3 → slot 0 (C→C)                          f_i     h × w
    [maxpool f_i ‖ avgpool mean_j f_j] → slot 1 (2C→C)                 q_i     h/2 × w/2
    q_i + slot 2(q_i) + 1×1(global mean of q over frames and space)      q_i
    bilinear ×2 → conv3×3 (C→2) → (logit_i, gain_i)
    gain = bound · tanh(mean over pixels of Σ_i softmax_i(logit) · gain_i)   one value per scene

The slots are :class:`crmef.space.Choice` modules (kind ``srsm``): one definition serves the
super-net of the hardware-aware search and the derived network.

:func:`blend_torch` is :func:`crmef.engine.blend` written with torch operations (differentiable),
used to train the network end to end through the blend; ``tests/test_engine.py`` keeps the two
equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crmef.engine import (CLIP_AT, CLIP_RAMP, COLOUR_FLOOR, GRAY, PROFILE_KNOTS, REPLETE_EPS, REPLETE_LEVELS, REPLETE_MAX, REPLETE_SIGMA,
                          TRUST_FROM, TRUST_RAMP, BlendConfig, camera_profile, level_shape, pyramid_levels)
from crmef.space import Choice

EXPOSURE_SLOTS = 3
"""Searchable ops of the exposure network."""


class ExposureNet(nn.Module):
    """Per-frame logits and a scene log2-gain from N reduced frames.

    Args:
        channels: feature width C.
        slot_ops: for each of the 3 slots, the candidate op names (one name once derived).
        max_gain: bound of the log2-gain in stops.

    Shapes: ``forward(x (N, 3, h, w)) -> (logits (N, 1, h, w), gain (1, 1, 1, 1))`` with h, w
    even; the frames in any order, RGB in [0, 1]. The gain is one value per scene: the mean over
    pixels of the frames' gains weighted by softmax(logits), bounded by ``max_gain · tanh``.
    """

    def __init__(self, channels: int, slot_ops: Sequence[Sequence[str]], max_gain: float = 1.0) -> None:
        super().__init__()
        if len(slot_ops) != EXPOSURE_SLOTS:
            raise ValueError(f"ExposureNet needs {EXPOSURE_SLOTS} slots, got {len(slot_ops)}")
        c = channels
        self.channels, self.max_gain = c, float(max_gain)
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.slot0 = Choice("srsm", slot_ops[0], c, c, scale=1)
        self.slot1 = Choice("srsm", slot_ops[1], 2 * c, c, scale=2)
        self.slot2 = Choice("srsm", slot_ops[2], c, c, scale=2)
        self.context = nn.Conv2d(c, c, 1)
        self.tail = nn.Conv2d(c, 2, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the classical prior: zero logits, no gain
        nn.init.zeros_(self.tail.bias)

    @classmethod
    def from_ops(cls, ops: Sequence[str], channels: int, max_gain: float = 1.0) -> ExposureNet:
        """The derived network of a genotype (one op name per slot)."""
        return cls(channels, [[o] for o in ops], max_gain)

    def genotype(self) -> list[str]:
        """The op of each slot (argmax α while searching)."""
        return [s.chosen() for s in (self.slot0, self.slot1, self.slot2)]

    def choices(self) -> list[tuple[str, Choice]]:
        """``(name, slot)`` of the three searchable slots (for the latency table)."""
        return [("slot0", self.slot0), ("slot1", self.slot1), ("slot2", self.slot2)]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The α of every searching slot."""
        return [s.alpha for s in (self.slot0, self.slot1, self.slot2) if s.alpha is not None]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an α."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.slot0(self.head(x))
        mean = f.mean(dim=0, keepdim=True).expand_as(f)
        q = self.slot1(torch.cat([F.max_pool2d(f, 2), F.avg_pool2d(mean, 2)], dim=1))
        q = q + self.slot2(q)
        q = q + self.context(q.mean(dim=(0, 2, 3), keepdim=True))
        q = F.interpolate(q, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = self.tail(q)
        logits, g = out[:, :1], out[:, 1:]
        w = torch.softmax(logits, dim=0)
        scene = (w * g).sum(dim=0, keepdim=True).mean(dim=(2, 3), keepdim=True)  # (1, 1, 1, 1)
        return logits, self.max_gain * torch.tanh(scene)


# ------------------------------------------------------------------------------- blend (torch)

_K5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _reflect101(n: int, p: int, device: torch.device) -> Tensor:
    """Indices of a length-``n`` axis padded by ``p`` with OpenCV's BORDER_REFLECT_101 (any n)."""
    period = 2 * (n - 1)
    idx = []
    for i in range(-p, n + p):
        j = abs(i) % period if period else 0
        idx.append(period - j if j >= n else j)
    return torch.tensor(idx, device=device)


def _sep(x: Tensor, k: Tensor) -> Tensor:
    """Separable 5-tap filter of (B, 1, H, W) with reflect-101 borders (OpenCV's default), also on
    the 1–2 px levels at the top of a full-depth pyramid."""
    h, w = x.shape[-2:]
    if min(h, w) > 2:
        x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    else:
        x = x.index_select(-2, _reflect101(h, 2, x.device)).index_select(-1, _reflect101(w, 2, x.device))
    x = F.conv2d(x, k.view(1, 1, 1, 5).to(x))
    return F.conv2d(x, k.view(1, 1, 5, 1).to(x))


def pyr_down(x: Tensor) -> Tensor:
    """``cv2.pyrDown`` of (B, 1, H, W): 5-tap Gaussian, then every second pixel."""
    return _sep(x, _K5)[..., ::2, ::2]


def pyr_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``cv2.pyrUp`` of (B, 1, h, w) to ``size``: zeros inserted, 5-tap Gaussian × 4, then an odd
    ``size`` cropped from the 2h × 2w result (OpenCV filters before it crops: cropping first
    moves the last row's border and costs up to 0.03 of grey at the top of a full-depth pyramid)."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = x
    return (_sep(up, _K5) * 4.0)[..., : size[0], : size[1]]


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of (B, 1, H, W) as ``cv2.GaussianBlur(ksize=0, sigma)`` (reflect-101)."""
    if sigma <= 0:
        return x
    r = max(1, int(round(sigma * 4)))  # OpenCV's kernel for float32: 2*round(4σ)+1 taps
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    h, w = x.shape[-2:]
    if min(h, w) > r:
        x = F.pad(x, (r, r, r, r), mode="reflect")
    else:  # a level smaller than the kernel: reflected as OpenCV does, however often
        x = x.index_select(-2, _reflect101(h, r, x.device)).index_select(-1, _reflect101(w, r, x.device))
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def srgb_to_linear_t(x: Tensor) -> Tensor:
    """IEC 61966-2-1 decoding (differentiable)."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp(min=1e-8) ** 2.4)


def linear_to_srgb_t(x: Tensor) -> Tensor:
    """IEC 61966-2-1 encoding (differentiable)."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=1e-8) ** (1 / 2.4) - 0.055)


def gray_t(x: Tensor) -> Tensor:
    """MATLAB ``rgb2gray`` of (B, 3, H, W) -> (B, 1, H, W)."""
    return (x * torch.as_tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def prior_logits_t(grey: Tensor, sigma: float) -> Tensor:
    """Well-exposedness logits of the (N, 1, h, w) grey of the reduced frames -> (N, 1, h, w)."""
    return -((grey - 0.5) ** 2) / (2 * sigma**2)


def reduce_frames(frames: Tensor, shape: tuple[int, int]) -> Tensor:
    """(N, 3, H, W) -> (N, 3, h, w) by area averaging (``cv2.INTER_AREA`` for integer factors)."""
    return F.interpolate(frames, size=shape, mode="area")


def contrast_t(g: Tensor, contrast: float) -> Tensor:
    """Mertens's contrast measure ``(|∇²g| + ε)^contrast`` of (N, 1, H, W) grey -> (N, 1, H, W)
    (``cv2.Laplacian`` with ``ksize=1``, borders reflected as OpenCV does)."""
    lap_k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=g.dtype, device=g.device)
    return (F.conv2d(F.pad(g, (1, 1, 1, 1), mode="reflect"), lap_k.view(1, 1, 3, 3)).abs() + 1e-3) ** contrast


def tone_contrast_t(grey: Tensor, level: tuple[int, int], contrast: float) -> Tensor:
    """:func:`crmef.engine.tone_contrast` in torch: the contrast of the (N, 1, h, w) grey of the
    reduced frames, brought to the ``level`` size -> (N, 1, *level)."""
    c = contrast_t(grey, contrast)
    while c.shape[-2] >= 2 * level[0] and c.shape[-1] >= 2 * level[1]:
        c = pyr_down(c)
    return F.interpolate(c, size=level, mode="bilinear", align_corners=False)


def blend_torch(frames: Tensor, small: Tensor, tone_logits: Tensor, log_gain: Tensor,
                cfg: BlendConfig, real: Tensor | None = None) -> Tensor:
    """:func:`crmef.engine.blend` in torch.

    Args:
        frames: (N, 3, H, W) RGB in [0, 1], sorted dark to bright.
        small: (N, 3, h, w) the frames at the work resolution, as the network saw them: their
            grey gives the finest levels' prior and the tone levels' contrast.
        tone_logits: (N, 1, h, w) logits of the coarser levels and the colour mix.
        log_gain: (1, 1, 1, 1) the scene's log2-gain.
        cfg: the blend settings.
        real: (N,) 1 for a real frame, 0 for a re-exposure (no weight at the detail levels and
            in the colour mix); None: all real.

    Returns:
        (1, 3, H, W) RGB in [0, 1].
    """
    n, _, hh, ww = frames.shape

    def smooth(logits: Tensor) -> Tensor:
        return gaussian_blur(torch.softmax(logits, dim=0), cfg.smooth)  # (N, 1, h, w)

    def resized(w: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(w, size=size, mode="bilinear", align_corners=False)

    g = gray_t(frames)
    con = contrast_t(g, cfg.contrast)
    small_g = gray_t(small)

    def normalised(pw: Tensor) -> Tensor:
        return pw / (pw.sum(0, keepdim=True) + 1e-12)

    levels = pyramid_levels(hh, ww, cfg.levels_top)
    split = min(cfg.detail_levels, levels)
    tone = smooth(tone_logits)
    up = resized(tone, (hh, ww))  # the colour mix's weights
    detail = resized(smooth(prior_logits_t(small_g, cfg.sigma)), (hh, ww)) * con
    if real is not None:  # re-exposures take no part in the detail levels
        detail = detail * real.view(-1, 1, 1, 1)
    w = normalised(detail) if split else None
    con_s = tone_contrast_t(small_g, level_shape(hh, ww, split), cfg.contrast)
    wt = normalised(resized(tone, tuple(con_s.shape[-2:])) * con_s)
    cur, acc, energy = g, [], {}
    rep = range(REPLETE_LEVELS[0], min(REPLETE_LEVELS[1] + 1, levels))  # the repleted levels
    for k in range(levels):
        if k == split:
            w = wt
        down = pyr_down(cur)
        band = cur - pyr_up(down, cur.shape[-2:])
        out_band = (band * w).sum(0, keepdim=True)
        if k in rep:  # the real frames' strongest band energy, for the detail repletion
            e = gaussian_blur(band * band, REPLETE_SIGMA)
            if real is not None:
                e = e * real.view(-1, 1, 1, 1)
            energy[k] = e.amax(0, keepdim=True)
        acc.append(out_band)
        cur, w = down, pyr_down(w)
    if split >= levels:
        w = wt
    y = (cur * w).sum(0, keepdim=True)
    added_y = None  # the grey the repletion added
    for k in range(levels - 1, -1, -1):
        base, band = pyr_up(y, acc[k].shape[-2:]), acc[k]
        if k in rep:  # detail repletion (crmef.engine.replete)
            e_out = gaussian_blur(band * band, REPLETE_SIGMA)
            gain = ((energy[k] + REPLETE_EPS) / (e_out + REPLETE_EPS)).sqrt().clamp(max=REPLETE_MAX)
            room = torch.where(band < 0, base, 1.0 - base).clamp(min=0.0)
            gain = torch.minimum(gain, room / band.abs().clamp(min=1e-12)).clamp(min=1.0)
            added = band * (gain - 1.0)
            band = band + added
            added_y = added if added_y is None else pyr_up(added_y, added.shape[-2:]) + added
        elif added_y is not None:  # a finer level, not repleted
            added_y = pyr_up(added_y, band.shape[-2:])
        y = base + band
    if real is not None:  # nor in the colour mix
        up = up * real.view(-1, 1, 1, 1)
    lin, lg = srgb_to_linear_t(frames), srgb_to_linear_t(g)
    conf = colour_confidence_t(frames, g) * up
    mix = (lin / lg.clamp(min=1e-6) * conf).sum(0, keepdim=True) / conf.sum(0, keepdim=True).clamp(min=1e-6)
    # colour lifted past every frame that holds it pales as the camera does (crmef.engine.blend)
    keep = slice(None) if real is None else real > 0
    real_small = small[keep]
    profile = torch.as_tensor(camera_profile(real_small.detach().cpu().numpy()), dtype=mix.dtype, device=mix.device)
    held = srgb_to_linear_t(small_g[keep]) * (real_small.amax(dim=1, keepdim=True) < CLIP_AT)
    held = resized(gaussian_blur(held.amax(0, keepdim=True), cfg.smooth), (hh, ww))
    pale = (lin * up).sum(0, keepdim=True) / (lg * up).sum(0, keepdim=True).clamp(min=1e-6)
    if added_y is not None:  # the repletion brightens a colour only up to white (crmef.engine.blend)
        top = mix.amax(dim=1, keepdim=True)
        ceiling = linear_to_srgb_t(1.0 / (top * torch.exp2(log_gain)).clamp(min=1e-6))
        room = (ceiling - y + added_y).clamp(min=0.0)
        y = y - (added_y - room).clamp(min=0.0)
    target = srgb_to_linear_t(y.clamp(0, 1)) * torch.exp2(log_gain)
    fade = interp_t(linear_to_srgb_t(target.clamp(0, 1)), profile) - interp_t(linear_to_srgb_t(held.clamp(0, 1)), profile)
    mix = (mix - 1.0) * torch.exp(fade.clamp(max=0.0)) + 1.0  # the profile never rises: 1 where target <= held
    u, o = mix * target, pale * target
    over = u.amax(dim=1, keepdim=True) > 1.0
    step = torch.where(u > 1.0, (u - 1.0) / (u - o).clamp(min=1e-6), torch.zeros_like(u)).amax(dim=1, keepdim=True)
    out = torch.where(over, u + (o - u) * step.clamp(0, 1), u)
    out = out / out.amax(dim=1, keepdim=True).clamp(min=1.0)
    return linear_to_srgb_t(match_grey_t(out, target))


def interp_t(x: Tensor, values: Tensor) -> Tensor:
    """``np.interp(x, PROFILE_KNOTS, values)`` for ``x`` in [0, 1] (evenly spaced knots)."""
    n = len(PROFILE_KNOTS) - 1
    j = (x * n).floor().clamp(0, n - 1)
    t = x * n - j
    j = j.long()
    return values[j] * (1 - t) + values[j + 1] * t


def match_grey_t(lin: Tensor, target: Tensor) -> Tensor:
    """:func:`crmef.engine.match_grey` in torch: (1, 3, H, W) linear RGB scaled per pixel so that
    the grey of its sRGB codes is the grey of the (1, 1, H, W) target luminance."""
    t_code = linear_to_srgb_t(target.clamp(max=1.0))
    f = gray_t(linear_to_srgb_t(lin))
    lin = lin * ((t_code + 0.055) / (f + 0.055)).clamp(0.42, 2.38) ** 2.4
    return lin / lin.amax(dim=1, keepdim=True).clamp(min=1.0)


def colour_confidence_t(frames: Tensor, grey: Tensor) -> Tensor:
    """:func:`crmef.engine.colour_confidence` of (N, 3, H, W) sRGB frames with their (N, 1, H, W)
    grey -> (N, 1, H, W)."""
    trusted = ((grey - TRUST_FROM) / TRUST_RAMP).clamp(0, 1)
    unclipped = ((CLIP_AT - frames.amax(dim=1, keepdim=True)) / CLIP_RAMP).clamp(0, 1)
    return trusted * unclipped + COLOUR_FLOOR


def reexpose_t(frame: Tensor, stops: float) -> Tensor:
    """:class:`crmef.engine.Reexposed` in torch: (B, 3, H, W) sRGB -> the frame re-exposed by
    ``stops`` (linear × 2^stops, a pixel whose largest channel would pass 1 scaled down whole)."""
    lin = srgb_to_linear_t(frame)
    peak = lin.amax(dim=1, keepdim=True).clamp(min=1e-6)
    return linear_to_srgb_t(lin * torch.minimum(torch.full_like(peak, 2.0**stops), 1.0 / peak))


def fuse_torch(net: ExposureNet, frames: Tensor, cfg: BlendConfig) -> Tensor:
    """The whole engine in torch: (N, 3, H, W) frames sorted dark to bright -> (1, 3, H, W),
    gaps wider than ``cfg.max_gap`` filled as :func:`crmef.engine.fill_gaps` does."""
    from crmef.engine import gap_stops, virtual_stops, work_shape

    shape = work_shape(frames.shape[-2], frames.shape[-1], cfg.work_size)
    small = reduce_frames(frames, shape)
    gaps = gap_stops(small.detach().cpu().numpy()) if cfg.max_gap > 0 else []
    real = None
    if any(virtual_stops(g, cfg.max_gap) for g in gaps):
        stack, smalls, reals = [frames[:1]], [small[:1]], [1.0]
        for i, gap in enumerate(gaps):
            for k in virtual_stops(gap, cfg.max_gap):
                stack.append(reexpose_t(frames[i : i + 1], k))
                smalls.append(reexpose_t(small[i : i + 1], k))
                reals.append(0.0)
            stack.append(frames[i + 1 : i + 2])
            smalls.append(small[i + 1 : i + 2])
            reals.append(1.0)
        real = torch.tensor(reals, dtype=frames.dtype, device=frames.device)
        frames, small = torch.cat(stack), torch.cat(smalls)
    logits, gain = net(small)
    return blend_torch(frames, small, logits, gain, cfg, real)


def count_flops(net: ExposureNet, n: int, shape: tuple[int, int]) -> float:
    """FLOPs of one forward on ``n`` frames at ``shape`` (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.rand(n, 3, *shape))
    return float(fc.get_total_flops())


def export_onnx(net: ExposureNet, path: str, opset: int = 17) -> None:
    """Export to ONNX: input ``frames`` (N, 3, h, w), outputs ``logits`` (N, 1, h, w) and ``gain``
    (1, 1, 1, 1); N, h and w dynamic (h, w even)."""
    net = net.eval()
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.rand(3, 3, 64, 96),), path, input_names=["frames"], output_names=["logits", "gain"],
            dynamic_axes={"frames": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
            opset_version=opset, dynamo=False,
        )


__all__ = ["export_onnx", "EXPOSURE_SLOTS", "ExposureNet", "blend_torch", "fuse_torch", "reexpose_t", "count_flops"]
