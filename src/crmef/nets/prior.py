"""Exposure-fusion prior for the fusion network (not in the paper; ``NetConfig.prior``).

- :func:`prior_image` / :func:`prior_array` — ``"mertens"``: Mertens, Kautz and Van Reeth's
  exposure fusion (OpenCV, full pyramid depth) of the pair, computed on the whole image;
  ``"flow_mertens"``: the same after warping the under frame onto the over frame with optical
  flow (hand-held brackets). A fixed-depth, local torch version was tried
  first and rejected: Mertens's result depends strongly on the pyramid depth (on a 536×356
  bracket, 7 instead of 8 levels moves it by 21 dB PSNR), so only the full-depth, whole-image
  fusion is a faithful prior; it therefore enters the network as an input.
- :class:`PriorBlend` — a small CNN at 1/8 resolution that predicts, per pixel and channel, how
  far to move the network's output ``y`` towards the prior ``p``: ``y + w ⊙ (p − y)``,
  ``w ∈ (0, 1)``, bilinearly upsampled (a smooth, tonal decision with a wide context).

Why: on real brackets whose references fuse the *whole* bracket, the classical fusion of the two
extreme frames is sometimes the better estimate (few-frame brackets) and sometimes far worse
(wide brackets, where the network wins by several dB). The blend learns where each is right.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


PRIORS = ("none", "mertens", "flow_mertens")
"""Prior kinds of :attr:`crmef.nets.NetConfig.prior`."""


def prior_array(kind: str, under: np.ndarray, over: np.ndarray) -> np.ndarray:
    """The prior of one pair of whole images, numpy: ``(H,W,3) x2 -> (H,W,3)`` float32 in [0, 1].

    ``"mertens"``: OpenCV's Mertens fusion (:func:`crmef.data.reference.mertens_reference`, the
    method of the full-bracket references); ``"flow_mertens"``: the under frame warped onto the
    over frame by DIS optical flow, then Mertens (:func:`crmef.baselines.flow_mertens`; for
    hand-held brackets, whose references are registered to the over frame).
    """
    # data/baselines layers, imported lazily (they import crmef.nets indirectly)
    if kind == "mertens":
        from crmef.data.reference import mertens_reference

        return mertens_reference([under, over])
    if kind == "flow_mertens":
        from crmef.baselines import flow_mertens

        return flow_mertens(under, over)
    raise ValueError(f"unknown prior {kind!r}; use one of {PRIORS[1:]}")


def prior_image(kind: str, under: Tensor, over: Tensor) -> Tensor:
    """The prior of a batch of pairs (:func:`prior_array` per item, computed on the CPU).

    It is an input of the network, not a differentiable part of it: computed on the whole image
    (the trainer's data pipeline crops it from the whole image too), it is the same whether the
    network then runs whole, tiled or on a crop.

    Shapes: ``(B,3,H,W) x2 -> (B,3,H,W)`` (or ``(3,H,W)`` x2), on the inputs' device and dtype.
    """
    squeeze = under.dim() == 3
    u = under.unsqueeze(0) if squeeze else under
    o = over.unsqueeze(0) if squeeze else over
    un = u.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    on = o.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    out = torch.stack([torch.from_numpy(prior_array(kind, a, b)).permute(2, 0, 1) for a, b in zip(un, on)])
    out = out.to(device=under.device, dtype=under.dtype)
    return out.squeeze(0) if squeeze else out


class PriorBlend(nn.Module):
    """Per-pixel move of ``y`` towards the prior ``p``, decided at 1/8 resolution.

    Input of the CNN: ``[y, p, under, over]`` average-pooled by 8 (12 channels); four 3×3
    convolutions (dilations 1, 2, 4, 1; LeakyReLU; replicated borders — zero padding made the
    weight fall near the image border, a visible frame in the output) give 3 logits, upsampled bilinearly to the
    input size; ``w = σ(logits)``. The last convolution starts at zero weight and bias ``init_bias``
    (``w ≈ 0.05``: a fine-tuned network starts almost where it was).

    Shapes: ``forward(y, p, under, over)``, each (B,3,H,W) -> (B,3,H,W) in [0, 1] when ``y``
    and ``p`` are.
    """

    def __init__(self, width: int = 24, init_bias: float = -3.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 12
        for d in (1, 2, 4):
            layers += [nn.Conv2d(c_in, width, 3, padding=d, dilation=d, padding_mode="replicate"), nn.LeakyReLU(0.2)]
            c_in = width
        last = nn.Conv2d(width, 3, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, init_bias)
        self.net = nn.Sequential(*layers, last)

    def weight_map(self, y: Tensor, p: Tensor, under: Tensor, over: Tensor) -> Tensor:
        """Blend weights ``w``: (B,3,H,W) x4 -> (B,3,H,W) in (0, 1)."""
        # pooled one input at a time (pooling is per channel: the same as pooling the 12-channel
        # stack, without holding it at full resolution). ceil_mode: a partial last window averages
        # its valid pixels; no padding, so the ONNX graph stays size-generic.
        pooled = torch.cat([F.avg_pool2d(t, 8, ceil_mode=True) for t in (y, p, under, over)], 1)
        logits = self.net(pooled)
        return torch.sigmoid(F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False))

    def forward(self, y: Tensor, p: Tensor, under: Tensor, over: Tensor) -> Tensor:
        return y + self.weight_map(y, p, under, over) * (p - y)
