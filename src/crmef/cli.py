"""Command-line entry point: ``crmef <command> ...``.

The CLI is thin: it parses arguments, builds configs and calls the library. Sub-commands live in
:mod:`crmef.commands` (one module each) and are discovered at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from crmef import commands
from crmef.errors import CrmefError


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(
        prog="crmef", description="Compact, robust multi-exposure image fusion."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"crmef.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for bad input, with a one-line message)."""
    parser = build_parser()
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
