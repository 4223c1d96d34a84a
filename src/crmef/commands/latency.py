"""``crmef latency``: measure the per-op latency look-up table of the super-net on a device."""

from __future__ import annotations

import argparse
from pathlib import Path


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``latency`` sub-command."""
    p = subparsers.add_parser(
        "latency",
        help="measure the op latency look-up table used by the search",
        description="Time every candidate op of every super-net slot (channels x feature scale) on "
        "one device; median of --runs after --warmup, spread recorded. A cached --out table is "
        "reused only when device, torch version and thread count match (unless --force).",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--channels", type=_int_list, default=[16, 32, 64], help="widths C (default 16,32,64)")
    p.add_argument("--size", type=int, default=128, help="search crop; slots run at size/scale (default 128)")
    p.add_argument("--batch", type=int, default=16, help="batch size of the timing input (default 16)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per op (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-align", action="store_true", help="skip the deformable (DASM) slots")
    p.add_argument("--force", action="store_true", help="re-measure even if --out is a valid table")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure (or reuse) the table and print a summary."""
    import torch

    from crmef.errors import InputError
    from crmef.latency import ensure_table, measure_table, supernet_sigs
    from crmef.utils import resolve_device

    if args.size < 4 or args.batch < 1 or args.runs < 1 or args.warmup < 0:
        raise InputError("--size must be >= 4, --batch and --runs >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    sigs = []
    for c in args.channels:
        sigs.extend(supernet_sigs(c, args.size, align=not args.no_align))
    if args.force:
        table = measure_table(sigs, device, args.batch, args.runs, args.warmup, progress=print)
        table.save(args.out)
    else:
        table = ensure_table(args.out, sigs, device, args.batch, args.runs, args.warmup)
    m = table.meta
    print(f"{args.out}: {len(table.entries)} entries on {m['device_name']} ({m['device']}, torch {m['torch']}, "
          f"{m['threads']} threads, batch {m['batch']}, {m['runs']} runs, load {m['loadavg_start'][0]:.2f})")
    return 0
