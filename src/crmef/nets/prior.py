"""Exposure-fusion prior for the fusion network (not in the paper; ``NetConfig.prior``).

- :func:`prior_image` / :func:`prior_array` — ``"mertens"``: Mertens, Kautz and Van Reeth's
  exposure fusion (OpenCV, full pyramid depth) of the pair, computed on the whole image;
  ``"flow_mertens"``: the same after warping the under frame onto the over frame with optical
  flow (hand-held brackets). A fixed-depth, local torch version was tried
  first and rejected: Mertens's result depends strongly on the pyramid depth (on a 536×356
  bracket, 7 instead of 8 levels moves it by 21 dB PSNR), so only the full-depth, whole-image
  fusion is a faithful prior; it therefore enters the network as an input.
- :func:`prealign_image` / :func:`prealign_array` — ``NetConfig.prealign = "flow"``: the under
  frame warped onto the over frame by DIS optical flow before the network (hand-held brackets;
  with the Mertens prior, that prior is then the flow-then-Mertens fusion). Computed once on the
  whole image, like the prior.
- :class:`PriorBlend` — a small CNN at 1/8 resolution that predicts, per pixel and channel, how
  far to move the network's output ``y`` towards the prior ``p``: ``y + w ⊙ (p − y)``,
  ``w ∈ (0, 1)``, bilinearly upsampled (a smooth, tonal decision with a wide context).
  Optionally (``detail = σ > 0``) it also transfers the prior's *detail*: the band above a
  low-pass of scale ``σ`` pixels, ``y ← y + w_d ⊙ ((p − L(p)) − (y − L(y)))``, with a second
  per-pixel weight ``w_d`` from the same CNN. With ``w_d = 1`` the output takes its tone (local
  means) from the network and its local structure from the classical fusion. In the ``"luma"``
  detail space the detail's luma is added in full and its chroma scaled by the ratio of the
  blended base's to the prior's local luminance (at most 1). Optionally (``dark_guard = τ > 0``)
  the blend weight's logit is raised by ``GUARD_GAIN · max(0, log2(Y(P̄) / Y(ȳ)) − τ)`` with
  ``P̄, ȳ`` the 1/8-resolution means and ``Y`` the grey: where the network's output is more than
  ``2^τ`` times darker than the prior, the prior's tone takes over.

Why: on real brackets whose references fuse the *whole* bracket, the classical fusion of the two
extreme frames is sometimes the better estimate (few-frame brackets) and sometimes far worse
(wide brackets, where the network wins by several dB). The blend learns where each is right.
The detail transfer exists because the two are right about different things: on held-out
validation brackets the network's tone is 3.6 dB closer to the full-bracket reference than
Mertens's, while Mertens keeps the sources' local structure far better (MEF-SSIM 0.986 against
0.910); taking the network's low-pass band (σ = 32 px) and Mertens's detail scores 24.8 dB and
0.981 on the validation brackets (README, training section).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


PRIORS = ("none", "mertens", "flow_mertens", "mertens_detail")
"""Prior kinds of :attr:`crmef.nets.NetConfig.prior`."""

PAIR_PRIORS = ("mertens", "mertens_detail")
"""Priors that fuse the (under, over) pair as given: ghosted on misaligned frames unless they are
pre-aligned (:attr:`crmef.nets.NetConfig.prealign`)."""

DETAIL_WEIGHTS = (2.0, 1.0, 0.0)
"""Mertens's (contrast, saturation, well-exposedness) exponents of the detail of ``"mertens_detail"``."""

DETAIL_SPLIT = 32
"""Scale (pixels, :func:`lowpass`) at which ``"mertens_detail"`` splits tone from detail."""

GUARD_GAIN = 2.0
"""Logit added per stop by which the network's output is darker than the prior beyond
:attr:`crmef.nets.NetConfig.dark_guard` (:class:`PriorBlend`)."""

GUARD_FLOOR = 0.01
"""Added to both local luminances of the dark guard's ratio (blacks do not make a ratio)."""

PREALIGNS = ("none", "flow")
"""Pre-alignment kinds of :attr:`crmef.nets.NetConfig.prealign`."""

DETAIL_SPACES = ("rgb", "luma", "luma_gamut")
"""How :class:`PriorBlend` adds the prior's detail (:attr:`crmef.nets.NetConfig.detail_space`)."""


