"""``crmef score``: image-quality metrics of one image from files.

Full reference::

    crmef score --metric psnr,ssim,lpips,fsim --ref REF --img IMG [--json]

No reference (MEF-SSIM of a fusion against its sources; the chroma hull distance, colour the
fusion holds outside its sources' chromaticities, lower is better; chroma_kept, the share of the
best-exposed source's colourfulness the fusion keeps, higher is better)::

    crmef score --metric mef_ssim,chroma_hull --inputs F1 F2 [F3 ...] --img FUSED [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``score`` sub-command."""
    parser = subparsers.add_parser(
        "score",
        help="PSNR / SSIM / LPIPS / FSIM against a reference, or MEF-SSIM / chroma hull against the sources",
        description="Score one image. Full-reference metrics need --ref; mef_ssim, chroma_hull and chroma_kept need --inputs.",
    )
    parser.add_argument("--metric", default="psnr,ssim,fsim",
                        help="comma-separated: psnr, ssim, lpips, fsim, mef_ssim, chroma_hull, chroma_kept (default: psnr,ssim,fsim)")
    parser.add_argument("--img", type=Path, required=True, help="the image to score (e.g. a fused result)")
    parser.add_argument("--ref", type=Path, default=None, help="reference image (psnr, ssim, lpips, fsim)")
    parser.add_argument("--inputs", type=Path, nargs="+", default=None, metavar="SOURCE",
                        help="the source exposures F1 F2 [F3 ...], any order (mef_ssim, chroma_hull, chroma_kept)")
    parser.add_argument("--json", action="store_true", help='print {"psnr": ..., ...} as JSON')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the files, check their sizes, print the scores."""

    from crmef.errors import InputError
    from crmef.evaluation import (
        NO_REFERENCE_METRIC_NAMES,
        REFERENCE_METRIC_NAMES,
        check_lpips_ready,
        image_tensor,
        parse_metrics,
        same_size,
        score_tensors,
    )

    metrics = parse_metrics(args.metric)
    need_ref = [m for m in metrics if m in REFERENCE_METRIC_NAMES]
    if need_ref and args.ref is None:
        raise InputError(f"{', '.join(need_ref)} need{'s' if len(need_ref) == 1 else ''} a reference: pass --ref REF")
    need_src = [m for m in metrics if m in NO_REFERENCE_METRIC_NAMES]
    if need_src and not args.inputs:
        raise InputError(f"{', '.join(need_src)} need{'s' if len(need_src) == 1 else ''} the source exposures: "
                         "pass --inputs F1 F2 [F3 ...]")
    if need_src and len(args.inputs) < 2:
        raise InputError(f"{', '.join(need_src)}: need at least two --inputs, got {len(args.inputs)}")
    check_lpips_ready(metrics)
    img = image_tensor(args.img)
    ref = None
    if need_ref:
        ref = image_tensor(args.ref)
        same_size([args.img, args.ref], [img, ref], "--img and --ref")
    sources = None
    if need_src:
        sources = [image_tensor(p) for p in args.inputs]
        same_size([*args.inputs, args.img], [*sources, img], "the fused image (--img) and its --inputs")
    scores = score_tensors(metrics, img, ref, sources)
    if args.json:
        print(json.dumps(scores))
    else:
        for k, v in scores.items():
            text = f"{v:.2f} dB" if k == "psnr" else f"{v:.6f}" if k == "chroma_hull" else f"{v:.4f}"
            print(f"{k:11s} {text}")
    return 0
