"""``crmef info``: architecture, parameter count and FLOPs of the paper's network for a preset or genotype."""

from __future__ import annotations

import argparse
import json

from crmef.errors import InputError


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 1080x1920, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show the paper network's slots, parameters and FLOPs",
                       description="Build the paper's network (FusionNet) from a published genotype or a "
                                   "genotype file and report its complexity.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None,
                     help="published genotype: paper_general or paper_aligned (with DASM); default paper_general")
    src.add_argument("--genotype", metavar="FILE", help="a genotype JSON file instead of a preset")
    p.add_argument("--channels", type=int, default=64, help="feature width C (default 64)")
    p.add_argument("--cascades", type=int, default=2, help="SRSM stages per exposure, 0-3 (default 2)")
    p.add_argument("--head", choices=["retinex", "direct"], default=None, help="output head (default per genotype)")
    p.add_argument("--size", type=_parse_size, default=(1080, 1920), help="HxW for FLOPs (default 1080x1920)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crmef.complexity import count_flops, count_params
    from crmef.nets import FusionNet
    from crmef.space import Genotype, get_preset

    try:
        genotype = Genotype.load(args.genotype) if args.genotype else get_preset(args.preset or "paper_general")
        net = FusionNet.from_genotype(genotype, channels=args.channels, cascades=args.cascades, head=args.head)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    h, w = args.size
    params = count_params(net)
    gflops = count_flops(net, (h, w)) / 1e9
    info = {
        "name": args.genotype or (args.preset or "paper_general"),
        "channels": args.channels,
        "cascades": args.cascades,
        "align": genotype.align,
        "head": net.config.head,
        "size": [h, w],
        "params": params,
        "gflops": round(gflops, 3),
        "genotype": genotype.to_dict(),
        "slots": net.slot_ops(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']}: C={args.channels}, cascades={args.cascades}, align={genotype.align}, head={info['head']}")
    print(f"  parameters: {params:,} ({params / 1e6:.3f} M)")
    print(f"  FLOPs at {h}x{w}: {gflops:.2f} G (multiply-add = 2 FLOPs)")
    print(f"  {len(info['slots'])} slots:")
    for slot, op in info["slots"].items():
        print(f"    {slot:<24} {op}")
    return 0