def prior_version(kind: str) -> str:
    """A string that changes whenever the definition of prior ``kind`` does (cache keys of
    :meth:`crmef.data.reference.ArrayCache.pair_prior`)."""
    if kind == "mertens_detail":
        return f"{kind}-w{','.join(f'{w:g}' for w in DETAIL_WEIGHTS)}-s{DETAIL_SPLIT}"
    return kind


def prealign_array(kind: str, under: np.ndarray, over: np.ndarray) -> np.ndarray:
    """The under frame pre-aligned onto the over frame, numpy: ``(H,W,3) x2 -> (H,W,3)`` float32.

    ``"flow"``: warped by DIS optical flow on histogram-matched grey (:func:`crmef.baselines.align_to`,
    the alignment of the flow-then-Mertens baseline); ``"none"``: ``under`` unchanged (float32).
    Like the prior it is computed once on the whole image, outside the network.
    """
    if kind == "none":
        return np.asarray(under, dtype=np.float32)
    if kind == "flow":
        from crmef.baselines import align_to  # baselines layer, imported lazily

        return align_to(under, over)
    raise ValueError(f"unknown prealign {kind!r}; use one of {PREALIGNS}")


def prior_array(kind: str, under: np.ndarray, over: np.ndarray) -> np.ndarray:
    """The prior of one pair of whole images, numpy: ``(H,W,3) x2 -> (H,W,3)`` float32 in [0, 1].

    ``"mertens"``: OpenCV's Mertens fusion (:func:`crmef.data.reference.mertens_reference`, the
    method of the full-bracket references); ``"flow_mertens"``: the under frame warped onto the
    over frame by DIS optical flow, then Mertens (:func:`crmef.baselines.flow_mertens`; for
    hand-held brackets, whose references are registered to the over frame);
    ``"mertens_detail"``: the tone (:func:`lowpass` at :data:`DETAIL_SPLIT` px) of ``"mertens"``
    and the detail above it of a Mertens fusion with a stronger contrast weight
    (:data:`DETAIL_WEIGHTS`), ``c + L(m − c)``, clipped. Why: on validation brackets the
    contrast-weighted fusion keeps the sources' local structure better (MEF-SSIM 0.9862 for
    weights (2, 1, 0), 0.9875 for (3, 1, 1), against 0.9857 for OpenCV's (1, 1, 0)) while its
    tone is further from the references. (2, 1, 0) was chosen on validation: with the shipped
    ``general`` the detail of (3, 1, 1) or (2.5, 1, 0) raised the LPIPS of the synthetic HDR
    pairs above Mertens's own (0.1347-0.1350 and 0.1339 against 0.1338).
    """
    # data/baselines layers, imported lazily (they import crmef.nets indirectly)
    if kind == "mertens":
        from crmef.data.reference import mertens_reference

        return mertens_reference([under, over])
    if kind == "flow_mertens":
        from crmef.baselines import flow_mertens

        return flow_mertens(under, over)
    if kind == "mertens_detail":
        from crmef.baselines import mertens
        from crmef.data.reference import mertens_reference

        m = torch.from_numpy(mertens_reference([under, over])).permute(2, 0, 1)[None]
        c = torch.from_numpy(mertens([under, over], DETAIL_WEIGHTS)).permute(2, 0, 1)[None]
        with torch.no_grad():
            p = c + lowpass(m - c, float(DETAIL_SPLIT))
        return np.ascontiguousarray(p[0].clamp(0.0, 1.0).permute(1, 2, 0).numpy(), dtype=np.float32)
    raise ValueError(f"unknown prior {kind!r}; use one of {PRIORS[1:]}")


def _per_item(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], under: Tensor, over: Tensor) -> Tensor:
    """Apply a numpy pair function ``fn((H,W,3), (H,W,3)) -> (H,W,3)`` to every item of a batch,
    on the CPU: ``(B,3,H,W) x2 -> (B,3,H,W)`` (or ``(3,H,W)`` x2), on the inputs' device and dtype."""
    squeeze = under.dim() == 3
    u = under.unsqueeze(0) if squeeze else under
    o = over.unsqueeze(0) if squeeze else over
    un = u.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    on = o.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    out = torch.stack([torch.from_numpy(fn(a, b)).permute(2, 0, 1) for a, b in zip(un, on)])
    out = out.to(device=under.device, dtype=under.dtype)
    return out.squeeze(0) if squeeze else out


