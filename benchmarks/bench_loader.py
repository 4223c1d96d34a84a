"""Loader throughput: 128x128 training crops per second with DataLoader workers.

Usage::

    .venv/bin/python benchmarks/bench_loader.py [--data ../shared/data] [--workers 2]
        [--batch 16] [--batches 40] [--runs 3] [--cache DIR]

Prints one row per configuration with the median (and min/max) over ``--runs`` timed passes, and
the 1-minute load average before the runs (other processes share the CPU). The first pass over
the data decodes frames and builds references into the cache; it is done before timing
(``prepare``), as it happens once per machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from crmef.data.datasets import DataConfig, SourceSpec, build_dataset, build_loader

ROOT = Path(__file__).resolve().parents[1]


def time_loader(cfg: DataConfig, workers: int, batch: int, batches: int) -> float:
    """Crops per second over ``batches`` batches (after the workers delivered their first one)."""
    ds = build_dataset(cfg)
    if hasattr(ds, "prepare"):
        ds.prepare()
    loader = build_loader(cfg, batch_size=batch, workers=workers, shuffle=True, dataset=ds)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    n = 0
    start = time.perf_counter()
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        n += b["under"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> int:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--cache", default=None, help="cache dir (default: a temporary one, filled first)")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)
    if not (data / "sequences").is_dir():
        print(f"no shared data at {data}; pass --data", file=sys.stderr)
        return 2
    cache = args.cache or tempfile.mkdtemp(prefix="crmef-bench-")
    samples = args.batch * (args.batches + 2)
    configs = {
        "brackets (Mertens refs)": DataConfig([SourceSpec(str(data / "sequences"), "brackets")], crop=args.crop, cache_dir=cache, samples_per_epoch=samples),
        "brackets + misalign": DataConfig([SourceSpec(str(data / "sequences"), "brackets")], crop=args.crop, cache_dir=cache, misalign=True, samples_per_epoch=samples),
        "hdr_synth (on the fly)": DataConfig([SourceSpec(str(data / "hdr"), "hdr_synth")], crop=args.crop, cache_dir=cache, samples_per_epoch=samples),
    }
    load = os.getloadavg()[0]
    print(f"crop {args.crop}x{args.crop}, batch {args.batch}, {args.workers} workers, {os.cpu_count()} CPUs, "
          f"{args.batches} batches per run, {args.runs} runs; load average before: {load:.2f}")
    print(f"{'source':<26} {'median crops/s':>15} {'min':>8} {'max':>8}")
    for name, cfg in configs.items():
        rates = [time_loader(cfg, args.workers, args.batch, args.batches) for _ in range(args.runs)]
        print(f"{name:<26} {statistics.median(rates):>15.1f} {min(rates):>8.1f} {max(rates):>8.1f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
