"""Command-line entry point: ``crmef <command> ...``.

The CLI is thin: it parses arguments, builds configs and calls the library. Sub-commands live in
:mod:`crmef.commands` (one module each, with ``register(subparsers)``).

Start-up pays only for the command that runs: the top-level parser is built from the static
table :data:`COMMANDS` (name -> one-line help), and only the chosen command's module is imported
(``crmef --help`` imports none). Command modules import nothing heavy at module level (no torch,
numpy, OpenCV, …): their ``run`` functions import what they need. A new command module must be
added to :data:`COMMANDS` (``tests/test_cli_lazy.py`` checks the table against the package).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from crmef.errors import CrmefError

COMMANDS: dict[str, str] = {
    "data": "inspect datasets, synthesise brackets, regenerate splits",
    "demo": "fuse a bracket made from a photo shipped with scikit-image",
    "eval": "evaluate fusion methods on a dataset split (tables, optional HTML report)",
    "export": "export a crmef train model (the paper network) to ONNX (dynamic H and W)",
    "fuse": "fuse a bracket of exposures into one image",
    "info": "show the paper network's slots, parameters and FLOPs",
    "latency": "measure the op latency look-up table used by the search",
    "score": "PSNR / SSIM / LPIPS / FSIM against a reference, or MEF-SSIM / chroma hull against the sources",
    "search": "latency-constrained architecture search (DARTS + latency look-up table)",
    "setup": "install optional assets (LPIPS weights)",
    "train": "train a fusion network from a YAML config",
}
"""Every sub-command (module ``crmef.commands.<name>``) and its one-line help, in ``--help`` order."""


def chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``: its first non-option argument (top-level options take
    no values), or None."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None, *, all_commands: bool = False) -> argparse.ArgumentParser:
    """The top-level parser.

    Every command of :data:`COMMANDS` is listed; only ``command`` (or, with ``all_commands``,
    every command) is imported and registered with its options, the others are placeholders
    carrying their help line.
    """
    parser = argparse.ArgumentParser(
        prog="crmef", description="Compact, robust multi-exposure image fusion."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        if all_commands or name == command:
            importlib.import_module(f"crmef.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for bad input, with a one-line message)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(chosen_command(argv))
    args = parser.parse_args(argv)
    if args.version:
        from crmef import __version__

        print(__version__)
        return 0
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CrmefError as exc:
        if args.debug:
            raise
        print(f"crmef: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crmef: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