def prior_image(kind: str, under: Tensor, over: Tensor) -> Tensor:
    """The prior of a batch of pairs (:func:`prior_array` per item, computed on the CPU).

    It is an input of the network, not a differentiable part of it: computed on the whole image
    (the trainer's data pipeline crops it from the whole image too), it is the same whether the
    network then runs whole, tiled or on a crop.

    Shapes: ``(B,3,H,W) x2 -> (B,3,H,W)`` (or ``(3,H,W)`` x2), on the inputs' device and dtype.
    """
    return _per_item(lambda a, b: prior_array(kind, a, b), under, over)


def prealign_image(kind: str, under: Tensor, over: Tensor) -> Tensor:
    """:func:`prealign_array` of a batch of pairs (per item, on the CPU): ``(B,3,H,W) x2 ->
    (B,3,H,W)`` (or ``(3,H,W)`` x2), on the inputs' device and dtype; ``under`` itself for ``"none"``."""
    if kind == "none":
        return under
    return _per_item(lambda a, b: prealign_array(kind, a, b), under, over)


def gaussian_taps(sigma: float) -> tuple[Tensor, Tensor]:
    """Separable Gaussian kernels of the 1/8-resolution stage of :func:`lowpass` (``sigma / 8``,
    radius 3σ), as single-channel conv weights: ``((1,1,1,K), (1,1,K,1))``."""
    from crmef.metrics.color import gaussian_window  # lazy: keeps the metrics out of a plain net import

    s = sigma / 8.0
    k = gaussian_window(2 * max(1, int(3.0 * s + 0.5)) + 1, s, torch.float32)
    return k.view(1, 1, 1, -1), k.view(1, 1, -1, 1)


def lowpass(x: Tensor, sigma: float, taps: tuple[Tensor, Tensor] | None = None, pool: str = "avg") -> Tensor:
    """Smooth low-pass of scale ``sigma`` pixels, computed at 1/8 resolution, per channel.

    Average pooling by 8 (partial last windows average their valid pixels), a separable Gaussian
    of ``sigma / 8`` with replicated borders, bilinear upsampling to the input size: about a
    Gaussian of ``sigma`` at a 64th of its cost (no huge kernel at full resolution). With
    ``pool="max"`` the pooling takes each 8×8 window's maximum: a smooth upper envelope of
    sparse peaks (:class:`PriorBlend`'s headroom) rather than their diluted mean.

    Args:
        x: (B, C, H, W), any C.
        sigma: scale in pixels.
        taps: precomputed :func:`gaussian_taps` for ``sigma`` (constant kernels keep the ONNX
            graph exportable).

    Returns:
        (B, C, H, W).
    """
    kx, ky = taps if taps is not None else gaussian_taps(sigma)
    kx, ky = kx.to(x), ky.to(x)
    r = kx.shape[-1] // 2
    p = F.max_pool2d(x, 8, ceil_mode=True) if pool == "max" else F.avg_pool2d(x, 8, ceil_mode=True)
    b, c = p.shape[:2]
    p = F.pad(p.flatten(0, 1).unsqueeze(1), (r, r, r, r), mode="replicate")  # channels into the batch
    p = F.conv2d(F.conv2d(p, kx), ky)
    p = p.view(b, c, p.shape[-2], p.shape[-1])
    return F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)


