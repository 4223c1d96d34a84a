"""``crmef search``: hardware-aware architecture search (see :mod:`crmef.search`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``search`` sub-command."""
    p = subparsers.add_parser(
        "search",
        help="latency-constrained architecture search (DARTS + latency look-up table)",
        description="Search a compact fusion network: min_a L1_val(a; w*) + eta R(a). "
        "Runs data-parallel under torchrun --nproc_per_node N.",
    )
    p.add_argument("--config", required=True, type=Path, help="YAML config (configs/search/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.eta=1 (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="run directory for the outputs")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when present")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, run the search, print where the outputs are."""
    from crmef.config import load_config
    from crmef.search import SearchConfig, run_search

    cfg = load_config(SearchConfig, args.config, args.overrides)
    result = run_search(cfg, args.out, resume=args.resume, log=lambda m: print(m, flush=True))
    if result.derived:
        print(f"outputs in {result.out_dir}: config.yaml alphas.json alphas.png genotype.json derived.json")
    return 0