class PriorBlend(nn.Module):
    """Per-pixel move of ``y`` towards the prior ``p``, decided at 1/8 resolution.

    Input of the CNN: ``[y, p, under, over]`` average-pooled by 8 (12 channels); four 3×3
    convolutions (dilations 1, 2, 4, 1; LeakyReLU; replicated borders — zero padding made the
    weight fall near the image border, a visible frame in the output) give 3 logits, upsampled bilinearly to the
    input size; ``w = σ(logits)``. The last convolution starts at zero weight and bias ``init_bias``
    (``w ≈ 0.05``: a fine-tuned network starts almost where it was).

    With ``detail = σ > 0`` a second head (same trunk, zero weight, bias ``detail_bias``: ``w_d ≈
    0.95`` at the start) weighs the transfer of the prior's detail band (:func:`lowpass`); the
    base blend's parameters keep their names, so a model without detail initialises one with.

    ``detail_space`` says how that detail ``D`` (3 channels) is added. ``"rgb"``: per channel,
    ``y + D``. ``"luma"``: ``y + Y(D) + s ⊙ (D − Y(D))`` with ``Y`` MATLAB's ``rgb2gray``
    (:data:`crmef.metrics.color.MATLAB_GRAY`, the grey of MEF-SSIM; its weights sum to 1, so the
    chroma part has no luma) and ``s = min(1, Y(L(y)) / Y(L(p)))``.
    The grey image, which carries the structure (MEF-SSIM is computed on it), gets the prior's
    detail in full either way; the colour of the detail shrinks where the blended base is darker
    than the prior. ``"luma_gamut"``: as ``"luma"``, then the chroma part is scaled further, per
    pixel, by the largest ``t ∈ [0, 1]`` that keeps every channel of ``y + Y(D) + t s (D − Y(D))``
    inside [0, 1] (the grey, and so MEF-SSIM, is unchanged; only colour that would clip is
    dropped). Why: with the dark guard the base's sky is as bright as the prior's, ``s`` is 1, and
    the per-channel detail of the palms took blue below 0 again (5.4 % of their pixels red against
    1.6 % in the reference). Why ``"luma"``: on a dusk validation scene the blended base's sky was three times darker
    than Mertens's, and the per-channel detail of dark palms against that blue sky (red +0.08,
    blue −0.53) took the blue channel far below 0 while red stayed: clipped, the palms came out
    red.

    With ``headroom = σ_h > 0`` (needs ``detail``) the transferred detail is kept inside [0, 1]
    instead of being clipped: where the output leaves the range, a smooth envelope of the excess
    (:func:`lowpass` with max pooling at scale ``σ_h``) shifts the base. Above 1 the envelope of
    the channel maximum lowers all channels alike (a bright coloured light keeps its hue); below 0
    each channel is raised by its own envelope (raising all by one channel's deficit tinted dark
    silhouettes against a blue sky red). Without it a bright network base plus the prior's detail
    clips in highlights and that detail is lost (no parameters: it applies to a trained model as is).

    With ``dark_guard = τ > 0`` the blend logits (at 1/8 resolution, before upsampling) get
    ``GUARD_GAIN · max(0, log2((Y(p̄) + f) / (Y(ȳ) + f)) − τ)``, ``p̄, ȳ`` the pooled prior and
    output, ``Y`` the grey of MEF-SSIM, ``f = GUARD_FLOOR``. Why: on a dusk validation scene
    (hdrps/Frontier) the network renders the sky from the nearly black under frame (grey 8 of 255
    where Mertens and the reference are near 64); the blend, trained on few such scenes, moved only
    20 % towards the prior, and the prior's detail added to that dark base clipped below 0 (10-22 %
    of the pixels of the sky tiles), losing the palms' structure. With the guard at 1 stop that
    scene goes from 18.9 to 24.8 dB and MEF-SSIM 0.981 to 0.986, while the other validation scenes
    move by at most 0.1 dB (no parameters: it applies to a trained model as is).

    Shapes: ``forward(y, p, under, over)``, each (B,3,H,W) -> (B,3,H,W) in [0, 1] when ``y``
    and ``p`` are.
    """

    def __init__(self, width: int = 24, init_bias: float = -3.0, detail: int = 0, detail_bias: float = 3.0,
                 headroom: int = 0, detail_space: str = "rgb", dark_guard: float = 0.0) -> None:
        super().__init__()
        if headroom and not detail:
            raise ValueError("headroom keeps the transferred detail in range: it needs detail > 0")
        if detail_space not in DETAIL_SPACES:
            raise ValueError(f"detail_space must be one of {DETAIL_SPACES}, got {detail_space!r}")
        if not dark_guard >= 0:
            raise ValueError(f"dark_guard must be a threshold in stops >= 0, got {dark_guard!r}")
        self.dark_guard = float(dark_guard)
        self.detail = int(detail)
        self.detail_space = detail_space
        self.headroom = int(headroom)
        layers: list[nn.Module] = []
        c_in = 12
        for d in (1, 2, 4):
            layers += [nn.Conv2d(c_in, width, 3, padding=d, dilation=d, padding_mode="replicate"), nn.LeakyReLU(0.2)]
            c_in = width
        last = nn.Conv2d(width, 3, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, init_bias)
        self.net = nn.Sequential(*layers, last)
        self.detail_head: nn.Conv2d | None = None
        from crmef.metrics.color import MATLAB_GRAY  # lazy, as gaussian_taps

        self.register_buffer("luma", torch.tensor(MATLAB_GRAY, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        if self.detail:
            head = nn.Conv2d(width, 3, 3, padding=1, padding_mode="replicate")
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, detail_bias)
            self.detail_head = head
            kx, ky = gaussian_taps(float(self.detail))
            self.register_buffer("taps_x", kx, persistent=False)
            self.register_buffer("taps_y", ky, persistent=False)
        if self.headroom:
            hx, hy = gaussian_taps(float(self.headroom))
            self.register_buffer("head_x", hx, persistent=False)
            self.register_buffer("head_y", hy, persistent=False)

    def weight_maps(self, y: Tensor, p: Tensor, under: Tensor, over: Tensor) -> tuple[Tensor, Tensor | None]:
        """Blend weights ``w`` and detail weights ``w_d`` (None without detail transfer):
        (B,3,H,W) x4 -> (B,3,H,W) in (0, 1) each."""
        # pooled one input at a time (pooling is per channel: the same as pooling the 12-channel
        # stack, without holding it at full resolution). ceil_mode: a partial last window averages
        # its valid pixels; no padding, so the ONNX graph stays size-generic.
        pooled = torch.cat([F.avg_pool2d(t, 8, ceil_mode=True) for t in (y, p, under, over)], 1)
        trunk = self.net[:-1](pooled)
        logits = self.net[-1](trunk)
        if self.dark_guard > 0:
            # stops by which the pooled output is darker than the pooled prior, beyond the threshold
            ly = (pooled[:, 0:3] * self.luma).sum(1, keepdim=True)
            lp = (pooled[:, 3:6] * self.luma).sum(1, keepdim=True)
            stops = torch.log2((lp + GUARD_FLOOR) / (ly + GUARD_FLOOR))
            logits = logits + GUARD_GAIN * F.relu(stops - self.dark_guard)
        if self.detail_head is not None:
            logits = torch.cat([logits, self.detail_head(trunk)], 1)
        w = torch.sigmoid(F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False))
        return (w[:, :3], w[:, 3:]) if self.detail_head is not None else (w, None)

    def forward(self, y: Tensor, p: Tensor, under: Tensor, over: Tensor) -> Tensor:
        w, wd = self.weight_maps(y, p, under, over)
        out = y + w * (p - y)
        if wd is not None:
            # detail of the prior minus detail of the blended output: (p - L p) - (out - L out)
            taps = (self.taps_x, self.taps_y)
            diff = p - out
            low_diff = lowpass(diff, float(self.detail), taps)
            detail = wd * (diff - low_diff)
            if self.detail_space in ("luma", "luma_gamut"):
                luma = (detail * self.luma).sum(1, keepdim=True)
                # chroma scale: the base's local luminance over the prior's, at most 1. The
                # low-pass is linear and per channel: Y(L(out)) = L(Y(out)), one channel, and
                # Y(L(p)) = Y(L(out)) + Y(L(p - out)), whose low-pass is already there
                yb = lowpass((out * self.luma).sum(1, keepdim=True), float(self.detail), taps)
                yp = yb + (low_diff * self.luma).sum(1, keepdim=True)
                scale = ((yb + 1e-3) / (yp + 1e-3)).clamp(max=1.0)
                chroma = scale * (detail - luma)
                if self.detail_space == "luma_gamut":
                    # largest t in [0, 1] with 0 <= base + luma + t * chroma <= 1 in every channel
                    v = out + luma
                    room = torch.where(chroma < 0, v.clamp(min=0.0) / (-chroma).clamp(min=1e-6),
                                       (1.0 - v).clamp(min=0.0) / chroma.clamp(min=1e-6))
                    chroma = chroma * room.amin(1, keepdim=True).clamp(max=1.0)
                detail = luma + chroma
            out = out + detail
        if self.headroom:
            sigma = float(self.headroom)
            high = lowpass(F.relu(out - 1.0).amax(1, keepdim=True), sigma, (self.head_x, self.head_y), pool="max")
            low = lowpass(F.relu(-out), sigma, (self.head_x, self.head_y), pool="max")
            out = out - high + low
        return out
